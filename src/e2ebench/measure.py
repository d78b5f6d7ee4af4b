"""What the worker measures about itself: phase clocks, the CPU limits it really got, counters.

Everything here reads the kernel's own files (``/proc``, the cgroup filesystem) from *inside* the
platform, so the same code reports what a bare-metal process, a container or a VM guest sees.
Standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import mmap
import os
import platform as _platform
import resource
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


# ---------------------------------------------------------------------------
# Phase clock


class PhaseClock:
    """Accumulates nanoseconds per phase with ``time.perf_counter_ns``.

    ``lap(phase)`` charges the time since the previous lap to ``phase``; there is no gap between
    consecutive laps, so the phases of a loop add up to its wall time exactly (what is not
    charged to a named phase is charged to ``other``).
    """

    __slots__ = ("totals_ns", "_last")

    def __init__(self) -> None:
        self.totals_ns: dict[str, int] = {"io": 0, "pre": 0, "infer": 0, "post": 0, "other": 0}
        self._last = time.perf_counter_ns()

    def start(self, now_ns: int | None = None) -> int:
        """Start lapping from ``now_ns`` (a ``perf_counter_ns`` reading) or from now."""
        self._last = time.perf_counter_ns() if now_ns is None else now_ns
        return self._last

    def lap(self, phase: str) -> int:
        now = time.perf_counter_ns()
        self.totals_ns[phase] += now - self._last
        self._last = now
        return now

    def seconds(self) -> dict[str, float]:
        return {k: v / 1e9 for k, v in self.totals_ns.items()}


def outside_clock_ns() -> int:
    """A second clock for the timed window: ``CLOCK_MONOTONIC_RAW`` (not the laps' ``perf_counter``).

    The raw clock is read through its own clock id and is not slewed by NTP, so a window measured with it
    does not share the lap clock's reading path; the laps must cover at least 99% of it.
    """
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)


class TimedWindow:
    """The steady-state window: counters, the outside clock and the lap clock opened and closed in nesting order.

    ``open()`` takes the counter snapshot, then reads the outside clock, then the lap clock; ``close()`` reads them in
    the reverse order.  So the counters cover the window and nothing outside it but the two clock reads, and the
    outside clock's span contains the lap clock's span.
    """

    __slots__ = ("before", "after", "start_ns", "end_ns", "outside_start_ns", "outside_end_ns")

    def __init__(self) -> None:
        self.before: CounterSnapshot | None = None
        self.after: CounterSnapshot | None = None
        self.start_ns: int | None = None
        self.end_ns: int | None = None
        self.outside_start_ns: int | None = None
        self.outside_end_ns: int | None = None

    @property
    def is_open(self) -> bool:
        return self.start_ns is not None and self.end_ns is None

    @property
    def is_closed(self) -> bool:
        return self.end_ns is not None

    def open(self) -> int:
        self.before = CounterSnapshot.take()
        self.outside_start_ns = outside_clock_ns()
        self.start_ns = time.perf_counter_ns()
        return self.start_ns

    def close(self, end_ns: int | None = None) -> None:
        """``end_ns``: the lap clock's reading at the end (the last lap), or now."""
        self.end_ns = time.perf_counter_ns() if end_ns is None else end_ns
        self.outside_end_ns = outside_clock_ns()
        self.after = CounterSnapshot.take()

    @property
    def wall_s(self) -> float:
        return ((self.end_ns or 0) - (self.start_ns or 0)) / 1e9

    @property
    def outside_wall_s(self) -> float:
        return ((self.outside_end_ns or 0) - (self.outside_start_ns or 0)) / 1e9

    def counters(self) -> dict:
        if self.before is None or self.after is None:
            return {}
        return self.after.delta(self.before)


# ---------------------------------------------------------------------------
# The page cache (``--cache cold``)


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def resident_bytes(path: str | Path) -> int | None:
    """How many bytes of ``path`` are in the page cache now (``mincore(2)`` on a read-only mapping); None if unknown."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        libc = _libc()
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            page = mmap.PAGESIZE
            pages = (size + page - 1) // page
            vector = ctypes.create_string_buffer(pages)
            if libc.mincore(address, size, vector) != 0:
                return None
            resident_pages = sum(1 for b in vector.raw if b & 1)
            return min(size, resident_pages * page)
        finally:
            libc.munmap(address, size)
    except (OSError, AttributeError):
        return None
    finally:
        os.close(fd)


def drop_page_cache(paths) -> dict:
    """Evict each file from the page cache: ``fdatasync`` (dirty pages cannot be dropped), then
    ``posix_fadvise(POSIX_FADV_DONTNEED)`` over the whole file.  Reports what is still resident afterwards
    (a tmpfs, for example, cannot drop its pages; a network file system may keep them elsewhere).
    """
    files = 0
    total = 0
    resident_after = 0
    unknown = 0
    problems: list[str] = []
    for path in sorted({str(p) for p in paths}):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
            continue
        try:
            total += os.fstat(fd).st_size
            try:
                os.fdatasync(fd)
            except OSError:
                pass  # read-only file systems: nothing can be dirty
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            files += 1
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
        finally:
            os.close(fd)
        left = resident_bytes(path)
        if left is None:
            unknown += 1
        else:
            resident_after += left
    return {"files": files, "bytes": total, "resident_bytes_after": resident_after,
            "files_residency_unknown": unknown, "problems": problems[:20]}


# ---------------------------------------------------------------------------
# cgroups as seen from inside


def parse_cpu_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]`` (the kernel's cpulist format)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    return sorted(cpus)


def format_cpu_list(cpus: list[int] | set[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(ranges)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_version(root: Path = CGROUP_ROOT) -> int:
    """2 for a unified hierarchy at ``root``, 1 for per-controller (v1/hybrid) mounts, 0 for none."""
    if (root / "cgroup.controllers").exists():
        return 2
    if (root / "cpu").is_dir() or (root / "cpuset").is_dir():
        return 1
    return 0


def own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """Controller -> cgroup path from ``/proc/<pid>/cgroup`` (``""`` key = the v2 hierarchy)."""
    out: dict[str, str] = {}
    text = _read(Path(f"/proc/{pid}/cgroup")) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for c in controllers.split(","):
            out[c] = path
    return out


def _ancestors(base: Path, rel: str) -> list[Path]:
    """The cgroup directory for ``rel`` under ``base`` and each ancestor up to ``base`` (deepest first).

    Inside a container with a private cgroup namespace ``rel`` is "/" and the container's own
    cgroup is mounted at ``base``; when ``rel`` does not exist under ``base`` (a host path seen
    through a namespaced mount) we fall back to ``base``.
    """
    rel = rel.strip("/")
    here = base / rel if rel else base
    if not here.is_dir():
        here = base
    chain = []
    p = here
    while True:
        chain.append(p)
        if p == base or base not in p.parents:
            break
        p = p.parent
    return chain


@dataclasses.dataclass
class CpuLimits:
    effective_cpus: list[int]
    cpu_quota_cores: float | None
    cgroup_version: int
    cpu_cgroup: str | None
    cpuset_cgroup: str | None


def cpu_limits(pid: int | str = "self", root: Path = CGROUP_ROOT) -> CpuLimits:
    """The CPUs a process may run on and its CFS quota, read from the cgroup files.

    ``effective_cpus`` is the intersection of the cpuset cgroup's effective CPUs and the process's
    affinity mask; ``cpu_quota_cores`` is the tightest ``quota / period`` over the process's cpu
    cgroup and its ancestors, ``None`` when unlimited.
    """
    version = cgroup_version(root)
    groups = own_cgroups(pid)
    cpuset: list[int] | None = None
    quota: float | None = None
    cpu_path = cpuset_path = None
    if version == 2:
        rel = groups.get("", "/")
        cpu_path = cpuset_path = rel
        for d in _ancestors(root, rel):
            text = _read(d / "cpuset.cpus.effective")
            if text and cpuset is None:
                cpuset = parse_cpu_list(text)
            mx = _read(d / "cpu.max")
            if mx:
                q, _, period = mx.partition(" ")
                if q != "max":
                    cores = int(q) / int(period or 100000)
                    quota = cores if quota is None else min(quota, cores)
    elif version == 1:
        cpuset_path = groups.get("cpuset", "/")
        for d in _ancestors(root / "cpuset", cpuset_path):
            text = _read(d / "cpuset.effective_cpus") or _read(d / "cpuset.cpus")
            if text:
                cpuset = parse_cpu_list(text)
                break
        cpu_path = groups.get("cpu", "/")
        cpu_root = root / "cpu" if (root / "cpu").is_dir() else root / "cpu,cpuacct"
        for d in _ancestors(cpu_root, cpu_path):
            q = _read(d / "cpu.cfs_quota_us")
            period = _read(d / "cpu.cfs_period_us")
            if q and period and int(q) > 0:
                cores = int(q) / int(period)
                quota = cores if quota is None else min(quota, cores)
    try:
        affinity = set(os.sched_getaffinity(0 if pid == "self" else int(pid)))
    except OSError:
        affinity = set(range(os.cpu_count() or 1))
    effective = sorted(affinity & set(cpuset)) if cpuset is not None else sorted(affinity)
    return CpuLimits(effective, round(quota, 6) if quota is not None else None, version, cpu_path, cpuset_path)


def cpu_stat(pid: int | str = "self", root: Path = CGROUP_ROOT) -> dict[str, int]:
    """Throttling counters of the process's cpu cgroup: nr_periods, nr_throttled, throttled_time_ns."""
    version = cgroup_version(root)
    groups = own_cgroups(pid)
    if version == 2:
        d = _ancestors(root, groups.get("", "/"))[0]
    elif version == 1:
        cpu_root = root / "cpu" if (root / "cpu").is_dir() else root / "cpu,cpuacct"
        d = _ancestors(cpu_root, groups.get("cpu", "/"))[0]
    else:
        return {}
    text = _read(d / "cpu.stat") or ""
    stats: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stats[key] = int(value)
    out = {"nr_periods": stats.get("nr_periods", 0), "nr_throttled": stats.get("nr_throttled", 0)}
    if "throttled_time" in stats:  # v1: nanoseconds
        out["throttled_time_ns"] = stats["throttled_time"]
    elif "throttled_usec" in stats:  # v2: microseconds
        out["throttled_time_ns"] = stats["throttled_usec"] * 1000
    else:
        out["throttled_time_ns"] = 0
    return out


# ---------------------------------------------------------------------------
# Process counters


def _task_migrations() -> int:
    total = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for tid in tids:
        text = _read(Path(f"/proc/self/task/{tid}/sched")) or ""
        for line in text.splitlines():
            if line.startswith("se.nr_migrations"):
                total += int(line.split(":")[1])
                break
    return total


def _steal_ticks() -> int:
    text = _read(Path("/proc/stat")) or ""
    first = text.splitlines()[0].split() if text else []
    return int(first[8]) if len(first) > 8 else 0


@dataclasses.dataclass
class CounterSnapshot:
    voluntary_ctx_switches: int
    involuntary_ctx_switches: int
    cpu_migrations: int
    nr_throttled: int
    throttled_time_ns: int
    steal_ticks: int
    user_cpu_s: float
    system_cpu_s: float
    minor_page_faults: int = 0
    major_page_faults: int = 0

    @classmethod
    def take(cls) -> "CounterSnapshot":
        ru = resource.getrusage(resource.RUSAGE_SELF)
        stat = cpu_stat()
        return cls(
            voluntary_ctx_switches=ru.ru_nvcsw,
            involuntary_ctx_switches=ru.ru_nivcsw,
            cpu_migrations=_task_migrations(),
            nr_throttled=stat.get("nr_throttled", 0),
            throttled_time_ns=stat.get("throttled_time_ns", 0),
            steal_ticks=_steal_ticks(),
            user_cpu_s=ru.ru_utime,
            system_cpu_s=ru.ru_stime,
            minor_page_faults=ru.ru_minflt,
            major_page_faults=ru.ru_majflt,
        )

    def delta(self, before: "CounterSnapshot") -> dict:
        """Counters over the measured interval plus the process's peak RSS so far."""
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "voluntary_ctx_switches": self.voluntary_ctx_switches - before.voluntary_ctx_switches,
            "involuntary_ctx_switches": self.involuntary_ctx_switches - before.involuntary_ctx_switches,
            # migrations of threads alive at both ends; threads that ended in between are not counted
            "cpu_migrations": max(0, self.cpu_migrations - before.cpu_migrations),
            "nr_throttled": self.nr_throttled - before.nr_throttled,
            "throttled_time_s": (self.throttled_time_ns - before.throttled_time_ns) / 1e9,
            "steal_s": (self.steal_ticks - before.steal_ticks) / hz,
            "user_cpu_s": round(self.user_cpu_s - before.user_cpu_s, 6),
            "system_cpu_s": round(self.system_cpu_s - before.system_cpu_s, 6),
            "minor_page_faults": self.minor_page_faults - before.minor_page_faults,
            "major_page_faults": self.major_page_faults - before.major_page_faults,
            "peak_rss_bytes": ru.ru_maxrss * 1024,
        }


