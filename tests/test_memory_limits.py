"""Memory limits (issue 10, part 3): `--memory-mib` and the study key `memory_mib`; a worker the OOM killer kills is
a failed run "out of memory (limit N MiB)" with `oom_killed: true`, stored like any failed run.

The BM and CN tests use real cgroups (the memory controller, v1 or v2) and real runc containers with the tiny RS
app: its worker (Python + torch + the model) peaks near 230-290 MiB here, so 128 MiB kills it while loading and
4096 MiB is generous.  The guest (VM) side is tested on the kernel's own OOM messages; a guest OOM run boots a
whole VM (under TCG here: about a minute) and is left out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import E2EBENCH, cli_cwd
from e2ebench.platforms import cgroups
from e2ebench.platforms import container as cn
from e2ebench.platforms import memory
from e2ebench.store import Store
from e2ebench.study import StudyError, parse_study

pytestmark = pytest.mark.platform

CAN_WRITE, WHY = cgroups.writable()
MEM_OK, MEM_WHY = cgroups.memory_writable()
MEMORY_REASON = (None if CAN_WRITE and MEM_OK else
                 f"the memory cgroup controller is not writable here: {WHY if not CAN_WRITE else MEM_WHY}")
needs_memory_cgroup = pytest.mark.skipif(MEMORY_REASON is not None, reason=MEMORY_REASON or "")
RUNC_REASON = ("runc is not installed" if not shutil.which("runc") else
               "runc containers need root here" if os.geteuid() != 0 else MEMORY_REASON)
needs_runc = pytest.mark.skipif(RUNC_REASON is not None, reason=RUNC_REASON or "")
RS_TINY = ["--variant", "tiny", "-n", "8"]
TOO_SMALL_MIB = 128       # the tiny RS worker needs ~230-290 MiB
GENEROUS_MIB = 4096


def run_cli(args: list[str], timeout: float = 300) -> tuple[subprocess.CompletedProcess, int]:
    proc = subprocess.Popen(E2EBENCH + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cli_cwd())
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def run_json(args: list[str]) -> tuple[int, dict, str, int]:
    proc, pid = run_cli(args + ["--json"])
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, proc.stderr
    return proc.returncode, json.loads(lines[-1]), proc.stderr, pid


def leftovers(owner: int) -> list[str]:
    """What a run by process ``owner`` could leave: cgroups (every hierarchy, memory included) and runc containers."""
    out = [str(d) for d in cgroups.list_children() if cgroups.owner_pid(d.name) == owner]
    out += [str(d) for d in cn.container_cgroup_leftovers(only_dead_owners=False) if cgroups.owner_pid(d.name) == owner]
    out += [f"runc:{c['id']}" for c in cn.runc_containers() if cn._owner_of(c.get("id", "")) == owner]
    return out


def stored(store: Path) -> list[dict]:
    with Store(store) as s:
        return s.runs(phase=None)


# ---------------------------------------------------------------------------
# pure: validation, counters, guest messages, OCI configuration


@pytest.mark.parametrize("value", [0, 63, -5, 2 ** 40, "128", 128.0, True, None])
def test_nonsense_limits_are_refused_with_the_reason(value):
    with pytest.raises(memory.MemoryLimitError) as info:
        memory.validate_memory_mib(value)
    assert "MiB" in str(info.value)


def test_sane_limits_pass():
    assert memory.validate_memory_mib(64) == 64
    assert memory.validate_memory_mib(256, minimum=256) == 256


def _fake_v2(d: Path, oom_kill: int, peak: int, limit: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.events").write_text(f"low 0\nhigh 0\nmax 41\noom 1\noom_kill {oom_kill}\noom_group_kill 0\n")
    (d / "memory.peak").write_text(f"{peak}\n")
    (d / "memory.max").write_text(limit + "\n")
    return d


def _fake_v1(d: Path, oom_kill: int | None, peak: int, limit: int, failcnt: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    control = "oom_kill_disable 0\nunder_oom 0\n" + ("" if oom_kill is None else f"oom_kill {oom_kill}\n")
    (d / "memory.oom_control").write_text(control)
    (d / "memory.failcnt").write_text(f"{failcnt}\n")
    (d / "memory.max_usage_in_bytes").write_text(f"{peak}\n")
    (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
    return d


def test_counters_are_read_from_v1_and_v2_files(tmp_path):
    v2 = memory.read_memory_stats(_fake_v2(tmp_path / "v2", 1, 134217728, "134217728"))
    assert (v2.version, v2.oom_kills, v2.limit_hits, v2.peak_mib, v2.limit_bytes) == (2, 1, 41, 128.0, 134217728)
    v1 = memory.read_memory_stats(_fake_v1(tmp_path / "v1", 0, 300 << 20, 9223372036854771712))
    assert (v1.version, v1.oom_kills, v1.peak_mib, v1.limit_bytes) == (1, 0, 300.0, None)   # unlimited
    assert memory.read_memory_stats(tmp_path / "gone") is None


def test_oom_is_the_counter_that_grew_or_sigkill_at_the_limit(tmp_path):
    before = memory.read_memory_stats(_fake_v2(tmp_path / "b", 2, 0, "max"))
    grew = memory.read_memory_stats(_fake_v2(tmp_path / "a", 3, 1, "max"))
    same = memory.read_memory_stats(_fake_v2(tmp_path / "s", 2, 1, "max"))
    assert "oom_kill 2 -> 3" in memory.oom_kill_seen(before, grew, -9)
    assert memory.oom_kill_seen(before, same, -9) is None            # killed, but not by the OOM killer
    # a v1 kernel without the oom_kill counter: SIGKILL with the peak at the limit
    old = memory.read_memory_stats(_fake_v1(tmp_path / "old", None, (128 << 20) - 4096, 128 << 20))
    assert memory.oom_kill_seen(None, old, 137) and memory.oom_kill_seen(None, old, -9)
    assert memory.oom_kill_seen(None, old, 1) is None                # a crash, not a kill
    # a v1 parent (podman's --cgroup-parent) does not count its children's kills: peak against the given limit
    parent = memory.read_memory_stats(_fake_v1(tmp_path / "parent", 0, 128 << 20, 9223372036854771712))
    assert memory.oom_kill_seen(None, parent, 137, counts_descendants=False, limit_bytes=128 << 20)
    assert memory.oom_kill_seen(None, parent, 137, counts_descendants=False, limit_bytes=4096 << 20) is None


# Real lines of a Linux kernel's OOM killer (mm/oom_kill.c): the first three were printed by this host's kernel
# (6.18) when a worker hit a 128 MiB memory cgroup; a guest without a cgroup limit prints "Out of memory: Killed
# process ..." with the same format (global OOM), which job.sh copies to the console with its prefix.
REAL_MEMCG_OOM = """\
[12101.217088] python invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0
[12101.217354] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cn-2371-512b9321,mems_allowed=0,oom_memcg=/process_api/d7426f6f5d2e1dd50ff30006ac2104e8/e2ebench/cn-2371-512b9321,task_memcg=/process_api/d7426f6f5d2e1dd50ff30006ac2104e8/e2ebench/cn-2371-512b9321,task=python,pid=2569,uid=0
[12101.217385] Memory cgroup out of memory: Killed process 2569 (python) total-vm:655592kB, anon-rss:129912kB, file-rss:77148kB, shmem-rss:0kB, UID:0 pgtables:692kB oom_score_adj:0
"""
REAL_GUEST_CONSOLE = """\
@@E2EBENCH_GUEST_READY@@ uptime=7.91 cpus=1 mode=vm data=/dev/vda:ext4
e2ebench-guest-kernel: [   41.215412] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/,task=python3,pid=187,uid=0
e2ebench-guest-kernel: [   41.216218] Out of memory: Killed process 187 (python3) total-vm:1337084kB, anon-rss:201052kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:652kB oom_score_adj:0
@@E2EBENCH_WORKER_EXIT@@ rc=137 uptime=41.40
"""


def test_the_guest_kernels_oom_message_is_found_in_the_console():
    line = memory.guest_oom_line(REAL_GUEST_CONSOLE)
    assert line.startswith("[   41.216218] Out of memory: Killed process 187 (python3)")
    assert memory.guest_oom_line(REAL_MEMCG_OOM).endswith("oom_score_adj:0")
    assert "Killed process 2569 (python)" in memory.guest_oom_line(REAL_MEMCG_OOM)
    # a worker that crashed for another reason, and kernel stack frames that only mention the function
    assert memory.guest_oom_line("Traceback (most recent call last):\n  MemoryError\n"
                                 "[ 1.0]  oom_kill_process.cold+0x8/0x8a\n@@E2EBENCH_WORKER_EXIT@@ rc=1") is None


def test_a_vm_session_turns_a_guest_oom_into_a_failed_run(tmp_path):
    from e2ebench.platforms.vm import VirtualMachineSession
    from e2ebench.spec import WorkerFailure, WorkerSpec

    session = VirtualMachineSession.__new__(VirtualMachineSession)     # no guest: only the failure's handling
    session.memory_mib, session.info, session.emulated = 256, {"platform": "VM", "memory_limit_mib": 256}, True
    spec = WorkerSpec(app="rs", deployment={"platform": "VM", "cores": 1, "cpu_mode": "VNL", "device": "CPU"})
    (tmp_path / "console.log").write_text(REAL_GUEST_CONSOLE)
    result = session.guest_oom_result(WorkerFailure("worker printed no result (rc=137)"), spec, tmp_path / "console.log")
    assert result["error"].startswith("out of memory (limit 256 MiB)") and result["oom_killed"] is True
    assert result["memory_limit_mib"] == 256 and result["emulated"] is True
    assert "Killed process 187 (python3)" in result["oom_evidence"]
    (tmp_path / "console.log").write_text("@@E2EBENCH_WORKER_EXIT@@ rc=1\n")
    with pytest.raises(WorkerFailure):
        session.guest_oom_result(WorkerFailure("worker printed no result (rc=1)"), spec, tmp_path / "console.log")


def test_oci_config_carries_the_limit_and_no_swap():
    kw = dict(root="r", readonly_binds=[], writable_binds=[], quota_cores=1.0, cpuset=None, cgroups_path=None)
    assert "memory" not in cn.oci_config(["x"], {}, **kw)["linux"]["resources"]
    limited = cn.oci_config(["x"], {}, memory_mib=128, **kw)["linux"]["resources"]["memory"]
    assert limited == {"limit": 128 << 20, "swap": 128 << 20}             # memory + swap = memory: no swap
    assert cn.oci_config(["x"], {}, memory_mib=128, memory_swap=False, **kw)["linux"]["resources"]["memory"] == \
        {"limit": 128 << 20}
    with pytest.raises(ValueError):
        cn.oci_config(["x"], {}, memory_mib=8, **kw)


# ---------------------------------------------------------------------------
# the study key


def _study(text: str):
    return parse_study(textwrap.dedent(text), Path("mem.toml"))


def test_study_key_memory_mib_applies_to_every_scenario():
    study = _study('apps = ["rs"]\nplatforms = ["BM", "CN"]\nmemory_mib = 2048\n')
    assert study.memory_mib == 2048 and study.config["memory_mib"] == 2048
    assert study.platform_options("BM") == study.platform_options("CN") == {"memory_mib": 2048}
    plain = _study('apps = ["rs"]\nplatforms = ["BM", "CN"]\n')
    assert plain.memory_mib is None and plain.platform_options("BM") == {} and "memory_mib" not in plain.config
    assert study.config_sha256 != plain.config_sha256          # a limit changes what is measured: a new study


@pytest.mark.parametrize("value, message", [
    ('"2G"', "memory_mib = '2G' is invalid: expected a whole number of MiB"),
    ("2048.5", "memory_mib = 2048.5 is invalid: expected a whole number of MiB"),
    ("true", "memory_mib = True is invalid: expected a whole number of MiB"),
    ("[2048]", "memory_mib = [2048] is invalid: expected a whole number of MiB"),
    ("32", "memory_mib = 32 is invalid: at least 64 MiB"),
    ("-1", "memory_mib = -1 is invalid: at least 64 MiB"),
    ("99999999999", "at most"),
])
def test_study_key_memory_mib_refuses_wrong_types_and_sizes(value, message):
    with pytest.raises(StudyError) as info:
        _study(f'apps = ["rs"]\nmemory_mib = {value}\n')
    assert message in str(info.value) and "mem.toml" in str(info.value)


def test_study_key_memory_mib_is_the_guest_memory_for_vms():
    with pytest.raises(StudyError, match=r"at least 256 MiB \(the guest's memory of VM\)"):
        _study('apps = ["rs"]\nplatforms = ["BM", "VM"]\nmemory_mib = 128\n')
    with pytest.raises(StudyError, match="at least 256 MiB"):
        _study('scenarios = ["rs@VMCN/1/VNL/CPU"]\nmemory_mib = 200\n')
    assert _study('apps = ["rs"]\nplatforms = ["VM"]\nmemory_mib = 512\n').platform_options("VM") == {"memory_mib": 512}


def test_cli_refuses_nonsense_limits():
    for args, message in (
        (["--memory-mib", "10"], "--memory-mib 10 MiB is too small: at least 64 MiB"),
        (["--memory-mib", "lots"], "Invalid value for '--memory-mib'"),
        (["--memory-mib", str(2 ** 40)], "too large"),
    ):
        proc, _ = run_cli(["run", "rs", "BM/1/VNL/CPU"] + RS_TINY + args, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert message in " ".join(proc.stderr.replace("│", " ").split()), proc.stderr
    proc, _ = run_cli(["run", "rs", "VM/1/VNL/CPU", "--memory-mib", "512", "--vm-memory-mib", "1024"], timeout=120)
    assert proc.returncode == 2 and "disagree" in proc.stderr
    proc, _ = run_cli(["run", "rs", "VM/1/VNL/CPU", "--memory-mib", "128"], timeout=120)
    assert proc.returncode == 2 and "at least 256 MiB" in proc.stderr


# ---------------------------------------------------------------------------
# real cgroups, real runc


def _check_oom(rc: int, result: dict, err: str, store: Path, limit: int) -> None:
    assert rc == 1, err                                                   # the failed-run exit code
    assert f"out of memory (limit {limit} MiB)" in result["error"]
    assert result["oom_killed"] is True and result["memory_limit_mib"] == limit
    assert result["peak_memory_mib"] is None or result["peak_memory_mib"] <= limit + 1
    assert "Traceback" not in err
    rows = stored(store)
    assert len(rows) == 1 and rows[0]["status"] == "failed" and f"out of memory (limit {limit} MiB)" in rows[0]["error"]
    assert rows[0]["result"]["oom_killed"] is True and rows[0]["id"] == result["run_id"]


def _check_generous(rc: int, result: dict, err: str, limit: int) -> None:
    assert rc == 0, err
    assert result["error"] is None and result["oom_killed"] is False
    assert result["memory_limit_mib"] == limit
    assert 50 < result["peak_memory_mib"] < limit
    assert result["completed"] == 8


@needs_memory_cgroup
def test_bm_worker_killed_by_the_oom_killer_is_a_failed_run(tmp_path):
    store = tmp_path / "oom.sqlite"
    rc, result, err, pid = run_json(["run", "rs", "BM/1/VNL/CPU", *RS_TINY, "--memory-mib", str(TOO_SMALL_MIB),
                                     "--store", str(store)])
    _check_oom(rc, result, err, store, TOO_SMALL_MIB)
    assert "oom_kill 0 -> 1" in stored(store)[0]["result"]["oom_evidence"]
    assert leftovers(pid) == []


@needs_memory_cgroup
def test_bm_generous_limit_is_recorded_with_the_peak(tmp_path):
    rc, result, err, pid = run_json(["run", "rs", "BM/1/PIN/CPU", *RS_TINY, "--memory-mib", str(GENEROUS_MIB),
                                     "--store", str(tmp_path / "ok.sqlite")])
    _check_generous(rc, result, err, GENEROUS_MIB)
    assert leftovers(pid) == []
    rc, result, err, _ = run_json(["run", "rs", "BM/1/VNL/CPU", *RS_TINY, "--store", str(tmp_path / "ok.sqlite")])
    assert rc == 0 and result["memory_limit_mib"] is None and result["peak_memory_mib"] is None   # no limit: null


@needs_runc
def test_cn_runc_worker_killed_by_the_oom_killer_is_a_failed_run(tmp_path):
    store = tmp_path / "oom.sqlite"
    rc, result, err, pid = run_json(["run", "rs", "CN/1/VNL/CPU", *RS_TINY, "--engine", "runc",
                                     "--memory-mib", str(TOO_SMALL_MIB), "--store", str(store)])
    _check_oom(rc, result, err, store, TOO_SMALL_MIB)
    assert "(exit status 137)" in stored(store)[0]["result"]["oom_evidence"]
    assert leftovers(pid) == []


@needs_runc
def test_cn_runc_generous_limit_is_recorded_with_the_peak(tmp_path):
    rc, result, err, pid = run_json(["run", "rs", "CN/1/PIN/CPU", *RS_TINY, "--engine", "runc",
                                     "--memory-mib", str(GENEROUS_MIB), "--store", str(tmp_path / "ok.sqlite")])
    _check_generous(rc, result, err, GENEROUS_MIB)
    assert leftovers(pid) == []


@needs_memory_cgroup
def test_a_study_stores_oom_runs_as_failed_and_gives_up_on_the_scenario(tmp_path):
    store = tmp_path / "study.sqlite"
    study = tmp_path / "oom.toml"
    study.write_text(textwrap.dedent(f"""
        store = "{store}"
        apps = ["rs"]
        cores = [1]
        cpu_modes = ["VNL"]
        memory_mib = {TOO_SMALL_MIB}
        [repetition]
        warmup_runs = 0
        min_runs = 2
        max_consecutive_failures = 2
        [workload.rs]
        requests = 8
        variant = "tiny"
    """))
    proc, pid = run_cli(["study", str(study), "--json"], timeout=300)
    assert proc.returncode == 1, proc.stderr                              # a scenario abandoned
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [(e["seq"], e["status"]) for e in events] == [(0, "failed"), (1, "failed")]
    assert all(f"out of memory (limit {TOO_SMALL_MIB} MiB)" in e["error"] for e in events)
    assert events[-1]["scenario_status"] == "abandoned"
    rows = stored(store)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["result"]["oom_killed"] and r["result"]["memory_limit_mib"] == TOO_SMALL_MIB for r in rows)
    assert leftovers(pid) == []
