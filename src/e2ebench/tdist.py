"""Student's t, the normal quantile and the three tests the analysis makes, with the standard library only.

Why not ``scipy.stats``: importing it takes about 0.9 s, half of what ``e2ebench show`` may take, and each of its
t-tests costs ~0.6 ms, mostly argument checking; a study of 212 scenarios makes ~900 paired comparisons
(``benchmarks/tdist_speed.py`` measures both).  The tests (``tests/test_tdist.py``) check every function here
against scipy, the independent second source, on a grid of degrees of freedom, probabilities and statistics.

How
---
* Student's t with ``dof`` degrees of freedom (fractional allowed: Welch-Satterthwaite) goes through the
  regularized incomplete beta function: for ``t < 0``, ``P(T <= t) = I_w(dof/2, 1/2) / 2`` with
  ``w = dof / (dof + t^2)``; the two-sided p-value ``P(|T| >= |t|)`` is ``I_w(dof/2, 1/2)`` itself, so a small
  p-value is computed directly, never as ``1 - something``.
* ``I_x(a, b)`` is ``x^a (1-x)^b / (a B(a, b))`` times a continued fraction, evaluated with the modified Lentz
  method in a contracted form that keeps its digits for ``x`` near 1 and large ``a`` (see :func:`_beta_fraction`).
  The fraction converges fast for ``x < (a + 1) / (a + b + 2)``; above that the symmetry
  ``I_x(a, b) = 1 - I_{1-x}(b, a)`` is used.  The prefactor is formed in logs from ``log1p`` of the statistic
  (``w`` close to 1 would lose its digits in ``log(w)``) and from a log-beta function that stays accurate when an
  argument is huge (Stirling's series for the differences of log-gammas, where ``lgamma`` values of 10^7 would
  cancel to a few digits).
* Above 10^15 degrees of freedom the t distribution is the normal one to first order in ``1/dof``:
  ``F(t) = Phi(t) - phi(t) (t^3 + t) / (4 dof)`` (the error, of order ``1/dof^2``, is far below double precision
  there); ``dof = inf`` is the normal distribution.
* The quantile solves ``F(t) = q`` by Halley's method on the log of the tail (or, near ``q = 1/2``, of the central
  probability) against ``log |t|`` (the far tail of t is a power law, a straight line in these coordinates),
  started from the Cornish-Fisher expansion and safeguarded by bisection inside a bracket that is known in
  advance: ``t = 0`` on one side, and on the other the quantile of the power law ``C |t|^-dof`` that bounds the
  tail from above.  From 10 degrees of freedom on one or two evaluations of the tail suffice.

Conventions as scipy's where they meet: ``nan`` in, ``nan`` out; a probability outside ``[0, 1]`` or degrees of
freedom ``<= 0`` give ``nan``; ``q = 0`` and ``q = 1`` give ``-inf`` and ``inf``.
"""

from __future__ import annotations

import math
import statistics
import sys
from typing import Sequence

_NORMAL = statistics.NormalDist()
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_NORMAL_ABOVE_DOF = 1e15          # above: the normal distribution with its first-order correction
_CF_EPS = 1e-15
_CF_MAX_ITERATIONS = 5000         # never reached in the tested range (a few hundred at most)
_TINY = 1e-300
_LOG_MAX_FLOAT = math.log(sys.float_info.max)
_SQRT2 = math.sqrt(2.0)
_LOG2 = math.log(2.0)


# --- log-beta and the incomplete beta function -------------------------------------------------------------------

def _stirling_correction(x: float) -> float:
    """``lgamma(x) - ((x - 1/2) log x - x + log(2 pi)/2)`` for ``x >= 10``: Stirling's series, the terms
    ``B(2k) / (2k (2k - 1) x^(2k-1))`` with the Bernoulli numbers B2..B12; the first term left out is below 1e-15 at
    ``x = 10``."""
    inv = 1.0 / x
    inv2 = inv * inv
    return inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 * (1.0 / 1260 - inv2 * (1.0 / 1680 - inv2 * (
        1.0 / 1188 - inv2 * 691.0 / 360360)))))


