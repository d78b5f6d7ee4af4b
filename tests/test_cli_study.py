"""`e2ebench study`, `e2ebench show` and `e2ebench studies` end to end (real runs on bare metal, tiny IC)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)

CLI = [sys.executable, "-c", "from e2ebench.cli import main; main()"]
RUN_KEYS = {"study_id", "scenario", "seq", "phase", "status", "e2e_s", "mean_s", "ci_halfwidth_pct", "n"}


def cli(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_plan_lists_every_scenario_with_reasons_and_runs_nothing(tmp_path):
    store = tmp_path / "never.sqlite"
    study = write(tmp_path, "plan.toml", f"""
        apps = ["ic"]
        cores = [1, 4096]
        cpu_modes = ["VNL", "PIN"]
        devices = ["CPU"]
        store = "{store}"
        scenarios = ["ic@MVM/1/PIN/CPU"]
        [repetition]
        warmup_runs = 2
        min_runs = 3
        max_runs = 10
    """)
    proc = cli("study", str(study), "--plan", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    by_key = {s["scenario"]: s for s in plan["scenarios"]}
    assert set(by_key) == {"ic@BM/1/VNL/CPU", "ic@BM/1/PIN/CPU", "ic@BM/4096/VNL/CPU", "ic@BM/4096/PIN/CPU",
                           "ic@MVM/1/PIN/CPU"}
    assert by_key["ic@BM/1/PIN/CPU"]["feasible"] and by_key["ic@BM/1/PIN/CPU"]["reason"] is None
    assert "4096 cores requested" in by_key["ic@BM/4096/VNL/CPU"]["reason"]
    assert "MVM supports only VNL/CPU" in by_key["ic@MVM/1/PIN/CPU"]["reason"]
    assert by_key["ic@MVM/1/PIN/CPU"]["origin"] == "explicit"
    assert plan["estimated_runs"] == {"min": 2 * (2 + 3), "max": 2 * (2 + 10)}
    assert not store.exists()

    human = cli("study", str(study), "--plan")
    assert human.returncode == 0
    assert "4096 cores requested" in human.stdout and "estimated runs: 10 to 24" in human.stdout


def test_without_a_file_the_quick_preset_is_used():
    proc = cli("study", "--plan", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["study"] == "quick" and plan["path"].endswith("studies/quick.toml")
    assert {s["app"] for s in plan["scenarios"]} >= {"ic", "rs"}


def test_study_file_errors_exit_2_naming_the_key(tmp_path):
    study = write(tmp_path, "typo.toml", """
        apps = ["ic"]
        [repetition]
        max_run = 3
    """)
    proc = cli("study", str(study), "--plan")
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())
    assert "repetition.max_run" in message and "did you mean 'max_runs'" in message
    bad = write(tmp_path, "bad.toml", 'apps = ["ic"]\ncpu_modes = ["PINN"]\n')
    proc = cli("study", str(bad))
    assert proc.returncode == 2 and "'PINN'" in proc.stderr
    assert cli("study", str(tmp_path / "missing.toml")).returncode == 2


def test_study_runs_resumes_and_show_prints_the_table(tmp_path):
    store = tmp_path / "results" / "s.sqlite"
    study = write(tmp_path, "tiny.toml", f"""
        name = "cli-tiny"
        store = "{store}"
        timeout_s = 120
        apps = ["ic"]
        cores = [1]
        cpu_modes = ["PIN"]
        scenarios = ["ic@BM/4096/VNL/CPU"]
        [repetition]
        warmup_runs = 1
        min_runs = 2
        max_runs = 2
        [workload.ic]
        requests = 4
        variant = "tiny"
    """)
    proc = cli("study", str(study), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(e["phase"], e["seq"]) for e in lines] == [("warmup", 0), ("measure", 0), ("measure", 1)]
    for event in lines:
        assert RUN_KEYS <= set(event) and event["status"] == "ok" and event["scenario"] == "ic@BM/1/PIN/CPU"
        assert event["e2e_s"] > 0
    assert lines[-1]["n"] == 2 and lines[-1]["mean_s"] == pytest.approx(
        (lines[1]["e2e_s"] + lines[2]["e2e_s"]) / 2)
    assert lines[-1]["scenario_status"] in ("target", "max-runs")
    study_id = lines[0]["study_id"]

    # the same command again: nothing missing, nothing run; the human output ends with the table
    again = cli("study", str(study))
    assert again.returncode == 0, again.stderr
    assert "resuming study" in again.stderr and study_id in again.stderr
    assert "BM/1/PIN/CPU" in again.stdout and "0 runs" in again.stderr

    shown = cli("show", "--store", str(store))
    assert shown.returncode == 0, shown.stderr
    assert "ic: mean E2E time" in shown.stdout and "BM/1/PIN/CPU" in shown.stdout
    assert "not run here" in shown.stdout and "4096 cores requested" in " ".join(shown.stdout.split())

    as_json = json.loads(cli("show", "--store", str(store), "--json").stdout)
    assert as_json["study"]["id"] == study_id and as_json["study"]["status"] == "complete"
    rows = {s["scenario"]: s for s in as_json["scenarios"]}
    row = rows["ic@BM/1/PIN/CPU"]
    assert row["n"] == 2 and row["warmup_runs"] == 1 and row["failed"] == 0 and row["outliers"] == 0
    assert row["mean_s"] == pytest.approx(lines[-1]["mean_s"])
    assert set(row["phases_s"]) == {"io", "pre", "infer", "post", "other"}
    assert sum(row["phases_s"].values()) == pytest.approx(row["mean_s"], rel=1e-6)
    assert rows["ic@BM/4096/VNL/CPU"]["status"] == "infeasible"

    table = list(csv.DictReader(io.StringIO(cli("show", "--store", str(store), "--csv").stdout)))
    assert [r["scenario"] for r in table] == ["ic@BM/1/PIN/CPU", "ic@BM/4096/VNL/CPU"]
    assert float(table[0]["mean_s"]) == pytest.approx(row["mean_s"])
    per_run = list(csv.DictReader(io.StringIO(cli("show", "--store", str(store), "--csv", "--runs").stdout)))
    assert sorted(r["phase"] for r in per_run) == ["measure", "measure", "warmup"]

    listed = json.loads(cli("studies", "--store", str(store), "--json").stdout)
    assert [(s["id"], s["status"], s["runs"]) for s in listed] == [(study_id, "complete", 3)]
    assert cli("show", "--store", str(store), "--study", "no-such-study").returncode == 2


def test_a_scenario_that_keeps_failing_is_abandoned(tmp_path):
    data = tmp_path / "corrupt"
    data.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        (data / f"img{i}.jpg").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    store = tmp_path / "f.sqlite"
    study = write(tmp_path, "failing.toml", f"""
        store = "{store}"
        timeout_s = 120
        apps = ["ic"]
        cores = [1]
        cpu_modes = ["PIN"]
        [repetition]
        warmup_runs = 0
        min_runs = 2
        max_consecutive_failures = 2
        [workload.ic]
        requests = 4
        variant = "tiny"
        data = "corrupt"
    """)
    proc = cli("study", str(study), "--json")
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(e["seq"], e["status"]) for e in lines] == [(0, "failed"), (1, "failed")]
    assert lines[-1]["scenario_status"] == "abandoned"
    assert "requests failed" in lines[0]["error"]
    assert "abandoned" in proc.stderr
    row = json.loads(cli("show", "--store", str(store), "--json").stdout)["scenarios"][0]
    assert row["status"] == "abandoned" and row["failed"] == 2 and row["n"] == 0
    assert "failed 2 runs in a row" in row["reason"]
    # resuming does not retry an abandoned scenario unless asked to
    assert cli("study", str(study), "--json").stdout.strip() == ""


def test_a_run_past_the_timeout_is_killed_and_stored_as_failed(tmp_path):
    store = tmp_path / "t.sqlite"
    study = write(tmp_path, "timeout.toml", f"""
        store = "{store}"
        timeout_s = 0.3          # the worker cannot even import torch in that time
        apps = ["ic"]
        cores = [1]
        cpu_modes = ["VNL"]
        [repetition]
        warmup_runs = 0
        min_runs = 1
        max_runs = 1
        max_consecutive_failures = 1
        [workload.ic]
        requests = 4
        variant = "tiny"
    """)
    proc = cli("study", str(study), "--json")
    assert proc.returncode == 1, proc.stderr
    (event,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert event["status"] == "failed" and "timed out after" in event["error"]
    assert event["scenario_status"] == "abandoned"
    runs = json.loads(cli("show", "--store", str(store), "--json", "--runs").stdout)["runs"]
    assert [(r["status"], r["phase"], r["seq"]) for r in runs] == [("failed", "measure", 0)]
    assert "timed out" in runs[0]["error"]
