"""Speech recognition (sr): RNN-T model, audio features, data generators, the App contract.

Fast: the tiny RNN-T everywhere except the parameter count (the full model is built on the "meta" device).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from e2ebench.apps import create_app
from e2ebench.apps.base import AppError, SampleError, SampleRef
from e2ebench.apps.speech_recognition import (
    FEATURES,
    FeatureExtractor,
    SpeechRecognition,
    mel_centres_hz,
    mel_filterbank,
    word_edit_distance,
    word_error_rate,
)
from e2ebench.datasets import audio as audio_data
from e2ebench.models.rnnt import (
    ALPHABET,
    BLANK_ID,
    RNNT_PARAMETER_COUNT,
    RNNT_TINY_PARAMETER_COUNT,
    GreedyTransducerDecoder,
    build_rnnt,
    count_parameters,
)

ESPEAK_MISSING = shutil.which("espeak-ng") is None
SAMPLE_RATE_HZ = 16_000


def wav_bytes(samples: np.ndarray, rate_hz: int = SAMPLE_RATE_HZ, fmt: str = "WAV") -> bytes:
    """16-bit PCM bytes; the integers are made here so that WAV and FLAC hold the very same samples."""
    buffer = io.BytesIO()
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16)
    soundfile.write(buffer, pcm, rate_hz, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def tone(seconds: float, rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1870 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_app() -> SpeechRecognition:
    app = create_app("sr", variant="tiny")
    app.load("cpu", 1, None)
    return app


# -- model ---------------------------------------------------------------------------------------------------


def test_full_model_parameter_count_matches_mlperf():
    """MLPerf Inference layout: 45,323,037 parameters, MLPerf's published "45.3M"."""
    full = build_rnnt("full", device="meta")
    assert count_parameters(full) == RNNT_PARAMETER_COUNT == 45_323_037
    assert round(RNNT_PARAMETER_COUNT / 1e6, 1) == 45.3
    shapes = {name: tuple(p.shape) for name, p in full.named_parameters()}
    assert shapes["encoder.pre_rnn.lstm.weight_ih_l0"] == (4 * 1024, 240)
    assert shapes["encoder.post_rnn.lstm.weight_ih_l0"] == (4 * 1024, 2048)  # after time stacking x2
    assert shapes["encoder.post_rnn.lstm.weight_hh_l2"] == (4 * 1024, 1024)  # 3 post-net layers
    assert shapes["prediction.embed.weight"] == (28, 320)
    assert shapes["prediction.dec_rnn.lstm.weight_hh_l1"] == (4 * 320, 320)
    assert shapes["joint.net.0.weight"] == (512, 1024 + 320)
    assert shapes["joint.net.3.weight"] == (29, 512)
    assert count_parameters(build_rnnt("tiny", device="meta")) == RNNT_TINY_PARAMETER_COUNT


def test_seeded_weights_are_deterministic_and_lstm_forget_bias_is_mlperfs():
    a, b, c = build_rnnt("tiny", seed=3), build_rnnt("tiny", seed=3), build_rnnt("tiny", seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.joint.net[0].weight, c.joint.net[0].weight)
    hidden = a.config.encoder_hidden
    bias_ih = a.encoder.pre_rnn.lstm.bias_ih_l0
    assert torch.all(bias_ih[hidden : 2 * hidden] == 1.0)
    assert torch.all(a.encoder.pre_rnn.lstm.bias_hh_l0[hidden : 2 * hidden] == 0.0)
    assert a.joint.net[0].weight.dtype == torch.float32


