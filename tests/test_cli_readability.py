"""Readable output everywhere (issue 10, parts 4 and 5): `apps` shows every option whole, `study` prints one plain
line per finished run when its output is not a terminal, and `show`, `report` and `recommend` read the ad-hoc runs
of `e2ebench run`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli, run_json
from test_analysis import fill_store, make_result, phases, scale

from e2ebench import analysis
from e2ebench.apps import app_names, get_app_class
from e2ebench.store import ADHOC_STUDY, Store

# ---------------------------------------------------------------------------------------------
# apps


def test_apps_shows_every_option_name_whole_at_80_columns():
    proc = run_cli(["apps"], env={"COLUMNS": "80"})           # captured: not a terminal
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "…" not in out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    for name in app_names():
        cls = get_app_class(name)
        assert re.search(rf"^{name} — {re.escape(cls.title)}$", out, re.M), cls.title
        for option in cls.options:
            assert re.search(rf"(?<![\w…]){option.name}(?![\w…])", out), option.name
    assert "e2ebench apps APP" in out


def test_apps_app_shows_each_option_with_meaning_type_and_default():
    proc = run_cli(["apps", "sr"], env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())                      # the help is wrapped at spaces
    cls = get_app_class("sr")
    for option in cls.options:
        assert f"{option.name} type: {option.type_name}; default: {option.default}" in text, option.name
        assert " ".join(option.help.split()) in text
    assert "type: integer >= 1, or auto; default: auto" in text
    proc = run_cli(["apps", "nlp"], env={"COLUMNS": "80"})
    assert "vocab type: path; default: none" in " ".join(proc.stdout.split())
    proc = run_cli(["apps", "no-such-app"])
    assert proc.returncode == 2 and "unknown application" in proc.stderr


def test_apps_json_keeps_its_keys_and_adds_types():
    rc, rows, _ = run_json(["apps"])
    assert rc == 0 and [r["name"] for r in rows] == list(app_names())
    for row in rows:
        assert {"name", "title", "model", "input", "backends", "default_requests", "default_batch_size",
                "options"} <= set(row)
        for option in row["options"]:
            assert {"name", "default", "help", "type"} <= set(option)
    rc, row, _ = run_json(["apps", "rs"])
    assert rc == 0 and row == next(r for r in rows if r["name"] == "rs")
    assert {o["name"]: o["type"] for o in row["options"]}["max_rows_per_table"] == "integer"
    json.dumps(row)


# ---------------------------------------------------------------------------------------------
# study: one plain line per finished run when stderr is not a terminal

PER_RUN = re.compile(r"^\d\d:\d\d:\d\d ic@BM/1/PIN/CPU: run (\d+) of (~?\d+) \(study: run (\d+) of (~?\d+)\), "
                     r"measure #(\d+), E2E ([\d.]+) s; (.*); ETA (\S+)$")


def test_study_prints_one_plain_line_per_finished_run_when_stderr_is_not_a_terminal(tmp_path):
    study = tmp_path / "tiny.toml"
    study.write_text(f"""
name = "plain-lines"
store = "{tmp_path / 's.sqlite'}"
timeout_s = 120
apps = ["ic"]
cores = [1]
cpu_modes = ["PIN"]
[repetition]
warmup_runs = 0
min_runs = 2
max_runs = 2
[workload.ic]
requests = 4
variant = "tiny"
""")
    proc = run_cli(["study", str(study)], timeout=300)          # stderr captured: a pipe, not a terminal
    assert proc.returncode == 0, proc.stderr
    lines = [m for m in map(PER_RUN.match, proc.stderr.splitlines()) if m]
    assert len(lines) == 2, proc.stderr
    first, last = lines
    assert first.group(1) == "1" and first.group(3) == "1" and first.group(5) == "1"
    assert first.group(7) == f"mean {first.group(6)} s (n=1, no CI yet)"
    assert last.groups()[:5] == ("2", "2", "2", "2", "2")         # the last run: the totals are known
    assert re.fullmatch(r"mean [\d.]+ s ± [\d.]+ s \(±[\d.]+%, n=2\) — (max runs reached|CI target reached)",
                        last.group(7))                # (two near-equal runs can meet the 2% target first)
    assert last.group(8) == "done"
    assert "\x1b" not in proc.stderr and "━" not in proc.stderr   # no live display, no control codes
    assert "BM/1/PIN/CPU" in proc.stdout                         # the table at the end, as before
    quiet = run_cli(["study", str(study), "--fresh", "--quiet"], timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert not any(map(PER_RUN.match, quiet.stderr.splitlines())) and "run 1 of" not in quiet.stderr


# ---------------------------------------------------------------------------------------------
# ad-hoc runs (e2ebench run) in show, report and recommend

def _fill_adhoc_and_study(path: Path) -> str:
    """The same results twice: as ad-hoc runs (study ``adhoc``) and as a study's runs; returns the study id."""
    spec = {"BM/2/PIN/CPU": phases(), "CN/2/PIN/CPU": scale(phases(), 1.1)}
    with Store(path) as store:
        fill_store(store, ADHOC_STUDY, spec, runs=3, noise=0.02)
        sid = store.create_study("twin", config={"host": {"cores": 2}})
        fill_store(store, sid, spec, runs=3, noise=0.02)
    return sid


