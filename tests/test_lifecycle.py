"""Nothing outlives its owner: parent-death signals, the lifeline, owner marks, housekeeping, contention.

Every test kills real processes and looks for survivors in /proc; the integration tests SIGKILL a real
`e2ebench run` while its worker runs (on bare metal and in a runc container) and check that nothing of it
keeps running and that the next run removes what it left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import E2EBENCH, ROOT, RUNC_REASON, cli_cwd, run_json
from e2ebench import housekeeping, lifecycle
from e2ebench.platforms import cgroups

SRC = str(ROOT / "src")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="reading other processes' environments needs root")


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not housekeeping.is_running(pid):
            return True
        time.sleep(0.05)
    return not housekeeping.is_running(pid)


def _python(code: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, **kw)


def _read_pid(path: Path, within_s: float = 20) -> int:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"no pid in {path}")


# ---------------------------------------------------------------------------
# owner marks


def test_owner_token_names_a_live_process_and_not_a_reused_pid():
    token = lifecycle.owner_token()
    pid, ticks = lifecycle.parse_owner(token)
    assert pid == os.getpid() and ticks > 0
    assert lifecycle.owner_alive(token)
    assert not lifecycle.owner_alive(f"{pid}:{ticks + 1}")      # same pid, another start time: a reused pid
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not lifecycle.owner_alive(f"{proc.pid}:1")            # gone
    assert lifecycle.owner_alive("garbage")                      # unattributable: never judged dead


# ---------------------------------------------------------------------------
# parent-death signal and lifeline


def test_child_started_with_die_with_parent_dies_when_its_parent_is_sigkilled(tmp_path):
    pidfile = tmp_path / "child.pid"
    parent = _python(f"""
        import subprocess, time
        from e2ebench.lifecycle import die_with_parent
        child = subprocess.Popen(["sleep", "300"], start_new_session=True, preexec_fn=die_with_parent())
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(300)
    """)
    try:
        child = _read_pid(pidfile)
        assert not _gone(child, 0.3)
        parent.kill()
        parent.wait()
        assert _gone(child, 5), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()


def test_worker_side_lifeline_exits_when_the_runner_dies_even_with_a_broken_stderr(tmp_path):
    """The watcher's stderr is a pipe whose reader dies with the holder: the exit must not need it."""
    pidfile = tmp_path / "watcher.pid"
    holder = _python(f"""
        import subprocess, sys, time
        from pathlib import Path
        from e2ebench.lifecycle import Lifeline
        with Lifeline(Path({str(tmp_path)!r})) as line:
            code = "import time; from e2ebench.lifecycle import watch_lifeline; " \\
                   f"watch_lifeline({{str(line.path)!r}}); time.sleep(300)"
            w = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, start_new_session=True)
            open({str(pidfile)!r}, "w").write(str(w.pid))
            time.sleep(300)
    """)
    try:
        watcher = _read_pid(pidfile)
        assert not _gone(watcher, 1.0), "the watcher exited while its runner lived"
        holder.kill()
        holder.wait()
        assert _gone(watcher, 5), "the worker-side lifeline did not fire"
    finally:
        holder.kill()


def test_lifeline_file_is_removed_after_a_normal_run(tmp_path):
    with lifecycle.Lifeline(tmp_path) as line:
        assert line.path.exists()
        assert lifecycle.parse_owner(line.path.read_text())[0] == os.getpid()
    assert not line.path.exists()


def test_watch_lifeline_without_the_file_watches_nothing(tmp_path, capfd):
    assert lifecycle.watch_lifeline(tmp_path / "missing") is None
    assert "not watching" in capfd.readouterr().err


# ---------------------------------------------------------------------------
# housekeeping


def _dead_token() -> str:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{proc.pid}:{lifecycle.process_start_ticks(os.getpid())}"


@needs_root
def test_kill_orphans_kills_marked_processes_of_dead_owners_only(tmp_path):
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "-m", "e2ebench.worker"],
                              env={**os.environ, lifecycle.OWNER_ENV: _dead_token()})
    adopted = subprocess.Popen(["sleep", "300"], env={**os.environ, lifecycle.OWNER_ENV: lifecycle.owner_token()})
    try:
        time.sleep(0.3)
        removed = housekeeping.kill_orphans()
        assert any(f"process {orphan.pid} (worker" in line for line in removed), removed
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert adopted.poll() is None, "a process of a live owner was killed"
    finally:
        for p in (orphan, adopted):
            p.kill()
            p.wait()


def test_stale_temp_folders_of_dead_owners_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"e2ebench-{dead.pid}-abc"
    (stale / "bundle").mkdir(parents=True)
    live = tmp_path / f"e2ebench-{os.getpid()}-def"
    live.mkdir()
    unrelated = tmp_path / "e2ebench-plain-onnx"
    unrelated.mkdir()
    removed = housekeeping.remove_temp_folders(tmp_path)
    assert removed == [f"temporary folder {stale}"]
    assert not stale.exists() and live.exists() and unrelated.exists()


