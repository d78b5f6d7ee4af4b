"""Statistics of repeated runs: mean, standard deviation, Student-t confidence intervals, outliers,
and the adaptive stopping rule.  Pure functions of plain sequences of numbers; no I/O.

Conventions
-----------
* ``stdev`` is the *sample* standard deviation (divisor ``n - 1``).
* The confidence interval of the mean is ``mean ± t(1 - (1 - confidence)/2, n - 1) * stdev / sqrt(n)``
  (two-sided Student t, :mod:`e2ebench.tdist`).  With fewer than two values it is unbounded
  (half-width ``inf``): one run says nothing about the spread.
* The *relative* half-width is ``100 * half_width / |mean|`` in percent (``inf`` when the mean is 0).
* Outliers (:func:`outlier_mask`): a value is an outlier when it lies more than ``sigmas`` (3) standard
  deviations from the mean **of the other values** (leave-one-out), tested one value at a time — the most
  extreme first, then again on what is left — until none is left to flag.  Leave-one-out is used because
  with the plain rule (the value included in its own mean and standard deviation) no value of a sample of
  ``n`` can ever be more than ``(n - 1) / sqrt(n)`` deviations away (2.85 for ``n = 10``): a 3-sigma
  rule would never fire on the small samples a study collects.  Nothing is flagged below ``min_n``
  values (default 5), where the standard deviation of the others is too uncertain.  Two or more
  identical extreme values can mask each other (each inflates the others' standard deviation); that
  is a known limit of every mean/standard-deviation rule.
* Stopping rule (:func:`stopping_decision`): stop when ``n >= max_runs``; otherwise continue while
  ``n < min_runs``; otherwise stop as soon as the relative half-width is at or below the target — or, when the
  host's drift alone makes the target unreachable, as soon as the runs' own part of the interval is no larger than
  the drift's (reason ``drift``: more runs cannot narrow an interval that the host's drift sets).
* Intervals that survive a re-run (:func:`drift_aware_interval`, issue 11): every run of a study happens within
  minutes, so the study's mean is *one draw* of the host's state; a re-run later draws again.  The interval adds the
  host's drift, a relative standard deviation measured by the calibration probe and by the round effect
  (:func:`round_effect_pct`), to the runs' own Student-t part in quadrature:
  ``half = sqrt((t(n-1) * s / sqrt(n))^2 + (z * drift * |mean|)^2)`` with ``z`` the normal quantile of the
  confidence.  The drift term does not shrink with ``n``: runs made minutes apart cannot average away a host that is
  10 % slower in an hour.  With ``drift = 0`` it is the plain interval.
* Paired comparisons (:func:`paired_log_ratio`): two scenarios measured in the same rounds are compared run by run,
  as the per-round log ratio, so what moved the whole host between rounds cancels.
* The distributions (Student t's quantile and p-values, the normal quantile) come from :mod:`e2ebench.tdist`
  (standard library only, checked against scipy in the tests): importing ``scipy.stats`` would cost ``show`` ~0.9 s.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import statistics
from typing import Sequence

from e2ebench import tdist

DEFAULT_CONFIDENCE = 0.95
DEFAULT_TARGET_HALFWIDTH_PCT = 2.0
DEFAULT_OUTLIER_SIGMAS = 3.0
DEFAULT_OUTLIER_MIN_N = 5


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; ``nan`` for an empty sequence."""
    values = values if type(values) is list else list(values)
    if not values:
        return math.nan
    return math.fsum(values) / len(values)


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (``n - 1`` divisor); ``nan`` with fewer than two values."""
    values = values if type(values) is list else list(values)
    n = len(values)
    if n < 2:
        return math.nan
    m = math.fsum(values) / n
    return math.sqrt(math.fsum([(x - m) * (x - m) for x in values]) / (n - 1))     # (a list: fsum reads it faster)


def t_critical(confidence: float, dof: float) -> float:
    """Two-sided Student-t critical value: ``P(|T| <= t) = confidence`` with ``dof`` degrees of freedom
    (``dof`` may be fractional, e.g. Welch-Satterthwaite)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    if not dof > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {dof}")
    return _t_ppf(1.0 - (1.0 - confidence) / 2.0, dof)


@functools.lru_cache(maxsize=4096)
def _t_ppf(q: float, dof: float) -> float:
    """Student-t's quantile, remembered: a study of hundreds of scenarios asks for the same few (0.975, n - 1) again
    and again."""
    return tdist.t_ppf(q, dof)


