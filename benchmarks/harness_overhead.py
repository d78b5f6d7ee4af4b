"""Harness overhead: `e2ebench run APP BM/N/PIN/CPU` against an independent plain program, each in its own process.

For every application (and ic's two backends) the same work — the same data files, in the order LoadGen issues
them in the e2ebench run, the same model class and seeded weights, the same batch size and thread count — is done by

* **e2ebench**: ``e2ebench run APP BM/N/PIN/CPU --json`` (worker, LoadGen, phase clocks, counters, cgroups);
* **plain**: ``benchmarks/plain/APP.py`` — read, pre-process, infer, post-process on the main thread, nothing
  else (no LoadGen, no worker, no cgroup; ``torch.set_num_threads(N)``).

The two are alternated (e2ebench first in even pairs, plain first in odd ones) so that drift on a shared machine
hits both alike.  Per pair: the ratio of steady-state throughputs, e2ebench / plain (1.0 = no overhead; above 1
e2ebench is faster).  Printed per app: median ratio with its range, median throughputs, and the ratio of the infer
laps (plain infer seconds / e2ebench infer seconds), and a bootstrap 95% interval of the median ratio, which says
how far the pairs pin it down on a noisy host.  Goal: median ratio >= 0.99 for every app and backend.

    .venv/bin/python benchmarks/harness_overhead.py [--apps ic ic:onnxruntime sr nlp rs] [--pairs 5] [--cores 2]
                                                    [--variant full|tiny] [--json] [--out F]

This measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "benchmarks" / "plain"
GOAL = 0.99
#: (requests, batch size, data set size) per app: each run takes a few seconds with the full model at 2 cores.
WORKLOADS = {"ic": (64, 8, 64), "sr": (8, 4, 8), "nlp": (4, 4, 8), "rs": (1024, 16, 256)}


def e2ebench_bin() -> str:
    here = Path(sys.executable).parent / "e2ebench"
    return str(here) if here.exists() else "e2ebench"


def run_json(argv: list[str], timeout: float = 1800, cwd: Path = ROOT) -> dict:
    """Run a program that prints one JSON object; its last JSON line, or RuntimeError with its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(argv[:4])} ... printed no JSON (exit {proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if result.get("error"):
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed: {result['error']}")
    return result


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"cpu_model": model, "host_cpus": os.cpu_count(), "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%d"), "commit": commit or None}


def median_ci(values: list[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median (seeded): how well the pairs pin the median down."""
    import random

    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return medians[int(tail * resamples)], medians[min(resamples - 1, int((1 - tail) * resamples))]


def measure_app(spec: str, args, tmp: Path, store: Path) -> dict:
    sys.path.insert(0, str(PLAIN))
    import worklist

    from e2ebench.runner import default_data

    app, _, backend = spec.partition(":")
    backend = backend or "torch"
    requests, batch_size, data_count = WORKLOADS[app]
    requests = args.requests or requests
    data = default_data(app, data_count)
    work = worklist.write_work_list(tmp / f"work-{app}-{backend}.json", app, data, requests, batch_size,
                                    variant=args.variant)
    deployment = f"BM/{args.cores}/PIN/CPU"
    e2ebench_argv = [e2ebench_bin(), "run", app, deployment, "--requests", str(requests), "--batch-size",
                     str(batch_size), "--data", str(data), "--variant", args.variant, "--backend", backend,
                     "--json", "--store", str(store)]
    plain_argv = [sys.executable, str(PLAIN / f"{app}.py"), "--work-list", str(work), "--batch-size", str(batch_size),
                  "--threads", str(args.cores), "--variant", args.variant]
    if app == "ic":
        plain_argv += ["--backend", backend]

    def e2ebench_run() -> dict:
        r = run_json(e2ebench_argv, cwd=tmp)   # LoadGen's logs (results/logs) go to the temp folder
        return {"sps": r["throughput_sps"], "wall_s": r["e2e_s"], "infer_s": r["phases_s"]["infer"]}

    def plain_run() -> dict:
        r = run_json(plain_argv)
        return {"sps": r["throughput_sps"], "wall_s": r["wall_s"], "infer_s": r["phases_s"]["infer"]}

    e2ebench_run()   # untimed: page cache, ONNX export, data set generation
    plain_run()
    pairs = []
    for i in range(args.pairs):
        if i % 2 == 0:
            e, p = e2ebench_run(), plain_run()
        else:
            p, e = plain_run(), e2ebench_run()
        pairs.append({"e2ebench": e, "plain": p, "ratio": e["sps"] / p["sps"], "infer_ratio": p["infer_s"] / e["infer_s"]})
        if not args.json:
            print(f"  {spec:16s} pair {i}: e2ebench {e['sps']:8.3f}/s  plain {p['sps']:8.3f}/s  ratio {pairs[-1]['ratio']:.3f}"
                  f"  (infer laps {e['infer_s']:.3f} s vs {p['infer_s']:.3f} s)", flush=True)
    ratios = [p["ratio"] for p in pairs]
    return {
        "app": app, "backend": backend, "requests": requests, "batch_size": batch_size, "cores": args.cores,
        "variant": args.variant, "pairs": pairs,
        "median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
        "median_ratio_ci95": median_ci(ratios),
        "median_infer_ratio": statistics.median(p["infer_ratio"] for p in pairs),
        "e2ebench_median_sps": statistics.median(p["e2ebench"]["sps"] for p in pairs),
        "plain_median_sps": statistics.median(p["plain"]["sps"] for p in pairs),
        "goal": GOAL,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", nargs="+", default=["ic", "ic:onnxruntime", "sr", "nlp", "rs"],
                        help="APP or APP:BACKEND (default: ic ic:onnxruntime sr nlp rs)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--requests", type=int, default=None, help="override every app's request count")
    parser.add_argument("--variant", default="full", choices=("full", "tiny"))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="e2ebench-overhead-") as tmp:
        for spec in args.apps:
            rows.append(measure_app(spec, args, Path(tmp), Path(tmp) / "store.sqlite"))
    summary = {"machine": machine(), "deployment": f"BM/{args.cores}/PIN/CPU", "rows": rows, "goal": GOAL}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    if args.json:
        print(json.dumps(summary))
        return
    m = summary["machine"]
    print(f"\n{m['date']}, {m['cpu_model']}, {m['host_cpus']} CPUs, kernel {m['kernel']}, commit {m['commit']}; "
          f"{summary['deployment']}, {args.pairs} alternated pairs, {args.variant} models")
    print(f"{'app':16s} {'e2ebench/s':>11s} {'plain/s':>9s} {'ratio median':>13s} {'95% CI':>13s} {'range':>13s} "
          f"{'infer-lap ratio':>16s}")
    for r in rows:
        name = r["app"] + ("" if r["backend"] == "torch" else f" ({r['backend']})")
        low, high = r["median_ratio_ci95"]
        print(f"{name:16s} {r['e2ebench_median_sps']:11.3f} {r['plain_median_sps']:9.3f} {r['median_ratio']:13.3f} "
              f"{low:6.3f}-{high:.3f} {r['min_ratio']:6.3f}-{r['max_ratio']:.3f} {r['median_infer_ratio']:16.3f}")
    print(f"goal: median ratio >= {GOAL} (e2ebench throughput / plain throughput); 95% CI of the median by a seeded "
          "bootstrap over the pairs")


if __name__ == "__main__":
    main()