def _log_beta(a: float, b: float) -> float:
    """``log B(a, b)`` for positive ``a``, ``b``, accurate also when one of them is huge (``lgamma(a) -
    lgamma(a + b)`` would cancel: at ``a = 5e6`` each is ~7e7 and the difference keeps only ~9 digits)."""
    p, q = (a, b) if a <= b else (b, a)
    if q < 10.0:
        return math.lgamma(p) + math.lgamma(q) - math.lgamma(p + q)
    if p < 10.0:
        # lgamma(q) - lgamma(p + q) from Stirling's formula, arranged so that nothing large cancels
        return (math.lgamma(p) - (q - 0.5) * math.log1p(p / q) - p * math.log(p + q) + p
                + _stirling_correction(q) - _stirling_correction(p + q))
    return (_HALF_LOG_2PI - 0.5 * math.log(q) + (p - 0.5) * math.log(p / (p + q)) - q * math.log1p(p / q)
            + _stirling_correction(p) + _stirling_correction(q) - _stirling_correction(p + q))


def _beta_fraction(a: float, b: float, x: float, y: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (``y = 1 - x``), in its contracted (even) form.

    The fraction is ``1 / (1 + d1 / (1 + d2 / (1 + ...)))`` with ``d(2m+1) = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1))``
    and ``d(2m) = m(b-m) x / ((a+2m-1)(a+2m))``.  Contracting pairs of steps gives
    ``1 / (e0 + n1 / (e1 + n2 / (e2 + ...)))`` with ``e0 = 1 + d1``, ``em = 1 + d(2m) + d(2m+1)`` and
    ``nm = -d(2m-1) d(2m)``.  For ``x`` near 1 and large ``a`` the ``e`` are tiny differences of numbers near 1
    (``1 + d1 = 1 - (a+b) x / (a+1)``): at ``a = 5e6`` the plain form loses ten digits.  Written over a common
    denominator the differences cancel algebraically, ``em = ((R - S) + y S) / R`` with
    ``R = (a+2m-1)(a+2m)(a+2m+1)``, ``S = (a+m)(a+b+m)(a+2m-1) - m(b-m)(a+2m+1)`` and
    ``R - S = (a+2m)(a(2m+1-b) + 2m^2 + b - 1)``; that form is used when ``x > 1/2``.  Evaluated front to back
    by the modified Lentz method (``_TINY`` stands in for zero divisors).
    """
    near_one = x > 0.5
    apb = a + b
    e = ((1.0 - b) + apb * y if near_one else (a + 1.0) - apb * x) / (a + 1.0)
    h = e if abs(e) > _TINY else _TINY
    c, d = h, 0.0
    x2 = x * x
    for m in range(1, _CF_MAX_ITERATIONS):
        k = a + 2.0 * m                    # a + 2m
        k1 = k - 1.0
        bm = m * (b - m)
        # n_m = -d(2m-1) d(2m), e_m = 1 + d(2m) + d(2m+1) = (R - x S) / R
        numerator = (a + m - 1.0) * (apb + m - 1.0) * bm * x2 / ((k - 2.0) * k1 * k1 * k)
        r = k1 * k * (k + 1.0)
        s = (a + m) * (apb + m) * k1 - bm * (k + 1.0)
        if near_one:
            e = (k * (a * (2.0 * m + 1.0 - b) + 2.0 * m * m + b - 1.0) + y * s) / r
        else:
            e = 1.0 - x * s / r
        d = e + numerator * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = e + numerator / c
        if abs(c) < _TINY:
            c = _TINY
        delta = c * d
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            break
    return 1.0 / h


def _betainc(a: float, b: float, x: float, y: float, log_x: float, log_y: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)`` with ``y = 1 - x`` and both logs given by the caller, who can form
    them without rounding ``x`` to 1 first.  ``0 <= x <= 1``."""
    if x < (a + 1.0) / (a + b + 2.0):
        log_front = a * log_x + b * log_y - math.log(a) - _log_beta(a, b)
        return 0.0 if log_front < -745.0 else math.exp(log_front) * _beta_fraction(a, b, x, y)
    log_front = b * log_y + a * log_x - math.log(b) - _log_beta(a, b)
    return 1.0 if log_front < -745.0 else 1.0 - math.exp(log_front) * _beta_fraction(b, a, y, x)


# --- Student's t -------------------------------------------------------------------------------------------------

def _bad_dof(dof: float) -> bool:
    return math.isnan(dof) or dof <= 0


def _split(abs_t: float, dof: float) -> tuple[float, float, float, float]:
    """``w = dof / (dof + t^2)``, ``y = t^2 / (dof + t^2) = 1 - w`` and their logs, each formed from the smaller of
    ``t^2/dof`` and ``dof/t^2`` so that neither the values nor the logs lose digits (``log(w)`` for ``w`` near 1
    would) and nothing overflows for huge ``|t|``.  ``abs_t > 0``."""
    q = abs_t / math.sqrt(dof)
    if q <= 1.0:
        r = q * q
        log1p_r = math.log1p(r)
        return 1.0 / (1.0 + r), r / (1.0 + r), -log1p_r, 2.0 * math.log(q) - log1p_r
    log_q = math.log(q) if q < math.inf else math.log(abs_t) - 0.5 * math.log(dof)
    root_s = 1.0 / q
    s = root_s * root_s
    log1p_s = math.log1p(s)
    return s / (1.0 + s), 1.0 / (1.0 + s), -2.0 * log_q - log1p_s, -log1p_s