def test_show_report_and_recommend_read_a_store_of_adhoc_runs_only(tmp_path):
    path = tmp_path / "adhoc.sqlite"
    with Store(path) as store:
        fill_store(store, ADHOC_STUDY, {"BM/2/PIN/CPU": phases(), "CN/2/PIN/CPU": scale(phases(), 1.1)}, runs=3,
                   noise=0.02)
    proc = run_cli(["show", "--store", str(path)], env={"COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ad-hoc runs") and "BM/2/PIN/CPU" in proc.stdout and "CN/2/PIN/CPU" in proc.stdout
    rc, shown, err = run_json(["show", "--store", str(path)])
    assert rc == 0, err
    assert shown["study"]["id"] == ADHOC_STUDY
    assert all(s["n"] == 3 and s["mean_s"] and s["ci_halfwidth_pct"] for s in shown["scenarios"])
    rc, report, err = run_json(["report", "--store", str(path), "--out", str(tmp_path / "report")])
    assert rc == 0, err
    assert report["study"]["id"] == ADHOC_STUDY and report["runs_used"] == 6
    overheads = report["native"]["findings"]["overhead_vs_bm"]
    assert [(o["subject"]["scenario"], o["baseline"]["scenario"]) for o in overheads] == [
        ("ic@CN/2/PIN/CPU", "ic@BM/2/PIN/CPU")]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "e2ebench report — ad-hoc runs" in page and "runs made with e2ebench run" in page
    rc, advice, err = run_json(["recommend", "--store", str(path)])
    assert rc == 0, err
    assert advice["study"]["id"] == ADHOC_STUDY and advice["native"]["answers"][0]["app"] == "ic"
    proc = run_cli(["recommend", "--store", str(path)], env={"COLUMNS": "120"})
    assert proc.returncode == 0 and proc.stdout.startswith("ad-hoc runs (e2ebench run): 6 runs in 2 scenarios")


def test_adhoc_runs_get_the_statistics_of_a_study_and_the_latest_study_stays_the_default(tmp_path):
    path = tmp_path / "both.sqlite"
    sid = _fill_adhoc_and_study(path)
    rc, default, err = run_json(["show", "--store", str(path)])
    assert rc == 0 and default["study"]["id"] == sid
    assert f"--study {ADHOC_STUDY}" in err                      # says where the ad-hoc runs are
    rc, adhoc, _ = run_json(["show", "--store", str(path), "--study", ADHOC_STUDY])
    assert rc == 0 and adhoc["study"]["id"] == ADHOC_STUDY
    keys = ("scenario", "n", "mean_s", "stdev_s", "ci_halfwidth_s", "ci_halfwidth_pct", "phases_s")
    assert [{k: s[k] for k in keys} for s in adhoc["scenarios"]] == [{k: s[k] for k in keys} for s in default["scenarios"]]
    rc, report_study, _ = run_json(["recommend", "--store", str(path)])
    rc2, report_adhoc, _ = run_json(["recommend", "--store", str(path), "--study", ADHOC_STUDY])
    assert rc == rc2 == 0 and report_study["study"]["id"] == sid and report_adhoc["study"]["id"] == ADHOC_STUDY
    assert report_adhoc["native"]["answers"] == report_study["native"]["answers"]


def test_adhoc_runs_of_another_workload_are_left_out_and_said_so(tmp_path):
    path = tmp_path / "mixed.sqlite"
    with Store(path) as store:
        fill_store(store, ADHOC_STUDY, {"BM/2/PIN/CPU": phases()}, runs=3)
        small = make_result("ic", "BM/2/PIN/CPU", scale(phases(), 0.1), requests=8, started_at=1_600_000_000.0)
        store.add_run(small)                                    # older, 8 requests instead of 64
        data = analysis.load_study(store, ADHOC_STUDY)
    (stats,) = data.scenarios.values()
    assert stats.n == 3 and data.excluded == {analysis.ADHOC_OTHER_WORKLOAD: 1}
    rc, shown, _ = run_json(["show", "--store", str(path)])
    assert rc == 0 and shown["scenarios"][0]["n"] == 3
    proc = run_cli(["show", "--store", str(path)], env={"COLUMNS": "200"})
    assert "ic: counted the runs with the workload of its latest run (64 requests" in proc.stdout
    assert "1 run(s) with another workload left out" in proc.stdout


def test_real_e2ebench_run_results_are_shown_reported_and_recommended(tmp_path, ic_data):
    from e2ebench.platforms import cgroups

    if not cgroups.writable()[0]:
        pytest.skip("cgroups not writable: BM runs need their limits")
    store = str(tmp_path / "r.sqlite")
    argv = ["run", "ic", "BM/1/VNL/CPU", "--variant", "tiny", "--requests", "6", "--data", str(ic_data), "--store", store]
    proc = run_cli(argv, timeout=300)                           # stderr is a pipe: plain lines, no spinner
    assert proc.returncode == 0, proc.stderr
    assert "… measuring ic@BM/1/VNL/CPU" in proc.stderr and "… provisioning" in proc.stderr
    assert "\x1b" not in proc.stderr
    rc, result, err = run_json(argv, timeout=300)
    assert rc == 0, err
    for command in (["show"], ["recommend"], ["report", "--out", str(tmp_path / "report")]):
        proc = run_cli(command + ["--store", store], env={"COLUMNS": "120"}, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr)
        assert "no study" not in proc.stderr
    rc, shown, _ = run_json(["show", "--store", store])
    assert shown["scenarios"][0]["scenario"] == "ic@BM/1/VNL/CPU" and shown["scenarios"][0]["n"] == 2
