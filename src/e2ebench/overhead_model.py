"""A scaling model of E2E time: fit t(cores) per phase, predict untested core counts — always as predictions.

The paper names a mathematical model of platform overhead as future work.  e2ebench fits, for every
(app, platform, CPU mode, device, mode, cache state) measured at two or more core counts, and for E2E and each phase:

* **Amdahl**: ``t(n) = serial_s + parallel_s / n`` — a serial part that no core count shortens and a part
  that divides perfectly.  Two parameters, both >= 0; needs two core counts.
* **USL** (Gunther's Universal Scalability Law, in time form):
  ``t(n) = t1_s * (1 + sigma * (n - 1) + kappa * n * (n - 1)) / n`` — ``sigma`` is contention (the Amdahl
  serial fraction), ``kappa`` coherency cost, which makes time *rise* past a core count.  Needs three.

Fits use every run (not only the means) with ``scipy.optimize.curve_fit``, through each core count's sufficient
statistics: the count-weighted fit of the means has the same least-squares minimum as the fit of every run, and the
residual sums, R², covariance and largest residual are those of every run (a study of 10^5 runs gives the optimiser
5 points, not 10^5; tests/test_overhead_fit.py checks it against least squares over every run).  Goodness of fit: R² over the
runs, RMSE, and the mean residual at each measured core count.  When a model has as many parameters as
there are measured core counts it passes through the means exactly (``saturated``): its R² then only shows
run-to-run noise and says nothing about the model's shape.  The preferred model is the one with the lower
AICc when both fit.

A prediction at ``n`` cores carries a 95% confidence band for the mean (delta method on the parameters'
covariance, Student-t with the fit's residual degrees of freedom) and a wider prediction band for a single
run.  Core counts outside the measured range are flagged ``extrapolated``.  Predictions are never mixed
with measurements: every :class:`Prediction` has ``predicted = True``.

Platform overhead follows from two models: the ratio of a platform's predicted E2E to BM's at the same
core count (:func:`predicted_overhead`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Sequence

import numpy as np

from e2ebench.analysis import CONFIDENCE, PHASES, ScenarioKey, ScenarioStats
from e2ebench.platforms import BASELINE_PLATFORM, platform_rank
from e2ebench.scenario import scenario_string
from e2ebench.stats import t_critical

AMDAHL = "amdahl"
USL = "usl"
METRICS: tuple[str, ...] = ("e2e",) + PHASES


def amdahl_time(n, serial_s, parallel_s):
    n = np.asarray(n, dtype=float)
    return serial_s + parallel_s / n


def usl_time(n, t1_s, sigma, kappa):
    n = np.asarray(n, dtype=float)
    return t1_s * (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0)) / n


def oversubscribed_time(n, t1_s, per_thread_s):
    """E2E time with ``n`` compute threads inside a fixed CPU limit: the work does not divide (the limit does not
    grow), every thread beyond the first adds a constant cost (switches, spinning, cache refills).  The thread axis,
    not the core axis: ``n`` is threads per limited core."""
    n = np.asarray(n, dtype=float)
    return t1_s + per_thread_s * (n - 1)


OVERSUBSCRIBED = "oversubscribed"


# Each model's derivatives by its parameters (rows: core counts): the optimiser then needs no finite differences.
def _amdahl_jacobian(n, serial_s, parallel_s):
    n = np.asarray(n, dtype=float)
    return np.column_stack([np.ones_like(n), 1.0 / n])


def _usl_jacobian(n, t1_s, sigma, kappa):
    n = np.asarray(n, dtype=float)
    return np.column_stack([(1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0)) / n, t1_s * (n - 1.0) / n,
                            t1_s * (n - 1.0)])


def _oversubscribed_jacobian(n, t1_s, per_thread_s):
    n = np.asarray(n, dtype=float)
    return np.column_stack([np.ones_like(n), n - 1.0])


_JACOBIANS: dict[str, Callable] = {"amdahl": _amdahl_jacobian, "usl": _usl_jacobian,
                                   "oversubscribed": _oversubscribed_jacobian}

_MODELS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    AMDAHL: (amdahl_time, ("serial_s", "parallel_s")),
    USL: (usl_time, ("t1_s", "sigma", "kappa")),
    OVERSUBSCRIBED: (oversubscribed_time, ("t1_s", "per_thread_s")),
}


@dataclasses.dataclass
class Prediction:
    """A model's estimate of mean time at ``cores`` — a prediction, not a measurement."""

    cores: int
    value_s: float
    ci_s: tuple[float, float] | None          # 95% band of the mean
    pi_s: tuple[float, float] | None          # 95% band of a single run
    model: str
    metric: str
    extrapolated: bool
    measured: bool                            # this core count was also measured (a fitted value)
    predicted: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ModelFit:
    """One model fitted to one metric (E2E or a phase) of one scaling group."""

    model: str
    metric: str
    params: dict[str, float]
    param_ci: dict[str, tuple[float, float]] | None
    covariance: list[list[float]] | None
    r2: float | None
    rmse_s: float
    max_abs_residual_s: float
    residual_by_cores_s: dict[int, float]     # mean residual (measured - fitted) at each core count
    n_runs: int
    core_levels: list[int]
    residual_dof: int
    aicc: float | None
    saturated: bool

    def function(self) -> Callable:
        return _MODELS[self.model][0]

    def value(self, cores: float) -> float:
        return float(self.function()(cores, *self.params.values()))

    def predict(self, cores: int) -> Prediction:
        params = list(self.params.values())
        value = self.value(cores)
        ci = pi = None
        if self.covariance is not None and self.residual_dof > 0:
            cov = np.asarray(self.covariance)
            grad = _gradient(self.function(), cores, params)
            var_mean = float(grad @ cov @ grad)
            t = t_critical(CONFIDENCE, self.residual_dof)
            if math.isfinite(var_mean) and var_mean >= 0:
                half = t * math.sqrt(var_mean)
                ci = (value - half, value + half)
                half_pi = t * math.sqrt(var_mean + self.rmse_s ** 2 * self.n_runs / self.residual_dof)
                pi = (value - half_pi, value + half_pi)
        lo, hi = min(self.core_levels), max(self.core_levels)
        return Prediction(int(cores), value, ci, pi, self.model, self.metric,
                          extrapolated=not (lo <= cores <= hi), measured=cores in self.core_levels)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("covariance")
        d["residual_by_cores_s"] = {str(k): v for k, v in self.residual_by_cores_s.items()}
        return d


