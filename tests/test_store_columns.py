"""The store's schema-6 columns (what the analysis reads of each run) against the runs' JSON, on a real tiny study.

``show``, ``report`` and ``recommend`` read columns since schema 6 instead of parsing every run's result.  Their
outputs must not change: here a real study (tiny IC on BM/1, VNL and PIN, sized and framework-default thread pools,
a calibration probe per round) is summarised, analysed, advised on and reported four ways, and the outputs compared:

* from the columns written with each run (the store as ``e2ebench study`` left it), read by the analysis's SQL
  (:mod:`e2ebench.study_runs`: per-run columns and per-scenario aggregates, schema 7's covering index);
* from a copy made to look as schema 5 left it, read read-only (the columns missing: read through a migrated copy in
  memory);
* from that copy migrated (the columns filled by the migration's SQL).

And the numbers the SQL aggregates give are checked against a second source: each run's JSON parsed here and
averaged with :mod:`statistics` (:func:`test_sql_aggregates_match_the_runs_json`).
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

from conftest import as_version_5
from e2ebench import analysis, recommend
from e2ebench.report.html import build_report
from e2ebench.store import Store
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
    as_version_5(target)


def test_old_stores_give_the_outputs_the_columns_give(real_store, tmp_path):
    path, sid = real_store
    with Store(path) as store:
        assert len(store.runs(study_id=sid, phase=None, with_result=False)) == 16
        assert all(r["io_s"] is not None and r["thread_pools"] for r in store.runs(study_id=sid, metrics=True))
        columns = _outputs(store, sid, tmp_path / "columns", path)

    old = tmp_path / "v5.sqlite"
    _as_version_5(path, old)
    reader = Store.__new__(Store)                   # read-only, as it is (root would migrate a chmod'ed file)
    reader.path, reader.imported = old, []
    reader._open_read_only()
    with reader:
        assert reader.schema_version == 5 and not reader._has_metric_columns()
        read_only = _outputs(reader, sid, tmp_path / "v5", path)
    with Store(old) as store:                       # migrated: the columns filled in SQL
        assert store.schema_version == 7
        migrated = _outputs(store, sid, tmp_path / "migrated", path)
    for name in columns:
        assert read_only[name] == columns[name], name
        assert migrated[name] == columns[name], name


def test_sql_aggregates_match_the_runs_json(real_store):
    """Every per-scenario number the analysis aggregates in SQL, against the same number computed here from each
    counted run's JSON with the statistics module."""
    import statistics
    from collections import defaultdict

    path, sid = real_store
    db = sqlite3.connect(path)
    counted: dict[str, list[dict]] = defaultdict(list)
    for text, outlier in db.execute("SELECT result_json, outlier FROM runs WHERE study_id = ? AND phase = 'measure' "
                                    "AND status = 'ok' ORDER BY id", (sid,)):
        if not outlier:                              # the study keeps outliers out (its default)
            result = json.loads(text)
            counted[result["scenario"]].append(result)
    db.close()
    with Store(path) as store:
        data = analysis.load_study(store, sid)
    assert {k.scenario for k in data.scenarios} == set(counted)
    for key, stats in data.scenarios.items():
        runs = counted[key.scenario]
        assert stats.n == len(runs) >= 2
        assert stats.run_ids == sorted(stats.run_ids)
        close = lambda a, b: a == pytest.approx(b, rel=1e-9, abs=1e-12)  # noqa: E731
        assert close(stats.e2e_s.mean, statistics.fmean(r["e2e_s"] for r in runs))
        assert close(stats.e2e_runs_s.stdev, statistics.stdev(r["e2e_s"] for r in runs))
        for phase in analysis.PHASES:
            assert close(stats.phases_s[phase].mean, statistics.fmean(r["phases_s"][phase] for r in runs))
        tput = [r["throughput_sps"] for r in runs]
        assert close(stats.throughput_sps.mean, statistics.fmean(tput))
        assert close(stats.throughput_sps.stdev, statistics.stdev(tput))
        per_sample = [r["e2e_s"] / (r["completed"] if r.get("completed") is not None else r["requests"]) for r in runs]
        assert close(stats.cost_basis_s_per_sample.mean, statistics.fmean(per_sample))
        assert close(stats.cost_basis_s_per_sample.stdev, statistics.stdev(per_sample))
        assert close(stats.cold_start_s.mean, statistics.fmean(r["cold_start_s"] for r in runs))
        parts = set.intersection(*(set(r["cold_start"]) for r in runs))
        assert parts and set(stats.cold_start_parts_s) == parts
        for part in parts:
            assert close(stats.cold_start_parts_s[part].mean, statistics.fmean(r["cold_start"][part] for r in runs))
            assert close(stats.cold_start_parts_s[part].stdev, statistics.stdev(r["cold_start"][part] for r in runs))
        assert stats.requests == runs[-1]["requests"]
        assert stats.host_cores == runs[0]["platform_info"].get("host_cpus", runs[0]["environment"]["host_cpus"])
        group = data.groups[key]
        involuntary = [r["counters"]["involuntary_ctx_switches"] for r in runs]
        assert close(group.counters["involuntary_ctx_switches"].total / group.counters["involuntary_ctx_switches"].n,
                     statistics.fmean(involuntary))
        pools = [r["thread_pools"]["torch_intra_op"] for r in runs]
        assert group.pools["torch_intra_op"] == statistics.mode(pools)
