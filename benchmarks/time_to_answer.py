"""Time to answer: adaptive stopping vs a fixed repetition count that reaches the same precision.

Measured, not asserted.  Runs a study (default: the ``quick`` preset) with adaptive stopping into a fresh
store — or reads a study already in a store (``--store``/``--study``) — and compares its wall time with
what a fixed repetition count would cost:

* **adaptive**: the sum of the wall times of the runs the study made (provisioning + worker + teardown,
  ``run_wall_s`` of each stored run, warm-ups and failures included); for the ratio, each scenario's
  warm-ups + the measured runs it needed, costed at its mean run wall time (a scenario that stopped at
  ``max_runs`` is charged the runs it would have needed).
* **fixed**: the smallest single count ``N`` that gives every scenario a confidence interval within the
  study's target — the largest number of measured runs any scenario needed — run for *every* scenario,
  costed at each scenario's mean run wall time.  A scenario that stopped at ``max_runs`` without reaching
  the target contributes the count predicted from its observed spread (``stats.predicted_runs_needed``
  without the cap); the ``N`` is then marked *estimated*.
* **paper**: the paper's fixed 1,000 runs per scenario, costed the same way.

``--measure-fixed`` also *runs* the fixed-count study (every scenario exactly ``N`` times) and reports its
measured wall time instead of the costed one (as long again as the adaptive study, or longer).

    .venv/bin/python benchmarks/time_to_answer.py                 # runs the quick study (a few minutes)
    .venv/bin/python benchmarks/time_to_answer.py --store results/e2ebench.sqlite --study quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from e2ebench.stats import predicted_runs_needed, relative_half_width_pct
from e2ebench.store import Store
from e2ebench.study import load_study, preset_path, resolve_study_path
from e2ebench.study_runner import StudyRunner, open_study

PAPER_RUNS = 1000


class PrintEachRun:
    def study_started(self, runner) -> None:
        print(f"study {runner.study_id}: {len(runner.states)} scenarios", file=sys.stderr)

    def run_started(self, state, phase, seq) -> None:
        pass

    def run_finished(self, event, state) -> None:
        e2e = "failed" if event.e2e_s is None else f"{event.e2e_s:.3f} s"
        ci = "?" if event.ci_halfwidth_pct is None else f"{event.ci_halfwidth_pct:.1f}%"
        print(f"  {event.scenario:<24} {event.phase:<7} #{event.seq:<3} {e2e:>10}  n={event.n} ±{ci} "
              f"[{event.scenario_status}] ({event.run_wall_s:.1f} s)", file=sys.stderr)

    def study_finished(self, outcome) -> None:
        print(f"study {outcome.study_id}: {outcome.status} in {outcome.wall_s:.0f} s", file=sys.stderr)


def run_study(study, store_path: Path) -> tuple[str, float]:
    plan = study.plan()
    with Store(store_path) as store:
        study_id, _ = open_study(store, study, plan, fresh=True)
        t0 = time.perf_counter()
        outcome = StudyRunner(plan, store, study_id, observer=PrintEachRun()).run()
        wall_s = time.perf_counter() - t0
    if outcome.status == "interrupted":
        raise SystemExit(130)
    return study_id, wall_s


def analyse(store_path: Path, study_id: str | None) -> dict:
    """Costs of the study ``study_id`` (id or name; None: the latest) in ``store_path``."""
    if not store_path.exists():
        raise SystemExit(f"store {store_path} does not exist")
    with Store(store_path) as store:
        if study_id is None:
            record = store.latest_study()
        else:
            record = store.get_study(study_id) or store.latest_study(name=study_id)
        if record is None:
            raise SystemExit(f"no study {study_id or ''} in {store_path}")
        study_id = record["id"]
        runs = store.runs(study_id=study_id, phase=None)
    repetition = record["config"]["config"]["repetition"]
    target, confidence = repetition["target_ci_halfwidth_pct"], repetition["confidence"]
    keep = repetition.get("keep_outliers", False)
    scenarios: dict[str, dict] = {}
    for run in runs:
        s = scenarios.setdefault(run["scenario"], {"walls": [], "values": [], "measured": 0, "warmups": 0})
        s["walls"].append(float(run["result"].get("run_wall_s") or (run["finished_at"] - run["started_at"])))
        if run["phase"] == "warmup":
            s["warmups"] += 1
        elif run["status"] == "ok":
            s["measured"] += 1
            if keep or not run["outlier"]:
                s["values"].append(float(run["e2e_s"]))
    needed, estimated = 0, False
    rows = []
    for key, s in scenarios.items():
        half = relative_half_width_pct(s["values"], confidence) if len(s["values"]) > 1 else math.inf
        reached = half <= target and len(s["values"]) >= repetition["min_runs"]
        n_needed = len(s["values"]) if reached else predicted_runs_needed(
            s["values"], repetition["min_runs"], 10**6, target, confidence)
        estimated |= not reached
        needed = max(needed, n_needed)
        rows.append({"scenario": key, "measured_runs": s["measured"], "warmup_runs": s["warmups"],
                     "ci_halfwidth_pct": None if not math.isfinite(half) else half, "target_reached": reached,
                     "runs_needed": n_needed, "mean_run_wall_s": sum(s["walls"]) / len(s["walls"]),
                     "wall_s": sum(s["walls"])})
    adaptive_s = sum(r["wall_s"] for r in rows)
    # both costed the same way (runs x each scenario's mean run wall time), so that the ratio is fair
    adaptive_to_target_s = sum((r["warmup_runs"] + r["runs_needed"]) * r["mean_run_wall_s"] for r in rows)
    fixed_s = sum((r["warmup_runs"] + needed) * r["mean_run_wall_s"] for r in rows)
    paper_s = sum((r["warmup_runs"] + PAPER_RUNS) * r["mean_run_wall_s"] for r in rows)
    return {"study_id": study_id, "target_ci_halfwidth_pct": target, "confidence": confidence, "scenarios": rows,
            "adaptive_wall_s": adaptive_s, "adaptive_to_target_s": adaptive_to_target_s,
            "fixed_runs": needed, "estimated": estimated, "fixed_wall_s": fixed_s,
            "fixed_over_adaptive": fixed_s / adaptive_to_target_s if adaptive_to_target_s else None,
            "paper_runs": PAPER_RUNS, "paper_wall_s": paper_s,
            "paper_over_adaptive": paper_s / adaptive_to_target_s if adaptive_to_target_s else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", nargs="?", default=None, help="study file or preset (default: quick)")
    parser.add_argument("--store", type=Path, help="analyse a study already in this store instead of running one")
    parser.add_argument("--study", dest="study_id", help="with --store: study id or name (default: the latest)")
    parser.add_argument("--measure-fixed", action="store_true", help="also run the fixed-count study and time it")
    args = parser.parse_args()

    study = load_study(resolve_study_path(args.study) if args.study else preset_path("quick"))
    with tempfile.TemporaryDirectory(prefix="e2ebench-tta-") as tmp:
        if args.store:
            store_path, study_id, measured_wall_s = args.store, args.study_id, None
        else:
            store_path = Path(tmp) / "adaptive.sqlite"
            study_id, measured_wall_s = run_study(study, store_path)
        report = analyse(store_path, study_id)
        report["adaptive_study_wall_s"] = measured_wall_s
        if args.measure_fixed:
            n = report["fixed_runs"]
            repetition = dataclasses.replace(study.repetition, min_runs=n, max_runs=n)
            config = {**study.config, "repetition": dataclasses.asdict(repetition)}
            fixed = dataclasses.replace(study, repetition=repetition, config=config)
            _, fixed_wall_s = run_study(fixed, Path(tmp) / "fixed.sqlite")
            report["fixed_wall_s_measured"] = fixed_wall_s
            if measured_wall_s:
                report["fixed_over_adaptive_measured"] = fixed_wall_s / measured_wall_s

    print(f"study {report['study_id']}: target ±{report['target_ci_halfwidth_pct']:g}% at "
          f"{100 * report['confidence']:g}% confidence")
    for r in report["scenarios"]:
        ci = "?" if r["ci_halfwidth_pct"] is None else f"{r['ci_halfwidth_pct']:.2f}%"
        print(f"  {r['scenario']:<26} {r['measured_runs']:>3} runs  ±{ci:<8} "
              f"{'target reached' if r['target_reached'] else 'needs ~' + str(r['runs_needed'])}  "
              f"{r['mean_run_wall_s']:.1f} s/run")
    print(f"adaptive, as run: {report['adaptive_wall_s']:.0f} s of runs"
          + (f" ({report['adaptive_study_wall_s']:.0f} s wall)" if report["adaptive_study_wall_s"] else ""))
    note = " (estimated: some scenario stopped at max_runs before the target)" if report["estimated"] else ""
    print(f"adaptive, to the target: {report['adaptive_to_target_s']:.0f} s{note}")
    print(f"fixed {report['fixed_runs']} runs per scenario: {report['fixed_wall_s']:.0f} s  "
          f"-> fixed/adaptive = {report['fixed_over_adaptive']:.2f}")
    if "fixed_wall_s_measured" in report:
        print(f"fixed, measured: {report['fixed_wall_s_measured']:.0f} s wall")
    print(f"paper's {PAPER_RUNS} runs per scenario: {report['paper_wall_s'] / 3600:.1f} h  -> "
          f"paper/adaptive = {report['paper_over_adaptive']:.0f}")
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
