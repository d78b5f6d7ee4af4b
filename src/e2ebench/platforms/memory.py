"""Memory limits of a deployment, and telling a worker the OOM killer killed from one that crashed.

* BM and CN: a memory cgroup with the limit (``memory.max`` + ``memory.swap.max = 0`` on cgroup v2,
  ``memory.limit_in_bytes`` + ``memory.memsw.limit_in_bytes`` on v1, so that swap cannot soften it).
  After the worker ends and before the cgroup is removed, the platform reads the cgroup's counters
  (:func:`read_memory_stats`): an ``oom_kill`` count that grew during the run means the kernel's OOM
  killer killed the worker; the peak (``memory.peak`` / ``memory.max_usage_in_bytes``) is recorded as
  ``peak_memory_mib``.
* VM, MVM, VMCN: the limit is the guest's memory; an OOM kill shows as the guest kernel's message
  (``Out of memory: Killed process ...``), found in the console by :func:`guest_oom_line`.

A worker killed that way becomes a failed RunResult (:func:`oom_result`) whose ``error`` is
``out of memory (limit N MiB) ...`` and whose ``oom_killed`` is true — not a crash with a traceback.
Standard library only (platforms import it without torch).
"""

from __future__ import annotations

import dataclasses
import re
import signal
from pathlib import Path

from e2ebench.spec import WorkerSpec

MIN_MEMORY_MIB = 64                 # below this not even the interpreter starts; refused as a usage error
MAX_MEMORY_MIB = 1 << 30            # 1 PiB: anything larger is a typo, not a limit
MIB = 1 << 20
# a cgroup's peak counts as "at the limit" within this much (the charge that failed is never counted)
PEAK_SLACK_BYTES = 2 * MIB
SIGKILL_STATUSES = (-signal.SIGKILL, 128 + signal.SIGKILL)   # Popen's -9; an engine's or a shell's 137


class MemoryLimitError(ValueError):
    """A memory limit that cannot be used (the message says why and what is accepted)."""


def platform_memory_mib(value: object | None) -> int | None:
    """A platform's ``memory_mib`` option: None, or a validated limit; a bad one raises PlatformError."""
    if value is None:
        return None
    from e2ebench.platforms.base import PlatformError

    try:
        return validate_memory_mib(value)
    except MemoryLimitError as exc:
        raise PlatformError(str(exc)) from None


def validate_memory_mib(value: object, minimum: int = MIN_MEMORY_MIB, what: str = "memory limit") -> int:
    """A whole number of MiB in [minimum, MAX_MEMORY_MIB]; anything else raises :class:`MemoryLimitError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MemoryLimitError(f"{what} {value!r} is not a whole number of MiB")
    if value < minimum:
        raise MemoryLimitError(f"{what} {value} MiB is too small: at least {minimum} MiB")
    if value > MAX_MEMORY_MIB:
        raise MemoryLimitError(f"{what} {value} MiB is too large: at most {MAX_MEMORY_MIB} MiB")
    return value


def memory_limit_problem(platform: str) -> str | None:
    """Why a memory limit cannot be applied to ``platform`` here (None: it can).  VM-based platforms always
    can: their limit is the guest's memory; the others (BM, CN) need a writable memory cgroup on the host."""
    from e2ebench.platforms import cgroups, is_guest

    if is_guest(platform):
        return None
    ok, why = cgroups.memory_writable()
    return None if ok else f"a memory limit needs a writable memory cgroup controller: {why}"


def oom_error(limit_mib: int | None) -> str:
    """The error text of an OOM-killed run: ``out of memory (limit N MiB)``."""
    return f"out of memory (limit {limit_mib} MiB)" if limit_mib else "out of memory"


# ---------------------------------------------------------------------------
# cgroup counters


@dataclasses.dataclass(frozen=True)
class MemoryStats:
    """What one memory cgroup says, read from its files (``None`` where the kernel has no such file)."""

    path: str
    version: int                       # 1 or 2
    oom_kills: int | None = None       # v2 memory.events oom_kill; v1 memory.oom_control oom_kill (kernel >= 4.13)
    limit_hits: int | None = None      # v2 memory.events max; v1 memory.failcnt (+ memsw.failcnt)
    peak_bytes: int | None = None      # v2 memory.peak (kernel >= 5.19); v1 memory.max_usage_in_bytes
    limit_bytes: int | None = None     # v2 memory.max; v1 memory.limit_in_bytes (None: unlimited)

    @property
    def peak_mib(self) -> float | None:
        return None if self.peak_bytes is None else round(self.peak_bytes / MIB, 1)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_memory_stats(d: Path | str) -> MemoryStats | None:
    """The memory counters of cgroup directory ``d`` (v1 or v2), or None when it has none (gone, no controller)."""
    d = Path(d)
    if (d / "memory.events").exists():
        events = _read_keyed(d / "memory.events")
        limit = _read_int(d / "memory.max")
        return MemoryStats(str(d), 2, events.get("oom_kill"), events.get("max"), _read_int(d / "memory.peak"), limit)
    if (d / "memory.limit_in_bytes").exists():
        control = _read_keyed(d / "memory.oom_control")
        hits = [v for v in (_read_int(d / "memory.failcnt"), _read_int(d / "memory.memsw.failcnt")) if v is not None]
        limit = _read_int(d / "memory.limit_in_bytes")
        if limit is not None and limit >= (1 << 62):      # v1 spells "unlimited" as a huge number
            limit = None
        return MemoryStats(str(d), 1, control.get("oom_kill"), sum(hits) if hits else None,
                           _read_int(d / "memory.max_usage_in_bytes"), limit)
    return None