def _decisive_tiny_model(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """The tiny RNN-T with its output layer scaled x100 (logits far apart, no near-ties) and the blank bias
    set so that about half the frames start with a symbol; plus an encoder output of 30 frames."""
    model = build_rnnt("tiny", seed=seed)
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(60, 1, 240, generator=generator)
    with torch.no_grad():
        model.joint.net[3].weight.mul_(100)
        model.joint.net[3].bias.mul_(100)
        encoded, _ = model.encoder(features, torch.tensor([60]))
        start_output, _ = model.prediction(None)
        logits = model.joint(encoded.transpose(0, 1), start_output.transpose(0, 1))[0, :, 0]
        margins = (logits[:, BLANK_ID] - logits[:, :BLANK_ID].max(dim=1).values).sort().values
        middle = len(margins) // 2
        model.joint.net[3].bias[BLANK_ID] -= float(margins[middle - 1] + margins[middle]) / 2
        encoded, _ = model.encoder(features, torch.tensor([60]))
    return model, encoded[:, 0]


def test_hand_written_cell_decodes_like_mlperf_loop_and_respects_the_bound():
    model, encoded = _decisive_tiny_model()
    with torch.inference_mode():
        for bound in (1, 3):
            fast = GreedyTransducerDecoder(model, "cell").decode_utterance(encoded, bound)
            reference = GreedyTransducerDecoder(model, "nn.LSTM").decode_utterance(encoded, bound)
            assert fast.symbol_ids == reference.symbol_ids
            assert (fast.capped_frames, fast.joint_steps) == (reference.capped_frames, reference.joint_steps)
            assert fast.encoder_frames == 30
            assert 0 < fast.capped_frames < fast.encoder_frames  # both blanks and emissions happened
            assert len(fast.symbol_ids) <= bound * fast.encoder_frames
            assert all(0 <= s < BLANK_ID for s in fast.symbol_ids)
            blank_frames = fast.encoder_frames - fast.capped_frames
            assert fast.joint_steps == len(fast.symbol_ids) + blank_frames


def test_batched_inference_matches_single_utterances(tiny_app, tmp_path):
    model, _ = _decisive_tiny_model()
    weights = tmp_path / "decisive.pt"
    torch.save(model.state_dict(), weights)
    app = create_app("sr", variant="tiny", options={"max_symbols_per_step": 2})
    app.load("cpu", 1, weights)
    assert app.weights_loaded and app.max_symbols_per_step == 2
    rng = np.random.default_rng(0)
    refs = [SampleRef(i, f"mem-{i}.wav") for i in range(2)]
    signals = [tone(3.0) + 0.05 * rng.standard_normal(48000).astype(np.float32), tone(1.7)]
    items = [app.preprocess(ref, wav_bytes(s)) for ref, s in zip(refs, signals)]
    batch = app.collate(items)
    assert batch.features.shape == (100, 2, 240) and batch.lengths.tolist() == [100, 57]
    together = app.postprocess(app.infer(batch), batch)
    alone = [app.postprocess(app.infer(app.collate([item])), None)[0] for item in items]
    assert together == alone
    assert [a["encoder_frames"] for a in together] == [50, 29]
    assert all(set(a["transcript"]) <= set(ALPHABET) for a in together)
    assert any(a["symbols"] > 0 for a in together)


# -- weights -------------------------------------------------------------------------------------------------


def test_weights_load_from_pt_and_safetensors_and_mismatch_is_an_app_error(tmp_path):
    from safetensors.torch import save_file

    source = build_rnnt("tiny", seed=11)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "tiny.safetensors"))
    # MLPerf's checkpoint spelling: wrapped in "state_dict", "joint_net.*", feature-extractor buffers beside
    mlperf_style = {k.replace("joint.net.", "joint_net."): v for k, v in state.items()}
    mlperf_style["audio_preprocessor.featurizer.fb"] = torch.zeros(1, 80, 257)
    torch.save({"state_dict": mlperf_style, "epoch": 100}, tmp_path / "mlperf_style.pt")
    for name in ("tiny.safetensors", "mlperf_style.pt"):
        app = create_app("sr", variant="tiny")
        app.load("cpu", 1, tmp_path / name)
        assert app.weights_loaded
        assert app.max_symbols_per_step == 30  # "auto" with loaded weights: MLPerf's bound
        assert torch.equal(app.model.joint.net[0].weight, source.joint.net[0].weight)

    broken = dict(state)
    del broken["prediction.embed.weight"]
    broken["joint.net.3.bias"] = torch.zeros(7)
    torch.save(broken, tmp_path / "broken.pt")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    for name, expected in (("broken.pt", "missing keys: prediction.embed.weight"), ("garbage.pth", "cannot read")):
        app = create_app("sr", variant="tiny")
        with pytest.raises(AppError, match=expected):
            app.load("cpu", 1, tmp_path / name)
    with pytest.raises(AppError, match="wrong shapes: joint.net.3.bias"):
        create_app("sr", variant="tiny").load("cpu", 1, tmp_path / "broken.pt")
    with pytest.raises(AppError, match="does not exist"):
        create_app("sr", variant="tiny").load("cpu", 1, tmp_path / "absent.pt")


