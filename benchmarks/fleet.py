"""Fleet benchmark: what Ray costs per run, and a fixed study's wall time on 1, 2 and 3 nodes of this machine.

1. **Overhead per run.**  The same tiny ic run (``ic@BM/1/PIN/CPU``, variant tiny) is made alternately

   * *local*: :func:`e2ebench.study_runner.run_in_platform` in this process (what ``study`` without ``--cluster``
     calls), and
   * *Ray*: the fleet's run task on a node of a real Ray cluster (one node, ``ray.cluster_utils.Cluster``), timed from
     the submit to the result back in the driver.

   The task also times its own body; *dispatch + collection* = Ray wall - the body's wall, i.e. what Ray adds to a run
   (scheduling, the worker, pickling the order and the result, the host's data-hash check and housekeeping are in the
   body).  Goal (issue 14): under 2% of a tiny ic run's local wall time.
2. **Scaling.**  ``e2ebench study FILE --cluster ADDRESS --fresh`` of a fixed study (ic tiny, BM, cores 1 and 2,
   VNL and PIN: 4 scenarios x 3 runs) on clusters of 1, 2 and 3 e2ebench nodes; the study's wall time.  All nodes
   share this machine's cores, so the wall time falls only as long as the cores allow.

    .venv/bin/python benchmarks/fleet.py [--pairs 8] [--runs 3] [--nodes 1 2 3] [--json]

This measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from e2ebench import fleet
from e2ebench.runner import Workload
from e2ebench.scenario import Scenario
from e2ebench.study_runner import run_in_platform

GOAL_PCT = 2.0
CLI = [sys.executable, "-c", "from e2ebench.cli import main; main()"]


def start_cluster(nodes: int) -> Cluster:
    cluster = Cluster(initialize_head=False)
    for index in range(nodes):
        args = {"resources": {fleet.HOST_RESOURCE: 1}, "num_cpus": 1, "object_store_memory": 80 * 1024 * 1024,
                "labels": {fleet.HOST_LABEL: "head" if index == 0 else f"node{index}"}}
        if index == 0:
            args["include_dashboard"] = False
        cluster.add_node(**args)
    return cluster


@ray.remote(num_cpus=0, max_retries=0, resources={fleet.HOST_RESOURCE: 1})
def _timed_run(order: fleet.RunOrder) -> tuple[dict, float]:
    t0 = time.perf_counter()
    result = fleet.execute_order(order)
    return result, time.perf_counter() - t0


def overhead(pairs: int, work: Path) -> dict:
    scenario = Scenario.parse("ic@BM/1/PIN/CPU")
    workload = Workload(requests=4, variant="tiny", timeout_s=180).resolved("ic")
    data = fleet.prepare_data("ic", workload)
    digest = fleet.data_sha256(data)
    cluster = start_cluster(1)
    local_s, ray_s, body_s = [], [], []
    try:
        fleet.connect(cluster.address)
        host = fleet.discover_hosts(["BM"])[0]
        for index in range(pairs):
            order = fleet.RunOrder("bench", scenario, workload, "measure", index, {}, digest, host.name,
                                   host.host_type, str(work / "logs"))
            for kind in (("local", "ray") if index % 2 == 0 else ("ray", "local")):
                t0 = time.perf_counter()
                if kind == "local":
                    result = run_in_platform(scenario, workload, data, {}, work / "logs" / f"local-{index}").as_dict()
                    local_s.append(time.perf_counter() - t0)
                else:
                    result, inner = ray.get(_timed_run.options(
                        scheduling_strategy=fleet._on_node(host.node_id)).remote(order))
                    ray_s.append(time.perf_counter() - t0)
                    body_s.append(inner)
                if result.get("error"):
                    raise SystemExit(f"{kind} run failed: {result['error']}")
    finally:
        fleet.disconnect()
        cluster.shutdown()
    added = [r - b for r, b in zip(ray_s, body_s)]
    local = statistics.median(local_s)
    return {"pairs": pairs, "local_wall_s": local, "ray_wall_s": statistics.median(ray_s),
            "ray_body_s": statistics.median(body_s), "dispatch_collection_s": statistics.median(added),
            "dispatch_collection_max_s": max(added),
            "overhead_pct_of_local_run": 100 * statistics.median(added) / local, "goal_pct": GOAL_PCT}


def study_file(work: Path, runs: int) -> Path:
    path = work / "fleet-bench.toml"
    path.write_text(textwrap.dedent(f"""
        name = "fleet-bench"
        store = "{work / 'fleet-bench.sqlite'}"
        timeout_s = 180
        apps = ["ic"]
        platforms = ["BM"]
        cores = [1, 2]
        cpu_modes = ["VNL", "PIN"]
        [repetition]
        warmup_runs = 0
        min_runs = {runs}
        max_runs = {runs}
        calibrate = false
        [workload.ic]
        requests = 4
        variant = "tiny"
    """))
    return path


def scaling(node_counts: list[int], runs: int, work: Path) -> list[dict]:
    study = study_file(work, runs)
    rows = []
    for nodes in node_counts:
        cluster = start_cluster(nodes)
        try:
            t0 = time.perf_counter()
            proc = subprocess.run(CLI + ["study", str(study), "--cluster", cluster.address, "--fresh", "--quiet"],
                                  capture_output=True, text=True, timeout=1800)
            wall = time.perf_counter() - t0
        finally:
            cluster.shutdown()
        if proc.returncode != 0:
            raise SystemExit(f"study on {nodes} node(s) failed ({proc.returncode}): {proc.stderr[-2000:]}")
        rows.append({"nodes": nodes, "runs": 4 * runs, "study_wall_s": wall})
    base = rows[0]["study_wall_s"]
    for row in rows:
        row["speed_up"] = base / row["study_wall_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per scenario of the scaling study")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="e2ebench-fleet-bench-") as tmp:
        work = Path(tmp)
        over = overhead(args.pairs, work)
        scale = scaling(args.nodes, args.runs, work)
    out = {"cpus": len(os.sched_getaffinity(0)), "ray": ray.__version__, "overhead": over, "scaling": scale}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"Ray {ray.__version__} on {out['cpus']} CPUs; tiny ic run ic@BM/1/PIN/CPU, {over['pairs']} pairs alternated")
    print(f"{'':32}{'median':>10}")
    print(f"{'local run wall (s)':32}{over['local_wall_s']:10.3f}")
    print(f"{'Ray run wall, submit->result (s)':32}{over['ray_wall_s']:10.3f}")
    print(f"{'  of which the task body (s)':32}{over['ray_body_s']:10.3f}")
    print(f"{'dispatch + collection (s)':32}{over['dispatch_collection_s']:10.4f}  (max {over['dispatch_collection_max_s']:.4f})")
    verdict = "meets" if over["overhead_pct_of_local_run"] < GOAL_PCT else "misses"
    print(f"{'overhead, % of local run wall':32}{over['overhead_pct_of_local_run']:10.2f}  ({verdict} the "
          f"{GOAL_PCT:g}% goal)")
    print()
    print(f"fixed study: ic tiny, BM, cores 1 and 2, VNL and PIN, {args.runs} runs each")
    print(f"{'nodes':>6}{'runs':>6}{'wall (s)':>10}{'speed-up':>10}")
    for row in scale:
        print(f"{row['nodes']:>6}{row['runs']:>6}{row['study_wall_s']:>10.1f}{row['speed_up']:>10.2f}")


if __name__ == "__main__":
    main()
