"""Inference-only mode times the DNN on the same requests, in the same order, as an E2E run under LoadGen."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2ebench.apps import create_app, get_app_class
from e2ebench.spec import WorkerSpec
from e2ebench.worker import Worker, _loadgen_sample_indices


@pytest.fixture(scope="module")
def tiny_ic(tmp_path_factory):
    data = Path(get_app_class("ic").make_data(tmp_path_factory.mktemp("ic"), 20, seed=2))
    app = create_app("ic", variant="tiny")
    app.load("cpu", 1, None)
    return app, list(app.samples(data))


@pytest.mark.parametrize("scenario", ["offline", "single-stream"])
@pytest.mark.parametrize("requests,samples", [(4, 20), (12, 5)])
def test_inference_only_uses_loadgens_sample_sequence(tmp_path, tiny_ic, scenario, requests, samples):
    """The real E2E loop (``Worker._run_loadgen``) answers exactly the indices the dry run predicts, in order."""
    app, refs = tiny_ic
    refs = refs[:samples]
    deployment = {"platform": "BM", "cores": 1, "cpu_mode": "VNL", "device": "CPU"}
    spec = WorkerSpec(app="ic", deployment=deployment, requests=requests, batch_size=3, loadgen_scenario=scenario,
                      seed=7, output_dir=str(tmp_path / "logs"))
    indices = _loadgen_sample_indices(spec, samples)
    assert len(indices) == requests and all(0 <= i < samples for i in indices)
    worker = Worker(spec)
    worker._run_loadgen(app, refs)
    assert [index for index, _ in worker.answers] == indices
    assert worker.completed == requests and worker.window.is_closed
    assert indices == _loadgen_sample_indices(spec, samples)          # deterministic for a seed
    assert (tmp_path / "logs" / "mlperf_log_summary.txt").exists()     # the E2E path keeps LoadGen's logs
    # and inference-only times the DNN on the same sequence, batch by batch
    only = Worker(spec)
    only._run_inference_only(app, refs, indices)
    assert only.completed == requests
    assert sorted(only.batch_sizes) == sorted({min(3 if scenario == "offline" else 1, requests - s)
                                               for s in range(0, requests, 3 if scenario == "offline" else 1)})
