"""RNN-T (recurrent neural network transducer) in plain PyTorch, laid out as MLPerf Inference's reference.

The network is the one of MLPerf Inference's speech-recognition benchmark
(``speech_recognition/rnnt/pytorch/model_separable_rnnt.py``, trained on LibriSpeech):

* **encoder**: a pre-net of 2 LSTM layers x 1024 over 240 input features (80 log-mel filterbanks with
  3 frames spliced), time stacking x2 (two consecutive 1024-d outputs concatenated, halving the frame
  rate), a post-net of 3 LSTM layers x 1024 over the 2048-d stacked frames;
* **prediction network**: an embedding of the 28 non-blank symbols into 320 dimensions (the start-of-
  sequence input is a zero vector, as in MLPerf), 2 LSTM layers x 320;
* **joint network**: ``Linear(1024 + 320 -> 512)`` over the concatenated encoder and prediction outputs,
  ReLU, (dropout, a no-op in eval mode), ``Linear(512 -> 29)``: 28 characters plus the blank.

Module names are MLPerf's (``encoder.pre_rnn.lstm.weight_ih_l0``, ``prediction.embed.weight``,
``prediction.dec_rnn.lstm.*``, ``joint.net.0.weight``, ``joint.net.3.weight``), so the MLPerf checkpoint
loads unchanged (its ``joint_net.*`` spelling and ``audio_preprocessor.*`` buffers are handled by
:func:`load_weights`).  The full network has :data:`RNNT_PARAMETER_COUNT` = 45,323,037 parameters, which is
MLPerf's published "45.3M".  (MLPerf *Training*'s RNN-T writes the first joint layer as two projections,
``joint_enc: Linear(1024 -> 512)`` and ``joint_pred: Linear(320 -> 512)``, summed; that is the same function
with one more 512-d bias, 45,323,549 parameters.  The decoder below uses exactly that split of the
concatenated layer, see :class:`GreedyTransducerDecoder`.)

LSTM initialisation is MLPerf's: PyTorch's uniform(-1/sqrt(H), 1/sqrt(H)), then the forget-gate bias set
to 1.0 in ``bias_ih`` and 0.0 in ``bias_hh``.

``tiny`` is the same architecture with hidden sizes of 64 (encoder, prediction, joint): 306,333
parameters, only so that tests run in seconds; the pre- and post-processing around it are identical.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from e2ebench.models.checkpoints import WeightsError, read_state_dict, state_dict_problems

#: Output symbols: space, a-z, apostrophe (28 characters) and the blank (id 28, the last one).
ALPHABET: tuple[str, ...] = (" ", *"abcdefghijklmnopqrstuvwxyz", "'")
BLANK_ID = len(ALPHABET)
NUM_CLASSES = len(ALPHABET) + 1


@dataclasses.dataclass(frozen=True)
class RNNTConfig:
    """Shape of an RNN-T.

    ``input_features``: features per encoder input frame (80 mels x 3 spliced frames = 240);
    ``encoder_hidden``: LSTM width of the encoder's pre- and post-net;
    ``encoder_pre_layers`` / ``encoder_post_layers``: LSTM layers before / after time stacking;
    ``stack_time_factor``: consecutive encoder frames concatenated by time stacking (frame rate / factor);
    ``prediction_hidden``: embedding and LSTM width of the prediction network;
    ``joint_hidden``: width of the joint network's hidden layer;
    ``num_classes``: output symbols including the blank;
    ``forget_gate_bias``: initial forget-gate bias of every LSTM (MLPerf: 1.0);
    ``joint_dropout``: dropout probability between the joint layers (MLPerf: 0.32; inactive in eval mode).
    """

    input_features: int = 240
    encoder_hidden: int = 1024
    encoder_pre_layers: int = 2
    encoder_post_layers: int = 3
    stack_time_factor: int = 2
    prediction_hidden: int = 320
    prediction_layers: int = 2
    joint_hidden: int = 512
    num_classes: int = NUM_CLASSES
    forget_gate_bias: float = 1.0
    joint_dropout: float = 0.32


RNNT_MLPERF = RNNTConfig()
RNNT_TINY = RNNTConfig(encoder_hidden=64, prediction_hidden=64, joint_hidden=64)

VARIANTS: dict[str, RNNTConfig] = {"full": RNNT_MLPERF, "tiny": RNNT_TINY}

#: Parameters of the full network as built here (MLPerf Inference layout; MLPerf publishes "45.3M").
RNNT_PARAMETER_COUNT = 45_323_037
#: Parameters of the tiny test variant.
RNNT_TINY_PARAMETER_COUNT = 306_333


class LstmStack(nn.Module):
    """A multi-layer ``nn.LSTM`` (time-major) under the attribute name MLPerf uses (``.lstm``)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, forget_gate_bias: float):
        super().__init__()
        self.lstm = nn.LSTM(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        with torch.no_grad():
            for name, tensor in self.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    tensor[hidden_size : 2 * hidden_size].fill_(forget_gate_bias)
                elif name.startswith("bias_hh"):
                    tensor[hidden_size : 2 * hidden_size].fill_(0.0)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        return self.lstm(x, state)


def stack_time(x: torch.Tensor, lengths: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``factor`` consecutive frames: (T, B, H) -> (ceil(T/factor), B, factor*H).

    The last group is zero-filled when T is not a multiple of ``factor``; lengths become
    ``ceil(length / factor)`` (MLPerf's ``StackTime``).
    """
    frames, batch, hidden = x.shape
    remainder = (-frames) % factor
    if remainder:
        x = torch.cat([x, x.new_zeros(remainder, batch, hidden)], dim=0)
    stacked = x.transpose(0, 1).reshape(batch, (frames + remainder) // factor, hidden * factor).transpose(0, 1)
    return stacked.contiguous(), (lengths + factor - 1) // factor


class Encoder(nn.Module):
    """Pre-net LSTMs -> time stacking -> post-net LSTMs; input (T, B, F) time-major, output (T/2, B, H)."""

    def __init__(self, config: RNNTConfig):
        super().__init__()
        self.stack_time_factor = config.stack_time_factor
        self.pre_rnn = LstmStack(
            config.input_features, config.encoder_hidden, config.encoder_pre_layers, config.forget_gate_bias
        )
        self.post_rnn = LstmStack(
            config.stack_time_factor * config.encoder_hidden,
            config.encoder_hidden,
            config.encoder_post_layers,
            config.forget_gate_bias,
        )

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` (T, B, input_features) zero-padded past each ``lengths[b]``; returns (T', B, H), lengths'.

        Pre-net outputs past an utterance's length are zeroed before time stacking, so that an utterance's
        encoding does not depend on the other utterances of its batch (MLPerf does not mask there; for a
        batch of one, or of equal lengths, the two are identical).
        """
        x, _ = self.pre_rnn(features)
        frames = x.shape[0]
        if bool((lengths < frames).any()):
            valid = torch.arange(frames, device=x.device)[:, None] < lengths.to(x.device)[None, :]
            x = x * valid.unsqueeze(-1).to(x.dtype)
        x, lengths = stack_time(x, lengths, self.stack_time_factor)
        x, _ = self.post_rnn(x)
        return x, lengths


class Prediction(nn.Module):
    """Embedding of the non-blank symbols (start-of-sequence = zero vector) -> LSTMs."""

    def __init__(self, config: RNNTConfig):
        super().__init__()
        self.embed = nn.Embedding(config.num_classes - 1, config.prediction_hidden)
        self.dec_rnn = LstmStack(
            config.prediction_hidden, config.prediction_hidden, config.prediction_layers, config.forget_gate_bias
        )

    def forward(
        self, symbols: torch.Tensor | None, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``symbols`` (U, B) ids, or ``None`` for the start of sequence (one zero input); returns (U, B, H), state."""
        if symbols is None:
            batch = 1 if state is None else state[0].shape[1]
            weight = self.embed.weight
            x = weight.new_zeros(1, batch, weight.shape[1])
        else:
            x = self.embed(symbols)
        return self.dec_rnn(x, state)


class Joint(nn.Module):
    """``Linear(enc + pred -> joint)``, ReLU, dropout, ``Linear(joint -> classes)`` over concatenated inputs."""

    def __init__(self, config: RNNTConfig):
        super().__init__()
        self.encoder_hidden = config.encoder_hidden
        self.net = nn.Sequential(
            nn.Linear(config.encoder_hidden + config.prediction_hidden, config.joint_hidden),
            nn.ReLU(),
            nn.Dropout(config.joint_dropout),
            nn.Linear(config.joint_hidden, config.num_classes),
        )

    def forward(self, encoded: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Logits for every pair: encoded (B, T, He), predicted (B, U, Hp) -> (B, T, U, classes)."""
        batch, frames, _ = encoded.shape
        symbols = predicted.shape[1]
        pairs = torch.cat(
            [
                encoded.unsqueeze(2).expand(batch, frames, symbols, encoded.shape[-1]),
                predicted.unsqueeze(1).expand(batch, frames, symbols, predicted.shape[-1]),
            ],
            dim=-1,
        )
        return self.net(pairs)


class RNNT(nn.Module):
    """Encoder + prediction network + joint network (MLPerf Inference's module names)."""

    def __init__(self, config: RNNTConfig = RNNT_MLPERF):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.prediction = Prediction(config)
        self.joint = Joint(config)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder (what MLPerf's ``RNNT.forward`` returns); decoding is :class:`GreedyTransducerDecoder`."""
        return self.encoder(features, lengths)


@dataclasses.dataclass
class DecodedUtterance:
    """Greedy decoding result of one utterance.

    ``symbol_ids``: emitted non-blank symbols; ``encoder_frames``: frames decoded (the utterance's encoder
    length); ``capped_frames``: frames where decoding stopped because ``max_symbols_per_step`` symbols were
    emitted rather than because the blank won (with random weights this is nearly every frame);
    ``joint_steps``: joint-network evaluations (one per emitted symbol plus one per blank).
    """

    symbol_ids: list[int]
    encoder_frames: int
    capped_frames: int
    joint_steps: int


class GreedyTransducerDecoder:
    """MLPerf's greedy RNN-T decoding, with the per-step networks written as plain matrix products.

    For each encoder frame the joint network is evaluated with the current prediction-network output;
    when its arg-max is the blank, decoding moves to the next frame; otherwise the symbol is emitted, the
    prediction network advances by one step on it, and the same frame is evaluated again, at most
    ``max_symbols_per_step`` times (MLPerf: 30).  The result is the one of MLPerf's ``_greedy_decode``.

    Per-step work is done without ``nn.LSTM`` (whose oneDNN path costs far more than the arithmetic for a
    single 1x320 step): the LSTM cell is written out with ``torch.addmm`` on the module's own weights.
    Three exact rewrites cut the per-step operations:

    * the first layer's input projection of every symbol's embedding is precomputed into a table
      (``embedding @ W_ih0^T + b_ih0 + b_hh0``; the start-of-sequence row is the bias alone);
    * the first joint layer ``W [enc; pred] + b`` is split into ``W_enc enc + b`` (computed for all frames
      in one product per utterance) and ``W_pred pred`` (once per prediction step);
    * the prediction output is kept while blanks are emitted (MLPerf recomputes the same value).

    ``step_implementation="nn.LSTM"`` runs the prediction network through ``Prediction.forward`` and the
    joint through ``Joint.forward`` instead, one step at a time as MLPerf's reference does (kept to
    measure the difference; results are the same up to float rounding).
    """

    def __init__(self, model: RNNT, step_implementation: str = "cell"):
        if step_implementation not in ("cell", "nn.LSTM"):
            raise ValueError(f"unknown step implementation {step_implementation!r}; accepted: cell, nn.LSTM")
        self.model = model
        self.step_implementation = step_implementation
        config = model.config
        self.blank_id = config.num_classes - 1
        self.start_id = config.num_classes - 1  # row of the start-of-sequence input in the layer-0 table
        lstm = model.prediction.dec_rnn.lstm
        self.layers = lstm.num_layers
        self.hidden = lstm.hidden_size
        with torch.no_grad():
            biases = [
                (getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")).unsqueeze(0)
                for k in range(self.layers)
            ]
            embed = model.prediction.embed.weight
            first_input = torch.addmm(biases[0], embed, lstm.weight_ih_l0.t())
            self.layer0_input_table = torch.cat([first_input, biases[0]], dim=0).contiguous()
            self.w_hh_t = [getattr(lstm, f"weight_hh_l{k}").t().contiguous() for k in range(self.layers)]
            self.w_ih_t = [None] + [getattr(lstm, f"weight_ih_l{k}").t().contiguous() for k in range(1, self.layers)]
            self.biases = biases
            first, last = model.joint.net[0], model.joint.net[3]
            encoder_hidden = config.encoder_hidden
            self.joint_encoder_w_t = first.weight[:, :encoder_hidden].t().contiguous()
            self.joint_prediction_w_t = first.weight[:, encoder_hidden:].t().contiguous()
            self.joint_bias = first.bias.unsqueeze(0).contiguous()
            self.output_w_t = last.weight.t().contiguous()
            self.output_bias = last.bias.unsqueeze(0).contiguous()

    # -- one prediction step with the hand-written cell ------------------------------------------
    def _prediction_step(
        self, symbol: int, hs: list[torch.Tensor], cs: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        hidden = self.hidden
        new_hs: list[torch.Tensor] = []
        new_cs: list[torch.Tensor] = []
        x = None
        for k in range(self.layers):
            if k == 0:
                gates = torch.addmm(self.layer0_input_table[symbol : symbol + 1], hs[0], self.w_hh_t[0])
            else:
                gates = torch.addmm(self.biases[k], x, self.w_ih_t[k])
                gates.addmm_(hs[k], self.w_hh_t[k])
            activated = gates.sigmoid()
            input_gate = activated[:, :hidden]
            forget_gate = activated[:, hidden : 2 * hidden]
            output_gate = activated[:, 3 * hidden :]
            candidate = gates[:, 2 * hidden : 3 * hidden].tanh()
            cell = torch.addcmul(forget_gate * cs[k], input_gate, candidate)
            x = output_gate * cell.tanh()
            new_hs.append(x)
            new_cs.append(cell)
        return x, new_hs, new_cs

    def decode_utterance(self, encoded: torch.Tensor, max_symbols_per_step: int) -> DecodedUtterance:
        """Greedy-decode one utterance's encoder output ``encoded`` (T, H) (only its valid frames)."""
        if max_symbols_per_step < 1:
            raise ValueError("max_symbols_per_step must be at least 1")
        if self.step_implementation == "nn.LSTM":
            return self._decode_with_modules(encoded, max_symbols_per_step)
        frames = encoded.shape[0]
        encoder_projection = torch.addmm(self.joint_bias, encoded, self.joint_encoder_w_t)
        zeros = encoded.new_zeros(1, self.hidden)
        hs = [zeros] * self.layers
        cs = [zeros] * self.layers
        symbol = self.start_id
        emitted: list[int] = []
        capped_frames = 0
        joint_steps = 0
        prediction_projection = None
        next_hs: list[torch.Tensor] = hs
        next_cs: list[torch.Tensor] = cs
        blank = self.blank_id
        for frame in range(frames):
            frame_projection = encoder_projection[frame : frame + 1]
            symbols_this_frame = 0
            while symbols_this_frame < max_symbols_per_step:
                if prediction_projection is None:
                    output, next_hs, next_cs = self._prediction_step(symbol, hs, cs)
                    prediction_projection = output.mm(self.joint_prediction_w_t)
                joint_hidden = (frame_projection + prediction_projection).relu_()
                logits = torch.addmm(self.output_bias, joint_hidden, self.output_w_t)
                joint_steps += 1
                best = int(logits.argmax())
                if best == blank:
                    break
                emitted.append(best)
                symbol = best
                hs, cs = next_hs, next_cs
                prediction_projection = None
                symbols_this_frame += 1
            else:
                capped_frames += 1
        return DecodedUtterance(emitted, frames, capped_frames, joint_steps)

    def _decode_with_modules(self, encoded: torch.Tensor, max_symbols_per_step: int) -> DecodedUtterance:
        """MLPerf's ``_greedy_decode`` loop as written there: nn.LSTM and the joint module at every step."""
        prediction, joint = self.model.prediction, self.model.joint
        frames = encoded.shape[0]
        state = None
        emitted: list[int] = []
        capped_frames = 0
        joint_steps = 0
        blank = self.blank_id
        for frame in range(frames):
            frame_encoding = encoded[frame : frame + 1].unsqueeze(0)  # (1, 1, H)
            symbols_this_frame = 0
            while symbols_this_frame < max_symbols_per_step:
                last = None if not emitted else torch.tensor([[emitted[-1]]], device=encoded.device)
                output, next_state = prediction(last, state)
                logits = joint(frame_encoding, output.transpose(0, 1))[0, 0, 0]
                joint_steps += 1
                best = int(logits.argmax())
                if best == blank:
                    break
                emitted.append(best)
                state = next_state
                symbols_this_frame += 1
            else:
                capped_frames += 1
        return DecodedUtterance(emitted, frames, capped_frames, joint_steps)

    def decode_batch(
        self, encoded: torch.Tensor, lengths: torch.Tensor, max_symbols_per_step: int
    ) -> list[DecodedUtterance]:
        """Decode every utterance of an encoder output (T, B, H) up to its own length."""
        return [
            self.decode_utterance(encoded[: int(lengths[b]), b], max_symbols_per_step)
            for b in range(encoded.shape[1])
        ]


def build_rnnt(variant: str = "full", seed: int = 0, device: str | torch.device = "cpu") -> RNNT:
    """RNN-T (``variant`` "full" or "tiny") in fp32 with weights drawn after ``torch.manual_seed(seed)``.

    The model is in eval mode.  ``device="meta"`` builds it without memory (for counting parameters).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown RNN-T variant {variant!r}; accepted: {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    with torch.device(device):
        model = RNNT(VARIANTS[variant])
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _migrate_mlperf_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MLPerf checkpoint spellings -> this module's: drop ``module.`` prefixes and the feature-extractor
    buffers (``audio_preprocessor.*``, computed here in pre-processing), ``joint_net`` -> ``joint.net``."""
    migrated: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith("audio_preprocessor."):
            continue
        key = key.replace("joint_net.", "joint.net.")
        migrated[key] = value
    return migrated


def load_weights(model: RNNT, path: Path, shown_keys: int = 5) -> None:
    """Load an MLPerf-layout state dict into ``model`` as fp32; :class:`WeightsError` names the first bad keys."""
    state = _migrate_mlperf_keys(read_state_dict(path))
    expected = model.state_dict()
    problems = state_dict_problems(expected, state, shown_keys)
    if problems:
        config = model.config
        raise WeightsError(
            f"weights file {path} does not fit RNN-T (encoder {config.encoder_hidden}, prediction "
            f"{config.prediction_hidden}, joint {config.joint_hidden}, {config.num_classes} classes): "
            + "; ".join(problems)
        )
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
