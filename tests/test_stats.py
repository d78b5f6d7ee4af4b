"""Statistics of repeated runs (e2ebench.stats) against values computed by hand or from tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from e2ebench.stats import (confidence_interval, mean, outlier_mask, predicted_runs_needed, relative_half_width_pct,
                            stdev, stopping_decision, t_critical)


def test_mean_and_sample_standard_deviation():
    values = [2, 4, 4, 4, 5, 5, 7, 9]
    assert mean(values) == 5.0
    assert stdev(values) == pytest.approx(math.sqrt(32 / 7))      # sum of squares 32, n - 1 = 7
    assert math.isnan(mean([]))
    assert math.isnan(stdev([3.0]))


@pytest.mark.parametrize("confidence, dof, expected", [
    (0.95, 1, 12.7062047),     # Student-t tables, two-sided
    (0.95, 4, 2.7764451),
    (0.95, 29, 2.0452296),
    (0.99, 10, 3.1692727),
    (0.90, 5, 2.0150484),
])
def test_t_critical_matches_the_tables(confidence, dof, expected):
    assert t_critical(confidence, dof) == pytest.approx(expected, rel=1e-6)


def test_t_critical_rejects_bad_arguments():
    with pytest.raises(ValueError):
        t_critical(1.0, 4)
    with pytest.raises(ValueError):
        t_critical(0.95, 0)


def test_confidence_interval_of_one_to_five():
    ci = confidence_interval([1, 2, 3, 4, 5], 0.95)
    # mean 3, s = sqrt(2.5), half-width = t(0.975, 4) * s / sqrt(5) = 2.7764451 * 0.7071068
    assert ci.n == 5 and ci.mean == 3.0
    assert ci.stdev == pytest.approx(math.sqrt(2.5))
    assert ci.half_width == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-7)
    assert ci.low == pytest.approx(3.0 - ci.half_width)
    assert ci.high == pytest.approx(3.0 + ci.half_width)
    assert ci.half_width_pct == pytest.approx(100 * ci.half_width / 3.0)
    assert relative_half_width_pct([1, 2, 3, 4, 5]) == pytest.approx(ci.half_width_pct)


def test_confidence_interval_is_unbounded_below_two_values():
    assert confidence_interval([], 0.95).half_width == math.inf
    one = confidence_interval([4.2], 0.95)
    assert one.mean == 4.2 and one.half_width == math.inf and one.half_width_pct == math.inf


def test_identical_values_have_a_zero_width_interval():
    ci = confidence_interval([2.5, 2.5, 2.5], 0.95)
    assert ci.half_width == 0.0 and ci.half_width_pct == 0.0


def test_one_extreme_value_is_an_outlier_even_in_a_small_sample():
    values = [1.00, 1.01, 0.99, 1.00, 1.02, 0.98, 1.00, 1.01, 0.99, 5.0]
    # With the value in its own mean and deviation no value of 10 can be 3 sigma away ((n-1)/sqrt(n) = 2.85):
    m, s = mean(values), stdev(values)
    assert abs(5.0 - m) / s < 3
    # leave-one-out finds it
    assert outlier_mask(values) == [False] * 9 + [True]


def test_outliers_are_removed_one_at_a_time():
    rng = np.random.default_rng(7)
    values = list(rng.normal(10.0, 0.05, 30)) + [11.0, 8.5]
    mask = outlier_mask(values)
    assert mask[-2:] == [True, True]
    assert not any(mask[:-2])


def _leave_one_out_scores(values):
    out = []
    for i, x in enumerate(values):
        others = values[:i] + values[i + 1:]
        out.append(abs(x - mean(others)) / stdev(others))
    return out


def test_outlier_rule_is_three_sigma_of_the_others():
    rng = np.random.default_rng(0)
    values = [float(v) for v in rng.normal(100.0, 1.0, 40)]
    scores = _leave_one_out_scores(values)
    flagged = outlier_mask(values)
    worst = int(np.argmax(scores))
    assert scores[worst] > 3 and flagged[worst]          # 97.7: 3.24 sd from the other 39 (2.84 with itself)
    assert sum(flagged) == 1


def test_few_false_outliers_in_normal_samples():
    flagged = total = 0
    for seed in range(100):
        values = list(np.random.default_rng(seed).normal(100.0, 1.0, 40))
        flagged += sum(outlier_mask(values))
        total += len(values)
    assert flagged / total < 0.01          # a 3-sigma rule flags ~0.3-0.5% of normal values


def test_outlier_rule_needs_enough_values_and_handles_ties():
    assert outlier_mask([1.0, 1.0, 1.0, 100.0]) == [False] * 4          # below min_n = 5
    assert outlier_mask([1.0, 1.0, 1.0, 1.0, 1.0]) == [False] * 5
    assert outlier_mask([1.0, 1.0, 1.0, 1.0, 1.0, 1.5]) == [False] * 5 + [True]   # others have zero spread
    assert outlier_mask([1.0, 1.0, 1.0, 100.0], min_n=3) == [False, False, False, True]


def _run_until_stop(series, min_runs, max_runs, target_pct=2.0, confidence=0.95):
    """The study's loop on a constructed series: one value at a time until the rule says stop."""
    for n in range(1, len(series) + 1):
        decision = stopping_decision(series[:n], min_runs, max_runs, target_pct, confidence)
        if decision.stop:
            return n, decision
    raise AssertionError("series too short")


