"""The store's schema-6 columns (what the analysis reads of each run) against the runs' JSON, on a real tiny study.

``show``, ``report`` and ``recommend`` read columns since schema 6 instead of parsing every run's result.  Their
outputs must not change: here a real study (tiny IC on BM/1, VNL and PIN, sized and framework-default thread pools,
a calibration probe per round) is summarised, analysed, advised on and reported four ways, and the outputs compared:

* from the columns written with each run (the store as ``e2ebench study`` left it);
* from the runs' JSON, read with the expressions the code used on it before schema 6 (kept here, below);
* from a copy made to look as schema 5 left it, read read-only (the columns missing: the JSON is read);
* from that copy migrated (the columns filled by the migration's SQL).
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from e2ebench import analysis, recommend
from e2ebench.report.html import build_report
from e2ebench.result import RunResult
from e2ebench.store import METRIC_COLUMNS, Store
from e2ebench.study_runner import summarize_study

pytestmark = pytest.mark.timeout(900)

CLI = [sys.executable, "-c", "from e2ebench.cli import main; main()"]


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("columns")
    path = folder / "s.sqlite"
    spec = folder / "tiny.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "columns"
        store = "{path}"
        timeout_s = 120
        apps = ["ic"]
        cores = [1]
        cpu_modes = ["VNL", "PIN"]
        thread_policies = ["sized", "framework-default"]
        [repetition]
        warmup_runs = 1
        min_runs = 3
        max_runs = 3
        [workload.ic]
        requests = 2
        variant = "tiny"
    """))
    proc = subprocess.run(CLI + ["study", str(spec), "--quiet"], capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr
    with Store(path) as store:
        sid = store.latest_study()["id"]
    return path, sid


def _old_metrics(result: dict) -> dict:
    """What the analysis read of a run's JSON before schema 6, with the expressions it used then."""
    phases = result.get("phases_s") or {}
    run = RunResult.from_dict(result)
    return {
        **{f"{p}_s": phases.get(p) for p in ("io", "pre", "infer", "post", "other")},
        "throughput_sps": result.get("throughput_sps"), "completed": result.get("completed"),
        "requests": result.get("requests"), "loadgen_p99_ms": (result.get("loadgen_latency_ms") or {}).get("p99"),
        "cold_start_s": result.get("cold_start_s"), "cold_start": result.get("cold_start"),
        **{name: (result.get("counters") or {}).get(name) for name in analysis.THREAD_COUNTERS},
        "thread_pools": result.get("thread_pools") or result.get("threads") or {},
        "platform_host_cpus": (run.platform_info or {}).get("host_cpus"),
        "env_host_cpus": (run.environment or {}).get("host_cpus"),
    }


def _outputs(store: Store, sid: str, out: Path, original: Path) -> dict:
    """Everything show, recommend and report make of the study, as comparable text."""
    data = analysis.load_study(store, sid)
    findings = analysis.analyse(data)
    report = build_report(store, sid, out)
    html = re.sub(r"\d{4}-\d\d-\d\dT[\d:]+\+00:00(?= from)", "", report.html_path.read_text())  # generated at
    html = html.replace(str(store.path), "STORE").replace(str(original), "STORE")   # (the study names its store)
    summary = {k: v for k, v in report.summary.items() if k not in ("html", "figures")}
    return {
        "show": json.dumps([s.as_dict() for s in summarize_study(store, sid)], sort_keys=True, default=str),
        "findings": json.dumps(findings.to_dict(), sort_keys=True, default=str),
        "recommend": json.dumps(recommend.recommend(findings).to_dict(), sort_keys=True, default=str),
        "report": json.dumps(summary, sort_keys=True, default=str),
        "html": html,
        "stats": json.dumps({str(k): v.to_dict() for k, v in data.scenarios.items()}, sort_keys=True, default=str),
    }


def _as_version_5(source: Path, target: Path) -> None:
    src = sqlite3.connect(source)
    src.execute("VACUUM INTO ?", (str(target),))
    src.close()
    db = sqlite3.connect(target)
    for column in ("metrics_version", *dict.fromkeys(c for c, _, _ in METRIC_COLUMNS)):
        db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    db.execute("UPDATE meta SET value='5' WHERE key='schema_version'")
    db.execute("DELETE FROM meta WHERE key='metrics_filled'")
    db.commit()
    db.close()


def test_columns_give_the_outputs_the_json_gave(real_store, tmp_path, monkeypatch):
    path, sid = real_store
    with Store(path) as store:
        assert len(store.runs(study_id=sid, phase=None, with_result=False)) == 16
        assert all(r["io_s"] is not None and r["thread_pools"] for r in store.runs(study_id=sid, metrics=True))
        columns = _outputs(store, sid, tmp_path / "columns", path)

    real_runs = Store.runs

    def json_runs(self, *args, with_result=True, metrics=False, **kw):
        rows = real_runs(self, *args, with_result=with_result or metrics, **kw)
        if metrics:
            for row in rows:
                row.update(_old_metrics(row["result"]))
        return rows

    with monkeypatch.context() as patch:
        patch.setattr(Store, "runs", json_runs)
        with Store(path) as store:
            from_json = _outputs(store, sid, tmp_path / "json", path)
    for name in columns:
        assert columns[name] == from_json[name], name

    old = tmp_path / "v5.sqlite"
    _as_version_5(path, old)
    reader = Store.__new__(Store)                   # read-only, as it is (root would migrate a chmod'ed file)
    reader.path, reader.imported = old, []
    reader._open_read_only()
    with reader:
        assert reader.schema_version == 5 and not reader._has_metric_columns()
        read_only = _outputs(reader, sid, tmp_path / "v5", path)
    with Store(old) as store:                       # migrated: the columns filled in SQL
        assert store.schema_version == 6
        migrated = _outputs(store, sid, tmp_path / "migrated", path)
    for name in columns:
        assert read_only[name] == columns[name], name
        assert migrated[name] == columns[name], name
