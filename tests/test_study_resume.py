"""A study survives Ctrl-C and SIGKILL: resuming runs only what is missing, nothing is lost or duplicated,
and no cgroup or worker process is left behind.

Real runs on bare metal (ic, tiny variant, 4 requests), real signals, a real SQLite store.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from e2ebench.platforms import cgroups

pytestmark = pytest.mark.timeout(300)

CLI = [sys.executable, "-c", "from e2ebench.cli import main; main()"]
SCENARIOS = ("ic@BM/1/VNL/CPU", "ic@BM/1/PIN/CPU")
WARMUP_RUNS, RUNS = 1, 3


def write_study(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent(f"""
        name = "resume-test"
        seed = 3
        store = "{tmp_path / 'results' / 'store.sqlite'}"
        timeout_s = 120
        apps = ["ic"]
        platforms = ["BM"]
        cores = [1]
        cpu_modes = ["VNL", "PIN"]
        devices = ["CPU"]

        [repetition]
        warmup_runs = {WARMUP_RUNS}
        min_runs = {RUNS}
        max_runs = {RUNS}

        [workload.ic]
        requests = 4
        variant = "tiny"
    """))
    return path


def stored_runs(store: Path) -> list[tuple]:
    if not store.exists():
        return []
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT id, study_id, scenario, phase, seq, status FROM runs ORDER BY id").fetchall()
    except sqlite3.OperationalError:        # schema not created yet
        return []
    finally:
        db.close()


def our_workers(marker: str) -> list[psutil.Process]:
    """Worker processes started for this test (their spec files live under our TMPDIR)."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "e2ebench.worker" in cmdline and any(marker in part for part in cmdline):
            out.append(proc)
    return out


def cgroups_of(pids: set[int]) -> list[Path]:
    return [d for d in cgroups.list_children() if d.name.split("-")[1:2] and d.name.split("-")[1] in {str(p) for p in pids}]


def start_study(study: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["study", str(study), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_mid_run(proc: subprocess.Popen, store: Path, marker: str, min_stored: int, deadline_s: float = 150) -> int:
    """Wait until at least ``min_stored`` runs are stored and a worker of ``proc`` is running; return the count."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"study ended early: {proc.communicate()}"
        stored = len(stored_runs(store))
        if stored >= min_stored and any(w.ppid() == proc.pid for w in our_workers(marker)):
            return stored
        time.sleep(0.05)
    raise AssertionError("the study never reached the expected point")


def test_interrupt_and_kill_then_resume(tmp_path):
    study = write_study(tmp_path)
    store = tmp_path / "results" / "store.sqlite"
    marker = str(tmp_path / "tmp")
    os.makedirs(marker)
    env = {**os.environ, "TMPDIR": marker}     # spec files (hence worker command lines) carry this path

    # 1. Ctrl-C in the middle of a run: exit 130, the run is discarded, nothing is left behind.
    first = start_study(study, env, "--quiet")
    stored_before = wait_mid_run(first, store, marker, min_stored=1)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert "resume with: e2ebench study" in " ".join(err.split()) and str(study) in err
    assert len(stored_runs(store)) in (stored_before, stored_before + 1)   # the run in flight may have just finished
    assert our_workers(marker) == []                                        # its worker was killed
    assert cgroups_of({first.pid}) == []                                    # its cgroup was removed

    # 2. SIGKILL in the middle of a run: the worker and its cgroup are orphaned ...
    second = start_study(study, env, "--quiet")
    stored_before = wait_mid_run(second, store, marker, min_stored=len(stored_runs(store)) + 2)
    second.kill()
    second.communicate(timeout=30)
    stored_at_kill = len(stored_runs(store))
    assert stored_at_kill < len(SCENARIOS) * (WARMUP_RUNS + RUNS)

    # 3. ... until the next start removes them and runs only what is missing.
    third = subprocess.run(CLI + ["study", str(study), "--json"], capture_output=True, text=True, env=env, timeout=240)
    assert third.returncode == 0, third.stderr
    lines = [json.loads(line) for line in third.stdout.splitlines() if line.strip()]
    runs = stored_runs(store)
    assert len(lines) == len(runs) - stored_at_kill                         # only the missing runs were made

    # exactly the expected runs, no duplicates, all under one study id
    assert len({r[1] for r in runs}) == 1
    assert {line["study_id"] for line in lines} == {runs[0][1]}
    keys = Counter((r[2], r[3], r[4]) for r in runs)
    expected = {(s, "warmup", i) for s in SCENARIOS for i in range(WARMUP_RUNS)} | \
               {(s, "measure", i) for s in SCENARIOS for i in range(RUNS)}
    assert set(keys) == expected and set(keys.values()) == {1}
    assert all(r[5] == "ok" for r in runs)
    db = sqlite3.connect(str(store))
    assert db.execute("SELECT COUNT(*), MIN(status) FROM studies").fetchone() == (1, "complete")
    db.close()

    # interleaved: at every point the two scenarios have had about as many runs
    done = Counter()
    for r in runs:
        done[r[2]] += 1
        assert abs(done[SCENARIOS[0]] - done[SCENARIOS[1]]) <= 2

    # nothing orphaned: no worker, no cgroup of any of the three study processes
    deadline = time.monotonic() + 20
    while our_workers(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert our_workers(marker) == []
    assert cgroups_of({first.pid, second.pid}) == []

    # 4. Running it once more changes nothing.
    again = subprocess.run(CLI + ["study", str(study), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == ""
    assert stored_runs(store) == runs
