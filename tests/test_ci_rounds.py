"""Issue 11: intervals that survive a re-run — the calibration probe, host drift, comparisons paired by round, the
drift in the intervals and the stopping rule, ``study --replicate``.

Statistics are checked against hand-computed values and against scipy's own tests (a second source); the probe and
the study runner run for real (tiny IC on bare metal)."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from conftest import run_cli
from e2ebench import stats
from e2ebench.calibration import PROBE_VERSION, REPEATS, probe_cpus, run_probe
from e2ebench.drift import UNSTABLE_DRIFT_PCT, host_drift
from e2ebench.store import Store

pytestmark = pytest.mark.timeout(600)


# ---------------------------------------------------------------------------------------------
# statistics, by hand and against scipy


def test_the_drift_is_added_to_the_runs_interval_in_quadrature():
    ci = stats.drift_aware_interval([1.0, 2.0, 3.0], drift_pct=10.0, confidence=0.95)
    runs_half = 4.302652729911275 * 1.0 / math.sqrt(3)          # t(0.975, 2) * s / sqrt(n), s = 1
    drift_half = 1.959963984540054 * 0.10 * 2.0                # z(0.975) * 10% * mean
    assert ci.mean == 2.0 and ci.n == 3 and ci.drift_pct == 10.0
    assert ci.runs_half_width == pytest.approx(runs_half, rel=1e-9)
    assert ci.half_width == pytest.approx(math.hypot(runs_half, drift_half), rel=1e-9)
    plain = stats.drift_aware_interval([1.0, 2.0, 3.0], drift_pct=0.0)
    assert plain.half_width == pytest.approx(runs_half, rel=1e-9) and plain.drift_pct == 0.0
    assert math.isinf(stats.drift_aware_interval([1.0], 10.0).half_width)


def test_paired_log_ratio_matches_scipy_and_a_hand_example():
    exact = stats.paired_log_ratio([2.0, 4.0, 8.0], [1.0, 2.0, 4.0])
    assert exact.pairs == 3 and exact.ratio == pytest.approx(2.0) and exact.ratio_ci == pytest.approx((2.0, 2.0))
    assert exact.p_value < 1e-12 and exact.difference == pytest.approx(7.0 / 3.0)
    a, b = [1.10, 2.31, 2.95, 1.52], [1.00, 2.00, 3.00, 1.40]
    result = stats.paired_log_ratio(a, b)
    logs = [math.log(x / y) for x, y in zip(a, b)]
    assert result.p_value == pytest.approx(scipy_stats.ttest_rel([math.log(x) for x in a],
                                                                 [math.log(y) for y in b]).pvalue)
    t = scipy_stats.t.ppf(0.975, 3)
    se = scipy_stats.sem(logs)
    assert result.ratio == pytest.approx(math.exp(sum(logs) / 4))
    assert result.ratio_ci == pytest.approx((math.exp(sum(logs) / 4 - t * se), math.exp(sum(logs) / 4 + t * se)))
    assert stats.paired_log_ratio([1.0], [2.0]) is None
    with pytest.raises(ValueError):
        stats.paired_log_ratio([1.0, 2.0], [1.0])


def test_pairing_by_round_cancels_drift_that_welch_cannot_see_through():
    """Both scenarios move together with the host (+-20% from round to round); the subject is 5% faster in every
    round.  Paired: significant and about 0.95; Welch on the same runs: lost in the drift."""
    drift = [1.0, 1.2, 0.85, 1.1, 0.8, 1.15, 0.9, 1.05]
    wobble = [1.0, 1.004, 0.997, 1.002, 0.999, 1.003, 0.996, 1.001]
    baseline = [2.0 * h for h in drift]
    subject = [1.9 * h * w for h, w in zip(drift, wobble)]
    paired = stats.paired_log_ratio(subject, baseline)
    assert paired.p_value < 1e-6 and paired.ratio == pytest.approx(0.95, abs=0.005)
    assert scipy_stats.ttest_ind(subject, baseline, equal_var=False).pvalue > 0.3


def test_round_effect_recovers_a_known_round_effect():
    h = [0.10, -0.10, 0.0, 0.05]                 # the host's log-speed in each round, shared by every scenario
    by_scenario = {s: {r: base * math.exp(h[r]) for r in range(4)} for s, base in (("a", 1.0), ("b", 3.0), ("c", 0.5))}
    assert stats.round_effect_pct(by_scenario) == pytest.approx(100 * stats.stdev(h), rel=1e-9)
    flat = {s: {r: base for r in range(4)} for s, base in (("a", 1.0), ("b", 3.0))}
    assert stats.round_effect_pct(flat) == 0.0
    assert stats.round_effect_pct({"a": {0: 1.0, 1: 1.1}}) is None        # two rounds, one scenario: unknown


def test_robust_sd_ignores_one_stray_probe():
    steady = [0.100, 0.101, 0.099, 0.100, 0.102, 0.098, 0.100]
    assert stats.robust_rel_sd_pct(steady) < 1.5
    assert stats.robust_rel_sd_pct(steady + [0.300]) < 2.0              # one preempted probe is not "drift"
    assert stats.robust_rel_sd_pct([0.1, 0.1]) is None


def test_the_stopping_rule_stops_when_the_drift_sets_the_interval():
    values = [1.00, 1.01, 0.99, 1.00]
    assert stats.stopping_decision(values, 3, 20, 2.0).reason == "target"             # no drift: as before
    decision = stats.stopping_decision(values, 3, 20, 2.0, drift_pct=5.0)
    assert decision.stop and decision.reason == "drift"
    assert decision.half_width_pct == pytest.approx(stats.drift_aware_interval(values, 5.0).half_width_pct)
    noisy = [1.0, 1.3, 0.8, 1.2]                                                      # runs' part above the drift's
    assert stats.stopping_decision(noisy, 3, 20, 2.0, drift_pct=5.0).reason == "continue"
    assert stats.stopping_decision(values, 3, 20, 20.0, drift_pct=5.0).reason == "target"
    assert stats.predicted_runs_needed(values, 3, 20, 2.0, drift_pct=5.0) <= 4


def test_host_drift_calls_a_host_unstable_with_the_numbers():
    def probe(i, t, repeats=None):
        return {"study_id": "s", "round": i, "host": "h", "started_at": 1000.0 + i, "probe_s": t,
                "probe_version": 1, "cpus": [0], "threads": 1, "repeats_s": repeats or [t] * 5}

    steady = [probe(i, 0.050 * (1 + 0.002 * (i % 3))) for i in range(9)]
    quiet = host_drift("h", steady, steady)
    assert not quiet.unstable and quiet.drift_pct < 1.0 and quiet.probes == 9
    slowing = [probe(i, 0.050 * (1 + 0.05 * i)) for i in range(9)]               # 5% slower every round
    loud = host_drift("h", slowing, slowing)
    assert loud.unstable and loud.drift_pct > UNSTABLE_DRIFT_PCT and loud.trend_pct > 10
    assert any("slower" in r for r in loud.reasons)
    history = [dict(p, study_id="earlier", started_at=p["started_at"] - 3600, probe_s=p["probe_s"] * 1.3)
               for p in steady]                                                   # an hour ago the host was slower
    widened = host_drift("h", steady, steady + history)
    assert widened.history_probes == 18 and widened.drift_pct > quiet.drift_pct
    stale = [dict(p, started_at=p["started_at"] - 3 * 86400) for p in history]   # three days ago: not recent
    assert host_drift("h", steady, steady + stale).history_probes == 9


# ---------------------------------------------------------------------------------------------
# the probe, for real


def test_the_probe_runs_pinned_in_its_own_process_and_an_outside_clock_agrees():
    cpus = probe_cpus(1)
    t0 = time.perf_counter()
    probe = run_probe(cpus)
    outside = time.perf_counter() - t0
    assert probe["version"] == PROBE_VERSION and probe["cpus"] == cpus and probe["threads"] == 1
    assert len(probe["repeats_s"]) == REPEATS and probe["probe_s"] == sorted(probe["repeats_s"])[REPEATS // 2]
    assert probe["pid"] != os.getpid()                        # measured in a process of its own
    assert outside >= sum(probe["repeats_s"])                  # the child's laps fit inside the parent's clock
    assert set(cpus) <= os.sched_getaffinity(0)


# ---------------------------------------------------------------------------------------------
# a real study: rounds, probes, paired comparisons, replicates


def _tiny_study(tmp_path: Path, store: Path, extra: str = "") -> Path:
    path = tmp_path / "rounds.toml"
    path.write_text(textwrap.dedent(f"""
        name = "rounds"
        store = "{store}"
        timeout_s = 120
        apps = ["ic"]
        cores = [1]
        cpu_modes = ["VNL", "PIN"]
        [repetition]
        warmup_runs = 1
        min_runs = 3
        max_runs = 3
        {extra}
        [workload.ic]
        requests = 2
        variant = "tiny"
    """))
    return path


def test_a_study_stores_rounds_and_probes_and_show_pairs_pin_with_vnl(tmp_path):
    store_path = tmp_path / "s.sqlite"
    study = _tiny_study(tmp_path, store_path)
    proc = run_cli(["study", str(study), "--quiet"], timeout=500)
    assert proc.returncode == 0, proc.stderr
    db = sqlite3.connect(store_path)
    runs = db.execute("SELECT scenario, phase, round, started_at, finished_at FROM runs ORDER BY id").fetchall()
    probes = db.execute("SELECT round, started_at, probe_s, cpus FROM calibrations ORDER BY round").fetchall()
    db.close()
    assert len(runs) == 8 and all(r[2] is not None for r in runs)
    rounds = sorted({r[2] for r in runs})
    assert rounds == [0, 1, 2, 3]                              # warm-up round, then three measured rounds
    for r in rounds:                                          # one run per scenario per round ...
        assert sorted(x[0] for x in runs if x[2] == r) == ["ic@BM/1/PIN/CPU", "ic@BM/1/VNL/CPU"]
    for earlier, later in zip(rounds, rounds[1:]):           # ... and rounds do not overlap in time
        assert max(x[4] for x in runs if x[2] == earlier) <= min(x[3] for x in runs if x[2] == later)
    assert [p[0] for p in probes] == rounds                   # one probe at the start of every round
    for r, started, probe_s, _ in probes:
        assert started <= min(x[3] for x in runs if x[2] == r) and probe_s > 0

    shown = run_cli(["show", "--store", str(store_path), "--json"])
    assert shown.returncode == 0, shown.stderr
    out = json.loads(shown.stdout)
    assert len(out["drift"]) == 1 and out["drift"][0]["probes"] == 4
    pins = [c for c in out["comparisons"] if c["kind"] == "pinning"]
    assert len(pins) == 1 and pins[0]["method"] == "paired" and pins[0]["pairs"] == 3
    assert pins[0]["subject"] == "ic@BM/1/PIN/CPU" and pins[0]["baseline"] == "ic@BM/1/VNL/CPU"
    text = run_cli(["show", "--store", str(store_path)])
    assert "drift" in text.stdout and "paired over 3 rounds" in text.stdout
    for s in out["scenarios"]:                                # the interval shown includes the drift
        assert s["ci_halfwidth_pct"] >= s["runs_ci_halfwidth_pct"] - 1e-9

    with Store(store_path) as store:                          # the paired ratio from the store, by hand
        rows = store.runs(phase="measure", status="ok")
        by = {(r["scenario"], r["round"]): r["e2e_s"] for r in rows}
        common = sorted({r for (_, r) in by})
        logs = [math.log(by[("ic@BM/1/PIN/CPU", r)] / by[("ic@BM/1/VNL/CPU", r)]) for r in common]
    assert pins[0]["p_value"] == pytest.approx(scipy_stats.ttest_1samp(logs, 0.0).pvalue)


def test_calibrate_false_runs_no_probe_and_keeps_plain_intervals(tmp_path):
    store_path = tmp_path / "s.sqlite"
    study = _tiny_study(tmp_path, store_path, "calibrate = false")
    proc = run_cli(["study", str(study), "--quiet"], timeout=500)
    assert proc.returncode == 0, proc.stderr
    db = sqlite3.connect(store_path)
    assert db.execute("SELECT COUNT(*) FROM calibrations").fetchone()[0] == 0
    db.close()
    out = json.loads(run_cli(["show", "--store", str(store_path), "--json"]).stdout)
    assert out["drift"] == [] and all(s["drift_pct"] == 0 for s in out["scenarios"])
    bad = _tiny_study(tmp_path, store_path, 'calibrate = "yes"')
    proc = run_cli(["study", str(bad), "--plan"])
    assert proc.returncode == 2 and "repetition.calibrate" in proc.stderr and "true or false" in proc.stderr


def test_replicate_runs_fresh_studies_and_reports_coverage_and_agreement(tmp_path):
    store_path = tmp_path / "s.sqlite"
    study = _tiny_study(tmp_path, store_path)
    proc = run_cli(["study", str(study), "--replicate", "2", "--json"], timeout=900)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.splitlines()[-1])["replicates"]
    assert last["replicates"] == 2 and len(set(last["study_ids"])) == 2
    assert last["checks"] == 4                                # 2 scenarios x 2 ordered pairs
    assert set(last["coverage_pct"]) == {"runs", "drift"}
    assert last["coverage_pct"]["drift"] >= last["coverage_pct"]["runs"]      # the wider interval covers more
    (pin,) = last["comparisons"]
    assert pin["kind"] == "pinning" and len(pin["verdicts"]["paired"]) == 2 and len(pin["verdicts"]["welch"]) == 2
    with Store(store_path) as store:
        assert sorted(s["id"] for s in store.studies() if s["name"] == "rounds") == sorted(last["study_ids"])
    text = run_cli(["study", str(study), "--replicate", "2"], timeout=900)
    assert text.returncode == 0 and "coverage" in text.stdout and "paired by round" in text.stdout