@needs_root
def test_other_measurements_lists_a_live_foreign_worker_on_shared_cpus():
    owner = subprocess.Popen(["sleep", "300"])
    token = lifecycle.owner_token(owner.pid)
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "-m", "e2ebench.worker"],
                            env={**os.environ, lifecycle.OWNER_ENV: token})
    try:
        time.sleep(0.3)
        found = housekeeping.other_measurements(sorted(os.sched_getaffinity(0)))
        assert [p for p in found if p["pid"] == fake.pid and p["owner_pid"] == owner.pid and p["what"] == "worker"]
        elsewhere = [c + 1000 for c in sorted(os.sched_getaffinity(0))]
        assert not [p for p in housekeeping.other_measurements(elsewhere) if p["pid"] == fake.pid]
    finally:
        for p in (fake, owner):
            p.kill()
            p.wait()


# ---------------------------------------------------------------------------
# a real `e2ebench run`, SIGKILLed while its worker runs


def _marked_of(owner_pid: int) -> list[housekeeping.MarkedProcess]:
    return [p for p in housekeeping.marked_processes() if p.owner.split(":")[0] == str(owner_pid)]


def _kill_run_during_worker(deployment: str, store: Path, after_s: float) -> tuple[int, list[int]]:
    proc = subprocess.Popen(E2EBENCH + ["run", "ic", deployment, "--variant", "tiny", "-n", "256", "--batch-size", "2",
                                        "--store", str(store), "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cli_cwd())
    try:
        deadline = time.monotonic() + 120
        while not [p for p in _marked_of(proc.pid) if p.what == "worker"]:
            assert proc.poll() is None, "the run ended before its worker was seen"
            assert time.monotonic() < deadline, "no worker appeared"
            time.sleep(0.02)
        time.sleep(after_s)
        pids = [p.pid for p in _marked_of(proc.pid)]
        proc.kill()
        proc.wait()
        return proc.pid, pids
    finally:
        proc.kill()


@needs_root
@pytest.mark.platform
@pytest.mark.parametrize("deployment", ["BM/1/VNL/CPU",
                                        pytest.param("CN/1/PIN/CPU", marks=pytest.mark.skipif(
                                            RUNC_REASON is not None, reason=RUNC_REASON or ""))])
@pytest.mark.parametrize("after_s", [0.0, 0.8])
def test_sigkilled_run_leaves_nothing_running_and_the_next_run_cleans_up(deployment, after_s, tmp_path):
    store = tmp_path / "s.sqlite"
    owner, pids = _kill_run_during_worker(deployment, store, after_s)
    assert pids
    for pid in pids:
        assert _gone(pid, 10), f"process {pid} of the killed run still runs 10 s later"
    assert not [p for p in _marked_of(owner)], "a process of the killed run still runs"
    left = [d for d in Path(tempfile.gettempdir()).iterdir() if d.name.startswith(f"e2ebench-{owner}-")]
    code, result, err = run_json(["run", "rs", "BM/1/VNL/CPU", "--variant", "tiny", "-n", "8", "--store", str(store)])
    assert code == 0, err
    assert "removed what dead e2ebench runs left behind" in err or not left, err
    for folder in left:
        assert not folder.exists(), f"{folder} survived the next run's housekeeping"
    if deployment.startswith("CN"):
        listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout.split()
        assert not [c for c in listed if f"-{owner}-" in c], listed
    assert not [d for d in cgroups.list_children() if cgroups.owner_pid(d.name) == owner]


@needs_root
def test_a_run_next_to_another_measurement_is_flagged_contended(tmp_path):
    owner = subprocess.Popen(["sleep", "300"])
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "-m", "e2ebench.worker"],
                            env={**os.environ, lifecycle.OWNER_ENV: lifecycle.owner_token(owner.pid)})
    try:
        code, result, err = run_json(["run", "rs", "BM/1/VNL/CPU", "--variant", "tiny", "-n", "8",
                                      "--store", str(tmp_path / "s.sqlite")])
        assert code == 0, err
        assert result["contended"] is True
        entry = [c for c in result["contention"] if c["pid"] == fake.pid]
        assert entry and entry[0]["owner_pid"] == owner.pid and entry[0]["seen_at"] == ["start", "end"]
        assert any("contended" in w for w in result["warnings"])
    finally:
        for p in (fake, owner):
            p.kill()
            p.wait()
    code, result, err = run_json(["run", "rs", "BM/1/VNL/CPU", "--variant", "tiny", "-n", "8",
                                  "--store", str(tmp_path / "s.sqlite")])
    assert code == 0, err
    # no foreign measurement of ours is left; another test suite's may run on a shared machine
    assert not [c for c in result["contention"] if c["pid"] == fake.pid]
    assert result["contended"] is bool(result["contention"])
