"""Inference-only mode times the DNN on the same requests, in the same order, as an E2E run under LoadGen."""

from __future__ import annotations

import mlperf_loadgen as lg
import pytest

from e2ebench.spec import WorkerSpec
from e2ebench.worker import _drive_loadgen, _loadgen_sample_indices


def _e2e_indices(spec: WorkerSpec, sample_count: int, tmp_path) -> list[int]:
    """What the E2E path sees: LoadGen driven with the run's settings, logs kept, queries answered."""
    seen: list[int] = []

    def issue(query_samples):
        seen.extend(q.index for q in query_samples)
        lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in query_samples])

    _drive_loadgen(spec, sample_count, issue, lambda: None, str(tmp_path / "logs"))
    return seen


@pytest.mark.parametrize("scenario", ["offline", "single-stream"])
@pytest.mark.parametrize("requests,samples", [(4, 20), (12, 5)])
def test_inference_only_uses_loadgens_sample_sequence(tmp_path, scenario, requests, samples):
    deployment = {"platform": "BM", "cores": 1, "cpu_mode": "VNL", "device": "CPU"}
    spec = WorkerSpec(app="ic", deployment=deployment, requests=requests, loadgen_scenario=scenario, seed=7)
    indices = _loadgen_sample_indices(spec, samples)
    assert len(indices) == requests and all(0 <= i < samples for i in indices)
    assert indices == _e2e_indices(spec, samples, tmp_path)
    assert indices == _loadgen_sample_indices(spec, samples)          # deterministic for a seed
    assert (tmp_path / "logs" / "mlperf_log_summary.txt").exists()     # the E2E path keeps LoadGen's logs
