"""overhead_model's oversubscription model (N threads inside a fixed CPU limit), checked against hand-computed
values; benchmarks/thread_oversubscription.py measures it and predicts bigger hosts with it."""

from __future__ import annotations

import pytest

from e2ebench.overhead_model import OVERSUBSCRIBED, fit_model, oversubscribed_time


def test_oversubscription_model_recovers_a_constant_cost_per_extra_thread():
    threads = [1, 1, 2, 2, 4, 4, 8, 8]
    # t1 = 2.0 s, +50 ms per extra thread, and +-10 ms of noise that cancels per level
    times = [2.0 + 0.05 * (n - 1) + (0.01 if i % 2 else -0.01) for i, n in enumerate(threads)]
    fit = fit_model(OVERSUBSCRIBED, "e2e", threads, times)
    assert fit is not None
    assert fit.params["t1_s"] == pytest.approx(2.0, abs=1e-6)
    assert fit.params["per_thread_s"] == pytest.approx(0.05, abs=1e-6)
    pred = fit.predict(64)
    assert pred.predicted and pred.extrapolated and not pred.measured
    assert pred.value_s == pytest.approx(2.0 + 0.05 * 63, abs=1e-5)      # 5.15 s, by hand
    assert pred.ci_s[0] < pred.value_s < pred.ci_s[1]
    assert float(oversubscribed_time(3, 1.0, 0.5)) == 2.0


def test_no_effect_gives_a_cost_per_thread_near_zero_with_a_band_across_it():
    threads = [1, 2, 4, 8, 16] * 3
    times = [3.0 + (0.02 if i % 3 == 0 else -0.01) for i in range(len(threads))]
    fit = fit_model(OVERSUBSCRIBED, "e2e", threads, times)
    lo, hi = fit.param_ci["per_thread_s"]
    assert lo < 0 < hi
