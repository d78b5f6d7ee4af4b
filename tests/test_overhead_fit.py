"""The scaling fits use every run through each core count's sufficient statistics (issue 14, item 9): the fit of the
count-weighted means must be the fit of every run.  Checked against a second source: ordinary least squares over
every run's row written out with numpy (Amdahl is linear in (1, 1/n)), its residuals and its covariance
s^2 (X^T X)^-1."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from e2ebench.overhead_model import AMDAHL, OVERSUBSCRIBED, fit_model


def _runs(levels, per_level, serial, parallel, noise, seed):
    rng = random.Random(seed)
    xs, ys = [], []
    for cores, n in zip(levels, per_level):
        for _ in range(n):
            xs.append(cores)
            ys.append((serial + parallel / cores) * (1 + rng.gauss(0, noise)))
    return xs, ys


@pytest.mark.parametrize("per_level", [(1, 1, 1), (3, 7, 2, 5), (200, 150, 180, 40, 90)])
def test_amdahl_fit_of_the_means_is_the_least_squares_fit_of_every_run(per_level):
    levels = (1, 2, 4, 8, 16)[:len(per_level)]
    xs, ys = _runs(levels, per_level, serial=0.3, parallel=2.0, noise=0.04, seed=len(per_level))
    fit = fit_model(AMDAHL, "e2e", xs, ys)
    assert fit is not None and fit.n_runs == len(ys)
    design = np.column_stack([np.ones(len(xs)), 1.0 / np.asarray(xs, float)])
    y = np.asarray(ys)
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)           # both parts positive here: no bound is active
    assert fit.params["serial_s"] == pytest.approx(beta[0], rel=1e-6)
    assert fit.params["parallel_s"] == pytest.approx(beta[1], rel=1e-6)
    residuals = y - design @ beta
    assert fit.rmse_s == pytest.approx(math.sqrt(np.sum(residuals ** 2) / len(y)), rel=1e-6)
    assert fit.max_abs_residual_s == pytest.approx(np.max(np.abs(residuals)), rel=1e-5)
    assert fit.r2 == pytest.approx(1 - np.sum(residuals ** 2) / np.sum((y - y.mean()) ** 2), rel=1e-6)
    for cores in levels:
        at = np.asarray(xs) == cores
        assert fit.residual_by_cores_s[cores] == pytest.approx(float(np.mean(residuals[at])), abs=1e-9)
    dof = len(y) - 2
    if dof > 0:
        cov = np.sum(residuals ** 2) / dof * np.linalg.inv(design.T @ design)
        assert np.allclose(fit.covariance, cov, rtol=1e-5, atol=0)
    else:
        assert fit.covariance is None


def test_oversubscribed_fit_matches_every_run_too():
    xs, ys = [], []
    rng = random.Random(5)
    for threads in (1, 2, 4, 8):
        for _ in range(30):
            xs.append(threads)
            ys.append((1.0 + 0.05 * (threads - 1)) * (1 + rng.gauss(0, 0.02)))
    fit = fit_model(OVERSUBSCRIBED, "e2e", xs, ys)
    design = np.column_stack([np.ones(len(xs)), np.asarray(xs, float) - 1.0])
    beta, *_ = np.linalg.lstsq(design, np.asarray(ys), rcond=None)
    assert list(fit.params.values()) == pytest.approx(list(beta), rel=1e-6)


def test_amdahl_on_its_bound_is_the_best_fit_with_no_serial_part():
    """Superlinear speed-up (the unbounded fit wants a negative serial part): the fit holds the serial part at 0 and
    the parallel part is the least squares of every run through the origin in 1/n."""
    xs, ys = [], []
    for cores, t in ((1, 4.0), (2, 1.9), (4, 0.9), (8, 0.42)):
        xs += [cores] * 3
        ys += [t * 0.99, t, t * 1.01]
    design = np.column_stack([np.ones(len(xs)), 1.0 / np.asarray(xs, float)])
    unbounded, *_ = np.linalg.lstsq(design, np.asarray(ys), rcond=None)
    assert unbounded[0] < 0                                   # the case this test is about
    fit = fit_model(AMDAHL, "e2e", xs, ys)
    inv = 1.0 / np.asarray(xs, float)
    assert fit.params["serial_s"] == 0.0
    assert fit.params["parallel_s"] == pytest.approx(float(np.sum(inv * ys) / np.sum(inv * inv)), rel=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_usl_fit_is_the_best_least_squares_point_within_its_bounds(seed):
    """USL is solved exactly (a convex problem in t1, t1*sigma, t1*kappa): no residual sum over every run that an
    independent optimiser finds within the bounds, from several starts, is lower; where that optimiser converges
    to an interior point it is the same point."""
    from scipy.optimize import least_squares

    from e2ebench.overhead_model import USL, usl_time

    rng = random.Random(seed)
    xs, ys = [], []
    for cores in (1, 2, 4, 8, 16):
        for _ in range(rng.choice((3, 20, 60))):
            xs.append(cores)
            ys.append(usl_time(cores, 2.0, 0.08, 0.004) * (1 + rng.gauss(0, 0.03)))
    x, y = np.asarray(xs, float), np.asarray(ys)
    fit = fit_model(USL, "e2e", xs, ys)
    ours = float(np.sum((y - usl_time(x, *fit.params.values())) ** 2))
    best = None
    for start in ([1.0, 0.5, 0.01], [3.0, 0.01, 0.0001], [2.0, 0.1, 0.001]):
        res = least_squares(lambda p: usl_time(x, *p) - y, start, bounds=([0, 0, 0], [np.inf, 1, np.inf]),
                            xtol=1e-15, ftol=1e-15, gtol=1e-15)
        if best is None or res.cost < best.cost:
            best = res
    assert ours <= 2 * best.cost * (1 + 1e-9)
    assert list(fit.params.values()) == pytest.approx(list(best.x), rel=1e-4, abs=1e-7)
