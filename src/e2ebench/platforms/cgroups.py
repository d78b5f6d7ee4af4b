"""CPU limits with cgroups, v1 (per-controller hierarchies) and v2 (unified).

Pure planning functions (which cores, what quota) are separate from the code that writes the
cgroup filesystem, so the planning is unit-testable everywhere.  Every cgroup e2ebench creates
lives under one parent named ``e2ebench`` and is removed when its :class:`CpuCgroup` context
exits, also on errors and Ctrl-C; :func:`remove_stale` clears what a SIGKILLed run left.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
import uuid
from pathlib import Path

from e2ebench.measure import CGROUP_ROOT, cgroup_version, format_cpu_list, own_cgroups, parse_cpu_list

PARENT = "e2ebench"
DEFAULT_PERIOD_US = 100_000


class CgroupError(RuntimeError):
    pass


# ---------------------------------------------------------------------------
# Planning (pure)


@dataclasses.dataclass(frozen=True)
class CpuLimitPlan:
    """What to apply: a CFS quota (VNL) and/or a cpuset (PIN)."""

    cores: int
    cpu_mode: str
    cpus: tuple[int, ...] | None = None        # PIN: the dedicated host CPUs
    quota_us: int | None = None                # VNL: CFS bandwidth per period
    period_us: int = DEFAULT_PERIOD_US

    @property
    def quota_cores(self) -> float | None:
        return None if self.quota_us is None else self.quota_us / self.period_us


def numa_nodes(sys_root: Path = Path("/sys/devices/system/node")) -> dict[int, list[int]]:
    """NUMA node -> CPUs, from sysfs (one node with every CPU when sysfs has none)."""
    nodes: dict[int, list[int]] = {}
    if sys_root.is_dir():
        for entry in sorted(sys_root.glob("node[0-9]*")):
            try:
                nodes[int(entry.name[4:])] = parse_cpu_list((entry / "cpulist").read_text())
            except (OSError, ValueError):
                continue
    if not nodes:
        nodes[0] = sorted(os.sched_getaffinity(0))
    return nodes


def choose_pinned_cpus(n: int, host_cpus: list[int], nodes: dict[int, list[int]] | None = None) -> tuple[int, ...]:
    """Pick ``n`` dedicated host CPUs for a pinned deployment.

    Prefers CPUs of a single NUMA node (the paper's 64-core instances crossed sockets and paid for
    it), then the highest-numbered CPUs, leaving CPU 0 — where the host's interrupts and
    housekeeping usually run — for last.
    """
    available = sorted(set(host_cpus))
    if n < 1:
        raise ValueError("need at least one CPU")
    if n > len(available):
        raise ValueError(f"{n} CPUs requested but only {len(available)} are available: {format_cpu_list(available)}")
    if nodes:
        for node in sorted(nodes, key=lambda k: (-len(set(nodes[k]) & set(available)), -k)):
            cpus = sorted(set(nodes[node]) & set(available))
            if len(cpus) >= n:
                return tuple(sorted(cpus[-n:]))
    return tuple(sorted(available[-n:]))


def plan_limits(cores: int, cpu_mode: str, host_cpus: list[int], nodes: dict[int, list[int]] | None = None,
                period_us: int = DEFAULT_PERIOD_US) -> CpuLimitPlan:
    """VNL: a CFS quota of ``cores`` over every host CPU.  PIN: ``cores`` dedicated CPUs, no quota."""
    if cores > len(host_cpus):
        raise ValueError(f"{cores} cores requested but the host has {len(host_cpus)}")
    if cpu_mode == "VNL":
        return CpuLimitPlan(cores, "VNL", None, cores * period_us, period_us)
    if cpu_mode == "PIN":
        return CpuLimitPlan(cores, "PIN", choose_pinned_cpus(cores, host_cpus, nodes), None, period_us)
    raise ValueError(f"unknown CPU mode {cpu_mode!r}")


# ---------------------------------------------------------------------------
# The cgroup filesystem


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from exc


def controller_dirs(root: Path = CGROUP_ROOT) -> dict[str, Path]:
    """Where the cpu and cpuset controllers live: {"cpu": dir, "cpuset": dir} (same dir on v2)."""
    version = cgroup_version(root)
    if version == 2:
        return {"cpu": root, "cpuset": root}
    if version == 1:
        cpu = root / "cpu" if (root / "cpu").is_dir() else root / "cpu,cpuacct"
        return {"cpu": cpu, "cpuset": root / "cpuset"}
    return {}


def writable(root: Path = CGROUP_ROOT) -> tuple[bool, str]:
    """Can e2ebench create cgroups with cpu and cpuset limits here? (and why not)."""
    dirs = controller_dirs(root)
    if not dirs:
        return False, f"no cgroup filesystem with cpu/cpuset controllers under {root}"
    version = cgroup_version(root)
    if version == 2:
        controllers = (root / "cgroup.controllers").read_text().split()
        missing = [c for c in ("cpu", "cpuset") if c not in controllers]
        if missing:
            return False, f"cgroup v2 root lacks controllers: {', '.join(missing)}"
    for name, d in dirs.items():
        if not d.is_dir():
            return False, f"{name} controller not mounted ({d} missing)"
        if not os.access(d, os.W_OK):
            return False, f"{d} is not writable (run as root or delegate the cgroup)"
    probe = dirs["cpu"] / f"{PARENT}-probe-{uuid.uuid4().hex[:6]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return False, f"cannot create a cgroup under {dirs['cpu']}: {exc.strerror or exc}"
    return True, f"cgroup v{version}, cpu and cpuset controllers writable"


def memory_parent(root: Path = CGROUP_ROOT) -> Path | None:
    """The folder e2ebench's memory cgroups are created in, or None without a memory controller.

    v2: ``<root>/e2ebench`` (the same cgroup as the CPU limits).  v1: ``e2ebench`` under this process's own
    memory cgroup (runc's rule for relative cgroup paths, see ``container.runc_cgroups_path``), so that a
    memory limit or accounting around the caller keeps covering the worker.
    """
    version = cgroup_version(root)
    if version == 2:
        try:
            controllers = (root / "cgroup.controllers").read_text().split()
        except OSError:
            return None
        return root / PARENT if "memory" in controllers else None
    if version == 1 and (root / "memory").is_dir():
        own = own_cgroups().get("memory", "/").lstrip("/")
        return root / "memory" / own / PARENT
    return None


def memory_parents(root: Path = CGROUP_ROOT) -> list[Path]:
    """Every folder that can hold e2ebench's memory cgroups: :func:`memory_parent`, and on v1 also
    ``memory/e2ebench`` (podman's and docker's absolute ``--cgroup-parent``)."""
    out = []
    mine = memory_parent(root)
    if mine is not None:
        out.append(mine)
        if cgroup_version(root) == 1 and root / "memory" / PARENT not in out:
            out.append(root / "memory" / PARENT)
    return out


def memory_writable(root: Path = CGROUP_ROOT) -> tuple[bool, str]:
    """Can e2ebench create memory cgroups with a limit here? (and why not)."""
    parent = memory_parent(root)
    if parent is None:
        return False, f"no memory cgroup controller under {root}"
    base = parent.parent
    if not base.is_dir() or not os.access(base, os.W_OK):
        return False, f"{base} is not writable (run as root or delegate the cgroup)"
    if cgroup_version(root) == 1 and not (base / "memory.limit_in_bytes").exists():
        return False, f"{base} has no memory.limit_in_bytes"
    return True, f"cgroup v{cgroup_version(root)} memory controller writable"


def _ensure_parent_v1_cpuset(cpuset_root: Path) -> Path:
    parent = cpuset_root / PARENT
    parent.mkdir(exist_ok=True)
    for f in ("cpuset.cpus", "cpuset.mems"):
        if not (parent / f).read_text().strip():
            _write(parent / f, (cpuset_root / f).read_text().strip())
    return parent


def _ensure_parent_v2(root: Path, controllers: tuple[str, ...] = ("cpu", "cpuset")) -> Path:
    parent = root / PARENT
    for d in (root, parent):
        if d is parent:
            d.mkdir(exist_ok=True)
        control = d / "cgroup.subtree_control"
        enabled = control.read_text().split()
        for c in controllers:
            if c not in enabled:
                _write(control, f"+{c}")
    return parent


class CpuCgroup:
    """A cgroup (one per controller on v1) with a plan's quota/cpuset, and optionally a memory limit of
    ``memory_mib`` without swap; removed on exit."""

    def __init__(self, plan: CpuLimitPlan, name: str | None = None, root: Path = CGROUP_ROOT,
                 memory_mib: int | None = None):
        self.plan = plan
        self.root = root
        self.name = name or cgroup_name()
        self.version = cgroup_version(root)
        self.dirs: list[Path] = []
        self.memory_mib = memory_mib
        self.memory_dir: Path | None = None    # where the memory limit and its counters are

    def __enter__(self) -> "CpuCgroup":
        try:
            self.create()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def create(self) -> None:
        plan = self.plan
        dirs = controller_dirs(self.root)
        if not dirs:
            raise CgroupError(f"no usable cgroup filesystem under {self.root}")
        if self.version == 2:
            parent = _ensure_parent_v2(self.root, ("cpu", "cpuset") + (("memory",) if self.memory_mib is not None else ()))
            d = parent / self.name
            d.mkdir()
            self.dirs.append(d)
            if plan.cpus is not None:
                _write(d / "cpuset.cpus", format_cpu_list(plan.cpus))
                mems = (parent / "cpuset.mems.effective").read_text().strip()
                _write(d / "cpuset.mems", mems)
            if plan.quota_us is not None:
                _write(d / "cpu.max", f"{plan.quota_us} {plan.period_us}")
            if self.memory_mib is not None:
                self._limit_memory(d)
        else:
            if plan.quota_us is not None:
                parent = dirs["cpu"] / PARENT
                parent.mkdir(exist_ok=True)
                d = parent / self.name
                d.mkdir()
                self.dirs.append(d)
                _write(d / "cpu.cfs_period_us", str(plan.period_us))
                _write(d / "cpu.cfs_quota_us", str(plan.quota_us))
            if plan.cpus is not None:
                parent = _ensure_parent_v1_cpuset(dirs["cpuset"])
                d = parent / self.name
                d.mkdir()
                self.dirs.append(d)
                _write(d / "cpuset.cpus", format_cpu_list(plan.cpus))
                _write(d / "cpuset.mems", (parent / "cpuset.mems").read_text().strip())
            if self.memory_mib is not None:
                parent = memory_parent(self.root)
                if parent is None:
                    raise CgroupError(f"no memory cgroup controller under {self.root}")
                parent.mkdir(exist_ok=True)
                d = parent / self.name
                d.mkdir()
                self.dirs.append(d)
                self._limit_memory(d)

    def _limit_memory(self, d: Path) -> None:
        """``memory_mib`` in ``d``, swap included (v2: memory.max, memory.swap.max = 0; v1: memory.limit_in_bytes,
        then memory.memsw.limit_in_bytes, which must not be below it); files the kernel lacks (no swap
        accounting) are skipped."""
        limit = str(int(self.memory_mib) << 20)
        if self.version == 2:
            _write(d / "memory.max", limit)
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
        else:
            _write(d / "memory.limit_in_bytes", limit)
            if (d / "memory.memsw.limit_in_bytes").exists():
                _write(d / "memory.memsw.limit_in_bytes", limit)
        self.memory_dir = d

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def add(self, pid: int) -> None:
        for f in self.procs_files:
            _write(Path(f), str(pid))

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                continue
        return sorted(out)

    def stat(self) -> dict[str, int]:
        for d in self.dirs:
            f = d / "cpu.stat"
            if f.exists():
                return {k: int(v) for k, v in (line.split() for line in f.read_text().splitlines())}
        return {}

    def remove(self, timeout_s: float = 10.0) -> None:
        """Kill whatever still runs in the cgroup and remove its directories."""
        for d in reversed(self.dirs):
            remove_cgroup_tree(d, timeout_s)
        self.dirs.clear()


def remove_cgroup_tree(d: Path, timeout_s: float = 10.0) -> None:
    """SIGKILL every process in ``d`` and its descendant cgroups, then remove the directories, deepest first."""
    if not d.is_dir():
        return
    dirs = [Path(p) for p, _, _ in os.walk(d)]
    for sub in sorted(dirs, key=lambda p: -len(p.parts)):
        _kill_and_rmdir(sub, timeout_s)


def _kill_and_rmdir(d: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        try:
            d.rmdir()
            return
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            if time.monotonic() > deadline:
                raise CgroupError(f"cannot remove cgroup {d}: {exc.strerror or exc}") from exc
            time.sleep(0.05)


def list_children(root: Path = CGROUP_ROOT) -> list[Path]:
    """Every cgroup e2ebench created that still exists."""
    out = []
    parents = {d / PARENT for d in controller_dirs(root).values()} | set(memory_parents(root))
    for parent in sorted(parents):
        if parent.is_dir():
            out.extend(sorted(p for p in parent.iterdir() if p.is_dir()))
    return out


def cgroup_name(kind: str = "run") -> str:
    """A child cgroup name that records its owner: ``<kind>-<owner pid>-<random>``.

    Every platform names its cgroups this way (runc's cgroupsPath too), so that
    :func:`remove_stale` can tell a dead owner's leftovers from a live run's cgroup.
    """
    return f"{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def owner_pid(name: str) -> int | None:
    parts = name.split("-")
    if len(parts) >= 3 and parts[1].isdigit():
        return int(parts[1])
    return None


def remove_stale(root: Path = CGROUP_ROOT, only_dead_owners: bool = True) -> list[Path]:
    """Remove cgroups left by e2ebench processes that died (e.g. SIGKILL); return what was removed.

    A child is named ``<kind>-<owner pid>-<random>`` (:func:`cgroup_name`); with ``only_dead_owners`` it
    is removed only when that owner process no longer exists, and names without an owner are left alone.
    """
    removed = []
    for d in list_children(root):
        if only_dead_owners:
            owner = owner_pid(d.name)
            if owner is None or Path(f"/proc/{owner}").exists():
                continue
        try:
            remove_cgroup_tree(d, 5.0)
            removed.append(d)
        except CgroupError:
            continue
    return removed
