"""Harness overhead: the timed worker (LoadGen + per-request phase clocks) vs a plain, untimed loop.

Both do the same work on the same inputs with the same loaded model in the same process:
read -> preprocess -> collate -> infer -> postprocess, batch by batch.  They are alternated
(timed, plain, timed, plain, ...) so that drift on this shared machine hits both alike, and
the ratio of their wall times is printed per pair and as a median.  Goal: <= 1.01.

    .venv/bin/python benchmarks/harness_overhead.py [--app ic] [--requests 64] [--pairs 6] [--threads 2]

This measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="ic")
    parser.add_argument("--variant", default="full")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    from e2ebench.spec import WorkerSpec
    from e2ebench.worker import Worker, _configure_threads_env

    deployment = {"platform": "BM", "cores": args.threads, "cpu_mode": "VNL", "device": "CPU"}
    spec = WorkerSpec(app=args.app, deployment=deployment, requests=args.requests, batch_size=args.batch_size,
                      variant=args.variant, threads=args.threads)
    _configure_threads_env(spec)

    import torch

    from e2ebench.apps import create_app
    from e2ebench.runner import default_data

    torch.set_num_threads(args.threads)
    data = args.data or default_data(args.app, args.requests)
    app = create_app(args.app, variant=args.variant)
    app.load("cpu", args.threads, None)
    refs = list(app.samples(data))
    # the same request indices LoadGen's Offline scenario issues (it samples the set with replacement)
    spec.data = str(data)

    def timed_run() -> float:
        worker = Worker(spec)
        _, wall_ns = worker._run_loadgen(app, refs)
        return wall_ns / 1e9

    def plain_run() -> float:
        indices = [i % len(refs) for i in range(args.requests)]
        t0 = time.perf_counter()
        for start in range(0, len(indices), args.batch_size):
            items = [app.preprocess(refs[i], app.read(refs[i])) for i in indices[start : start + args.batch_size]]
            batch = app.collate(items)
            app.postprocess(app.infer(batch), batch)
        return time.perf_counter() - t0

    timed_run()  # warm caches, OS page cache, allocator
    plain_run()
    pairs = []
    for i in range(args.pairs):
        if i % 2 == 0:
            t, p = timed_run(), plain_run()
        else:
            p, t = plain_run(), timed_run()
        pairs.append((t, p, t / p))
    ratios = [r for _, _, r in pairs]
    summary = {
        "app": args.app, "variant": args.variant, "requests": args.requests, "batch_size": args.batch_size,
        "threads": args.threads, "pairs": [{"timed_s": t, "plain_s": p, "ratio": r} for t, p, r in pairs],
        "median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
        "goal": 1.01,
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{args.app} ({args.variant}), {args.requests} requests, batch {args.batch_size}, {args.threads} threads")
    for k, (t, p, r) in enumerate(pairs):
        print(f"  pair {k}: timed worker {t:8.3f} s   plain loop {p:8.3f} s   ratio {r:.4f}")
    print(f"median ratio timed/plain = {summary['median_ratio']:.4f} (range {summary['min_ratio']:.4f}-"
          f"{summary['max_ratio']:.4f}); goal <= 1.01")


if __name__ == "__main__":
    main()