def test_options_are_validated():
    assert create_app("sr", options={"max_symbols_per_step": "5"}).requested_max_symbols == 5
    assert create_app("sr").requested_max_symbols is None
    for bad in ("0", "many", 2.5):
        with pytest.raises(AppError, match="max_symbols_per_step"):
            create_app("sr", options={"max_symbols_per_step": bad})
    with pytest.raises(AppError, match="unknown option"):
        create_app("sr", options={"beam": 4})
    assert SpeechRecognition.name == "sr" and SpeechRecognition.input_kind == "audio"
    assert {o.name for o in SpeechRecognition.options} == {"seed", "max_symbols_per_step"}


# -- features ------------------------------------------------------------------------------------------------


def test_mel_filterbank_sanity():
    bank = mel_filterbank()
    assert bank.shape == (80, 257) and bank.dtype == np.float32
    assert np.all(bank >= 0)
    assert np.all(bank.max(axis=1) > 0)  # every filter covers at least one FFT bin
    centres_hz = mel_centres_hz()
    assert np.all(np.diff(centres_hz) > 0) and 0 < centres_hz[0] < 60 and 7000 < centres_hz[-1] < 8000
    assert np.all(np.diff(bank.argmax(axis=1)) >= 0)  # peaks move up with the centres
    # Slaney scale: equal spacing (~37 Hz) below 1 kHz, growing above
    assert np.ptp(np.diff(centres_hz[centres_hz < 900])) < 1e-6
    # Slaney normalisation: every triangle has unit area in Hz (exact for filters spanning many bins)
    bin_hz = SAMPLE_RATE_HZ / 2 / 256
    areas = bank.sum(axis=1) * bin_hz
    assert np.allclose(areas[40:], 1.0, atol=0.03)


