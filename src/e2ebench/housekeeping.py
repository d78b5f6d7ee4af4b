"""What dead e2ebench processes left behind, and which other measurements run now.

:func:`clean_leftovers` runs before every ``run`` and study: it removes what an e2ebench process that
died (SIGKILL, OOM, power cut of the terminal) left — processes carrying its owner mark
(:data:`e2ebench.lifecycle.OWNER_ENV`): workers, containers' processes, QEMU/Firecracker; the
``e2ebench`` cgroups named after it; its ``runc`` containers; its ``/tmp/e2ebench-<pid>-*`` folders — and
returns one line per thing removed, which the CLI prints.  Nothing whose owner is alive (or unknown)
is touched.

:func:`other_measurements` lists the live workers and VMMs of *other* e2ebench processes and the CPUs
they may use; the runner records them in a run's result as ``contended``.

Processes are read through psutil (environment, command line, CPU affinity, state), which also copes with a
process that ends while it is being read.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil

from e2ebench.lifecycle import OWNER_ENV, owner_alive, parse_owner

TEMP_PREFIX = "e2ebench-"
_TEMP_OWNED = re.compile(r"^e2ebench-(\d+)-")


def temp_prefix() -> str:
    """Prefix of this process's temporary folders: ``e2ebench-<pid>-`` (the pid names the owner)."""
    return f"{TEMP_PREFIX}{os.getpid()}-"


@dataclasses.dataclass
class MarkedProcess:
    pid: int
    owner: str          # the owner token
    what: str           # "worker", "qemu", "firecracker", "runc", "podman", ...
    command: str        # the command line, shortened
    cpus: list[int]     # CPUs it may run on (Cpus_allowed_list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _owner_of(proc: psutil.Process) -> str | None:
    """The owner mark in the process's environment; None without one, or when it cannot be read (gone, not ours)."""
    try:
        return proc.environ().get(OWNER_ENV)
    except (psutil.Error, OSError):
        return None


def _allowed_cpus(proc: psutil.Process) -> list[int]:
    """The CPUs the process may run on (its affinity, as ``Cpus_allowed_list``); [] when it cannot be read."""
    try:
        return sorted(proc.cpu_affinity())
    except (psutil.Error, OSError):
        return []


def _describe(proc: psutil.Process) -> tuple[str, str]:
    try:
        argv = proc.cmdline()
    except (psutil.Error, OSError):
        argv = []
    command = " ".join(argv)[:160]
    if "e2ebench.worker" in argv:
        return "worker", command
    name = os.path.basename(argv[0]) if argv else "?"
    if name.startswith("qemu-system"):
        return "qemu", command
    for known in ("firecracker", "runc", "podman", "conmon", "docker"):
        if name.startswith(known):
            return known, command
    return name, command


def marked_processes() -> list[MarkedProcess]:
    """Every process carrying an e2ebench owner mark (needs root to read other users' environments)."""
    out = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        owner = _owner_of(proc)
        if owner is None:
            continue
        what, command = _describe(proc)
        out.append(MarkedProcess(proc.pid, owner, what, command, _allowed_cpus(proc)))
    return out


def other_measurements(cpus: list[int] | None = None) -> list[dict]:
    """Live measurement processes (workers, VMMs) of *other* e2ebench processes that may use ``cpus``
    (any CPU when None)."""
    own = os.getpid()
    found = []
    wanted = set(cpus) if cpus else None
    for proc in marked_processes():
        parsed = parse_owner(proc.owner)
        if parsed is None or parsed[0] == own or not owner_alive(proc.owner):
            continue
        if proc.what not in ("worker", "qemu", "firecracker"):
            continue
        if wanted is not None and proc.cpus and not wanted & set(proc.cpus):
            continue
        found.append({"pid": proc.pid, "what": proc.what, "owner_pid": parsed[0], "cpus": proc.cpus,
                      "command": proc.command})
    return found


def kill_orphans(grace_s: float = 2.0) -> list[str]:
    """SIGKILL every marked process whose owner is gone; one line per process."""
    victims = [p for p in marked_processes() if not owner_alive(p.owner)]
    removed = []
    for proc in victims:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except PermissionError:
            continue
        removed.append(f"process {proc.pid} ({proc.what}, owner {proc.owner.split(':')[0]} gone): {proc.command[:80]}")
    deadline = time.monotonic() + grace_s
    for proc in victims:
        while is_running(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    return removed


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False


def stale_temp_folders(parent: Path | None = None) -> list[Path]:
    """``e2ebench-<pid>-*`` folders in the temp directory whose owner pid is gone."""
    parent = Path(parent or tempfile.gettempdir())
    out = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return out
    for entry in entries:
        match = _TEMP_OWNED.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        if psutil.pid_exists(int(match.group(1))):
            continue
        out.append(entry)
    return sorted(out)


def remove_temp_folders(parent: Path | None = None) -> list[str]:
    from e2ebench.platforms.container import _is_mount_free

    removed = []
    for folder in stale_temp_folders(parent):
        if not _is_mount_free(folder):
            removed.append(f"left {folder} in place: something is mounted under it")
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(f"temporary folder {folder}")
    return removed


def clean_leftovers() -> list[str]:
    """Remove what dead e2ebench processes left; one line per thing removed (or left, with why)."""
    from e2ebench.platforms import cgroups

    lines = kill_orphans()
    if shutil.which("runc"):
        from e2ebench.platforms.container import remove_stale_containers

        try:
            lines += [f"container {name}" if not name.startswith("/") else f"cgroup {name}"
                      for name in remove_stale_containers("runc")]
        except Exception as exc:   # housekeeping must never stop a run
            lines.append(f"could not list runc containers: {type(exc).__name__}: {exc}")
    try:
        lines += [f"cgroup {d}" for d in cgroups.remove_stale()]
    except Exception as exc:
        lines.append(f"could not clean cgroups: {type(exc).__name__}: {exc}")
    lines += remove_temp_folders()
    return lines


__all__ = ["MarkedProcess", "clean_leftovers", "is_running", "kill_orphans", "marked_processes", "other_measurements",
           "remove_temp_folders", "stale_temp_folders", "temp_prefix"]
