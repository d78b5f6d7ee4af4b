"""What `--cache cold` changes: the `io` phase with the inputs in the page cache (warm) and evicted (cold).

For each app (default ic and rs) and deployment (default BM/2/PIN/CPU and CN/2/PIN/CPU), runs
``e2ebench run APP DEPLOYMENT --cache warm`` and ``--cache cold`` alternately (warm first in even pairs), and
prints per pair the io phase in seconds and per request, the bytes the cold run evicted and found resident
afterwards, and the E2E time; then the medians.  The data sets are generated once on the same file system as
the default cache (``~/.cache/e2ebench``), a disk-backed one here (a tmpfs could not evict its pages).

    .venv/bin/python benchmarks/page_cache.py [--apps ic rs] [--deployments BM/2/PIN/CPU CN/2/PIN/CPU]
                                              [--pairs 3] [--variant full] [--json]

This measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from harness_overhead import e2ebench_bin, run_json   # benchmarks/ is the script's folder

WORKLOADS = {"ic": (64, 8, 64), "sr": (8, 4, 8), "nlp": (4, 4, 8), "rs": (256, 16, 256)}


def run(app: str, deployment: str, cache: str, data: Path, args, store: Path) -> dict:
    requests, batch, _ = WORKLOADS[app]
    argv = [e2ebench_bin(), "run", app, deployment, "--requests", str(requests), "--batch-size", str(batch),
            "--data", str(data), "--variant", args.variant, "--cache", cache, "--json", "--store", str(store)]
    result = run_json(argv, cwd=store.parent)
    return {"io_s": result["phases_s"]["io"], "io_ms_per_request": 1e3 * result["phases_s"]["io"] / result["completed"],
            "e2e_s": result["e2e_s"], "page_cache": result.get("page_cache"), "warnings": result.get("warnings")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", nargs="+", default=["ic", "rs"])
    parser.add_argument("--deployments", nargs="+", default=["BM/2/PIN/CPU", "CN/2/PIN/CPU"])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--variant", default="full", choices=("full", "tiny"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from e2ebench.runner import default_data

    rows = []
    with tempfile.TemporaryDirectory(prefix="e2ebench-pagecache-") as tmp:
        store = Path(tmp) / "store.sqlite"
        for app in args.apps:
            data = default_data(app, WORKLOADS[app][2])
            for deployment in args.deployments:
                pairs = []
                for i in range(args.pairs):
                    order = ("warm", "cold") if i % 2 == 0 else ("cold", "warm")
                    got = {cache: run(app, deployment, cache, data, args, store) for cache in order}
                    pairs.append(got)
                    if not args.json:
                        w, c = got["warm"], got["cold"]
                        print(f"  {app}@{deployment} pair {i}: io warm {w['io_s']:.4f} s ({w['io_ms_per_request']:.3f} ms/req)"
                              f"  cold {c['io_s']:.4f} s ({c['io_ms_per_request']:.3f} ms/req)  evicted "
                              f"{c['page_cache'].get('bytes')} B, resident after {c['page_cache'].get('resident_bytes_after')} B;"
                              f"  E2E warm {w['e2e_s']:.3f} s cold {c['e2e_s']:.3f} s", flush=True)
                row = {"app": app, "deployment": deployment, "pairs": pairs}
                for cache in ("warm", "cold"):
                    row[f"{cache}_io_s_median"] = statistics.median(p[cache]["io_s"] for p in pairs)
                    row[f"{cache}_io_ms_per_request_median"] = statistics.median(p[cache]["io_ms_per_request"] for p in pairs)
                    row[f"{cache}_e2e_s_median"] = statistics.median(p[cache]["e2e_s"] for p in pairs)
                row["io_cold_over_warm"] = row["cold_io_s_median"] / row["warm_io_s_median"]
                rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"\n{'scenario':22s} {'io warm':>10s} {'io cold':>10s} {'cold/warm':>10s} {'E2E warm':>9s} {'E2E cold':>9s}")
    for r in rows:
        print(f"{r['app'] + '@' + r['deployment']:22s} {r['warm_io_s_median']:9.4f}s {r['cold_io_s_median']:9.4f}s "
              f"{r['io_cold_over_warm']:10.1f} {r['warm_e2e_s_median']:8.3f}s {r['cold_e2e_s_median']:8.3f}s")


if __name__ == "__main__":
    main()