def reset_peak(d: Path | str) -> None:
    """Start a new peak (v1: write 0 to ``memory.max_usage_in_bytes``; v2's ``memory.peak`` keeps the cgroup's
    lifetime peak, and e2ebench uses a new cgroup per session)."""
    try:
        (Path(d) / "memory.max_usage_in_bytes").write_text("0")
    except OSError:
        pass


def oom_kill_seen(before: MemoryStats | None, after: MemoryStats | None, returncode: int | None,
                  counts_descendants: bool = True, limit_bytes: int | None = None) -> str | None:
    """How the OOM killer's kill of the worker shows in the cgroup, or None when it does not.

    ``before``/``after``: the counters around the run (``before`` may be None: a new cgroup starts at 0).
    The ``oom_kill`` counter that grew is the evidence.  Where it is missing (v1 kernels before 4.13), or
    where ``after`` is a parent cgroup whose v1 counter does not count its children's kills
    (``counts_descendants=False``), the evidence is the exit by SIGKILL together with the cgroup at its limit
    (the limit-hit counter grew, or the peak reached the limit: ``limit_bytes``, else the cgroup's own limit).
    """
    if after is None:
        return None
    base_kills = (before.oom_kills if before else 0) or 0
    if after.oom_kills is not None and (counts_descendants or after.version == 2):
        grew = after.oom_kills - base_kills
        return f"{Path(after.path).name}: oom_kill {base_kills} -> {after.oom_kills}" if grew > 0 else None
    if returncode not in SIGKILL_STATUSES:
        return None
    base_hits = (before.limit_hits if before else 0) or 0
    if after.limit_hits is not None and after.limit_hits > base_hits:
        return f"{Path(after.path).name}: killed by SIGKILL after {after.limit_hits - base_hits} hit(s) of the limit"
    limit = limit_bytes if limit_bytes is not None else after.limit_bytes
    if after.peak_bytes is not None and limit is not None and after.peak_bytes >= limit - PEAK_SLACK_BYTES:
        return f"{Path(after.path).name}: killed by SIGKILL with its peak at the limit"
    return None


# ---------------------------------------------------------------------------
# guests


# The kernel's own lines (mm/oom_kill.c): "Out of memory: Killed process 4242 (python3) total-vm:...",
# "Memory cgroup out of memory: Killed process ...", "oom-kill:constraint=CONSTRAINT_NONE,...,task=python3,pid=4242,uid=0",
# "python3 invoked oom-killer: gfp_mask=...".
GUEST_OOM_PATTERNS = (
    re.compile(r"(?:Memory cgroup out of memory|Out of memory): Killed process \d+ \([^)]*\)"),
    re.compile(r"oom-kill:constraint=\S*"),
    re.compile(r"\S+ invoked oom-killer:"),
)


GUEST_KERNEL_PREFIX = "e2ebench-guest-kernel: "     # job.sh copies the guest's dmesg lines to the console with it


def guest_oom_line(console_text: str) -> str | None:
    """The guest kernel's OOM-kill message in a console log, or None.

    The most telling line wins: ``Killed process N (comm)``, else ``oom-kill:constraint=...``, else
    ``... invoked oom-killer``; job.sh's prefix is removed.
    """
    lines = console_text.splitlines()
    for pattern in GUEST_OOM_PATTERNS:
        for line in lines:
            if pattern.search(line):
                return line.replace(GUEST_KERNEL_PREFIX, "").strip()
    return None


# ---------------------------------------------------------------------------
# results


def oom_result(spec: WorkerSpec, limit_mib: int | None, evidence: str, peak_mib: float | None = None,
               output_tail: str = "", platform_info: dict | None = None, emulated: bool = False) -> dict:
    """A failed RunResult for a worker the OOM killer killed (the runner completes the timing fields)."""
    from e2ebench.result import RunResult
    from e2ebench.scenario import Deployment, Scenario

    try:
        scenario = Scenario(spec.app, Deployment.from_dict(spec.deployment), spec.mode, cache=spec.cache,
                            threads=spec.thread_policy)
        known = {}
    except Exception:   # the runner replaces it with its own scenario anyway
        scenario, known = None, {"scenario": spec.app, "app": spec.app, "deployment": spec.deployment}
    return RunResult.failure(
        scenario, spec, f"{oom_error(limit_mib)}: the kernel's OOM killer killed the worker", None,
        emulated=bool(emulated or spec.emulated), oom_killed=True, oom_evidence=evidence, memory_limit_mib=limit_mib,
        peak_memory_mib=peak_mib, output_tail=output_tail[-4000:], platform_info=dict(platform_info or {}), **known,
    ).as_dict()


def annotate(result: dict, limit_mib: int | None, stats: MemoryStats | None = None) -> dict:
    """Add ``memory_limit_mib``, ``peak_memory_mib`` and ``oom_killed`` (false) to a worker's RunResult."""
    result["memory_limit_mib"] = limit_mib
    result["peak_memory_mib"] = stats.peak_mib if stats is not None else None
    if result.get("oom_killed") is None:      # the worker cannot know; None until the platform looked
        result["oom_killed"] = False
    return result


__all__ = ["MIN_MEMORY_MIB", "MAX_MEMORY_MIB", "MemoryLimitError", "MemoryStats", "annotate", "guest_oom_line",
           "memory_limit_problem", "oom_error", "oom_kill_seen", "oom_result", "read_memory_stats", "reset_peak", "validate_memory_mib"]