@dataclasses.dataclass(frozen=True)
class ConfidenceInterval:
    """The mean of ``n`` values and its two-sided Student-t confidence interval (same unit as the values).

    ``drift_pct``: the host drift (relative standard deviation, percent) included in ``half_width``
    (:func:`drift_aware_interval`); 0 for the plain interval, whose half-width is then ``runs_half_width``.
    """

    n: int
    mean: float
    stdev: float
    half_width: float          # ``inf`` when n < 2
    confidence: float
    drift_pct: float = 0.0
    runs_half_width: float | None = None     # the runs' own (Student-t) part; None = same as half_width

    @property
    def runs_half_width_pct(self) -> float:
        """The runs' own part of the half-width, in percent of the mean."""
        half = self.half_width if self.runs_half_width is None else self.runs_half_width
        if not math.isfinite(half) or self.mean == 0 or math.isnan(self.mean):
            return math.inf
        return 100.0 * half / abs(self.mean)

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def half_width_pct(self) -> float:
        """Half-width relative to the mean, in percent (``inf`` when unbounded or the mean is 0)."""
        if not math.isfinite(self.half_width) or self.mean == 0 or math.isnan(self.mean):
            return math.inf
        return 100.0 * self.half_width / abs(self.mean)


def confidence_interval(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> ConfidenceInterval:
    values = [float(v) for v in values]
    n = len(values)
    m = mean(values)
    if n < 2:
        return ConfidenceInterval(n, m, math.nan, math.inf, confidence)
    s = stdev(values)
    half = t_critical(confidence, n - 1) * s / math.sqrt(n)
    return ConfidenceInterval(n, m, s, half, confidence)


def relative_half_width_pct(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> float:
    return confidence_interval(values, confidence).half_width_pct


def z_critical(confidence: float) -> float:
    """Two-sided normal critical value (1.96 for 0.95)."""
    return tdist.norm_ppf(1.0 - (1.0 - confidence) / 2.0)


def drift_aware_interval(values: Sequence[float], drift_pct: float,
                         confidence: float = DEFAULT_CONFIDENCE) -> ConfidenceInterval:
    """The mean's interval with the host's drift added (see the module docstring); ``drift_pct`` is a relative
    standard deviation in percent (0: the plain Student-t interval)."""
    plain = confidence_interval(values, confidence)
    drift_pct = float(drift_pct) if drift_pct and math.isfinite(drift_pct) and drift_pct > 0 else 0.0
    if plain.n < 2:
        return dataclasses.replace(plain, drift_pct=drift_pct)
    drift_half = z_critical(confidence) * drift_pct / 100.0 * abs(plain.mean)
    half = math.hypot(plain.half_width, drift_half)
    return dataclasses.replace(plain, half_width=half, drift_pct=drift_pct, runs_half_width=plain.half_width)


def robust_rel_sd_pct(values: Sequence[float]) -> float | None:
    """Relative standard deviation (percent) of positive values, robustly: 1.4826 x the median absolute deviation
    of their logs (a stray slow probe does not make the whole host look unstable).  ``None`` below 3 values."""
    logs = [math.log(v) for v in values if v and v > 0 and math.isfinite(v)]
    if len(logs) < 3:
        return None
    centre = statistics.median(logs)
    return 100.0 * 1.4826 * statistics.median([abs(x - centre) for x in logs])


def round_effect_pct(by_scenario: dict[object, dict[int, float]]) -> float | None:
    """The host's round-to-round drift as the scenarios saw it: the standard deviation (percent) of the *round
    effect* in a one-way random-effects model of ``log(value)`` with the round as the random effect.

    ``by_scenario``: {scenario: {round: value}}.  Each value's residual is its log minus its scenario's mean log; a
    round's effect is the mean residual of the scenarios measured in it; the variance of those round means, less
    the part the runs' own scatter puts into them (the pooled within-round variance / the scenarios per round:
    method of moments, floored at 0), is the round effect's variance.  ``None`` with fewer than 3 rounds or no
    round that measured two scenarios (nothing separates the round from the run).
    """
    residuals: dict[int, list[float]] = {}
    for rounds in by_scenario.values():
        logs = {r: math.log(v) for r, v in rounds.items() if r is not None and v and v > 0}
        if len(logs) < 2:
            continue
        centre = math.fsum(logs.values()) / len(logs)
        for r, x in logs.items():
            residuals.setdefault(r, []).append(x - centre)
    if len(residuals) < 3:
        return None
    within_ss, within_dof = 0.0, 0
    for res in residuals.values():
        if len(res) >= 2:
            m = math.fsum(res) / len(res)
            within_ss += math.fsum((x - m) ** 2 for x in res)
            within_dof += len(res) - 1
    if within_dof == 0:
        return None
    within_var = within_ss / within_dof
    round_means = [math.fsum(res) / len(res) for res in residuals.values()]
    between_var = stdev(round_means) ** 2
    noise_part = math.fsum(within_var / len(res) for res in residuals.values()) / len(residuals)
    return 100.0 * math.sqrt(max(0.0, between_var - noise_part))


@dataclasses.dataclass(frozen=True)
class PairedRatio:
    """Subject vs baseline measured in the same rounds: the geometric mean of the per-round ratios with its
    Student-t interval (on the logs), the paired t-test's p-value, and the paired difference with its interval."""

    pairs: int
    ratio: float
    ratio_ci: tuple[float, float] | None
    difference: float
    difference_ci: tuple[float, float] | None
    p_value: float | None


def paired_log_ratio(subject: Sequence[float], baseline: Sequence[float],
                     confidence: float = DEFAULT_CONFIDENCE) -> PairedRatio | None:
    """Compare paired values (``subject[i]`` and ``baseline[i]`` from the same round); ``None`` below two pairs.
    Non-positive values (a phase that took no time) leave the ratio and its interval out (ratio ``nan``) and test
    the differences instead."""
    a, b = list(map(float, subject)), list(map(float, baseline))
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    n = len(a)
    if n < 2:
        return None
    # (each step one pass in C where it can be: a study of 10^5 runs makes ~1,000 comparisons of ~500 pairs)
    diffs = list(map(operator.sub, a, b))
    t = t_critical(confidence, n - 1)
    d_mean, d_sd = mean(diffs), stdev(diffs)
    difference_ci = (d_mean - t * d_sd / math.sqrt(n), d_mean + t * d_sd / math.sqrt(n))
    positive = all(map(_ZERO.__lt__, a)) and all(map(_ZERO.__lt__, b))
    tested = list(map(operator.sub, map(math.log, a), map(math.log, b))) if positive else diffs
    centre, sd = mean(tested), stdev(tested)
    # identical differences (no spread to test): 1.0 when 0, else 0.0; nan when a value is nan
    p = math.nan if math.isnan(centre) else tdist.ttest_p_from(centre, sd, n)
    if not positive:
        return PairedRatio(n, math.nan, None, d_mean, difference_ci, p)
    half = t * sd / math.sqrt(n)
    return PairedRatio(n, math.exp(centre), (math.exp(centre - half), math.exp(centre + half)), d_mean,
                       difference_ci, p)


_ZERO = 0.0


def outlier_mask(values: Sequence[float], sigmas: float = DEFAULT_OUTLIER_SIGMAS,
                 min_n: int = DEFAULT_OUTLIER_MIN_N) -> list[bool]:
    """``True`` for every value farther than ``sigmas`` standard deviations from the mean of the others.

    Iterative leave-one-out (see the module docstring): at each step, among the values not yet flagged,
    the one with the largest ``|x - mean(others)| / stdev(others)`` is flagged when that ratio exceeds
    ``sigmas``; stops when none does or fewer than ``min_n`` unflagged values would remain to test.
    When the others are all equal (standard deviation 0), any different value is an outlier.
    """
    values = [float(v) for v in values]
    flagged = [False] * len(values)
    if sigmas <= 0:
        raise ValueError(f"sigmas must be > 0, got {sigmas!r}")
    while True:
        kept = [i for i, f in enumerate(flagged) if not f]
        if len(kept) < max(min_n, 3):
            return flagged
        shift = mean([values[i] for i in kept])          # centred sums avoid cancellation
        centred = {i: values[i] - shift for i in kept}
        total = math.fsum(centred.values())
        total_sq = math.fsum(c * c for c in centred.values())
        worst_index, worst_score = None, 0.0
        k = len(kept) - 1                      # size of "the others"
        for i in kept:
            x = centred[i]
            others_mean = (total - x) / k
            others_var = max(0.0, (total_sq - x * x - k * others_mean ** 2) / (k - 1))
            deviation = abs(x - others_mean)
            if others_var <= 1e-24 * max(1.0, shift * shift):
                # the others are (numerically) all equal: recompute exactly
                others = [values[j] for j in kept if j != i]
                spread = stdev(others)
                if spread == 0.0:
                    score = math.inf if values[i] != others[0] else 0.0
                else:
                    score = abs(values[i] - mean(others)) / spread
            else:
                score = deviation / math.sqrt(others_var)
            if score > worst_score:
                worst_index, worst_score = i, score
        if worst_index is None or worst_score <= sigmas:
            return flagged
        flagged[worst_index] = True


@dataclasses.dataclass(frozen=True)
class StopDecision:
    """Whether a scenario needs another measured run, and why."""

    stop: bool
    reason: str                     # "min-runs" | "target" | "max-runs" | "drift" | "continue"
    n: int
    half_width_pct: float

    @property
    def target_reached(self) -> bool:
        return self.reason == "target"


def stopping_decision(values: Sequence[float], min_runs: int, max_runs: int,
                      target_half_width_pct: float = DEFAULT_TARGET_HALFWIDTH_PCT,
                      confidence: float = DEFAULT_CONFIDENCE, runs_done: int | None = None,
                      drift_pct: float = 0.0) -> StopDecision:
    """The adaptive stopping rule.

    ``values`` are the measurements that count (outliers already removed, if they are excluded);
    ``runs_done`` is how many measured runs the budget ``max_runs`` is charged with (default
    ``len(values)``; pass the count including outliers so that excluded runs still use the budget).
    ``drift_pct``: the host's measured drift (relative standard deviation, percent); the half-width compared with
    the target is then :func:`drift_aware_interval`'s, and a target below the drift's own part
    (``z * drift_pct``) stops with reason ``drift`` once the runs' part is no larger than the drift's.
    """
    if min_runs < 1 or max_runs < min_runs:
        raise ValueError(f"need 1 <= min_runs <= max_runs, got {min_runs} and {max_runs}")
    n = len(values)
    done = n if runs_done is None else runs_done
    ci = drift_aware_interval(values, drift_pct, confidence) if n else None
    hw = ci.half_width_pct if ci is not None else math.inf
    if n >= min_runs and hw <= target_half_width_pct:
        return StopDecision(True, "target", n, hw)
    if done >= max_runs:
        return StopDecision(True, "max-runs", n, hw)
    if n < min_runs:
        return StopDecision(False, "min-runs", n, hw)
    if ci is not None and ci.drift_pct > 0 and n >= 2:
        drift_half_pct = z_critical(confidence) * ci.drift_pct
        if drift_half_pct >= target_half_width_pct and ci.runs_half_width_pct <= drift_half_pct:
            return StopDecision(True, "drift", n, hw)
    return StopDecision(False, "continue", n, hw)


def predicted_runs_needed(values: Sequence[float], min_runs: int, max_runs: int,
                          target_half_width_pct: float = DEFAULT_TARGET_HALFWIDTH_PCT,
                          confidence: float = DEFAULT_CONFIDENCE, drift_pct: float = 0.0) -> int:
    """How many measured values the stopping rule will probably need in all (for ETAs).

    Assumes the current relative standard deviation stays as it is: the smallest ``n`` with
    ``t(n-1) * cv / sqrt(n) <= target`` (with the drift added in quadrature, or, when the drift alone exceeds the
    target, ``t(n-1) * cv / sqrt(n) <= z * drift``), clamped to ``[max(min_runs, len(values)), max_runs]``.
    With fewer than two values nothing is known yet: returns ``max(min_runs, len(values))``.
    """
    n_now = len(values)
    floor = min(max(min_runs, n_now), max_runs)
    if n_now < 2:
        return floor
    m = mean(values)
    s = stdev(values)
    if m == 0:
        return max_runs
    cv_pct = 100.0 * s / abs(m)
    if cv_pct == 0:
        return floor
    start = max(floor, 2)
    if start >= max_runs:
        return max_runs
    drift_half_pct = z_critical(confidence) * drift_pct if drift_pct and drift_pct > 0 else 0.0
    for n in range(start, max_runs + 1):
        runs_half_pct = t_critical(confidence, n - 1) * cv_pct / math.sqrt(n)
        if drift_half_pct >= target_half_width_pct:
            if runs_half_pct <= drift_half_pct:
                return n
        elif math.hypot(runs_half_pct, drift_half_pct) <= target_half_width_pct:
            return n
    return max_runs
