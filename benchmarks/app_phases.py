"""Where the E2E time goes: per app, the share of io / pre / infer / post at 1 and 2 pinned cores on bare
metal, and the inference-only time next to the E2E time (the paper's Fig. 5 comparison).

    .venv/bin/python benchmarks/app_phases.py [--apps ic sr nlp rs] [--cores 1 2] [--requests N] [--json]

Full-size models, default data sets.  Each (app, cores) pair runs E2E then inference-only back to back
in fresh worker processes.  This measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

DEFAULT_REQUESTS = {"ic": 64, "sr": 8, "nlp": 4, "rs": 64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", nargs="+", default=["ic", "sr", "nlp", "rs"])
    parser.add_argument("--cores", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--requests", type=int, default=None, help="override every app's request count")
    parser.add_argument("--mode", default="PIN", choices=["PIN", "VNL"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from e2ebench.runner import Workload, run_single
    from e2ebench.scenario import Deployment, Scenario
    from e2ebench.store import Store

    rows = []
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.sqlite") as store:
        for app in args.apps:
            for cores in args.cores:
                deployment = Deployment("BM", cores, args.mode, "CPU")
                workload = Workload(requests=args.requests or DEFAULT_REQUESTS.get(app))
                e2e = run_single(Scenario(app, deployment, "e2e"), workload, store=store,
                                 results_dir=Path(tmp)).as_dict()
                only = run_single(Scenario(app, deployment, "inference-only"), workload, store=store,
                                  results_dir=Path(tmp)).as_dict()
                row = {"app": app, "deployment": str(deployment), "requests": workload.requests,
                       "error": e2e.get("error") or only.get("error")}
                if not row["error"]:
                    total = e2e["e2e_s"]
                    row.update({
                        "e2e_s": total,
                        "shares_pct": {k: 100 * v / total for k, v in e2e["phases_s"].items()},
                        "inference_only_s": only["e2e_s"],
                        "e2e_over_inference_only": total / only["e2e_s"] if only["e2e_s"] else None,
                    })
                rows.append(row)
                if not args.json:
                    _print_row(row)
    if args.json:
        print(json.dumps(rows))


def _print_row(row: dict) -> None:
    if row["error"]:
        print(f"{row['app']:4} {row['deployment']:14} FAILED: {row['error']}")
        return
    s = row["shares_pct"]
    print(f"{row['app']:4} {row['deployment']:14} n={row['requests']:<4} E2E {row['e2e_s']:8.3f} s | "
          f"io {s['io']:5.2f}% pre {s['pre']:5.1f}% infer {s['infer']:5.1f}% post {s['post']:5.2f}% "
          f"other {s['other']:5.2f}% | inference-only {row['inference_only_s']:8.3f} s "
          f"(E2E/inference-only {row['e2e_over_inference_only']:.2f}x)")


if __name__ == "__main__":
    main()