# ---------------------------------------------------------------------------
# Environment


def cpu_model() -> str:
    text = _read(Path("/proc/cpuinfo")) or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return _platform.processor() or "unknown"


def detect_emulation() -> bool | None:
    """True when the CPU flags say we run under QEMU TCG (a 'QEMU' model name or no hypervisor speed-up).

    Only a hint: platforms that launch a guest know whether they used TCG and say so in the spec.
    """
    model = cpu_model()
    if "QEMU" in model:
        return True
    return None


def environment(libraries: dict[str, str] | None = None) -> dict:
    uname = os.uname()
    return {
        "cpu_model": cpu_model(),
        "host_cpus": os.cpu_count(),
        "kernel": uname.release,
        "machine": uname.machine,
        "hostname": uname.nodename,
        "python": _platform.python_version(),
        "libraries": libraries or {},
        "cgroup_version": cgroup_version(),
        # set by the CN and VMCN platforms for their workers: the deployment itself is a container
        "in_container": os.environ.get("E2EBENCH_IN_CONTAINER") == "1",
        # signs that the whole host (bare metal included) is itself a container, as on some CI machines
        "host_container_evidence": [name for name, present in (
            ("/.dockerenv", Path("/.dockerenv").exists()),
            ("/run/.containerenv", Path("/run/.containerenv").exists()),
            ("$container", os.environ.get("container") is not None and os.environ.get("E2EBENCH_IN_CONTAINER") != "1"),
        ) if present],
    }


def now_epoch() -> float:
    return time.time()
