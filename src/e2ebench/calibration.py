"""The calibration probe: how fast the host is at the start of every study round.

A study's confidence intervals come from its runs, and its runs all happen within minutes; a host whose speed moves
between studies (other tenants, frequency, thermal state) moves every mean of the next study together, which intervals
built from one study's runs cannot know (issue 11: the quick preset run twice, 2 of 6 means inside the first study's
intervals).  The probe measures that speed directly, independently of the applications: a fixed amount of CPU work
(single-precision matrix products, 384 x 384, 64 per repeat, 5 timed repeats after one untimed), in a fresh
process (the kind every run gets), pinned to the CPUs the study's runs use, with as many BLAS threads as CPUs.  It
takes ~0.2 s of work (+ ~0.1 s to start Python and numpy) per round on a 2-core host.

NumPy (OpenBLAS) rather than torch: importing torch costs ~1.8 s per round, ten times the work itself; the product is
the same kind of dense arithmetic the models do.  The work is fixed (not the time), so probes of different studies on
one host compare; ``PROBE_VERSION`` changes whenever the work does, and only probes of the same version, CPUs and
threads are compared.

The probe's result: ``{"version", "host", "cpus", "threads", "started_at", "repeats_s": [...], "probe_s"}``
(``probe_s`` = the median repeat).  Run it by hand: ``python -m e2ebench.calibration --cpus 0,1``.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Sequence

PROBE_VERSION = 1
MATRIX_SIZE = 384
PRODUCTS_PER_REPEAT = 64
REPEATS = 5
PROBE_TIMEOUT_S = 60.0


class ProbeError(RuntimeError):
    """The probe could not run (the study goes on without a calibration for that round)."""


def host_name() -> str:
    """The host identity probes are grouped by (the node name)."""
    return socket.gethostname() or "localhost"


def probe_cpus(max_cores: int, host_cpus: Sequence[int] | None = None) -> list[int]:
    """The CPUs the probe runs on: those a pinned deployment of the study's largest core count gets
    (:func:`e2ebench.platforms.cgroups.choose_pinned_cpus`), so the probe sees the cores the runs use."""
    from e2ebench.platforms.cgroups import choose_pinned_cpus

    cpus = sorted(host_cpus if host_cpus is not None else os.sched_getaffinity(0))
    cores = max(1, min(int(max_cores), len(cpus)))
    try:
        return sorted(choose_pinned_cpus(cores, cpus))
    except Exception:
        return cpus[:cores]


def measure(repeats: int = REPEATS) -> list[float]:
    """The probe's work in this process: ``repeats`` timed repeats (seconds) after one untimed."""
    import numpy as np

    rng = np.random.default_rng(12345)
    a = rng.standard_normal((MATRIX_SIZE, MATRIX_SIZE), dtype=np.float32)
    b = rng.standard_normal((MATRIX_SIZE, MATRIX_SIZE), dtype=np.float32)
    out = []
    for index in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in range(PRODUCTS_PER_REPEAT):
            c = a @ b
        elapsed = time.perf_counter() - t0
        if index:
            out.append(elapsed)
    del c
    return out


def run_probe(cpus: Sequence[int], repeats: int = REPEATS, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """Run the probe in a fresh process pinned to ``cpus``; its result (see the module docstring)."""
    from e2ebench.lifecycle import die_with_parent

    cpus = sorted({int(c) for c in cpus})
    if not cpus:
        raise ProbeError("no CPUs to run the calibration probe on")
    threads = str(len(cpus))
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    command = [sys.executable, "-m", "e2ebench.calibration", "--cpus", ",".join(map(str, cpus)),
               "--repeats", str(int(repeats))]
    started = time.time()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s,
                              preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"the calibration probe did not finish within {timeout_s:g} s") from None
    except OSError as exc:
        raise ProbeError(f"the calibration probe could not start: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProbeError(f"the calibration probe failed (exit status {proc.returncode}): {last}")
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ProbeError("the calibration probe printed no result") from None
    result["started_at"] = started
    return result


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m e2ebench.calibration",
                                     description="Time e2ebench's calibration probe (fixed CPU work) on given CPUs.")
    parser.add_argument("--cpus", help="comma-separated CPU numbers to pin to (default: all allowed)")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if args.cpus:
        try:
            cpus = sorted({int(c) for c in args.cpus.split(",") if c.strip()})
        except ValueError:
            parser.error(f"--cpus must be comma-separated CPU numbers, got {args.cpus!r}")
        os.sched_setaffinity(0, cpus)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    started = time.time()
    repeats = measure(args.repeats)
    print(json.dumps({"version": PROBE_VERSION, "host": host_name(), "cpus": cpus,
                      "threads": int(os.environ.get("OPENBLAS_NUM_THREADS") or len(cpus)), "started_at": started,
                      "repeats_s": repeats, "probe_s": statistics.median(repeats), "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