def test_power_spectrum_is_torch_stft_centered_hann():
    extractor = FeatureExtractor()
    signal = np.random.default_rng(2).standard_normal(16_037).astype(np.float32)
    emphasized = extractor.preemphasize(signal)
    assert emphasized[0] == signal[0] and np.isclose(emphasized[5], signal[5] - 0.97 * signal[4])
    ours = extractor.power_spectrum(emphasized)
    reference = torch.stft(
        torch.from_numpy(emphasized),
        n_fft=512,
        hop_length=160,
        win_length=320,
        window=torch.hann_window(320, periodic=False),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).abs().pow(2).T.numpy()
    assert ours.shape == reference.shape == (1 + 16_037 // 160, 257)
    assert np.allclose(ours, reference, rtol=1e-3, atol=1e-3 * reference.max())


@pytest.mark.parametrize(
    "samples, frames", [(15 * SAMPLE_RATE_HZ, 500), (16_000, 34), (16_161, 34), (16_321, 35), (512, 2)]
)
def test_feature_shape_for_known_lengths(samples, frames):
    signal = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.1
    features = FeatureExtractor()(signal)
    assert FEATURES.frames_for(samples) == frames
    assert features.shape == (frames, 240) and features.dtype == np.float32
    assert np.all(np.isfinite(features))
    if frames > 10:
        assert np.allclose(features.mean(axis=0), 0.0, atol=1e-3)
        assert np.allclose(features.std(axis=0, ddof=1), 1.0, atol=1e-2)


def test_preprocess_reads_wav_flac_and_other_rates(tiny_app, tmp_path):
    signal = tone(2.0)
    ref = SampleRef(0, str(tmp_path / "a.wav"))
    from_wav = tiny_app.preprocess(ref, wav_bytes(signal))
    from_flac = tiny_app.preprocess(ref, wav_bytes(signal, fmt="FLAC"))
    assert from_wav.features.shape == (67, 240) and np.array_equal(from_wav.features, from_flac.features)
    resampled = tiny_app.preprocess(ref, wav_bytes(tone(2.0, 22_050), 22_050))
    assert resampled.source_rate_hz == 22_050 and resampled.features.shape == (67, 240)
    stereo = tiny_app.preprocess(ref, wav_bytes(np.stack([signal, signal], axis=1)))
    assert np.allclose(stereo.features, from_wav.features, atol=1e-4)


def test_resampler_keeps_a_tone_and_removes_aliases():
    t = np.arange(22_050) / 22_050
    kept = audio_data.resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 22_050, 16_000)
    assert len(kept) == 16_000
    expected = np.sin(2 * np.pi * 1000 * np.arange(16_000) / 16_000)
    assert np.max(np.abs(kept[200:-200] - expected[200:-200])) < 1e-3
    above_nyquist = audio_data.resample(np.sin(2 * np.pi * 10_000 * t).astype(np.float32), 22_050, 16_000)
    assert np.sqrt(np.mean(above_nyquist[200:-200] ** 2)) < 0.01  # 10 kHz cannot exist at 16 kHz


