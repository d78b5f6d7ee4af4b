#!/usr/bin/env python3
"""Do e2ebench's 95% intervals survive a re-run?  Coverage before and after issue 11, and verdict agreement.

The same study (default: the quick preset, as the user runs it) is run ``--replicates K`` times in each of two
forms, alternated so that both meet the same host drift (A1 B1 A2 B2 ...), each in its own ``e2ebench study
--fresh`` process:

* **before** — ``[repetition] calibrate = false``: no probe, no rounds in the intervals; the runs-only Student-t
  interval and the stopping rule e2ebench had before issue 11;
* **after** — the study as shipped: a calibration probe per round, the drift in the intervals and in the stopping
  rule, comparisons paired by round.

Coverage: for every scenario and every ordered pair of replicates (i, j), i != j, of the *same form*, is replicate
i's mean inside replicate j's interval?  (A 95% interval should hold ~19 times in 20.)  A second, cross-form check
asks whether the means of the other form's replicates fall inside each interval too (a re-run is a re-run).
The "before" coverage is recomputed here from the store's raw rows with scipy (an independent second source for the
plain interval), and must agree with e2ebench's own.

Verdicts: every comparison (PIN vs VNL per app) gets faster / slower / no difference in each "after" replicate, from
the paired test and from Welch's test on the same runs (:mod:`e2ebench.replicates`); the goal is that no comparison
says faster in one replicate and slower in another.

    .venv/bin/python benchmarks/ci_coverage.py [--study quick] [--replicates 3] [--gap-s 0] [--out results/ci.json]

Prints the tables; writes everything as JSON with ``--out``.  Takes K x 2 x (one study) — about 30 minutes for the
quick preset with K = 3 on a 2-core host.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from e2ebench.replicates import replicate_report, report_lines  # noqa: E402
from e2ebench.store import Store  # noqa: E402
from e2ebench.study import resolve_study_path  # noqa: E402

CLI = [sys.executable, "-m", "e2ebench.cli"]


def study_variant(source: Path, folder: Path, calibrate: bool, name: str) -> Path:
    """A copy of the study file named ``name`` with ``calibrate`` set (TOML edited as text: one key added)."""
    text = source.read_text()
    text = re.sub(r'(?m)^name\s*=.*$', f'name = "{name}"', text, count=1)
    if "[repetition]" not in text:
        text += "\n[repetition]\n"
    text = text.replace("[repetition]", f"[repetition]\ncalibrate = {'true' if calibrate else 'false'}", 1)
    out = folder / f"{name}.toml"
    out.write_text(text)
    return out


def run_study(path: Path, store: Path) -> tuple[str, float]:
    t0 = time.monotonic()
    proc = subprocess.run(CLI + ["study", str(path), "--fresh", "--store", str(store), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"study {path.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return events[-1]["study_id"], wall


def plain_intervals(store: Path, study_id: str) -> dict[str, tuple[float, float, float, int]]:
    """{scenario: (mean, low, high, n)} from the raw rows: measured, ok, not an outlier; Student t (scipy)."""
    from scipy import stats as scipy_stats

    db = sqlite3.connect(store)
    rows = db.execute("SELECT scenario, e2e_s FROM runs WHERE study_id=? AND phase='measure' AND status='ok' "
                      "AND outlier=0 AND e2e_s IS NOT NULL", (study_id,)).fetchall()
    db.close()
    by: dict[str, list[float]] = {}
    for scenario, value in rows:
        by.setdefault(scenario, []).append(float(value))
    out = {}
    for scenario, values in by.items():
        n = len(values)
        m = sum(values) / n
        half = math.inf if n < 2 else float(scipy_stats.t.ppf(0.975, n - 1) * scipy_stats.tstd(values) / math.sqrt(n))
        out[scenario] = (m, m - half, m + half, n)
    return out


def coverage(intervals: list[dict], means: list[dict], same: bool) -> tuple[int, int]:
    """(hits, checks): means[i] of every scenario inside intervals[j]: i != j when both come from the same replicates
    (``same``), every i otherwise (the other form's replicates)."""
    hits = checks = 0
    for j, ci in enumerate(intervals):
        for i, m in enumerate(means):
            if same and i == j:
                continue
            for scenario, (low, high) in ci.items():
                if scenario in m:
                    checks += 1
                    hits += int(bool(low <= m[scenario] <= high))
    return hits, checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="quick", help="study file or preset (default: quick)")
    parser.add_argument("--replicates", type=int, default=3, help="replicates of each form (default 3)")
    parser.add_argument("--gap-s", type=float, default=0.0, help="pause between studies (default 0)")
    parser.add_argument("--store", type=Path, help="store to use (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--analyse-only", action="store_true",
                        help="run nothing: analyse the coverage-before/-after studies already in --store")
    args = parser.parse_args()
    if args.replicates < 2:
        parser.error("--replicates must be at least 2")
    source = resolve_study_path(args.study)
    folder = Path(tempfile.mkdtemp(prefix="e2ebench-ci-coverage-"))
    store = args.store or folder / "coverage.sqlite"
    before_file = study_variant(source, folder, False, "coverage-before")
    after_file = study_variant(source, folder, True, "coverage-after")
    ids: dict[str, list[str]] = {"before": [], "after": []}
    walls: dict[str, list[float]] = {"before": [], "after": []}
    started = time.monotonic()
    if args.analyse_only:
        if not args.store:
            parser.error("--analyse-only needs --store")
        with Store(args.store) as st:
            for record in sorted(st.studies(), key=lambda r: r["created_at"]):
                if record["name"] in ("coverage-before", "coverage-after") and record["status"] == "complete":
                    form = record["name"].split("-")[1]
                    ids[form].append(record["id"])
                    runs = st.runs(study_id=record["id"], phase=None, with_result=False)
                    walls[form].append(max(r["finished_at"] for r in runs) - min(r["started_at"] for r in runs))
    for k in range(0 if args.analyse_only else args.replicates):
        for form, path in (("before", before_file), ("after", after_file)):
            study_id, wall = run_study(path, store)
            ids[form].append(study_id)
            walls[form].append(wall)
            print(f"[{time.monotonic() - started:7.0f} s] replicate {k + 1} {form}: {study_id} ({wall:.0f} s)",
                  flush=True)
            if args.gap_s:
                time.sleep(args.gap_s)

    with Store(store) as st:
        reports = {form: replicate_report(st, ids[form]) for form in ids}
    # the intervals each form reports, and every replicate's means
    intervals: dict[str, list[dict]] = {}
    means: dict[str, list[dict]] = {}
    for form, report in reports.items():
        kind = "runs" if form == "before" else "drift"
        intervals[form] = [{} for _ in ids[form]]
        means[form] = [{} for _ in ids[form]]
        for s in report.scenarios:
            for r, m in enumerate(s.means_s):
                half = s.half_widths_pct[kind][r] * abs(m) / 100.0
                intervals[form][r][s.scenario] = (m - half, m + half)
                means[form][r][s.scenario] = m
    # the independent check of the "before" intervals: raw rows + scipy
    raw_hits, raw_checks = coverage(
        [{k: (v[1], v[2]) for k, v in plain_intervals(store, sid).items()} for sid in ids["before"]],
        [{k: v[0] for k, v in plain_intervals(store, sid).items()} for sid in ids["before"]], same=True)
    hits_b, checks_b = coverage(intervals["before"], means["before"], same=True)
    hits_a, checks_a = coverage(intervals["after"], means["after"], same=True)
    cross_b = coverage(intervals["before"], means["after"], same=False)
    cross_a = coverage(intervals["after"], means["before"], same=False)

    for form in ("before", "after"):
        print(f"\n== {form}: {'runs-only intervals, no probe' if form == 'before' else 'probe + drift + pairing'} ==")
        for line in report_lines(reports[form]):
            print(line)
    print("\n== coverage of 95% intervals by re-runs ==")
    print(f"{'intervals':<44} {'same form':>12} {'other form':>12} {'all':>8}")
    for title, (h, c), (xh, xc) in (("before (runs-only, no calibration)", (hits_b, checks_b), cross_b),
                                     ("after (drift-aware, calibrated)", (hits_a, checks_a), cross_a)):
        print(f"{title:<44} {f'{h}/{c}':>8} {100 * h / c:3.0f}% {f'{xh}/{xc}':>8} {100 * xh / xc:3.0f}% "
              f"{100 * (h + xh) / (c + xc):6.0f}%")
    print(f"independent check (raw rows + scipy, before): {raw_hits}/{raw_checks} — "
          + ("agrees" if (raw_hits, raw_checks) == (hits_b, checks_b) else "DISAGREES with e2ebench's"))
    verdicts = {test: reports["after"].agreement(test) for test in ("paired", "welch")}
    for test, (agree, identical, total) in verdicts.items():
        print(f"verdicts, {test}: {agree}/{total} never contradict across replicates, {identical}/{total} identical")
    mean_wall = {form: sum(w) / len(w) for form, w in walls.items()}
    print(f"mean study wall time: before {mean_wall['before']:.0f} s, after {mean_wall['after']:.0f} s "
          f"(probe and drift stopping rule included)")
    goal_cov = 100 * hits_a / checks_a if checks_a else 0
    goal_verdicts = verdicts["paired"][0] == verdicts["paired"][2]
    print(f"goal (>= 90% coverage after, no contradicting verdict): coverage {goal_cov:.0f}% "
          f"{'met' if goal_cov >= 90 else 'NOT met'}; verdicts {'met' if goal_verdicts else 'NOT met'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "study": str(source), "replicates": args.replicates, "store": str(store), "ids": ids, "walls_s": walls,
            "coverage": {"before": [hits_b, checks_b], "after": [hits_a, checks_a], "before_vs_after_means": cross_b,
                         "after_vs_before_means": cross_a, "before_raw_check": [raw_hits, raw_checks]},
            "reports": {form: r.to_dict() for form, r in reports.items()},
        }, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
