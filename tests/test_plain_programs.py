"""The plain programs of ``benchmarks/plain`` (ic, sr, nlp, rs): each runs as its own process on a tiny model and
tiny generated data, prints one JSON line with the counts and phase sums; sr, nlp and rs give the answers the
e2ebench app gives on the same work list (same items, same batches)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "benchmarks" / "plain"
REQUESTS = 5        # with BATCH_SIZE 2: two full batches and a partial one
BATCH_SIZE = 2
DATA = {            # app -> (count, make_data options)
    "ic": (4, {}),
    "sr": (4, {"duration_s": 2.0}),
    "nlp": (4, {}),
    "rs": (2, {}),  # 2 x 128 rows, read as 8 requests of 32 rows (work list options below)
}
OPTIONS = {"rs": {"rows_per_request": 32, "top_k": 3}}


def _work_list(tmp_path: Path, app: str) -> Path:
    from e2ebench.apps import get_app_class

    sys.path.insert(0, str(PLAIN))
    try:
        import worklist
    finally:
        sys.path.remove(str(PLAIN))
    count, data_options = DATA[app]
    data = get_app_class(app).make_data(tmp_path / f"{app}-data", count, seed=1, **data_options)
    return worklist.write_work_list(tmp_path / f"{app}.json", app, Path(data), REQUESTS, BATCH_SIZE,
                                    variant="tiny", options=OPTIONS.get(app))


def _run_plain(app: str, work: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(PLAIN / f"{app}.py"), "--work-list", str(work), "--batch-size",
                           str(BATCH_SIZE), "--threads", "1", "--variant", "tiny", *extra],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout[-3000:]
    return json.loads(lines[0])


def _check_result(result: dict, app: str, work: Path) -> None:
    items = json.loads(work.read_text())["items"]
    assert result["program"] == "plain" and result["app"] == app
    assert result["requests"] == len(items) == REQUESTS
    assert result["batch_size"] == BATCH_SIZE and result["threads"] == 1
    assert result["wall_s"] > 0 and result["warmup_s"] > 0
    assert math.isclose(result["throughput_sps"], result["requests"] / result["wall_s"])
    assert set(result["phases_s"]) == {"io", "pre", "infer", "post"}
    assert all(value >= 0 for value in result["phases_s"].values())
    assert result["phases_s"]["infer"] > 0
    assert sum(result["phases_s"].values()) <= result["wall_s"]


def _app_answers(work_path: Path) -> list:
    """What the e2ebench app answers for the work list's items in the same batches (its warm-up batch first)."""
    from e2ebench.apps import create_app

    work = json.loads(work_path.read_text())
    app = create_app(work["app"], variant=work["variant"], options=work["options"])
    app.load("cpu", 1, None)
    refs = {ref.index: ref for ref in app.samples(Path(work["data"]))}

    def batch_answers(items: list[dict]) -> list:
        batch = app.collate([app.preprocess(refs[i["index"]], app.read(refs[i["index"]])) for i in items])
        return app.postprocess(app.infer(batch), batch)

    batch_answers(work["warmup"])
    answers = []
    for start in range(0, len(work["items"]), BATCH_SIZE):
        answers.extend(batch_answers(work["items"][start:start + BATCH_SIZE]))
    return answers


def _same(plain, app, path="answer") -> None:
    """Equal JSON values, floats to 1e-4 relative (the two run in different processes)."""
    if isinstance(app, float) or isinstance(plain, float):
        assert plain == pytest.approx(app, rel=1e-4, abs=1e-6), path
    elif isinstance(app, dict):
        assert isinstance(plain, dict) and plain.keys() == app.keys(), path
        for key in app:
            _same(plain[key], app[key], f"{path}.{key}")
    elif isinstance(app, (list, tuple)):
        assert isinstance(plain, list) and len(plain) == len(app), path
        for k, (p, a) in enumerate(zip(plain, app)):
            _same(p, a, f"{path}[{k}]")
    else:
        assert plain == app, path


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_plain_ic(tmp_path, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    work = _work_list(tmp_path, "ic")
    result = _run_plain("ic", work, "--backend", backend, "--onnx-dir", str(tmp_path / "onnx"))
    _check_result(result, "ic", work)
    assert result["backend"] == backend


@pytest.mark.parametrize("app", ["sr", "nlp", "rs"])
def test_plain_program_does_the_apps_work(tmp_path, app):
    work = _work_list(tmp_path, app)
    result = _run_plain(app, work, "--print-answers")
    _check_result(result, app, work)
    assert result["variant"] == "tiny"
    _same(result["answers"], _app_answers(work))
    if app == "rs":
        assert result["rows_per_request"] == 32 and result["rows"] == REQUESTS * 32
        assert all(len(answer["top_k"]) == 3 for answer in result["answers"])
    if app == "nlp":
        assert result["windows"] == sum(answer["windows"] for answer in result["answers"]) >= REQUESTS


def test_plain_program_refuses_another_variant(tmp_path):
    work = _work_list(tmp_path, "rs")
    proc = subprocess.run([sys.executable, str(PLAIN / "rs.py"), "--work-list", str(work), "--variant", "full"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "work list was made for tiny" in proc.stderr