def test_truncated_garbage_and_short_audio_are_sample_errors(tiny_app, tmp_path):
    good = wav_bytes(tone(1.0))
    flac = wav_bytes(tone(1.0), fmt="FLAC")
    cases = {
        "truncated.wav": (good[: len(good) // 2], "truncated WAV"),
        "header-only.wav": (good[:40], "not decodable"),
        "garbage.wav": (np.random.default_rng(0).bytes(5000), "not decodable"),
        "truncated.flac": (flac[: len(flac) // 2], "not decodable"),
        "empty.wav": (wav_bytes(np.zeros(0, np.float32)), "no audio frames"),
        "short.wav": (wav_bytes(tone(0.01)), "too short"),
    }
    for name, (raw, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        ref = SampleRef(0, str(path))
        with pytest.raises(SampleError) as caught:
            tiny_app.preprocess(ref, tiny_app.read(ref))
        assert caught.value.where == str(path) and str(path) in str(caught.value)
        assert message in caught.value.message


# -- word error rate -----------------------------------------------------------------------------------------


def test_word_error_rate_on_known_strings():
    assert word_edit_distance("the cat sat on the mat".split(), "the cat sat on the mat".split()) == 0
    assert word_edit_distance("the cat sat on the mat".split(), "the cat sit on mat".split()) == 2
    assert word_edit_distance([], "a b".split()) == 2
    assert word_edit_distance("a b c".split(), []) == 3
    assert word_edit_distance("a b c d".split(), "x a b d e".split()) == 3  # insert x, delete c, insert e
    wer, edits, words = word_error_rate(
        ["the cat sat on the mat", "hello world"], ["the cat sit on mat", "HELLO world"]
    )
    assert (edits, words) == (2, 8) and wer == pytest.approx(0.25)


def test_quality_reports_wer_only_with_references(tiny_app):
    refs = [SampleRef(0, "a.wav", label="hello world"), SampleRef(1, "b.wav", label=None)]
    answers = [{"transcript": "hello word"}, {"transcript": "anything"}]
    quality = tiny_app.quality(answers, refs)
    assert quality["wer"] == pytest.approx(0.5) and quality["wer_utterances"] == 1
    assert quality["wer_note"] == "meaningless with random weights"
    assert tiny_app.quality(answers[1:], refs[1:]) == {}


# -- data ----------------------------------------------------------------------------------------------------


def test_synthetic_data_is_deterministic_speech_like_and_librispeech_shaped(tmp_path):
    first = SpeechRecognition.make_data(tmp_path / "a", 2, seed=7)
    second = SpeechRecognition.make_data(tmp_path / "b", 2, seed=7)
    other = SpeechRecognition.make_data(tmp_path / "c", 1, seed=8)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert [str(p) for p in files] == ["1000/20000/1000-20000-0000.wav", "1000/20000/1000-20000-0001.wav"]
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes()
    assert (first / files[0]).read_bytes() != (other / files[0]).read_bytes()
    assert not list(first.rglob("*.trans.txt"))  # synthetic speech has no transcript

    info = soundfile.info(str(first / files[0]))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16_000, 1, "PCM_16", 15 * 16_000)
    samples, _ = soundfile.read(str(first / files[0]), dtype="float32")
    assert np.sqrt(np.mean(samples**2)) > 0.03  # not silence

    # the file is the generator's output (same random streams), whose plan tells where the voiced parts are
    utterance = audio_data.synthesize_speech_like(np.random.default_rng([7, 0]), 15.0, audio_data.speaker_voice(7, 0))
    assert np.max(np.abs(utterance.samples - samples)) < 1.0 / 32768 + 1e-6
    kinds = {s.kind for s in utterance.segments}
    assert kinds == {"voiced", "fricative", "pause"}
    voiced_f0 = utterance.f0_hz[utterance.f0_hz > 0]
    assert 90 <= voiced_f0.min() and voiced_f0.max() <= 250 and np.ptp(voiced_f0) > 10  # a varying pitch
    # voiced parts: energy concentrated at the harmonics k*f0, not between them
    window = 1024
    t = np.arange(window) / SAMPLE_RATE_HZ
    ratios = []
    for segment in [s for s in utterance.segments if s.kind == "voiced" and s.end_sample - s.start_sample > 1800][:8]:
        middle = (segment.start_sample + segment.end_sample) // 2
        piece = samples[middle - window // 2 : middle + window // 2] * np.hanning(window)
        f0 = utterance.f0_hz[middle]

        def power(frequency_hz: float) -> float:
            return float(np.abs(np.sum(piece * np.exp(-2j * np.pi * frequency_hz * t))) ** 2)

        at_harmonics = np.mean([power(k * f0) for k in range(1, 7)])
        between = np.mean([power((k + 0.5) * f0) for k in range(1, 7)])
        ratios.append(at_harmonics / between)
    assert len(ratios) >= 5 and np.median(ratios) > 100
    # fricatives: noise above 2 kHz; voiced parts: most energy below 2 kHz
    def high_fraction(segment) -> float:
        spectrum = np.abs(np.fft.rfft(samples[segment.start_sample : segment.end_sample])) ** 2
        frequencies = np.fft.rfftfreq(segment.end_sample - segment.start_sample, 1 / SAMPLE_RATE_HZ)
        return float(spectrum[frequencies > 2000].sum() / spectrum.sum())

    fricatives = [s for s in utterance.segments if s.kind == "fricative" and s.detail in ("s", "sh")]
    voiced = [s for s in utterance.segments if s.kind == "voiced"]
    assert np.median([high_fraction(s) for s in fricatives]) > 0.8
    assert np.median([high_fraction(s) for s in voiced]) < 0.3

    app = create_app("sr", variant="tiny")
    refs = app.samples(first)
    assert [Path(r.path).name for r in refs] == ["1000-20000-0000.wav", "1000-20000-0001.wav"]
    assert all(r.label is None for r in refs)


def test_samples_errors_and_real_layout(tmp_path):
    app = create_app("sr", variant="tiny")
    with pytest.raises(AppError, match="does not exist"):
        app.samples(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AppError, match="no .wav or .flac"):
        app.samples(tmp_path / "empty")
    chapter = tmp_path / "libri" / "84" / "121123"
    chapter.mkdir(parents=True)
    for utt in ("0001", "0000"):
        (chapter / f"84-121123-{utt}.flac").write_bytes(wav_bytes(tone(0.5), fmt="FLAC"))
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
    )
    refs = app.samples(tmp_path / "libri")
    assert [Path(r.path).name for r in refs] == ["84-121123-0000.flac", "84-121123-0001.flac"]
    assert [r.label for r in refs] == ["go do you hear", "but in less than five minutes"]
    with pytest.raises(AppError, match="unknown data option"):
        SpeechRecognition.make_data(tmp_path / "x", 1, voice="m3")
    with pytest.raises(AppError, match="unknown speech kind"):
        SpeechRecognition.make_data(tmp_path / "x", 1, speech="opera")


def test_espeak_missing_is_an_app_error_naming_the_package(tmp_path):
    """Run in a child process whose PATH holds no espeak-ng (nothing in this process is altered)."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    code = (
        "from pathlib import Path\n"
        "from e2ebench.apps.base import AppError\n"
        "from e2ebench.apps.speech_recognition import SpeechRecognition\n"
        "try:\n"
        f"    SpeechRecognition.make_data(Path({str(tmp_path / 'out')!r}), 1, speech='espeak')\n"
        "except AppError as exc:\n"
        "    print('APPERROR', exc)\n"
    )
    env = dict(os.environ, PATH=str(empty_bin), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "APPERROR" in done.stdout, done.stderr
    assert "install" in done.stdout and "espeak-ng" in done.stdout


@pytest.mark.skipif(ESPEAK_MISSING, reason="espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
def test_espeak_speech_end_to_end_with_tiny_model(tiny_app, tmp_path):
    data = SpeechRecognition.make_data(tmp_path / "speech", 2, seed=1, speech="espeak")
    transcripts = list(data.rglob("*.trans.txt"))
    assert [p.name for p in transcripts] == ["1000-20000.trans.txt"]
    lines = transcripts[0].read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["1000-20000-0000", "1000-20000-0001"]
    assert all(line.split(" ", 1)[1].isupper() for line in lines)

    refs = tiny_app.samples(data)
    assert len(refs) == 2 and all(r.label and r.label == r.label.lower() for r in refs)
    items = []
    for ref in refs:
        info = soundfile.info(ref.path)
        assert info.samplerate == 16_000 and info.channels == 1 and 5.0 < info.duration <= 15.75
        items.append(tiny_app.preprocess(ref, tiny_app.read(ref)))
    batch = tiny_app.collate(items)
    answers = tiny_app.postprocess(tiny_app.infer(batch), batch)
    assert len(answers) == 2 and all(isinstance(a["transcript"], str) for a in answers)
    quality = tiny_app.quality(answers, refs)
    assert isinstance(quality["wer"], float) and quality["wer"] >= 0.0
    assert quality["wer_reference_words"] == sum(len(r.label.split()) for r in refs)
    assert quality["wer_note"] == "meaningless with random weights"

    # the same speech through the built-in resampler instead of sox: same words, same 16 kHz format
    builtin = SpeechRecognition.make_data(tmp_path / "builtin", 1, seed=1, speech="espeak", resampler="builtin")
    (wav,) = builtin.rglob("*.wav")
    assert soundfile.info(str(wav)).samplerate == 16_000
    assert (builtin / "1000/20000/1000-20000.trans.txt").read_text().splitlines()[0] == lines[0]