def _normal_correction(abs_t: float, dof: float) -> float:
    """``2 phi(t) (t^3 + t) / (4 dof)``: what the two-sided tail of t has more than the normal's, to first order in
    ``1/dof`` (from ``pdf = phi(t) (1 + (t^4 - 2t^2 - 1) / (4 dof))``, whose integral from ``-inf`` to ``t`` is
    ``Phi(t) - phi(t) (t^3 + t) / (4 dof)``)."""
    if abs_t > 50.0:
        return 0.0
    return 2.0 * _NORMAL.pdf(abs_t) * (abs_t ** 3 + abs_t) / (4.0 * dof)


def _two_sided(abs_t: float, dof: float) -> float:
    """``P(|T| >= abs_t)`` for finite ``abs_t > 0`` and finite valid ``dof``: ``I_w(dof/2, 1/2)``."""
    if dof > _NORMAL_ABOVE_DOF:
        return min(1.0, math.erfc(abs_t / _SQRT2) + _normal_correction(abs_t, dof))
    w, y, log_w, log_y = _split(abs_t, dof)
    return _betainc(0.5 * dof, 0.5, w, y, log_w, log_y)


def _central(abs_t: float, dof: float) -> float:
    """``P(|T| < abs_t) = I_y(1/2, dof/2)``, accurate also when small (near ``t = 0``)."""
    if dof > _NORMAL_ABOVE_DOF:
        return max(0.0, math.erf(abs_t / _SQRT2) - _normal_correction(abs_t, dof))
    w, y, log_w, log_y = _split(abs_t, dof)
    return _betainc(0.5, 0.5 * dof, y, w, log_y, log_w)


def _log_pdf(abs_t: float, dof: float, log_beta: float) -> float:
    """``log`` of the density, ``-(dof + 1)/2 log(1 + t^2/dof) - log(sqrt(dof) B(dof/2, 1/2))``."""
    log1p_r = -_split(abs_t, dof)[2]
    return -0.5 * math.log(dof) - log_beta - 0.5 * (dof + 1.0) * log1p_r


def t_cdf(x: float, dof: float) -> float:
    """``P(T <= x)`` for Student's t with ``dof`` (> 0, fractional allowed, ``inf`` = normal) degrees of freedom."""
    if math.isnan(x) or _bad_dof(dof):
        return math.nan
    if math.isinf(x):
        return 0.0 if x < 0 else 1.0
    if x == 0.0:
        return 0.5
    if math.isinf(dof):
        tail = 0.5 * math.erfc(abs(x) / _SQRT2)
    else:
        tail = 0.5 * _two_sided(abs(x), dof)
    return tail if x < 0 else 1.0 - tail


