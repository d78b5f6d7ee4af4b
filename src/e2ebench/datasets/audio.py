"""LibriSpeech-like speech data: decoding, resampling, a synthetic speech generator, espeak-ng speech, a reader.

Layout written and read (LibriSpeech's)::

    OUT/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.wav      16 kHz mono 16-bit PCM
    OUT/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt            "1000-20000-0000 THE WORDS IN CAPS" lines

Utterance *i* of a generated set belongs to speaker ``1000 + i // 8`` and chapter ``20000 + i // 4`` (four
utterances per chapter, two chapters per speaker); every utterance has its own random stream,
``numpy.random.default_rng([seed, i])``, and every speaker's voice its own, ``[seed, 1_000_000 + speaker]``,
so utterance *i* is the same whatever ``count`` is.

Two kinds of speech (``speech=``):

* ``"synthetic"`` (default; needs nothing): a speech-like signal, not words.  Each utterance is a sequence of
  syllable-like events: voiced vowels (a harmonic series over a smooth pitch contour of 90-250 Hz, shaped by
  three formant resonances that glide from the previous vowel's formants to the next, spectral tilt, an
  attack/release envelope), fricative bursts (band-passed noise: /s/, /sh/, /f/, /h/-like bands), short gaps
  between words and longer pauses between phrases, over a faint noise floor.  Formants scale with the
  speaker's pitch (shorter vocal tracts for higher voices).  The features and the encoder see realistic
  spectro-temporal structure; there is **no transcript**: no ``.trans.txt`` is written and samples have no
  reference, so no WER is computed.
* ``"espeak"``: real English speech from ``espeak-ng`` (Debian package ``espeak-ng``), sentences generated
  deterministically from the word lists below, one voice / pitch / speed per speaker.  espeak-ng writes
  22,050 Hz WAV; it is converted to 16 kHz 16-bit mono with ``sox`` when installed, else with
  :func:`resample`.  The transcript goes into the chapter's ``.trans.txt``.  Its duration is close to, not
  exactly, ``duration_s``: the word count is chosen from the speaking rate, and whole sentences are dropped
  while the speech lasts more than 5 % too long (typically 12-15.75 s for 15 s).

:func:`index_librispeech` reads real LibriSpeech folders too (``*.flac`` or ``*.wav`` anywhere below).
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SAMPLE_RATE_HZ = 16_000
AUDIO_EXTENSIONS = (".wav", ".flac")
TRANSCRIPT_SUFFIX = ".trans.txt"
UTTERANCES_PER_CHAPTER = 4
CHAPTERS_PER_SPEAKER = 2
FIRST_SPEAKER_ID = 1000
FIRST_CHAPTER_ID = 20000
SPEECH_KINDS = ("synthetic", "espeak")
RESAMPLERS = ("auto", "sox", "builtin")
ESPEAK_COMMAND = "espeak-ng"
SOX_COMMAND = "sox"


class DataSetError(ValueError):
    """The data set cannot be used or made at all (missing, empty, a tool missing)."""


class AudioDecodeError(ValueError):
    """Bytes that are not a complete, decodable audio file."""


# -- decoding ------------------------------------------------------------------------------------------------


def wav_truncation(raw: bytes) -> str | None:
    """For RIFF/WAVE bytes: a description of the truncation if the ``data`` chunk holds fewer bytes than its
    header declares (libsndfile silently returns the frames that are there), else ``None``.

    Non-WAV bytes and streamed WAVs (data size 0 or 0xFFFFFFFF) are not judged here.
    """
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= len(raw):
        chunk_id = raw[offset : offset + 4]
        (chunk_bytes,) = struct.unpack_from("<I", raw, offset + 4)
        available = len(raw) - (offset + 8)
        if chunk_id == b"data":
            if chunk_bytes in (0, 0xFFFFFFFF) or available >= chunk_bytes:
                return None
            return f"truncated WAV: data chunk declares {chunk_bytes} bytes, {available} present"
        offset += 8 + chunk_bytes + (chunk_bytes & 1)
    return None  # no data chunk: libsndfile itself refuses such a file


def decode_audio(raw: bytes) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC (anything libsndfile reads) bytes to mono float32 in [-1, 1] and its sample rate.

    Multi-channel audio is averaged to mono.  :class:`AudioDecodeError` for unreadable, truncated, empty or
    non-finite audio.
    """
    import soundfile

    truncation = wav_truncation(raw)
    if truncation:
        raise AudioDecodeError(truncation)
    try:
        samples, sample_rate_hz = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile reports every malformation as some exception; all mean "corrupt"
        message = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the bytes", str(exc))
        raise AudioDecodeError(f"not decodable audio ({type(exc).__name__}: {message})") from exc
    if samples.shape[0] == 0:
        raise AudioDecodeError("no audio frames")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AudioDecodeError("audio holds NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(sample_rate_hz)


# -- resampling ----------------------------------------------------------------------------------------------

RESAMPLE_ZERO_CROSSINGS = 16
RESAMPLE_ROLLOFF = 0.95


def resample(
    signal: np.ndarray,
    rate_in_hz: int,
    rate_out_hz: int,
    zero_crossings: int = RESAMPLE_ZERO_CROSSINGS,
    rolloff: float = RESAMPLE_ROLLOFF,
    chunk_samples: int = 16384,
) -> np.ndarray:
    """Band-limited resampling by windowed-sinc interpolation (float32 out).

    Output sample *n* sits at input time ``t = n * rate_in / rate_out`` and is the sum of the input samples
    within ``zero_crossings / cutoff`` samples of ``t`` weighted by ``cutoff * sinc(cutoff * (t - k))`` times a
    Hann window over that span, where ``cutoff = rolloff * min(1, rate_out / rate_in)`` (the low-pass edge as
    a fraction of the input Nyquist frequency; 0.95 of the lower Nyquist).  Outside the signal counts as zero.
    Output length ``round(len * rate_out / rate_in)``.  About 50 multiply-adds per output sample for
    22,050 -> 16,000 Hz.
    """
    signal = np.asarray(signal, dtype=np.float32)
    if rate_in_hz == rate_out_hz:
        return signal.copy()
    if rate_in_hz <= 0 or rate_out_hz <= 0:
        raise ValueError("sample rates must be positive")
    cutoff = rolloff * min(1.0, rate_out_hz / rate_in_hz)
    half_span = zero_crossings / cutoff
    taps = np.arange(-math.ceil(half_span) + 1, math.ceil(half_span) + 1)
    out_length = int(round(len(signal) * rate_out_hz / rate_in_hz))
    common = math.gcd(int(rate_in_hz), int(rate_out_hz))
    up, down = int(rate_out_hz) // common, int(rate_in_hz) // common

    def kernel(distance: np.ndarray) -> np.ndarray:
        window = np.where(np.abs(distance) < half_span, 0.5 + 0.5 * np.cos(np.pi * distance / half_span), 0.0)
        return (cutoff * np.sinc(cutoff * distance) * window).astype(np.float32)

    # output n sits at input time n*down/up = base + phase/up: only ``up`` distinct weight rows exist
    phase_table = kernel(np.arange(up)[:, None] / up - taps[None, :]) if up <= 4096 else None
    padded = np.concatenate([np.zeros(len(taps), np.float32), signal, np.zeros(len(taps), np.float32)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, len(taps))
    first_tap = len(taps) + int(taps[0])  # row of ``windows`` whose first element is input sample base+taps[0]
    out = np.empty(out_length, dtype=np.float32)
    for start in range(0, out_length, chunk_samples):
        positions = np.arange(start, min(start + chunk_samples, out_length), dtype=np.int64) * down
        base, phase = positions // up, positions % up
        if phase_table is not None:
            weights = phase_table[phase]
        else:
            weights = kernel((phase / up)[:, None] - taps[None, :])
        out[start : start + len(positions)] = np.einsum("ij,ij->i", windows[base + first_tap], weights)
    return out


# -- synthetic speech-like audio -------------------------------------------------------------------------------

#: Vowel formants F1, F2, F3 in Hz of an adult male voice (Peterson & Barney 1952 averages).
VOWEL_FORMANTS_HZ: dict[str, tuple[float, float, float]] = {
    "i": (270, 2290, 3010),
    "I": (390, 1990, 2550),
    "e": (530, 1840, 2480),
    "ae": (660, 1720, 2410),
    "a": (730, 1090, 2440),
    "o": (570, 840, 2410),
    "U": (440, 1020, 2240),
    "u": (300, 870, 2240),
    "V": (640, 1190, 2390),
    "er": (490, 1350, 1690),
}
FORMANT_BANDWIDTHS_HZ = (80.0, 100.0, 140.0)
#: Fricative-like noise bands: (low edge Hz, high edge Hz, relative level).
FRICATIVE_BANDS: dict[str, tuple[float, float, float]] = {
    "s": (4000.0, 7600.0, 0.30),
    "sh": (2000.0, 5500.0, 0.25),
    "f": (1200.0, 7600.0, 0.10),
    "h": (400.0, 4000.0, 0.08),
}
MIN_F0_HZ = 90.0
MAX_F0_HZ = 250.0
HARMONICS_UP_TO_HZ = 5000.0
NOISE_FLOOR_RMS = 3e-4
PEAK_LEVEL = 0.7


@dataclasses.dataclass(frozen=True)
class SpeechSegment:
    """One event of a synthetic utterance: ``kind`` "voiced", "fricative" or "pause", samples [start, end)."""

    kind: str
    start_sample: int
    end_sample: int
    detail: str = ""  # vowel or fricative name


@dataclasses.dataclass
class SyntheticUtterance:
    """A synthetic utterance: ``samples`` float32 in [-1, 1]; ``f0_hz`` the pitch at every sample (0 where
    not voiced); ``segments`` the plan it was synthesised from."""

    samples: np.ndarray
    sample_rate_hz: int
    f0_hz: np.ndarray
    segments: list[SpeechSegment]


@dataclasses.dataclass(frozen=True)
class SpeakerVoice:
    """A synthetic speaker: base pitch, formant scale (vocal-tract length), espeak-ng voice settings."""

    base_f0_hz: float
    formant_scale: float
    espeak_voice: str
    espeak_pitch: int  # espeak-ng -p, 0..99
    espeak_words_per_minute: int  # espeak-ng -s


def speaker_voice(seed: int, speaker_index: int) -> SpeakerVoice:
    rng = np.random.default_rng([seed, 1_000_000 + speaker_index])
    base_f0_hz = float(rng.uniform(100.0, 215.0))
    formant_scale = 1.0 + 0.17 * (base_f0_hz - 100.0) / 115.0
    language = ("en-us", "en")[int(rng.integers(2))]
    variant = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")[int(rng.integers(8))]
    return SpeakerVoice(
        base_f0_hz=base_f0_hz,
        formant_scale=formant_scale,
        espeak_voice=f"{language}+{variant}",
        espeak_pitch=int(rng.integers(35, 66)),
        espeak_words_per_minute=int(rng.integers(150, 186)),
    )


def _plan_segments(rng: np.random.Generator, total_samples: int, sample_rate_hz: int) -> list[SpeechSegment]:
    """Phrases of words of syllables: [fricative] vowel [fricative], gaps between words, pauses between phrases."""

    def samples(low_s: float, high_s: float) -> int:
        return int(rng.uniform(low_s, high_s) * sample_rate_hz)

    vowels = list(VOWEL_FORMANTS_HZ)
    fricatives = list(FRICATIVE_BANDS)
    segments: list[SpeechSegment] = []
    cursor = samples(0.1, 0.3)
    segments.append(SpeechSegment("pause", 0, cursor))
    end_margin = int(0.2 * sample_rate_hz)
    while cursor < total_samples - end_margin:
        for _ in range(int(rng.integers(3, 9))):  # words in the phrase
            for _ in range(int(rng.integers(1, 4))):  # syllables in the word
                for kind, probability, low_s, high_s in (
                    ("fricative", 0.4, 0.05, 0.14),
                    ("voiced", 1.0, 0.09, 0.26),
                    ("fricative", 0.2, 0.05, 0.12),
                ):
                    if rng.random() >= probability:
                        continue
                    length = samples(low_s, high_s)
                    detail = vowels[int(rng.integers(len(vowels)))] if kind == "voiced" else fricatives[
                        int(rng.integers(len(fricatives)))
                    ]
                    segments.append(SpeechSegment(kind, cursor, cursor + length, detail))
                    cursor += length
            if rng.random() < 0.5:
                gap = samples(0.02, 0.08)
                segments.append(SpeechSegment("pause", cursor, cursor + gap))
                cursor += gap
        pause = samples(0.2, 0.6)
        segments.append(SpeechSegment("pause", cursor, cursor + pause))
        cursor += pause
    # cut to the duration, leaving a trailing pause
    kept = []
    for segment in segments:
        if segment.start_sample >= total_samples - end_margin:
            break
        end = min(segment.end_sample, total_samples - end_margin)
        kept.append(dataclasses.replace(segment, end_sample=end))
    kept.append(SpeechSegment("pause", kept[-1].end_sample, total_samples))
    return kept


def _envelope(length: int, attack: int, release: int) -> np.ndarray:
    """Raised-cosine attack and release over ``length`` samples (float32)."""
    env = np.ones(length, dtype=np.float32)
    attack = min(attack, length // 2)
    release = min(release, length // 2)
    if attack:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    if release:
        env[length - release :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, release + 1) / release)
    return env


def _formant_gain(frequency_hz: np.ndarray, formants_hz: np.ndarray) -> np.ndarray:
    """Magnitude of a cascade of second-order resonators (unit gain at 0 Hz) at ``frequency_hz``.

    ``formants_hz`` has a trailing axis of 3 (F1..F3), broadcast against ``frequency_hz``.
    """
    gain = np.ones(np.broadcast_shapes(frequency_hz.shape, formants_hz.shape[:-1]), dtype=np.float32)
    for index, bandwidth_hz in enumerate(FORMANT_BANDWIDTHS_HZ):
        centre = formants_hz[..., index]
        gain *= centre**2 / np.sqrt((centre**2 - frequency_hz**2) ** 2 + (bandwidth_hz * frequency_hz) ** 2)
    return gain


def synthesize_speech_like(
    rng: np.random.Generator,
    duration_s: float,
    voice: SpeakerVoice,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
) -> SyntheticUtterance:
    """A deterministic (for ``rng``'s state) speech-like utterance; see the module docstring."""
    total = int(round(duration_s * sample_rate_hz))
    if total < sample_rate_hz // 2:
        raise ValueError("synthetic utterances must last at least 0.5 s")
    segments = _plan_segments(rng, total, sample_rate_hz)
    time_s = np.arange(total, dtype=np.float64) / sample_rate_hz
    # pitch: the speaker's base with slow intonation (period ~2.5 s) and a faster accent (~1.3 s) component
    intonation = 0.12 * np.sin(2 * np.pi * time_s / rng.uniform(2.0, 3.0) + rng.uniform(0, 2 * np.pi))
    accent = 0.05 * np.sin(2 * np.pi * time_s / rng.uniform(1.1, 1.5) + rng.uniform(0, 2 * np.pi))
    f0_all = np.clip(voice.base_f0_hz * (1.0 + intonation + accent), MIN_F0_HZ, MAX_F0_HZ)
    phase = 2 * np.pi * np.cumsum(f0_all / sample_rate_hz)
    signal = np.zeros(total, dtype=np.float32)
    f0_hz = np.zeros(total, dtype=np.float32)
    previous_formants = np.array(VOWEL_FORMANTS_HZ["V"]) * voice.formant_scale
    for segment in segments:
        start, end = segment.start_sample, segment.end_sample
        length = end - start
        if length <= 0:
            continue
        if segment.kind == "voiced":
            target = np.array(VOWEL_FORMANTS_HZ[segment.detail]) * voice.formant_scale
            glide = np.minimum(np.arange(length) / max(1, int(0.4 * length)), 1.0)[:, None]
            formants = (previous_formants + (target - previous_formants) * glide).astype(np.float32)  # (n, 3)
            previous_formants = target
            f0 = f0_all[start:end].astype(np.float32)
            harmonics = np.arange(1, int(HARMONICS_UP_TO_HZ // f0.min()) + 1, dtype=np.float32)  # (K,)
            frequencies = harmonics[:, None] * f0[None, :]  # (K, n)
            amplitude = _formant_gain(frequencies, formants[None, :, :]) / harmonics[:, None]  # tilt -6 dB/oct
            amplitude *= frequencies < HARMONICS_UP_TO_HZ
            waves = np.sin(harmonics[:, None] * phase[None, start:end].astype(np.float32))
            voiced = (amplitude * waves).sum(axis=0)
            level = rng.uniform(0.6, 1.0)
            env = _envelope(length, int(0.02 * sample_rate_hz), int(0.03 * sample_rate_hz))
            signal[start:end] += (level * env * voiced / max(1e-6, np.abs(voiced).max())).astype(np.float32)
            f0_hz[start:end] = f0
        elif segment.kind == "fricative":
            low_hz, high_hz, level = FRICATIVE_BANDS[segment.detail]
            spectrum = np.fft.rfft(rng.standard_normal(length))
            bins_hz = np.fft.rfftfreq(length, 1.0 / sample_rate_hz)
            edge_hz = 300.0
            rising = np.clip((bins_hz - low_hz) / edge_hz + 0.5, 0, 1)
            band = rising * np.clip((high_hz - bins_hz) / edge_hz + 0.5, 0, 1)
            noise = np.fft.irfft(spectrum * band, n=length)
            noise /= max(1e-9, np.sqrt(np.mean(noise**2)))
            env = _envelope(length, int(0.015 * sample_rate_hz), int(0.015 * sample_rate_hz))
            signal[start:end] += (level * env * noise).astype(np.float32)
    signal += (NOISE_FLOOR_RMS * rng.standard_normal(total)).astype(np.float32)
    signal *= PEAK_LEVEL / max(1e-9, float(np.abs(signal).max()))
    return SyntheticUtterance(signal, sample_rate_hz, f0_hz, segments)


def pcm16_wav_bytes(samples: np.ndarray, sample_rate_hz: int) -> bytes:
    """16-bit PCM mono WAV bytes of float samples in [-1, 1] (clipped)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate_hz, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# -- sentences for espeak-ng -----------------------------------------------------------------------------------

_DETERMINERS = ("the", "a", "every", "that", "this", "one", "some", "her", "his", "our")
_ADJECTIVES = (
    "old", "quiet", "bright", "small", "heavy", "careful", "distant", "warm", "narrow", "patient",
    "green", "simple", "early", "silver", "gentle", "broken", "famous", "hungry", "strange", "golden",
)
_NOUNS = (
    "captain", "river", "garden", "letter", "window", "teacher", "horse", "village", "morning", "doctor",
    "forest", "kitchen", "sailor", "mountain", "student", "evening", "market", "bridge", "farmer", "story",
    "soldier", "candle", "harbour", "neighbour", "journey", "winter", "lantern", "meadow", "stranger", "castle",
)
_VERBS = (
    "found", "carried", "watched", "opened", "followed", "painted", "remembered", "visited", "answered",
    "crossed", "noticed", "described", "protected", "admired", "repaired", "welcomed", "counted", "lifted",
)
_ADVERBS = ("slowly", "quickly", "quietly", "suddenly", "often", "never", "always", "gladly", "almost", "again")
_PREPOSITIONS = ("near", "behind", "across", "under", "beside", "beyond", "through", "along", "toward", "inside")
_NAMES = ("mary", "john", "thomas", "anne", "william", "margaret", "henry", "elizabeth", "james", "sarah")
_CLAUSES = ("i think", "she said", "he knew", "they hoped", "we heard", "you know", "it's true", "don't forget")


def _noun_phrase(rng: np.random.Generator) -> list[str]:
    words = [_DETERMINERS[int(rng.integers(len(_DETERMINERS)))]]
    if rng.random() < 0.6:
        words.append(_ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))])
    noun = _NOUNS[int(rng.integers(len(_NOUNS)))]
    words.append(noun)
    return words


def _sentence(rng: np.random.Generator) -> list[str]:
    """One sentence from a few templates; words are lower-case letters and apostrophes only."""
    template = int(rng.integers(4))
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    if template == 0:
        words = _noun_phrase(rng) + [pick(_VERBS)] + _noun_phrase(rng)
    elif template == 1:
        words = [pick(_NAMES), pick(_ADVERBS), pick(_VERBS)] + _noun_phrase(rng)
        words += [pick(_PREPOSITIONS)] + _noun_phrase(rng)
    elif template == 2:
        words = pick(_CLAUSES).split() + [pick(_NAMES) + "'s"] + [pick(_NOUNS), pick(_VERBS)] + _noun_phrase(rng)
    else:
        words = _noun_phrase(rng) + [pick(_PREPOSITIONS)] + _noun_phrase(rng) + [pick(_VERBS), "it", pick(_ADVERBS)]
    return words


def english_sentences(rng: np.random.Generator, words_wanted: int) -> list[list[str]]:
    """Sentences (lists of lower-case words) totalling at least ``words_wanted`` words."""
    sentences: list[list[str]] = []
    while sum(len(s) for s in sentences) < words_wanted:
        sentences.append(_sentence(rng))
    return sentences


def spoken_text(sentences: list[list[str]]) -> str:
    """What espeak-ng is given: capitalised sentences ending with a full stop."""
    return " ".join(" ".join(s).capitalize() + "." for s in sentences)


def transcript_text(sentences: list[list[str]]) -> str:
    """The reference transcript: the words, lower-case, no punctuation."""
    return " ".join(" ".join(s) for s in sentences)


def normalize_transcript(text: str) -> str:
    """Lower-case, keep a-z, apostrophe and single spaces (the RNN-T alphabet)."""
    text = re.sub(r"[^a-z' ]+", " ", text.lower())
    return " ".join(text.split())


# -- writing a data set --------------------------------------------------------------------------------------


def utterance_id(index: int) -> tuple[str, str, str]:
    """(speaker, chapter, utterance id) of generated utterance ``index``: ("1000", "20000", "1000-20000-0000")."""
    speaker = str(FIRST_SPEAKER_ID + index // (UTTERANCES_PER_CHAPTER * CHAPTERS_PER_SPEAKER))
    chapter = str(FIRST_CHAPTER_ID + index // UTTERANCES_PER_CHAPTER)
    return speaker, chapter, f"{speaker}-{chapter}-{index % UTTERANCES_PER_CHAPTER:04d}"


def espeak_available() -> bool:
    return shutil.which(ESPEAK_COMMAND) is not None


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise DataSetError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[:300]}")


def _espeak_utterance(
    voice: SpeakerVoice, sentences: list[list[str]], duration_s: float, out_wav: Path, resampler: str = "auto"
) -> str:
    """Speak ``sentences`` with espeak-ng into ``out_wav`` as 16 kHz mono 16-bit PCM.

    ``resampler``: "sox", "builtin" (:func:`resample`) or "auto" (sox when installed, else builtin).

    While the speech lasts more than 5 % over ``duration_s``, the last sentence is dropped and the rest spoken
    again.  Returns the transcript of what was spoken.
    """
    import soundfile

    sentences = list(sentences)
    with tempfile.TemporaryDirectory(prefix="e2ebench-espeak-") as tmp:
        raw_wav = Path(tmp) / "espeak.wav"
        while True:
            command = [
                ESPEAK_COMMAND, "-v", voice.espeak_voice, "-p", str(voice.espeak_pitch),
                "-s", str(voice.espeak_words_per_minute), "-w", str(raw_wav), spoken_text(sentences),
            ]
            _run(command, "espeak-ng")
            if not raw_wav.is_file():
                raise DataSetError("espeak-ng wrote no audio")
            info = soundfile.info(str(raw_wav))
            if info.frames / info.samplerate <= 1.05 * duration_s or len(sentences) == 1:
                break
            sentences.pop()
        sox = shutil.which(SOX_COMMAND) if resampler in ("auto", "sox") else None
        if resampler == "sox" and sox is None:
            raise DataSetError("resampler=sox but sox is not installed (Debian/Ubuntu: apt-get install sox)")
        if sox:
            _run([sox, str(raw_wav), "-r", str(SAMPLE_RATE_HZ), "-c", "1", "-b", "16", str(out_wav)], "sox")
        else:
            samples, rate_hz = soundfile.read(str(raw_wav), dtype="float32", always_2d=True)
            resampled = resample(samples.mean(axis=1), rate_hz, SAMPLE_RATE_HZ)
            out_wav.write_bytes(pcm16_wav_bytes(resampled, SAMPLE_RATE_HZ))
    return transcript_text(sentences)


def write_librispeech_like(
    out: Path,
    count: int,
    seed: int = 0,
    speech: str = "synthetic",
    duration_s: float = 15.0,
    resampler: str = "auto",
) -> Path:
    """Write ``count`` utterances in LibriSpeech layout under ``out``; returns ``out``.  See the module docstring.

    ``resampler`` (espeak speech only): "auto" (sox when installed, else :func:`resample`), "sox", "builtin".
    """
    if resampler not in RESAMPLERS:
        raise DataSetError(f"unknown resampler {resampler!r}; accepted: {', '.join(RESAMPLERS)}")
    if speech not in SPEECH_KINDS:
        raise DataSetError(f"unknown speech kind {speech!r}; accepted: {', '.join(SPEECH_KINDS)}")
    if count < 1:
        raise DataSetError("count must be at least 1")
    if not duration_s > 0:
        raise DataSetError("duration_s must be positive")
    if speech == "espeak" and not espeak_available():
        raise DataSetError(
            "espeak-ng is not installed: install it (Debian/Ubuntu: apt-get install espeak-ng) "
            "or use speech=synthetic"
        )
    out = Path(out)
    transcripts: dict[Path, list[str]] = {}
    for index in range(count):
        speaker, chapter, utt = utterance_id(index)
        folder = out / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        voice = speaker_voice(seed, index // (UTTERANCES_PER_CHAPTER * CHAPTERS_PER_SPEAKER))
        rng = np.random.default_rng([seed, index])
        wav_path = folder / f"{utt}.wav"
        if speech == "synthetic":
            utterance = synthesize_speech_like(rng, duration_s, voice)
            wav_path.write_bytes(pcm16_wav_bytes(utterance.samples, utterance.sample_rate_hz))
        else:
            words_wanted = max(1, round(duration_s * voice.espeak_words_per_minute / 60.0))
            transcript = _espeak_utterance(
                voice, english_sentences(rng, words_wanted), duration_s, wav_path, resampler
            )
            transcripts.setdefault(folder / f"{speaker}-{chapter}{TRANSCRIPT_SUFFIX}", []).append(
                f"{utt} {transcript.upper()}"
            )
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    return out


# -- reading a data set --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AudioEntry:
    """One utterance of a data set: its audio file and its normalised transcript (None when unknown)."""

    path: Path
    transcript: str | None


def read_transcripts(folder: Path) -> dict[str, str]:
    """Utterance id -> normalised transcript from every ``*.trans.txt`` below ``folder``."""
    transcripts: dict[str, str] = {}
    for path in sorted(folder.rglob(f"*{TRANSCRIPT_SUFFIX}")):
        for line in path.read_text(errors="replace").splitlines():
            utt, _, text = line.strip().partition(" ")
            if utt:
                transcripts[utt] = normalize_transcript(text)
    return transcripts


def index_librispeech(data: Path) -> list[AudioEntry]:
    """Audio files (``*.wav`` / ``*.flac``, any depth) below ``data``, sorted by path, with transcripts from
    ``*.trans.txt`` files (matched by file stem).  ``data`` may also be a single audio file."""
    data = Path(data)
    if data.is_file():
        if data.suffix.lower() not in AUDIO_EXTENSIONS:
            raise DataSetError(f"{data} is not a .wav or .flac file")
        transcripts = read_transcripts(data.parent)
        return [AudioEntry(data, transcripts.get(data.stem))]
    if not data.is_dir():
        raise DataSetError(f"speech data {data} does not exist (make one with: e2ebench data make sr DIR)")
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise DataSetError(f"speech data folder {data} holds no .wav or .flac files")
    transcripts = read_transcripts(data)
    return [AudioEntry(path, transcripts.get(path.stem)) for path in files]