def _gradient(func: Callable, cores: float, params: Sequence[float]) -> np.ndarray:
    grad = np.zeros(len(params))
    for i, p in enumerate(params):
        h = 1e-6 * max(abs(p), 1e-9)
        up, down = list(params), list(params)
        up[i] += h
        down[i] -= h
        grad[i] = (float(func(cores, *up)) - float(func(cores, *down))) / (2 * h)
    return grad


# USL in (a, b, c) = (t1, t1 sigma, t1 kappa) is linear: t(n) = a/n + b (n-1)/n + c (n-1), with the bounds
# a >= 0, 0 <= b <= a (sigma <= 1), c >= 0.  Each row r: one bound, r . p >= 0 (held: r . p = 0).
_USL_CONSTRAINTS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])


def _usl_exact(xs: np.ndarray, means: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The USL fit as the convex quadratic programme it is in (a, b, c): its optimum solves the least squares with
    some set of its bounds held, so every set is tried (16) and the best point inside all bounds kept.  Returns
    (t1, sigma, kappa) and the unscaled covariance from the Jacobian there, as curve_fit reports it; ``None`` when
    the best point has t1 = 0 (sigma and kappa undefined: the optimiser's answer is used instead)."""
    design = np.column_stack([1.0 / xs, (xs - 1.0) / xs, xs - 1.0])
    gram = design.T @ (counts[:, None] * design)
    rhs = design.T @ (counts * means)
    scale = max(float(np.max(np.abs(means))), 1e-300)
    best, best_ss = None, math.inf
    for mask in range(16):
        held = _USL_CONSTRAINTS[[i for i in range(4) if mask >> i & 1]]
        if held.size:
            _, sv, vt = np.linalg.svd(held)
            rank = int(np.sum(sv > 1e-12))
            basis = vt[rank:].T                      # the points that keep the held bounds: p = basis @ z
        else:
            basis = np.eye(3)
        if basis.shape[1] == 0:
            p = np.zeros(3)
        else:
            reduced = basis.T @ gram @ basis
            try:
                p = basis @ np.linalg.solve(reduced, basis.T @ rhs)
            except np.linalg.LinAlgError:
                continue
        if np.any(_USL_CONSTRAINTS @ p < -1e-12 * scale):
            continue                                 # outside a bound it does not hold
        ss = float(np.sum(counts * (means - design @ p) ** 2))
        if ss < best_ss:
            best, best_ss = p, ss
    if best is None or best[0] <= 1e-12 * scale:
        return None
    a, b, c = (max(float(v), 0.0) for v in best)
    params = np.array([a, min(b / a, 1.0), c / a])
    jac = _usl_jacobian(xs, *params)
    try:
        cov = np.linalg.inv(jac.T @ (counts[:, None] * jac))
    except np.linalg.LinAlgError:
        cov = np.full((3, 3), np.inf)
    return params, cov


def _bounded_linear_fit(design: np.ndarray, means: np.ndarray, counts: np.ndarray,
                        lower: tuple[float, float]) -> tuple[np.ndarray, np.ndarray] | None:
    """Weighted least squares of a two-parameter linear model with lower bounds: every candidate (both parts free,
    one held at its bound with the other free, both at their bounds) that keeps within the bounds, the one with the
    smallest weighted residual sum; and the unscaled covariance (X^T W X)^-1, as curve_fit reports it."""
    gram = design.T @ (counts[:, None] * design)
    rhs = design.T @ (counts * means)
    candidates = []
    try:
        candidates.append(np.linalg.solve(gram, rhs))
    except np.linalg.LinAlgError:
        pass
    for held in (0, 1):
        free = 1 - held
        if np.isfinite(lower[held]) and gram[free, free] > 0:
            p = np.zeros(2)
            p[held] = lower[held]
            p[free] = (rhs[free] - gram[free, held] * p[held]) / gram[free, free]
            candidates.append(p)
    if all(np.isfinite(lower)):
        candidates.append(np.array(lower, dtype=float))
    feasible = [p for p in candidates if np.all(np.isfinite(p)) and p[0] >= lower[0] and p[1] >= lower[1]]
    if not feasible:
        return None
    best = min(feasible, key=lambda p: float(np.sum(counts * (means - design @ p) ** 2)))
    try:
        cov = np.linalg.inv(gram)
    except np.linalg.LinAlgError:
        cov = np.full((2, 2), np.inf)
    return best, cov


def fit_model(model: str, metric: str, cores: Sequence[int], times_s: Sequence[float]) -> ModelFit | None:
    """Fit ``model`` to (cores, time) points; ``None`` when there are too few core counts or the fit fails."""
    from scipy.optimize import curve_fit

    func, names = _MODELS[model]
    x = np.asarray(cores, dtype=float)
    y = np.asarray(times_s, dtype=float)
    levels = [int(c) for c in np.unique(x)]
    k = len(names)
    if len(levels) < k or len(y) < k:
        return None
    # Every run counts, through its core count's sufficient statistics: sum over runs of (y - f(n))^2 is
    # sum over core counts of count * (mean - f(n))^2 plus the spread inside each count, so a fit of the means
    # weighted by their counts has the same minimum as a fit of every run -- at a study of 10^5 runs in 5 core
    # counts, 5 points instead of thousands for the optimiser.
    xs, inverse = np.unique(x, return_inverse=True)
    counts = np.bincount(inverse).astype(float)
    means = np.bincount(inverse, weights=y) / counts
    within = float(np.sum((y - means[inverse]) ** 2))
    low, high = np.full(len(xs), np.inf), np.full(len(xs), -np.inf)
    np.minimum.at(low, inverse, y)
    np.maximum.at(high, inverse, y)
    weight = np.sqrt(counts)
    if model in (OVERSUBSCRIBED, AMDAHL):
        # linear in (1, n - 1) or (1, 1/n): the bounded least squares solved exactly (the optimum is inside the
        # bounds, or on a bound with the other part free), no optimiser needed
        design = np.column_stack([np.ones_like(xs), xs - 1.0 if model == OVERSUBSCRIBED else 1.0 / xs])
        lower = (0.0, -np.inf) if model == OVERSUBSCRIBED else (0.0, 0.0)
        found = _bounded_linear_fit(design, means, counts, lower)
        if found is None:
            return None
        params, cov = found
    else:
        found = _usl_exact(xs, means, counts)
        if found is None:            # (the serial time came out 0: sigma and kappa are not defined by a/n terms)
            t1 = float(means[0] * xs[0])
            p0 = [max(t1, 1e-12), 0.05, 0.001]
            bounds = ([0.0, 0.0, 0.0], [np.inf, 1.0, np.inf])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    # sigma = 1/sqrt(count): each mean weighs as its runs; absolute_sigma gives the unscaled
                    # covariance (J^T J of every run), scaled below by every run's residual variance as curve_fit does
                    found = curve_fit(func, xs, means, p0=p0, sigma=1.0 / weight, absolute_sigma=True,
                                      bounds=bounds, maxfev=20000, jac=_JACOBIANS[model])
                except (RuntimeError, ValueError):
                    return None
        params, cov = found
    fitted = func(xs, *params)
    level_residuals = means - fitted
    ss_res = float(np.sum(counts * level_residuals ** 2)) + within
    ss_tot = float(np.sum(counts * (means - y.mean()) ** 2)) + within
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
    n = len(y)
    dof = n - k
    covariance = None
    param_ci = None
    cov = cov * (ss_res / dof) if dof > 0 else cov
    if dof > 0 and np.all(np.isfinite(cov)):
        covariance = cov.tolist()
        t = t_critical(CONFIDENCE, dof)
        param_ci = {n: (float(p - t * math.sqrt(max(cov[i][i], 0.0))), float(p + t * math.sqrt(max(cov[i][i], 0.0))))
                    for i, (n, p) in enumerate(zip(names, params))}
    aicc = None
    if ss_res > 0 and n - k - 1 > 0:
        aicc = n * math.log(ss_res / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)
    by_level = {int(lvl): float(r) for lvl, r in zip(xs, level_residuals)}
    max_abs = float(max(np.max(np.abs(high - fitted)), np.max(np.abs(low - fitted))))
    return ModelFit(
        model=model, metric=metric, params={n: float(p) for n, p in zip(names, params)}, param_ci=param_ci,
        covariance=covariance, r2=r2, rmse_s=math.sqrt(ss_res / n), max_abs_residual_s=max_abs,
        residual_by_cores_s=by_level, n_runs=n, core_levels=levels, residual_dof=dof, aicc=aicc,
        saturated=len(levels) <= k,
    )


@dataclasses.dataclass
class ScalingModel:
    """Fits and predictions for one (app, platform, CPU mode, device, mode, emulated, cache) group."""

    app: str
    platform: str
    cpu_mode: str
    device: str
    mode: str
    emulated: bool
    fits: dict[str, dict[str, ModelFit]]      # metric -> model -> fit
    preferred: dict[str, str]                 # metric -> model
    predictions: list[Prediction]             # E2E at untested (and measured) core counts, preferred model
    cache: str = "warm"                       # page cache at the start of the timed window: warm | cold

    @property
    def label(self) -> str:
        return scenario_string(self.app, f"{self.platform}/*/{self.cpu_mode}/{self.device}", self.mode, self.cache) + (
            " [EMULATED]" if self.emulated else "")

    def best_fit(self, metric: str = "e2e") -> ModelFit | None:
        model = self.preferred.get(metric)
        return self.fits.get(metric, {}).get(model) if model else None

    def predict(self, cores: int, metric: str = "e2e") -> Prediction | None:
        fit = self.best_fit(metric)
        return fit.predict(cores) if fit else None

    def to_dict(self) -> dict:
        return {
            "app": self.app, "platform": self.platform, "cpu_mode": self.cpu_mode, "device": self.device,
            "mode": self.mode, "cache": self.cache, "emulated": self.emulated, "label": self.label,
            "fits": {m: {name: f.to_dict() for name, f in fits.items()} for m, fits in self.fits.items()},
            "preferred": self.preferred,
            "predictions": [p.to_dict() for p in self.predictions],
        }


def _choose(fits: dict[str, ModelFit]) -> str | None:
    if not fits:
        return None
    if len(fits) == 1:
        return next(iter(fits))
    scored = {name: f.aicc for name, f in fits.items() if f.aicc is not None and not f.saturated}
    if len(scored) >= 2:
        return min(scored, key=scored.get)
    return AMDAHL if AMDAHL in fits else next(iter(fits))


def default_prediction_cores(measured: Sequence[int], host_cores: int | None) -> list[int]:
    """Powers of two up to the host's cores (or twice the largest measured), the host's cores, and the measured."""
    top = host_cores or 2 * max(measured)
    out = {c for c in (1, 2, 4, 8, 16, 32, 64, 128, 256) if c <= top} | set(measured)
    if host_cores:
        out.add(host_cores)
    return sorted(out)


def fit_scaling_models(scenarios: dict[ScenarioKey, ScenarioStats], host_cores: int | None = None,
                       predict_cores: Sequence[int] | None = None) -> list[ScalingModel]:
    """A :class:`ScalingModel` for every group measured at two or more core counts."""
    groups: dict[tuple, list[ScenarioStats]] = {}
    for key, stats in scenarios.items():
        groups.setdefault((key.app, key.platform, key.cpu_mode, key.device, key.mode, key.emulated, key.cache),
                          []).append(stats)
    out = []
    for group, members in groups.items():
        levels = sorted({m.key.cores for m in members})
        if len(levels) < 2:
            continue
        fits: dict[str, dict[str, ModelFit]] = {}
        for metric in METRICS:
            xs: list[int] = []
            ys: list[float] = []
            for m in members:
                values = m.e2e_values_s if metric == "e2e" else m.phase_values_s.get(metric)
                if values is None:
                    xs = []
                    break
                xs += [m.key.cores] * len(values)
                ys += list(values)
            if not xs:
                continue
            metric_fits = {}
            for model in (AMDAHL, USL):
                fit = fit_model(model, metric, xs, ys)
                if fit is not None:
                    metric_fits[model] = fit
            if metric_fits:
                fits[metric] = metric_fits
        preferred = {metric: _choose(f) for metric, f in fits.items()}
        preferred = {k: v for k, v in preferred.items() if v}
        predictions = []
        model_name = preferred.get("e2e")
        if model_name:
            fit = fits["e2e"][model_name]
            for c in (predict_cores or default_prediction_cores(levels, host_cores)):
                predictions.append(fit.predict(int(c)))
        *head, cache = group
        out.append(ScalingModel(*head, fits=fits, preferred=preferred, predictions=predictions, cache=cache))
    out.sort(key=lambda s: (s.emulated, s.app, s.mode, s.cache != "warm", s.device, platform_rank(s.platform),
                            s.cpu_mode))
    return out


def predicted_overhead(models: list[ScalingModel], app: str, platform: str, cpu_mode: str, device: str,
                       cores: int, mode: str = "e2e", emulated: bool = False, cache: str = "warm") -> float | None:
    """Predicted E2E overhead of ``platform`` vs BM at ``cores`` in percent (a prediction), or ``None``."""
    def find(p: str) -> ScalingModel | None:
        return next((m for m in models if (m.app, m.platform, m.cpu_mode, m.device, m.mode, m.emulated, m.cache)
                     == (app, p, cpu_mode, device, mode, emulated, cache)), None)

    subject, base = find(platform), find(BASELINE_PLATFORM)
    if subject is None or base is None:
        return None
    a, b = subject.predict(cores), base.predict(cores)
    if a is None or b is None or b.value_s <= 0:
        return None
    return 100.0 * (a.value_s / b.value_s - 1.0)