def test_stopping_rule_stops_early_on_a_low_noise_series():
    rng = np.random.default_rng(1)
    series = list(rng.normal(10.0, 0.01, 100))             # 0.1% relative noise
    n, decision = _run_until_stop(series, min_runs=3, max_runs=50)
    assert n == 3 and decision.reason == "target" and decision.target_reached
    assert decision.half_width_pct <= 2.0


def test_stopping_rule_runs_to_the_maximum_on_a_noisy_series():
    rng = np.random.default_rng(2)
    series = list(rng.normal(10.0, 3.0, 100))              # 30% relative noise: ~900 runs for +-2%
    n, decision = _run_until_stop(series, min_runs=3, max_runs=20)
    assert n == 20 and decision.reason == "max-runs" and not decision.target_reached
    assert decision.half_width_pct > 2.0


def test_stopping_rule_stops_when_the_interval_becomes_narrow_enough():
    rng = np.random.default_rng(3)
    series = list(rng.normal(10.0, 0.5, 200))              # 5% noise: needs (1.96*5/2)^2 ~ 25 runs
    n, decision = _run_until_stop(series, min_runs=5, max_runs=200)
    assert decision.reason == "target"
    assert 10 < n < 60
    assert relative_half_width_pct(series[: n - 1]) > 2.0   # one run earlier it was not narrow enough


def test_stopping_rule_reasons_and_budget():
    assert stopping_decision([1.0, 1.0], 3, 10).reason == "min-runs"
    assert stopping_decision([1.0, 1.5, 0.5], 3, 10).reason == "continue"
    # outliers excluded from the values still use the budget
    assert stopping_decision([1.0, 1.5, 0.5], 3, 5, runs_done=5).reason == "max-runs"
    # min_runs == max_runs == 1: one run answers
    assert stopping_decision([3.0], 1, 1).stop
    with pytest.raises(ValueError):
        stopping_decision([1.0], 5, 3)


def test_predicted_runs_needed():
    # 10% relative standard deviation, +-2% at 95%: smallest n with t(n-1) * 10 / sqrt(n) <= 2
    values = [9.0, 11.0, 9.0, 11.0]
    cv = 100 * stdev(values) / mean(values)
    expected = next(n for n in range(2, 1000) if t_critical(0.95, n - 1) * cv / math.sqrt(n) <= 2.0)
    assert predicted_runs_needed(values, 3, 1000, 2.0, 0.95) == expected
    assert predicted_runs_needed(values, 3, 50, 2.0, 0.95) == 50               # clamped to the budget
    assert predicted_runs_needed([5.0], 3, 50) == 3                             # nothing known yet
    assert predicted_runs_needed([5.0, 5.0, 5.0, 5.0], 3, 50) == 4              # already answered
