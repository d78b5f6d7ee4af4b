"""e2ebench.tdist (Student's t, the normal quantile and the t-tests without scipy) against independent sources:
scipy (a second implementation, here only in the tests), closed forms derived by hand, a printed t-table and, where
scipy itself is the less accurate of the two, mpmath at 50 digits."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest
from scipy import stats as scipy_stats

from e2ebench import tdist

DOFS = [1, 1.5, 2, 3, 5, 10, 30, 100, 1e4, 1e7]
T_GRID = [0.0, 1e-6, 1e-3, 0.05, 0.3, 0.7, 1.0, 1.5, 1.7320508, 2.0, 2.3, 3.0, 4.5, 7.0, 10.0, 25.0, 60.0, 150.0,
          400.0, 1000.0]
Q_GRID = ([1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.45, 0.49, 0.4999]
          + [0.5001, 0.51, 0.6, 0.75, 0.8, 0.9, 0.95, 0.975, 0.99, 0.999, 1 - 1e-5, 1 - 1e-7, 1 - 1e-8])


def _close(mine: float, reference: float, rel: float) -> bool:
    if reference == 0.0:
        return mine <= 1e-300            # both underflow (scipy gives exactly 0, we may keep a subnormal)
    return abs(mine - reference) <= rel * abs(reference)


# --- against scipy on a grid --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dof", DOFS)
def test_cdf_and_both_tails_match_scipy(dof):
    bad = []
    for t in T_GRID:
        for x in (t, -t):
            # the lower tail is compared relatively (that is where the digits of small p-values live) ...
            if not _close(tdist.t_cdf(-abs(x), dof), float(scipy_stats.t.cdf(-abs(x), dof)), 1e-10):
                bad.append(("lower", x))
            # ... and the cdf itself on both sides
            if not _close(tdist.t_cdf(x, dof), float(scipy_stats.t.cdf(x, dof)), 1e-10):
                bad.append(("cdf", x))
        if not _close(tdist.t_sf2(t, dof), min(1.0, float(2.0 * scipy_stats.t.sf(t, dof))), 1e-10):
            bad.append(("two-sided", t))
    assert not bad


@pytest.mark.parametrize("dof", DOFS)
def test_ppf_matches_scipy(dof):
    bad = [(q, tdist.t_ppf(q, dof), float(scipy_stats.t.ppf(q, dof))) for q in Q_GRID
           if not _close(tdist.t_ppf(q, dof), float(scipy_stats.t.ppf(q, dof)), 1e-10)]
    assert not bad
    assert tdist.t_ppf(0.5, dof) == 0.0


@pytest.mark.parametrize("dof", [0.2, 0.7, 2.5, 7.3, 29.91, 333.3])
def test_fractional_dof_match_scipy(dof):
    """Welch-Satterthwaite gives fractional degrees of freedom."""
    for q in (1e-6, 0.025, 0.3, 0.975):
        assert _close(tdist.t_ppf(q, dof), float(scipy_stats.t.ppf(q, dof)), 1e-10)
    for t in (0.1, 1.0, 2.2, 9.0, 80.0):
        assert _close(tdist.t_sf2(t, dof), float(2.0 * scipy_stats.t.sf(t, dof)), 1e-10)
        assert _close(tdist.t_pdf(t, dof), float(scipy_stats.t.pdf(t, dof)), 1e-12)


def test_density_matches_scipy():
    """(scipy's density loses ~1e-12 at 10^4 degrees of freedom: mpmath agrees with ours there to 1e-15.)"""
    for dof in DOFS:
        for t in (0.0, 0.5, 2.0, -3.0, 40.0):
            assert _close(tdist.t_pdf(t, dof), float(scipy_stats.t.pdf(t, dof)), 1e-11)


@pytest.mark.parametrize("dof", [1e16, 1e300, math.inf])
def test_huge_dof_is_the_normal_distribution(dof):
    """(At 1e16 the tail of t at |t| = 20 is 4e-12 heavier than the normal's: (t^4 / 4) / dof, not tested.)"""
    for t in (0.0, 0.4, 1.96, -3.0, 8.0, -8.0):
        assert _close(tdist.t_cdf(t, dof), float(scipy_stats.norm.cdf(t)), 1e-12)
        assert _close(tdist.t_sf2(t, dof), float(2.0 * scipy_stats.norm.sf(abs(t))), 1e-12)
    for q in (1e-8, 0.025, 0.3, 0.975):
        assert _close(tdist.t_ppf(q, dof), float(scipy_stats.norm.ppf(q)), 1e-12)


def test_norm_ppf_matches_scipy():
    for q in (1e-12, 1e-4, 0.025, 0.5, 0.8, 0.975, 1 - 1e-9):
        assert tdist.norm_ppf(q) == pytest.approx(float(scipy_stats.norm.ppf(q)), rel=1e-12, abs=1e-15)


# --- by hand and from a printed table ----------------------------------------------------------------------------

def test_closed_forms_for_one_and_two_degrees_of_freedom():
    """dof = 1 is Cauchy's distribution, F(t) = 1/2 + atan(t)/pi, with the quantile -1/tan(pi q) below 1/2;
    dof = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), quantile (2q - 1) / sqrt(2 q (1 - q)).  The lower tails are written
    without cancellation: atan(t) - (-pi/2) = atan(1/|t|) and 1/2 - |t|/(2 sqrt(2 + t^2)) = 1 / (sqrt(2+t^2)
    (sqrt(2+t^2) + |t|))."""
    for t in (1e-9, 1e-3, 0.5, 1.0, 3.0, 50.0, 1e4, 1e8):
        assert tdist.t_cdf(-t, 1) == pytest.approx(math.atan(1.0 / t) / math.pi, rel=1e-13)
        assert tdist.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-14)
        root = math.sqrt(2.0 + t * t)
        assert tdist.t_cdf(-t, 2) == pytest.approx(1.0 / (root * (root + t)), rel=1e-13)
        assert tdist.t_sf2(t, 2) == pytest.approx(2.0 / (root * (root + t)), rel=1e-13)
    for q in (1e-300, 1e-12, 1e-5, 0.01, 0.2, 0.49):
        assert tdist.t_ppf(q, 1) == pytest.approx(-1.0 / math.tan(math.pi * q), rel=1e-12)
        upper = 1.0 - q                  # rounded (1 - 1e-300 is 1): 1 - upper is exact
        expected = 1.0 / math.tan(math.pi * (1.0 - upper)) if upper < 1.0 else math.inf
        assert tdist.t_ppf(upper, 1) == pytest.approx(expected, rel=1e-12)
        assert tdist.t_ppf(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-12)


