#!/usr/bin/env python3
"""What a framework's default thread count would cost on a big host: N compute threads inside a 1-core limit.

On a 2-core host the frameworks' defaults choose 2 threads for a 1-core container, so the measured penalty of
`framework-default` is the penalty of 2 threads per core.  On a 64-core host they would choose 64.  This script
stands in for bigger hosts by forcing N threads (`--threads N`, every pool N) inside the same 1-core CFS quota
(`BM/1/VNL/CPU`), for N = 1, 2, 4, 8, 16, as one e2ebench study (interleaved, repeated), then fits
`overhead_model`'s oversubscription model t(N) = t1 + per_thread * (N - 1) to every run and **predicts** N = 64
with its 95% band.  The prediction is marked as such: it assumes the cost per extra thread stays constant, which
the measured points test only up to 16.

    .venv/bin/python benchmarks/thread_oversubscription.py [--app ic] [--threads 1,2,4,8,16] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from e2ebench.overhead_model import OVERSUBSCRIBED, fit_model  # noqa: E402
from e2ebench.stats import confidence_interval  # noqa: E402

WORKLOADS = {
    "ic": 'requests = 16\nbatch_size = 8\nloadgen_scenario = "offline"',
    "rs": 'requests = 64\nbatch_size = 16\nloadgen_scenario = "offline"',
}


def study_text(app: str, threads: list[int], runs: int, store: Path, deployment_platform: str) -> str:
    policies = json.dumps([str(n) for n in threads])
    return textwrap.dedent(f"""
        name = "thread-oversubscription"
        seed = 11
        store = "{store}"
        timeout_s = 900
        apps = ["{app}"]
        platforms = ["{deployment_platform}"]
        cores = [1]
        cpu_modes = ["VNL"]
        devices = ["CPU"]
        thread_policies = {policies}

        [repetition]
        warmup_runs = 1
        min_runs = {runs}
        max_runs = {runs}
    """) + f"\n[workload.{app}]\n{WORKLOADS[app]}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="ic", choices=sorted(WORKLOADS))
    parser.add_argument("--platform", default="BM", choices=["BM", "CN"])
    parser.add_argument("--threads", default="1,2,4,8,16", help="thread counts to force (default 1,2,4,8,16)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per thread count (default 3)")
    parser.add_argument("--predict", type=int, default=64, help="thread count to predict (default 64)")
    parser.add_argument("--store", help="keep the store here (default: a temporary folder)")
    args = parser.parse_args(argv)
    threads = sorted({int(t) for t in args.threads.split(",")})
    with tempfile.TemporaryDirectory(prefix="oversub-") as tmp:
        store = Path(args.store) if args.store else Path(tmp) / "oversub.sqlite"
        spec = Path(tmp) / "oversub.toml"
        spec.write_text(study_text(args.app, threads, args.runs, store, args.platform))
        proc = subprocess.run([sys.executable, "-m", "e2ebench.cli", "study", str(spec), "--quiet"], cwd=tmp)
        if proc.returncode != 0:
            print(f"the study exited {proc.returncode}", file=sys.stderr)
            return 1
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        rows = db.execute("SELECT thread_policy, e2e_s, result_json FROM runs WHERE phase = 'measure' AND "
                          "status = 'ok'").fetchall()
        db.close()
    points = [(int(policy), float(e2e)) for policy, e2e, _ in rows]
    throttled: dict[int, list[float]] = {}
    for policy, _, text in rows:
        counters = (json.loads(text).get("counters") or {})
        throttled.setdefault(int(policy), []).append(float(counters.get("throttled_time_s") or 0.0))
    print(f"# {args.app}@{args.platform}/1/VNL/CPU with N compute threads in a 1-core CFS quota "
          f"({args.runs} runs per N, interleaved)")
    print(f"{'threads':>8} {'E2E mean s':>11} {'95% CI ±':>9} {'vs 1 thread':>12} {'throttled s/run':>16}")
    base = None
    for n in threads:
        values = [t for k, t in points if k == n]
        ci = confidence_interval(values, 0.95)
        base = base or ci.mean
        print(f"{n:>8} {ci.mean:>11.3f} {ci.half_width:>9.3f} {100 * (ci.mean / base - 1):>+11.1f}% "
              f"{sum(throttled[n]) / len(throttled[n]):>16.3f}")
    fit = fit_model(OVERSUBSCRIBED, "e2e", [k for k, _ in points], [t for _, t in points])
    if fit is None:
        print("the oversubscription model could not be fitted")
        return 1
    pred = fit.predict(args.predict)
    t1 = fit.params["t1_s"]
    print(f"\nmodel t(N) = t1 + per_thread * (N - 1): t1 = {t1:.3f} s, per_thread = "
          f"{fit.params['per_thread_s'] * 1000:+.2f} ms per extra thread, R² = {fit.r2 if fit.r2 is None else round(fit.r2, 3)}")
    band = f" (95% band of the mean {pred.ci_s[0]:.3f}–{pred.ci_s[1]:.3f} s)" if pred.ci_s else ""
    print(f"PREDICTED, not measured: {args.predict} threads in a 1-core limit (a framework default on a "
          f"{args.predict}-core host): E2E {pred.value_s:.3f} s{band}, {100 * (pred.value_s / t1 - 1):+.1f}% over 1 thread"
          f"{' — extrapolated beyond the measured ' + str(max(threads)) + ' threads' if pred.extrapolated else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
