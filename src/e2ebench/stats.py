"""Statistics of repeated runs: mean, standard deviation, Student-t confidence intervals, outliers,
and the adaptive stopping rule.  Pure functions of plain sequences of numbers; no I/O.

Conventions
-----------
* ``stdev`` is the *sample* standard deviation (divisor ``n - 1``).
* The confidence interval of the mean is ``mean ± t(1 - (1 - confidence)/2, n - 1) * stdev / sqrt(n)``
  (two-sided Student t, ``scipy.stats.t``).  With fewer than two values it is unbounded
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
  ``n < min_runs``; otherwise stop as soon as the relative half-width is at or below the target.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

DEFAULT_CONFIDENCE = 0.95
DEFAULT_TARGET_HALFWIDTH_PCT = 2.0
DEFAULT_OUTLIER_SIGMAS = 3.0
DEFAULT_OUTLIER_MIN_N = 5


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; ``nan`` for an empty sequence."""
    values = list(values)
    if not values:
        return math.nan
    return math.fsum(values) / len(values)


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (``n - 1`` divisor); ``nan`` with fewer than two values."""
    values = list(values)
    n = len(values)
    if n < 2:
        return math.nan
    m = mean(values)
    return math.sqrt(math.fsum((x - m) ** 2 for x in values) / (n - 1))


def t_critical(confidence: float, dof: float) -> float:
    """Two-sided Student-t critical value: ``P(|T| <= t) = confidence`` with ``dof`` degrees of freedom
    (``dof`` may be fractional, e.g. Welch-Satterthwaite)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    if not dof > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {dof}")
    from scipy.stats import t

    return float(t.ppf(1.0 - (1.0 - confidence) / 2.0, dof))


@dataclasses.dataclass(frozen=True)
class ConfidenceInterval:
    """The mean of ``n`` values and its two-sided Student-t confidence interval (same unit as the values)."""

    n: int
    mean: float
    stdev: float
    half_width: float          # ``inf`` when n < 2
    confidence: float

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
    reason: str                     # "min-runs" | "target" | "max-runs" | "continue"
    n: int
    half_width_pct: float

    @property
    def target_reached(self) -> bool:
        return self.reason == "target"


def stopping_decision(values: Sequence[float], min_runs: int, max_runs: int,
                      target_half_width_pct: float = DEFAULT_TARGET_HALFWIDTH_PCT,
                      confidence: float = DEFAULT_CONFIDENCE, runs_done: int | None = None) -> StopDecision:
    """The adaptive stopping rule.

    ``values`` are the measurements that count (outliers already removed, if they are excluded);
    ``runs_done`` is how many measured runs the budget ``max_runs`` is charged with (default
    ``len(values)``; pass the count including outliers so that excluded runs still use the budget).
    """
    if min_runs < 1 or max_runs < min_runs:
        raise ValueError(f"need 1 <= min_runs <= max_runs, got {min_runs} and {max_runs}")
    n = len(values)
    done = n if runs_done is None else runs_done
    hw = relative_half_width_pct(values, confidence) if n else math.inf
    if n >= min_runs and hw <= target_half_width_pct:
        return StopDecision(True, "target", n, hw)
    if done >= max_runs:
        return StopDecision(True, "max-runs", n, hw)
    if n < min_runs:
        return StopDecision(False, "min-runs", n, hw)
    return StopDecision(False, "continue", n, hw)


def predicted_runs_needed(values: Sequence[float], min_runs: int, max_runs: int,
                          target_half_width_pct: float = DEFAULT_TARGET_HALFWIDTH_PCT,
                          confidence: float = DEFAULT_CONFIDENCE) -> int:
    """How many measured values the stopping rule will probably need in all (for ETAs).

    Assumes the current relative standard deviation stays as it is: the smallest ``n`` with
    ``t(n-1) * cv / sqrt(n) <= target``, clamped to ``[max(min_runs, len(values)), max_runs]``.
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
    import numpy as np
    from scipy.stats import t

    start = max(floor, 2)
    if start >= max_runs:
        return max_runs
    n = np.arange(start, max_runs + 1)
    half_width_pct = t.ppf(1.0 - (1.0 - confidence) / 2.0, n - 1) * cv_pct / np.sqrt(n)
    enough = np.nonzero(half_width_pct <= target_half_width_pct)[0]
    return int(n[enough[0]]) if enough.size else max_runs
