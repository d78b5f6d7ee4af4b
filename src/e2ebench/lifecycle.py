"""Nothing e2ebench starts outlives the process that started it.

Three mechanisms, each covering what the others cannot:

* **Parent-death signal.**  Every process the runner starts directly (the BM worker, ``runc run`` /
  ``podman run``, QEMU, Firecracker) gets ``PR_SET_PDEATHSIG=SIGKILL`` between fork and exec, so the
  kernel kills it when the runner dies, also on SIGKILL.  The signal follows the *thread* that forked
  the child: the runner starts platforms from its main thread.
* **Lifeline.**  A container's worker is not the runner's child (``runc init``, ``conmon`` and
  ``containerd-shim`` stand between them) and survives ``runc run``'s death.  The runner holds an
  exclusive ``flock`` on a file in the run's log folder, which the container sees through its bind
  mount; the worker blocks in a shared ``flock`` on the same file in a daemon thread (no polling, no CPU)
  and exits the moment the kernel drops the runner's lock, that is the moment the runner dies.  As the
  container's init, its exit takes every other process of the container with it.  Used where the
  worker shares the host's kernel (BM, CN); a VM guest dies with QEMU instead.
* **Owner mark.**  Every worker, container and VMM carries ``E2EBENCH_OWNER=<pid>:<start time>`` of the
  e2ebench process that launched it in its environment.  :mod:`e2ebench.housekeeping` finds processes
  whose owner is gone (whatever the reason they survived) and removes them before the next run, and
  finds the live measurements of *other* owners to flag a run as contended.

Standard library only: the worker imports it before torch.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

PR_SET_PDEATHSIG = 1
OWNER_ENV = "E2EBENCH_OWNER"
LIFELINE_NAME = ".lifeline"
ORPHANED_EXIT = 75      # the worker's exit status when its runner died


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent (thread) dies."""
    if _PRCTL is None:
        return False
    return _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def die_with_parent(then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: SIGKILL this child when the caller dies, then run ``then``.

    The parent may die between fork and the ``prctl``; the child checks that its parent is still the
    one that forked it and exits otherwise.
    """
    parent = os.getpid()
    prctl = _PRCTL

    def child() -> None:   # between fork and exec: no allocation-heavy work
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(ORPHANED_EXIT)
        if then is not None:
            then()

    return child


# ---------------------------------------------------------------------------
# Owner marks


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of ``/proc/PID/stat``)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:
        fields = raw[raw.rindex(b")") + 2:].split()
        return int(fields[19])
    except (ValueError, IndexError):
        return None


def owner_token(pid: int | None = None) -> str:
    """``<pid>:<start ticks>``: names a process even after its pid is reused."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{process_start_ticks(pid) or 0}"


def parse_owner(token: str) -> tuple[int, int] | None:
    try:
        pid, ticks = token.strip().split(":", 1)
        return int(pid), int(ticks)
    except ValueError:
        return None


def owner_alive(token: str) -> bool:
    """Whether the process named by an owner token still runs (a reused pid does not count)."""
    parsed = parse_owner(token)
    if parsed is None:
        return True        # not ours to judge: never remove what we cannot attribute
    pid, ticks = parsed
    now = process_start_ticks(pid)
    return now is not None and (ticks == 0 or now == ticks)


def owner_env() -> dict[str, str]:
    return {OWNER_ENV: owner_token()}


# ---------------------------------------------------------------------------
# Lifeline


class Lifeline:
    """The runner's end: an exclusive ``flock`` on ``<folder>/.lifeline`` held for the whole run."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LIFELINE_NAME
        self._fd: int | None = None

    def __enter__(self) -> "Lifeline":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner_token().encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


def watch_lifeline(path: str | os.PathLike, on_lost: Callable[[], None] | None = None) -> threading.Thread | None:
    """The worker's end: a daemon thread blocked in a shared ``flock`` on ``path``; when the runner's lock is
    dropped (the runner exited or died) it calls ``on_lost`` (default: say so and ``_exit(75)``).

    Returns None, and watches nothing, when the file cannot be opened (the platform does not share it).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        print(f"e2ebench worker: lifeline {path} not usable ({exc.strerror}); not watching the runner",
              file=sys.stderr, flush=True)
        return None

    def lost() -> None:
        try:     # stderr's reader is usually the dead runner: a broken pipe must not stop the exit
            os.write(2, b"e2ebench worker: the e2ebench process that started this run is gone; exiting\n")
        except OSError:
            pass
        os._exit(ORPHANED_EXIT)

    def watch() -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)      # blocks, without CPU, while the runner holds LOCK_EX
                break
            except InterruptedError:
                continue
            except OSError:
                return                               # locks unsupported here: nothing to watch
        try:
            (on_lost or lost)()
        finally:
            os._exit(ORPHANED_EXIT)

    thread = threading.Thread(target=watch, name="e2ebench-lifeline", daemon=True)
    thread.start()
    return thread


__all__ = ["Lifeline", "LIFELINE_NAME", "ORPHANED_EXIT", "OWNER_ENV", "die_with_parent", "owner_alive",
           "owner_env", "owner_token", "parse_owner", "process_start_ticks", "set_parent_death_signal",
           "watch_lifeline"]
