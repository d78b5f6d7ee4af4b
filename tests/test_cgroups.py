"""cgroup planning (pure) and real cgroups on this host (v1 here, v2 where the host has it)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2ebench import measure
from e2ebench.platforms import cgroups

HOST_CPUS = sorted(os.sched_getaffinity(0))
CAN_WRITE, WHY = cgroups.writable()
needs_cgroups = pytest.mark.skipif(not CAN_WRITE, reason=f"cgroups not writable here: {WHY}")


def test_cpu_list_round_trip():
    assert measure.parse_cpu_list("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert measure.format_cpu_list([8, 7, 5, 2, 1, 0]) == "0-2,5,7-8"
    assert measure.parse_cpu_list("") == []
    assert measure.format_cpu_list([3]) == "3"


def test_plan_vanilla_is_a_quota_over_all_cores():
    plan = cgroups.plan_limits(3, "VNL", list(range(8)))
    assert plan.cpus is None
    assert plan.quota_us == 300_000 and plan.period_us == 100_000
    assert plan.quota_cores == 3.0


def test_plan_pinned_prefers_one_numa_node_and_spares_cpu0():
    nodes = {0: list(range(0, 4)), 1: list(range(4, 8))}
    assert cgroups.plan_limits(2, "PIN", list(range(8)), nodes).cpus == (6, 7)
    assert cgroups.plan_limits(4, "PIN", list(range(8)), nodes).cpus == (4, 5, 6, 7)
    # more than one node holds: spans nodes, highest CPUs first
    assert cgroups.plan_limits(6, "PIN", list(range(8)), nodes).cpus == (2, 3, 4, 5, 6, 7)
    assert cgroups.plan_limits(2, "PIN", [0, 1]).cpus == (0, 1)
    assert cgroups.plan_limits(1, "PIN", [0, 1]).cpus == (1,)
    assert cgroups.plan_limits(2, "PIN", list(range(8)), nodes).quota_us is None


def test_plan_rejects_too_many_cores():
    with pytest.raises(ValueError, match="host has 2"):
        cgroups.plan_limits(3, "VNL", [0, 1])
    with pytest.raises(ValueError):
        cgroups.choose_pinned_cpus(0, [0, 1])


def _status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    raise KeyError(key)


@needs_cgroups
def test_real_pinned_cgroup_confines_a_process_and_is_removed():
    plan = cgroups.plan_limits(1, "PIN", HOST_CPUS)
    before = cgroups.list_children()
    with cgroups.CpuCgroup(plan) as group:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                                preexec_fn=lambda: [open(f, "w").write(str(os.getpid())) for f in group.procs_files])
        try:
            time.sleep(0.3)
            assert proc.pid in group.pids()
            assert measure.parse_cpu_list(_status(proc.pid, "Cpus_allowed_list")) == list(plan.cpus)
            limits = measure.cpu_limits(proc.pid)
            assert limits.effective_cpus == list(plan.cpus)
            assert limits.cpu_quota_cores is None
        finally:
            proc.kill()
            proc.wait()
    assert cgroups.list_children() == before


@needs_cgroups
def test_real_vanilla_cgroup_applies_quota_and_kills_leftovers_on_exit():
    plan = cgroups.plan_limits(1, "VNL", HOST_CPUS)
    with cgroups.CpuCgroup(plan) as group:
        proc = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                preexec_fn=lambda: [open(f, "w").write(str(os.getpid())) for f in group.procs_files])
        time.sleep(1.0)
        limits = measure.cpu_limits(proc.pid)
        assert limits.cpu_quota_cores == pytest.approx(1.0)
        assert limits.effective_cpus == HOST_CPUS
        dirs = list(group.dirs)
    # leaving the context killed the busy process and removed the directories
    proc.wait(timeout=10)
    assert all(not d.exists() for d in dirs)


@needs_cgroups
def test_quota_throttles_a_busy_process():
    if len(HOST_CPUS) < 2:
        pytest.skip("needs 2 CPUs to over-subscribe a 0.5-core quota visibly")
    plan = cgroups.CpuLimitPlan(cores=1, cpu_mode="VNL", cpus=None, quota_us=20_000, period_us=100_000)
    code = "import threading\nfor _ in range(2): threading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()\nimport time; time.sleep(60)"
    with cgroups.CpuCgroup(plan) as group:
        proc = subprocess.Popen([sys.executable, "-c", code],
                                preexec_fn=lambda: [open(f, "w").write(str(os.getpid())) for f in group.procs_files])
        time.sleep(1.5)
        stat = group.stat()
        proc.kill()
        proc.wait()
    assert stat.get("nr_throttled", 0) > 0


@needs_cgroups
def test_remove_stale_clears_cgroups_of_dead_owners():
    plan = cgroups.plan_limits(1, "PIN", HOST_CPUS)
    dead = subprocess.Popen(["true"])
    dead.wait()
    group = cgroups.CpuCgroup(plan, name=f"run-{dead.pid}-stale")
    group.create()
    assert any(d.name == group.name for d in cgroups.list_children())
    removed = cgroups.remove_stale()
    assert any(d.name == group.name for d in removed)
    assert not any(d.name == group.name for d in cgroups.list_children())