@pytest.mark.parametrize("q, dof, table", [
    (0.975, 10, 2.228), (0.95, 1, 6.314), (0.995, 5, 4.032), (0.975, 30, 2.042), (0.90, 20, 1.325),
    (0.999, 3, 10.215), (0.975, 2, 4.303), (0.95, 120, 1.658), (0.975, math.inf, 1.960),
])
def test_printed_t_table(q, dof, table):
    assert tdist.t_ppf(q, dof) == pytest.approx(table, abs=5e-4)
    assert tdist.t_sf2(table, dof) == pytest.approx(2 * (1 - q), rel=2e-3)


def test_where_scipy_is_the_less_accurate_mpmath_decides():
    """Near q = 1/2, at huge dof and in the far tail of small dof scipy loses digits that the central-probability
    and log-space forms here keep; mpmath at 50 digits is the referee."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50

    def lower(t, dof):
        t, dof = mp.mpf(t), mp.mpf(dof)
        return mp.betainc(dof / 2, mp.mpf(1) / 2, 0, dof / (dof + t * t), regularized=True) / 2

    for t, dof in [(1e-8, 1), (2e-6, 3), (2.0, 1e12), (20.0, 1e12), (1.5, 7.3), (1e200, 0.5)]:
        assert tdist.t_cdf(-t, dof) == pytest.approx(float(lower(t, dof)), rel=1e-13)
    for q, dof in [(0.499999, 1), (0.499999, 5), (0.499999, 1e12), (1e-300, 1.5), (1e-100, 0.3)]:
        t = tdist.t_ppf(q, dof)
        assert float(lower(-t, dof)) == pytest.approx(q, rel=1e-12)


# --- edge cases ---------------------------------------------------------------------------------------------------

def test_edge_cases_follow_scipys_conventions():
    nan, inf = math.nan, math.inf
    for f in (tdist.t_cdf, tdist.t_sf2, tdist.t_pdf):
        assert math.isnan(f(nan, 5)) and math.isnan(f(1.0, nan))
        assert math.isnan(f(1.0, 0.0)) and math.isnan(f(1.0, -2.0))
    assert tdist.t_cdf(-inf, 3) == 0.0 and tdist.t_cdf(inf, 3) == 1.0 and tdist.t_cdf(0.0, 3) == 0.5
    assert tdist.t_sf2(inf, 3) == 0.0 and tdist.t_sf2(-inf, 3) == 0.0 and tdist.t_sf2(0.0, 3) == 1.0
    assert tdist.t_sf2(-2.5, 7) == tdist.t_sf2(2.5, 7)
    assert tdist.t_pdf(inf, 3) == 0.0
    assert tdist.t_ppf(0.0, 4) == -inf and tdist.t_ppf(1.0, 4) == inf
    for q in (-0.1, 1.1, nan):
        assert math.isnan(tdist.t_ppf(q, 4)) and math.isnan(tdist.norm_ppf(q))
    assert math.isnan(tdist.t_ppf(0.3, 0.0)) and math.isnan(tdist.t_ppf(0.3, nan))
    assert tdist.norm_ppf(0.0) == -inf and tdist.norm_ppf(1.0) == inf
    # quantiles beyond the largest float (0.3 degrees of freedom: |t| ~ 1e1000) and tails that underflow
    assert tdist.t_ppf(1e-300, 0.3) == -inf and tdist.t_ppf(1.0 - 1e-16, 0.05) == inf
    assert tdist.t_cdf(-1e3, 1e7) == 0.0 and tdist.t_sf2(1e300, 3) == 0.0
    assert 0.0 < tdist.t_cdf(-1e300, 0.5) < 1e-140       # the power-law tail, no overflow in t^2
    assert tdist.t_sf2(1e-300, 4) == 1.0


def test_quantile_and_cdf_are_inverse():
    rng = random.Random(3)
    for _ in range(200):
        dof = math.exp(rng.uniform(math.log(0.5), math.log(1e6)))
        q = rng.choice([rng.uniform(1e-6, 1.0 - 1e-6), 10 ** rng.uniform(-12, -1)])
        t = tdist.t_ppf(q, dof)
        assert tdist.t_cdf(t, dof) == pytest.approx(q, rel=1e-11)


# --- the tests ----------------------------------------------------------------------------------------------------

def _samples(rng: random.Random, n: int) -> list[float]:
    return [rng.gauss(rng.uniform(-1, 1), rng.uniform(0.01, 3)) for _ in range(n)]


def test_one_sample_t_test_matches_scipy():
    rng = random.Random(11)
    for _ in range(200):
        values = _samples(rng, rng.randint(2, 60))
        assert tdist.ttest_1samp_p(values) == pytest.approx(float(scipy_stats.ttest_1samp(values, 0.0).pvalue),
                                                            rel=1e-10)


def test_one_sample_t_test_edge_cases():
    assert tdist.ttest_1samp_p([]) is None and tdist.ttest_1samp_p([0.3]) is None
    assert tdist.ttest_1samp_p([0.0, 0.0, 0.0]) == 1.0           # no spread, mean 0: nothing to reject
    assert tdist.ttest_1samp_p([0.2, 0.2, 0.2]) == 0.0           # no spread, mean not 0: certain
    assert math.isnan(tdist.ttest_1samp_p([0.1, math.nan, 0.3]))
    # two values: t = mean / (sd / sqrt 2) with one degree of freedom, by hand: values 1 and 3 give t = 2
    assert tdist.ttest_1samp_p([1.0, 3.0]) == pytest.approx(1.0 - 2.0 * math.atan(2.0) / math.pi, rel=1e-13)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")   # scipy's, on a sample of tiny spread
def test_welch_matches_scipy():
    rng = random.Random(12)
    for _ in range(200):
        a, b = _samples(rng, rng.randint(2, 40)), _samples(rng, rng.randint(2, 40))
        assert tdist.welch_p(a, b) == pytest.approx(
            float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue), rel=1e-10)
    # one side without spread: the other side's n - 1 degrees of freedom, as scipy
    a, b = [1.0, 1.0, 1.0], [2.0, 3.0, 4.0]
    assert tdist.welch_p(a, b) == pytest.approx(float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue),
                                                rel=1e-12)


def test_welch_edge_cases():
    assert tdist.welch_p([1.0], [1.0, 2.0]) is None and tdist.welch_p([1.0, 2.0], []) is None
    assert tdist.welch_p([2.0, 2.0], [2.0, 2.0, 2.0]) == 1.0
    assert tdist.welch_p([2.0, 2.0], [3.0, 3.0]) == 0.0
    assert math.isnan(tdist.welch_p([1.0, math.nan], [2.0, 3.0]))


def test_spearman_matches_scipy_with_ties():
    rng = random.Random(13)
    for _ in range(150):
        n = rng.randint(3, 40)
        x = [rng.choice([1, 2, 2, 3, 4, 4, 4, 5, 8, 16]) for _ in range(n)]
        y = [v + rng.gauss(0, 3) for v in x] if rng.random() < 0.5 else _samples(rng, n)
        if len(set(x)) < 2:
            continue
        rho, p = tdist.spearman(x, y)
        reference = scipy_stats.spearmanr(x, y)
        assert rho == pytest.approx(float(reference.statistic), abs=1e-13)
        assert p == pytest.approx(float(reference.pvalue), rel=1e-10, abs=1e-15)


def test_spearman_by_hand_and_edge_cases():
    # x = 1..4, y ranks 1, 3, 2, 4: d = 0, 1, 1, 0, rho = 1 - 6 * 2 / (4 * 15) = 0.8; t = 0.8 sqrt(2 / 0.36)
    rho, p = tdist.spearman([1, 2, 3, 4], [10, 30, 20, 40])
    assert rho == pytest.approx(0.8, abs=1e-15)
    assert p == pytest.approx(tdist.t_sf2(0.8 * math.sqrt(2 / 0.36), 2), rel=1e-14)
    # ties share the mean rank: y = 5, 5, 9 has ranks 1.5, 1.5, 3
    assert tdist._average_ranks([5.0, 9.0, 5.0]) == [1.5, 3.0, 1.5]
    assert tdist.spearman([1, 2, 3], [3, 2, 1]) == (-1.0, 0.0)
    rho, p = tdist.spearman([1, 2], [2, 1])
    assert rho == -1.0 and p is None                               # no degrees of freedom left
    rho, p = tdist.spearman([1, 2, 3], [4, 4, 4])
    assert math.isnan(rho) and p is None                           # a constant side: undefined
    rho, p = tdist.spearman([1, math.nan, 3], [1, 2, 3])
    assert math.isnan(rho) and p is None
    with pytest.raises(ValueError):
        tdist.spearman([1, 2, 3], [1, 2])


# --- the point of the module --------------------------------------------------------------------------------------

def test_stats_does_not_import_scipy():
    code = ("import sys, e2ebench.stats, e2ebench.tdist\n"
            "e2ebench.stats.paired_log_ratio([1.0, 1.1, 0.9], [1.0, 1.0, 1.0])\n"
            "e2ebench.stats.predicted_runs_needed([1.0, 1.2, 0.9], 3, 20, drift_pct=1.0)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