def t_sf2(t: float, dof: float) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` (small values computed directly, to full relative precision)."""
    if math.isnan(t) or _bad_dof(dof):
        return math.nan
    if math.isinf(t):
        return 0.0
    if t == 0.0:
        return 1.0
    if math.isinf(dof):
        return math.erfc(abs(t) / _SQRT2)
    return _two_sided(abs(t), dof)


def t_pdf(x: float, dof: float) -> float:
    """Student's t density ``(1 + x^2/dof)^(-(dof+1)/2) / (sqrt(dof) B(dof/2, 1/2))``."""
    if math.isnan(x) or _bad_dof(dof):
        return math.nan
    if math.isinf(dof):
        return _NORMAL.pdf(x)
    if math.isinf(x):
        return 0.0
    if x == 0.0:
        return math.exp(-0.5 * math.log(dof) - _log_beta(0.5 * dof, 0.5))
    return math.exp(_log_pdf(abs(x), dof, _log_beta(0.5 * dof, 0.5)))


def norm_ppf(q: float) -> float:
    """The standard normal quantile (``statistics.NormalDist().inv_cdf``), with scipy's conventions at and outside
    the ends of ``[0, 1]``."""
    if math.isnan(q) or not 0.0 <= q <= 1.0:
        return math.nan
    if q == 0.0:
        return -math.inf
    if q == 1.0:
        return math.inf
    return _NORMAL.inv_cdf(q)


def t_ppf(q: float, dof: float) -> float:
    """Student's t quantile: the ``t`` with ``P(T <= t) = q``, to a relative ~1e-13 (near ``q = 0.5`` to what the
    double ``q`` itself determines)."""
    if math.isnan(q) or _bad_dof(dof) or not 0.0 <= q <= 1.0:
        return math.nan
    if q == 0.5:
        return 0.0
    if q > 0.5:
        return -t_ppf(1.0 - q, dof)        # 1 - q is exact for q in [0.5, 1]
    if q == 0.0:
        return -math.inf
    if math.isinf(dof):
        return _NORMAL.inv_cdf(q)
    u = _log_abs_lower_quantile(q, dof)
    return -math.exp(u) if u < _LOG_MAX_FLOAT else -math.inf


def _log_abs_lower_quantile(p: float, dof: float) -> float:
    """``u = log |t|`` of the quantile ``t < 0`` with ``P(T <= t) = p``, ``0 < p < 1/2``.

    Solves ``log h(e^u) = log target`` by Halley's method (Newton's where Halley's correction is large), where
    ``h`` is the two-sided tail ``P(|T| >= |t|)`` with target ``2p`` for ``p < 1/4``, and the central probability
    ``P(|T| < |t|)`` with target ``1 - 2p`` (exact in floating point) above, so that both the far tail and the
    quantiles near 0 are found to full relative precision.  ``d log h / du = -+ 2 pdf(t) |t| / h``, and the
    density's own log derivative is ``-(dof + 1) t^2 / (dof + t^2)``.  The steps are kept inside a bracket
    ``(u_low, u_high)`` (a step that leaves it is replaced by bisection, or by a step of ``e`` while the bracket is
    still open below): ``u_high`` starts at the quantile of the power law that bounds the tail from above (the
    density is at most ``C |t|^-(dof+1)`` with ``C = dof^(dof/2) / B(dof/2, 1/2)``, so
    ``P(T <= t) <= C |t|^-dof / dof``).  The start is the normal quantile ``z`` corrected to third order in ``1/dof``
    (the Cornish-Fisher expansion ``t = z + g1/dof + g2/dof^2 + g3/dof^3``, ``g1 = (z^3 + z)/4``,
    ``g2 = (5z^5 + 16z^3 + 3z)/96``, ``g3 = (3z^7 + 19z^5 + 17z^3 - 15z)/384``), or the bound when that is smaller;
    from 10 degrees of freedom on, one step is usually all it takes.
    """
    central = p >= 0.25
    target = 1.0 - 2.0 * p if central else 2.0 * p
    log_target = math.log(target)
    log_b = _log_beta(0.5 * dof, 0.5)
    u_high = ((0.5 * dof - 1.0) * math.log(dof) - log_b - math.log(p)) / dof
    if u_high >= _LOG_MAX_FLOAT:           # heavy tail, tiny p: the quantile may lie beyond the largest float
        u_high = _LOG_MAX_FLOAT
        if _two_sided(math.exp(u_high), dof) > target:
            return math.inf
    u_low = -math.inf
    z = _NORMAL.inv_cdf(p)
    z2 = z * z
    inv = 1.0 / dof
    g1 = (z2 + 1.0) / 4.0
    g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) / 96.0
    g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) / 384.0
    guess = -z * (1.0 + inv * (g1 + inv * (g2 + inv * g3)))
    u = min(math.log(guess), u_high) if guess > 0 else u_high - 1.0
    sign = 1.0 if central else -1.0        # the sign of d log h / du
    for _ in range(200):
        abs_t = math.exp(u)
        h = _central(abs_t, dof) if central else _two_sided(abs_t, dof)
        if h <= 0.0:                       # underflow: |t| far too small (central) or too large (tail)
            if central:
                u_low, new = u, (u + 1.0 if u_high == math.inf else 0.5 * (u + u_high))
            else:
                u_high, new = u, (u - 1.0 if u_low == -math.inf else 0.5 * (u_low + u))
            u = new
            continue
        log_h = math.log(h)
        g = log_h - log_target
        if g == 0.0:
            return u
        if (g > 0) != central:             # |t| too small
            u_low = u
        else:
            u_high = u
        _, y, log_w, _ = _split(abs_t, dof)
        log_pdf = -0.5 * math.log(dof) - log_b + 0.5 * (dof + 1.0) * log_w
        slope = sign * math.exp(_LOG2 + log_pdf + u - log_h)           # g'
        newton = -g / slope
        # Halley: g''/g' = 1 + d log pdf/du - g' with d log pdf/du = -(dof + 1) y
        factor = 1.0 + 0.5 * newton * (1.0 - (dof + 1.0) * y - slope)
        halley = 0.5 < factor < 2.0
        step = newton / factor if halley else newton
        new = u + step
        if abs(step) <= (1e-6 if halley else 1e-9) * max(1.0, abs(u)):
            return new                     # the error left is ~step^3 (Halley) or ~step^2 (Newton)
        if not u_low < new < u_high:
            new = u_high - 1.0 if u_low == -math.inf else 0.5 * (u_low + u_high)
        if u_high - u_low <= 1e-15 * max(1.0, abs(u)):
            return new
        u = new
    return u


# --- tests -------------------------------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _variance(values: Sequence[float]) -> float:
    m = _mean(values)
    return math.fsum((x - m) ** 2 for x in values) / (len(values) - 1)


def ttest_1samp_p(values: Sequence[float]) -> float | None:
    """Two-sided p-value of the one-sample t-test of ``mean = 0`` (the paired test on differences).

    ``None`` below two values.  Values that are identical to rounding (standard deviation at most ``1e-12`` of the
    mean's size) have no spread to test: ``1.0`` when their mean is 0 (to ``1e-12``), else ``0.0`` (scipy would
    divide by zero).  ``nan`` when a value is ``nan``."""
    values = [float(v) for v in values]
    n = len(values)
    if n < 2:
        return None
    return ttest_p_from(_mean(values), math.sqrt(_variance(values)), n)


def ttest_p_from(centre: float, sd: float, n: int) -> float:
    """:func:`ttest_1samp_p` from the values' mean, standard deviation and count (``n >= 2``), for a caller that
    has them already."""
    if sd <= 1e-12 * max(1.0, abs(centre)):
        return 1.0 if abs(centre) <= 1e-12 else 0.0
    return t_sf2(centre / (sd / math.sqrt(n)), n - 1)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's unequal-variance t-test of ``mean(a) = mean(b)``, with the Welch-Satterthwaite
    degrees of freedom.  ``None`` when a side has fewer than two values; when both sides have no spread at all,
    ``1.0`` if the means are equal (``math.isclose``) else ``0.0``.  ``nan`` when a value is ``nan``."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2:
        return None
    var_a, var_b = _variance(a), _variance(b)
    mean_a, mean_b = _mean(a), _mean(b)
    if var_a == 0.0 and var_b == 0.0:
        return 1.0 if math.isclose(mean_a, mean_b) else 0.0
    se2_a, se2_b = var_a / len(a), var_b / len(b)
    dof = (se2_a + se2_b) ** 2 / (se2_a ** 2 / (len(a) - 1) + se2_b ** 2 / (len(b) - 1))
    return t_sf2((mean_a - mean_b) / math.sqrt(se2_a + se2_b), dof)


def _average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n; tied values share the mean of the ranks they occupy."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        shared = (start + end) / 2.0 + 1.0
        for k in range(start, end + 1):
            ranks[order[k]] = shared
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float | None]:
    """Spearman's rank correlation ``rho`` (Pearson's correlation of the average ranks) and its two-sided p-value
    from the t approximation, ``t = rho sqrt((n - 2) / (1 - rho^2))`` with ``n - 2`` degrees of freedom.

    ``rho`` is ``nan`` (and the p-value ``None``) when a side is constant, has a ``nan`` or fewer than two values;
    the p-value is ``None`` below three pairs (no degrees of freedom) and 0 at ``|rho| = 1``."""
    x, y = [float(v) for v in x], [float(v) for v in y]
    if len(x) != len(y):
        raise ValueError(f"spearman needs pairs, got {len(x)} and {len(y)} values")
    n = len(x)
    if n < 2 or any(math.isnan(v) for v in x + y):
        return math.nan, None
    rx, ry = _average_ranks(x), _average_ranks(y)
    centre = (n + 1) / 2.0
    sxy = math.fsum((p - centre) * (q - centre) for p, q in zip(rx, ry))
    sxx = math.fsum((p - centre) ** 2 for p in rx)
    syy = math.fsum((q - centre) ** 2 for q in ry)
    if sxx == 0.0 or syy == 0.0:
        return math.nan, None
    rho = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    if n < 3:
        return rho, None
    if abs(rho) == 1.0:
        return rho, 0.0
    return rho, t_sf2(rho * math.sqrt((n - 2) / ((1.0 + rho) * (1.0 - rho))), n - 2)
