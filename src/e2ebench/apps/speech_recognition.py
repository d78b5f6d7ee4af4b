"""Speech recognition (SR): MLPerf Inference's RNN-T on LibriSpeech-style audio.

Per request:

* **io** (``read``): the WAV/FLAC file's bytes.
* **pre-processing** (``preprocess`` + ``collate``): decode with libsndfile (``soundfile``) from memory, mix to
  mono, resample to 16 kHz when the file has another rate (windowed-sinc interpolation,
  :func:`e2ebench.datasets.audio.resample`, counted in pre-processing), then MLPerf's log-mel features
  (``FilterbankFeatures`` of the reference, re-implemented with numpy): pre-emphasis 0.97; STFT with a
  320-sample (20 ms) symmetric Hann window centred in a 512-point FFT, hop 160 samples (10 ms), the signal
  reflect-padded by 256 samples at both ends (``torch.stft(center=True)``); power spectrum plus MLPerf's
  deterministic dither (1e-5 squared); 80 mel filterbanks (Slaney mel scale with Slaney area normalisation,
  0-8 kHz, i.e. ``librosa.filters.mel``'s defaults that MLPerf uses, computed here with numpy); natural log
  of (energy + 1e-20); frame splicing (each frame concatenated with the next two, zero past the end, then
  every third frame kept: 240 features at 30 ms); per-feature normalisation (mean and unbiased standard
  deviation over the utterance's valid frames, + 1e-5).  MLPerf splices before normalising; so do we.  A
  15 s utterance gives 500 frames.  ``collate`` zero-pads to the batch's longest utterance, keeps lengths.
* **inference** (``infer``): the RNN-T encoder over the padded batch (time-major, ``nn.LSTM``), then MLPerf's
  greedy transducer decoding of each utterance up to its own length
  (:class:`e2ebench.models.rnnt.GreedyTransducerDecoder`, hand-written LSTM cell for the per-step
  prediction network).
* **post-processing** (``postprocess``): symbol ids -> characters (space, a-z, apostrophe) -> transcript.

``quality`` computes the word error rate (word-level edit distance summed over utterances / reference words)
when the samples have transcripts (``.trans.txt``, e.g. ``speech=espeak`` data or real LibriSpeech).  With
seeded random weights (no ``weights`` given) it is labelled meaningless.

``max_symbols_per_step`` bounds the symbols emitted per encoder frame.  MLPerf uses 30.  With random weights
the blank practically never wins, so every frame emits the bound: 30 would mean 7,500 prediction steps per
15 s utterance, about 30 times what a trained model does on real speech (roughly one character per 60 ms
encoder frame: ~225 symbols).  The default ``"auto"`` therefore takes 30 (MLPerf) when weights are loaded and
1 with random weights, which makes the random-weight decoding work (one prediction step and one joint step
per frame) match a trained model's on real speech; any integer >= 1 can be given instead.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from e2ebench.apps.base import App, AppError, AppOption, SampleError, SampleRef
from e2ebench.datasets import audio as audio_data

#: MLPerf's bound on symbols per encoder frame, used when weights are loaded and the option is "auto".
MLPERF_MAX_SYMBOLS_PER_STEP = 30
#: Bound used with random weights when the option is "auto" (see the module docstring).
RANDOM_WEIGHTS_MAX_SYMBOLS_PER_STEP = 1
RANDOM_WEIGHTS_NOTE = "meaningless with random weights"


# -- features ------------------------------------------------------------------------------------------------


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """MLPerf RNN-T's feature extraction (``rnnt.toml`` ``[input_eval]``).

    ``window_samples`` / ``hop_samples``: STFT window (20 ms) and hop (10 ms) at ``sample_rate_hz``;
    ``fft_points``: FFT size (257 frequency bins); ``mel_bands``: filterbanks; ``preemphasis``: coefficient of
    ``x[n] - a x[n-1]``; ``dither``: MLPerf's deterministic dither (its square is added to every power bin);
    ``log_epsilon``: added before the log; ``frame_splicing``: frames stacked (and the subsampling factor);
    ``normalize_epsilon``: added to each feature's standard deviation.
    """

    sample_rate_hz: int = 16_000
    window_samples: int = 320
    hop_samples: int = 160
    fft_points: int = 512
    mel_bands: int = 80
    lowest_hz: float = 0.0
    highest_hz: float = 8000.0
    preemphasis: float = 0.97
    dither: float = 1e-5
    log_epsilon: float = 1e-20
    frame_splicing: int = 3
    normalize_epsilon: float = 1e-5

    @property
    def features(self) -> int:
        return self.mel_bands * self.frame_splicing

    @property
    def min_samples(self) -> int:
        """Shortest audio accepted: one FFT length (gives at least two spliced frames)."""
        return self.fft_points

    def frames_for(self, samples: int) -> int:
        """Feature frames (after splicing) of an utterance of ``samples`` samples: ceil(ceil(n/hop)/splice)."""
        stft_frames = _ceil_div(samples, self.hop_samples)
        return _ceil_div(stft_frames, self.frame_splicing)


FEATURES = FeatureConfig()


def hz_to_mel_slaney(frequency_hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz (3 mels per 200 Hz),
    logarithmic above (27 mels per factor 6.4)."""
    frequency_hz = np.asarray(frequency_hz, dtype=np.float64)
    linear = frequency_hz * 3.0 / 200.0
    log_region = 15.0 + np.log(np.maximum(frequency_hz, 1e-10) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(frequency_hz >= 1000.0, log_region, linear)


def mel_to_hz_slaney(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * 200.0 / 3.0
    log_region = 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0)
    return np.where(mel >= 15.0, log_region, linear)


def mel_filterbank(config: FeatureConfig = FEATURES) -> np.ndarray:
    """(mel_bands, fft_points // 2 + 1) float32 triangular filters, as ``librosa.filters.mel(sr, n_fft, n_mels,
    fmin, fmax)`` with its defaults (Slaney mel scale, Slaney normalisation: each triangle divided by its
    width in Hz / 2, so every filter has the same area).

    The band edges are ``mel_bands + 2`` points equally spaced in mel between ``lowest_hz`` and
    ``highest_hz``; filter *m* rises from edge *m* to its centre, edge *m+1*, and falls to edge *m+2*.
    """
    bins_hz = np.linspace(0.0, config.sample_rate_hz / 2.0, config.fft_points // 2 + 1)
    edges_hz = mel_to_hz_slaney(
        np.linspace(hz_to_mel_slaney(config.lowest_hz), hz_to_mel_slaney(config.highest_hz), config.mel_bands + 2)
    )
    widths_hz = np.diff(edges_hz)
    ramps = edges_hz[:, None] - bins_hz[None, :]
    rising = -ramps[:-2] / widths_hz[:-1, None]
    falling = ramps[2:] / widths_hz[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_centres_hz(config: FeatureConfig = FEATURES) -> np.ndarray:
    """Centre frequency of every mel filter (Hz)."""
    edges_hz = mel_to_hz_slaney(
        np.linspace(hz_to_mel_slaney(config.lowest_hz), hz_to_mel_slaney(config.highest_hz), config.mel_bands + 2)
    )
    return edges_hz[1:-1]


def stft_window(config: FeatureConfig = FEATURES) -> np.ndarray:
    """The ``fft_points``-long analysis window: a symmetric Hann of ``window_samples`` centred, zeros around
    (``torch.hann_window(320, periodic=False)`` padded as ``torch.stft`` pads it)."""
    window = np.zeros(config.fft_points, dtype=np.float32)
    left = (config.fft_points - config.window_samples) // 2
    window[left : left + config.window_samples] = np.hanning(config.window_samples)
    return window


class FeatureExtractor:
    """Log-mel features with frame splicing and per-feature normalisation (see the module docstring)."""

    def __init__(self, config: FeatureConfig = FEATURES):
        self.config = config
        self.filterbank_t = np.ascontiguousarray(mel_filterbank(config).T)  # (257, 80)
        self.window = stft_window(config)

    def preemphasize(self, signal: np.ndarray) -> np.ndarray:
        """``y[0] = x[0]``, ``y[n] = x[n] - preemphasis * x[n-1]`` (float32)."""
        signal = np.asarray(signal, dtype=np.float32)
        emphasized = np.empty(len(signal), dtype=np.float32)
        emphasized[:1] = signal[:1]
        np.subtract(signal[1:], np.float32(self.config.preemphasis) * signal[:-1], out=emphasized[1:])
        return emphasized

    def power_spectrum(self, emphasized: np.ndarray) -> np.ndarray:
        """|STFT|^2 as ``torch.stft(center=True, pad_mode="reflect")``: (1 + n // hop, fft_points // 2 + 1)."""
        config = self.config
        padded = np.pad(emphasized, config.fft_points // 2, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, config.fft_points)[:: config.hop_samples]
        spectrum = np.fft.rfft(frames * self.window, axis=1)
        return (spectrum.real**2 + spectrum.imag**2).astype(np.float32, copy=False)

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        """``signal`` float32 mono at ``sample_rate_hz`` -> (frames, mel_bands * frame_splicing) float32."""
        config = self.config
        samples = len(signal)
        if samples < config.min_samples:
            raise ValueError(
                f"audio too short: {samples} samples, at least {config.min_samples} "
                f"({1000 * config.min_samples / config.sample_rate_hz:.0f} ms) needed"
            )
        power = self.power_spectrum(self.preemphasize(signal))
        power += np.float32(config.dither**2)
        mel = power @ self.filterbank_t  # (stft frames, 80)
        log_mel = np.log(mel + np.float32(config.log_epsilon))
        # frame splicing: frame t followed by t+1 .. t+splice-1 (zeros past the end), then every splice-th frame
        splice = config.frame_splicing
        stft_frames, bands = log_mel.shape
        kept = _ceil_div(stft_frames, splice)
        spliced = np.zeros((kept, bands * splice), dtype=np.float32)
        for offset in range(splice):
            source = log_mel[offset::splice]
            spliced[: len(source), offset * bands : (offset + 1) * bands] = source
        valid = config.frames_for(samples)
        spliced = spliced[:valid]
        mean = spliced.mean(axis=0)
        std = spliced.std(axis=0, ddof=1) + np.float32(config.normalize_epsilon)
        return ((spliced - mean) / std).astype(np.float32, copy=False)


# -- word error rate -----------------------------------------------------------------------------------------


def word_edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance on words: the fewest substitutions + deletions + insertions turning
    ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (ref_word != hyp_word),  # substitution or match
            )
        previous = current
    return previous[-1]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[float, int, int]:
    """Corpus WER: (sum of word edit distances / sum of reference words, edits, reference words).

    Texts are split on whitespace after lower-casing; an empty reference set gives WER 0 if there are no
    edits, else the edit count (each hypothesis word an insertion over one notional word).
    """
    edits = 0
    words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref_words = reference.lower().split()
        edits += word_edit_distance(ref_words, hypothesis.lower().split())
        words += len(ref_words)
    return (edits / words if words else float(edits)), edits, words


# -- the application -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class SpeechItem:
    """One pre-processed request: ``features`` (frames, 240) float32; ``duration_s`` of the decoded audio;
    ``source_rate_hz`` the file's sample rate (resampled to 16 kHz when different)."""

    features: np.ndarray
    duration_s: float
    source_rate_hz: int


@dataclasses.dataclass
class SpeechBatch:
    """Collated requests: ``features`` (T_max, B, 240) float32 torch tensor zero-padded past each utterance's
    ``lengths[b]`` (int64 tensor of valid frames)."""

    features: Any
    lengths: Any
    durations_s: list[float]


@dataclasses.dataclass
class SpeechOutput:
    """``utterances``: one :class:`~e2ebench.models.rnnt.DecodedUtterance` per request of the batch."""

    utterances: list


def _parse_max_symbols(value: Any) -> int | None:
    """The option's value -> a bound >= 1, or None for "auto"."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        bound = int(value)
    except (TypeError, ValueError):
        raise AppError(f"sr: max_symbols_per_step must be 'auto' or an integer >= 1, not {value!r}") from None
    if bound < 1 or bound != float(value):
        raise AppError(f"sr: max_symbols_per_step must be 'auto' or an integer >= 1, not {value!r}")
    return bound


class SpeechRecognition(App):
    """MLPerf RNN-T speech recognition: WAV/FLAC -> log-mel features -> RNN-T greedy decoding -> transcript."""

    name = "sr"
    title = "Speech recognition (RNN-T)"
    input_kind = "audio"
    model_name = "RNN-T"
    default_requests = 16
    default_batch_size = 4
    options = (
        AppOption("seed", 0, "seed of the random weights (torch.manual_seed) when no weights file is given"),
        AppOption(
            "max_symbols_per_step",
            "auto",
            "bound on symbols emitted per encoder frame by greedy decoding: an integer >= 1, or 'auto' = "
            f"{MLPERF_MAX_SYMBOLS_PER_STEP} (MLPerf) with loaded weights, {RANDOM_WEIGHTS_MAX_SYMBOLS_PER_STEP} "
            "with random weights (which otherwise emit the bound at every frame)",
            value_type="integer >= 1, or auto",
        ),
    )

    def __init__(self, variant: str = "full", backend: str = "torch", options: dict | None = None):
        super().__init__(variant=variant, backend=backend, options=options)
        try:
            self.seed = int(self.opts["seed"])
        except (TypeError, ValueError):
            raise AppError(f"sr: seed must be an integer, not {self.opts['seed']!r}") from None
        self.requested_max_symbols = _parse_max_symbols(self.opts["max_symbols_per_step"])
        self.max_symbols_per_step: int | None = None
        self.weights_loaded = False
        self.model = None
        self.decoder = None
        self.features = FeatureExtractor()
        self._blas_limits = None
        self._blas_threads: int | None = None

    # -- life cycle -----------------------------------------------------------------------------------------
    def load(self, device: str, threads: int | None, weights: Path | None) -> None:
        import torch
        from threadpoolctl import threadpool_limits

        from e2ebench.models.rnnt import GreedyTransducerDecoder, WeightsError, build_rnnt, load_weights

        self.device = device
        self.threads = threads
        # numpy's BLAS does the mel-filterbank product in pre-processing: give it the deployment's threads
        if threads is not None:         # None: numpy's BLAS keeps its own pool size
            self._blas_limits = threadpool_limits(limits=threads, user_api="blas")
        self._blas_threads = threads
        model = build_rnnt(self.variant, seed=self.seed)
        if weights is not None:
            try:
                load_weights(model, Path(weights))
            except WeightsError as exc:
                raise AppError(f"sr: {exc}") from exc
            self.weights_loaded = True
        try:
            model = model.to(device=torch.device(device), dtype=torch.float32).eval()
        except (RuntimeError, AssertionError) as exc:
            raise AppError(f"sr: cannot move the model to device {device!r}: {exc}") from exc
        self.model = model
        self.decoder = GreedyTransducerDecoder(model)
        if self.requested_max_symbols is not None:
            self.max_symbols_per_step = self.requested_max_symbols
        elif self.weights_loaded:
            self.max_symbols_per_step = MLPERF_MAX_SYMBOLS_PER_STEP
        else:
            self.max_symbols_per_step = RANDOM_WEIGHTS_MAX_SYMBOLS_PER_STEP

    def samples(self, data: Path) -> Sequence[SampleRef]:
        try:
            entries = audio_data.index_librispeech(Path(data))
        except audio_data.DataSetError as exc:
            raise AppError(f"sr: {exc}") from exc
        return [SampleRef(index=i, path=str(e.path), label=e.transcript) for i, e in enumerate(entries)]

    # -- the timed phases -----------------------------------------------------------------------------------
    def preprocess(self, ref: SampleRef, raw: bytes) -> SpeechItem:
        try:
            signal, rate_hz = audio_data.decode_audio(raw)
        except audio_data.AudioDecodeError as exc:
            raise SampleError(ref.where, str(exc)) from exc
        target_hz = self.features.config.sample_rate_hz
        if rate_hz != target_hz:
            signal = audio_data.resample(signal, rate_hz, target_hz)
        try:
            features = self.features(signal)
        except ValueError as exc:
            raise SampleError(ref.where, str(exc)) from exc
        return SpeechItem(features=features, duration_s=len(signal) / target_hz, source_rate_hz=rate_hz)

    def collate(self, items: list[SpeechItem]) -> SpeechBatch:
        import torch

        if not items:
            raise AppError("sr: cannot collate an empty batch")
        lengths = [item.features.shape[0] for item in items]
        padded = np.zeros((max(lengths), len(items), self.features.config.features), dtype=np.float32)
        for b, item in enumerate(items):
            padded[: lengths[b], b] = item.features
        return SpeechBatch(
            features=torch.from_numpy(padded),
            lengths=torch.tensor(lengths, dtype=torch.int64),
            durations_s=[item.duration_s for item in items],
        )

    def infer(self, batch: SpeechBatch) -> SpeechOutput:
        import torch

        if self.model is None or self.decoder is None:
            raise AppError("sr: infer() before load()")
        with torch.inference_mode():
            features = batch.features.to(self.device)
            encoded, encoded_lengths = self.model.encoder(features, batch.lengths.to(self.device))
            utterances = self.decoder.decode_batch(encoded, encoded_lengths.cpu(), self.max_symbols_per_step)
        return SpeechOutput(utterances=utterances)

    def postprocess(self, output: SpeechOutput, batch: SpeechBatch) -> list[dict]:
        from e2ebench.models.rnnt import ALPHABET

        answers = []
        for utterance in output.utterances:
            answers.append(
                {
                    "transcript": "".join(ALPHABET[i] for i in utterance.symbol_ids),
                    "symbols": len(utterance.symbol_ids),
                    "encoder_frames": utterance.encoder_frames,
                    "capped_frames": utterance.capped_frames,
                }
            )
        return answers

    # -- reporting ------------------------------------------------------------------------------------------
    def quality(self, answers: list[Any], refs: list[SampleRef]) -> dict:
        references, hypotheses = [], []
        for answer, ref in zip(answers, refs):
            if ref.label is None or not isinstance(answer, dict) or "transcript" not in answer:
                continue
            references.append(str(ref.label))
            hypotheses.append(str(answer["transcript"]))
        if not references:
            return {}
        wer, edits, words = word_error_rate(references, hypotheses)
        result: dict[str, Any] = {
            "wer": wer,
            "wer_word_edits": edits,
            "wer_reference_words": words,
            "wer_utterances": len(references),
        }
        if not self.weights_loaded:
            result["wer_note"] = RANDOM_WEIGHTS_NOTE
        return result

    def library_threads(self) -> dict[str, int]:
        threads = super().library_threads()
        if self._blas_threads is not None:
            threads["numpy_blas"] = self._blas_threads
        return threads

    def describe(self) -> dict:
        described = super().describe()
        described["weights_loaded"] = self.weights_loaded
        if self.max_symbols_per_step is not None:
            described["effective_max_symbols_per_step"] = self.max_symbols_per_step
        return described

    # -- data -----------------------------------------------------------------------------------------------
    @classmethod
    def make_data(cls, out: Path, count: int, seed: int = 0, **options: Any) -> Path:
        """LibriSpeech-layout 16 kHz WAV utterances; options ``speech`` ("synthetic" | "espeak"),
        ``duration_s`` (15.0) and, for espeak, ``resampler`` ("auto" | "sox" | "builtin").  Synthetic speech
        has no transcripts (no ``.trans.txt``, no WER)."""
        known = ("speech", "duration_s", "resampler")
        unknown = set(options) - set(known)
        if unknown:
            raise AppError(f"sr: unknown data option(s) {', '.join(sorted(unknown))}; accepted: {', '.join(known)}")
        speech = str(options.get("speech", "synthetic")).strip().lower()
        resampler = str(options.get("resampler", "auto")).strip().lower()
        try:
            duration_s = float(options.get("duration_s", 15.0))
        except (TypeError, ValueError):
            raise AppError(f"sr: duration_s must be a number, not {options.get('duration_s')!r}") from None
        if not math.isfinite(duration_s):
            raise AppError("sr: duration_s must be finite")
        try:
            return audio_data.write_librispeech_like(
                Path(out), int(count), seed=int(seed), speech=speech, duration_s=duration_s, resampler=resampler
            )
        except audio_data.DataSetError as exc:
            raise AppError(f"sr: {exc}") from exc
