"""Bare metal (BM): the worker as a host process, limited by cgroups.

* ``VNL`` — the worker gets a CFS bandwidth limit of N cores (``cpu.cfs_quota_us`` /
  ``cpu.max``) and may run on every host core; the host scheduler decides where.
* ``PIN`` — the worker is confined to N dedicated host cores (a cpuset cgroup); inside it no thread
  is bound to a single core (see docs/measurement.md).  Where cgroups cannot be written,
  ``sched_setaffinity`` confines the process instead (reported in ``platform_info``).

With ``memory_mib`` the same cgroup (v2) or a memory cgroup (v1) limits the worker's memory, swap
included; a worker the OOM killer kills is a failed run ``out of memory (limit N MiB)`` (see
:mod:`e2ebench.platforms.memory`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from e2ebench.platforms import cgroups
from e2ebench.platforms import memory
from e2ebench.platforms.base import Availability, Platform, PlatformError, Session, result_from_command, run_command, worker_env
from e2ebench.scenario import Deployment, HostFacts
from e2ebench.spec import WorkerSpec


class BareMetalSession(Session):
    def __init__(self, deployment: Deployment, workdir: Path, plan: cgroups.CpuLimitPlan,
                 group: cgroups.CpuCgroup | None):
        super().__init__(deployment, workdir)
        self.plan = plan
        self.group = group
        self.info = {
            "platform": "BM",
            "limit_mechanism": "cgroup" if group else "sched_setaffinity",
            "cgroup_version": group.version if group else None,
            "cgroup_dirs": [str(d) for d in group.dirs] if group else [],
            "pinned_cpus": list(plan.cpus) if plan.cpus else None,
            "quota_cores": plan.quota_cores,
            "memory_limit_mib": group.memory_mib if group else None,
            "memory_cgroup": str(group.memory_dir) if group and group.memory_dir else None,
        }
        self.runs = 0
        self.shares_host_kernel = True

    def expected_limits(self) -> tuple[list[int] | None, float | None]:
        if self.plan.cpus is not None:
            return list(self.plan.cpus), None
        return sorted(os.sched_getaffinity(0)), self.plan.quota_cores

    def run_worker(self, spec: WorkerSpec, timeout: float) -> dict:
        spec.size_threads(self.deployment.cores)
        spec.bind_cpus = list(self.plan.cpus) if self.plan.cpus else None
        spec.die_with_parent = True
        spec.platform_info = {**self.info, "launched_at": time.time()}
        self.runs += 1
        spec_path = self.workdir / f"spec-{self.runs}.json"
        spec.write(spec_path)
        argv = [sys.executable, "-m", "e2ebench.worker", "--spec", str(spec_path)]
        procs_files = self.group.procs_files if self.group else []
        pinned = set(self.plan.cpus) if (self.plan.cpus and not self.group) else None

        def enter_limits() -> None:  # runs in the child between fork and exec
            pid = str(os.getpid())
            for f in procs_files:
                with open(f, "w") as fh:
                    fh.write(pid)
            if pinned:
                os.sched_setaffinity(0, pinned)

        memory_dir = self.group.memory_dir if self.group else None
        if memory_dir is not None:
            memory.reset_peak(memory_dir)
        before = memory.read_memory_stats(memory_dir) if memory_dir else None
        cmd = run_command(argv, timeout=timeout, env=worker_env(), preexec_fn=enter_limits)
        after = memory.read_memory_stats(memory_dir) if memory_dir else None   # before the cgroup is removed
        limit_mib = self.info["memory_limit_mib"]
        evidence = memory.oom_kill_seen(before, after, cmd.returncode)
        if evidence and cmd.returncode != 0:
            tail = (cmd.stdout[-2000:] + "\n" + cmd.stderr[-3000:]).strip()
            return memory.oom_result(spec, limit_mib, f"{evidence} (exit status {cmd.returncode})",
                                     after.peak_mib if after else None, tail, self.info)
        result = result_from_command(cmd)
        result.setdefault("platform_info", {}).update(self.info)
        result["worker_wall_s"] = cmd.wall_s
        return memory.annotate(result, limit_mib, after)


class BareMetal(Platform):
    name = "BM"
    title = "bare metal"
    colour = "#222222"
    order = 0
    devices = ("CPU", "GPU")
    shares_host_kernel = True

    @classmethod
    def supports(cls, deployment: Deployment, host: HostFacts) -> str | None:
        """The base rules, and for GPU a GPU that torch.cuda sees in this environment (HostFacts.gpus)."""
        problem = super().supports(deployment, host)
        if problem or deployment.device != "GPU" or host.gpus > 0:
            return problem
        return f"{cls.name} has no usable GPU here: {host.gpu_reason or 'torch.cuda sees no GPU'}"

    def __init__(self, memory_mib: int | None = None):
        self.memory_mib = memory.platform_memory_mib(memory_mib)

    def probe(self) -> Availability:
        ok, why = cgroups.writable()
        if ok:
            return Availability(True, f"host processes limited by {why}", details={"cgroups": why})
        return Availability(
            True,
            f"PIN via sched_setaffinity only; VNL quotas need writable cgroups ({why})",
            fix="run as root on a host with the cpu and cpuset cgroup controllers",
            details={"cgroups": why},
        )

    @contextlib.contextmanager
    def session(self, deployment: Deployment, workdir: Path) -> Iterator[BareMetalSession]:
        host_cpus = sorted(os.sched_getaffinity(0))
        plan = cgroups.plan_limits(deployment.cores, deployment.cpu_mode, host_cpus, cgroups.numa_nodes())
        t0 = time.perf_counter()
        can_write, why = cgroups.writable()
        cgroups.remove_stale()
        if self.memory_mib is not None:
            mem_ok, mem_why = cgroups.memory_writable()
            if not (can_write and mem_ok):
                raise PlatformError(f"a memory limit needs writable cgroups: {why if not can_write else mem_why}")
        if not can_write:
            if plan.quota_us is not None:
                raise PlatformError(f"BM/{deployment.cores}/VNL needs a CFS quota but cgroups are not writable: {why}")
            group = None
            stack = contextlib.nullcontext()
        else:
            group = cgroups.CpuCgroup(plan, memory_mib=self.memory_mib)
            stack = group
        with stack:
            session = BareMetalSession(deployment, workdir, plan, group)
            session.provision_s = time.perf_counter() - t0
            yield session
