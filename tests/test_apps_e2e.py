"""Every application through the real worker and CLI (tiny model variants): phases, bad inputs, quality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_json
from e2ebench.apps import get_app_class
from e2ebench.platforms import cgroups

CAN_WRITE, WHY = cgroups.writable()
pytestmark = pytest.mark.skipif(not CAN_WRITE, reason=f"cgroups not writable here: {WHY}")


def _make(app: str, out: Path, count: int, **options) -> Path:
    return Path(get_app_class(app).make_data(out, count, seed=3, **options))


def _run(app: str, data: Path, store: Path, requests: int, extra: list[str] | None = None):
    return run_json(["run", app, "BM/2/PIN/CPU", "--variant", "tiny", "--requests", str(requests), "--batch-size", "2",
                     "--data", str(data), "--store", str(store)] + (extra or []), timeout=900)


def _check_phases(result: dict) -> None:
    phases = result["phases_s"]
    for phase in ("io", "pre", "infer", "post"):
        assert phases[phase] > 0, (phase, phases)
    window = result["window_wall_s"]           # the outside clock around the same window
    assert result["e2e_s"] - 1e-6 <= window < result["e2e_s"] + 0.002 + 0.001 * window


@pytest.mark.parametrize("app", ["sr", "nlp", "rs"])
def test_app_runs_end_to_end_with_every_phase_timed(app, tmp_path):
    data = _make(app, tmp_path / "data", 3)
    rc, result, err = _run(app, data, tmp_path / "r.sqlite", 4)
    assert rc == 0, err
    assert result["app"] == app and result["completed"] == 4
    assert result["effective_cpus"] == list(cgroups.plan_limits(2, "PIN", sorted(result["effective_cpus"])).cpus)
    _check_phases(result)
    # inference-only mode of the same app: the DNN alone
    rc, result, err = _run(app, data, tmp_path / "r.sqlite", 4, ["--mode", "inference-only"])
    assert rc == 0, err
    assert result["mode"] == "inference-only" and result["completed"] == 4
    window = result["window_wall_s"]           # the DNN's laps against the outside clock
    assert result["e2e_s"] - 1e-6 <= window < result["e2e_s"] + 0.002 + 0.001 * window
    assert result["laps_cover_window"] is True


def test_truncated_wav_is_a_per_request_error(tmp_path):
    data = _make("sr", tmp_path / "data", 3)
    victim = sorted(data.rglob("*.wav"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    rc, result, err = _run("sr", data, tmp_path / "r.sqlite", 3, ["--max-error-fraction", "0.5"])
    assert rc == 0, err
    assert result["errors"]["count"] >= 1 and result["completed"] == 3 - result["errors"]["count"]
    assert any(victim.name in e["where"] for e in result["errors"]["samples"])


def test_malformed_squad_entry_is_a_per_request_error(tmp_path):
    data = _make("nlp", tmp_path / "data", 4)
    path = data / "dev-v1.1.json" if data.is_dir() else data
    doc = json.loads(path.read_text())
    paragraph = doc["data"][0]["paragraphs"][0]
    bad_id = paragraph["qas"][0]["id"]
    paragraph["context"] = 12345  # not a string
    path.write_text(json.dumps(doc))
    rc, result, err = _run("nlp", data, tmp_path / "r.sqlite", 4, ["--max-error-fraction", "0.75"])
    assert rc == 0, err
    assert result["errors"]["count"] >= 1
    assert any(bad_id in e["where"] or bad_id in e["message"] for e in result["errors"]["samples"]), result["errors"]
    assert any(path.name in e["where"] for e in result["errors"]["samples"])


def test_malformed_criteo_rows_name_the_line(tmp_path):
    data = _make("rs", tmp_path / "data", 3)
    path = data / "train.txt" if data.is_dir() else data
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = "0\t1\t2\n"                                         # missing columns (line 5)
    fields = lines[200].rstrip("\n").split("\t")
    fields[20] = "nothex!"                                        # non-hex categorical (line 201)
    lines[200] = "\t".join(fields) + "\n"
    path.write_text("".join(lines))
    rc, result, err = _run("rs", data, tmp_path / "r.sqlite", 3, ["--max-error-fraction", "0.9"])
    assert rc == 0, err
    assert result["errors"]["count"] == 2
    text = json.dumps(result["errors"]["samples"])
    assert ":5" in text or "line 5" in text, text
    assert "201" in text, text
    assert result["completed"] == 1


def test_real_speech_from_espeak_reports_wer(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install-platforms installs it)")
    data = _make("sr", tmp_path / "data", 2, speech="espeak")
    assert list(data.rglob("*.trans.txt"))
    rc, result, err = _run("sr", data, tmp_path / "r.sqlite", 2)
    assert rc == 0, err
    assert "wer" in {k.lower() for k in result["quality"]}, result["quality"]
    _check_phases(result)
