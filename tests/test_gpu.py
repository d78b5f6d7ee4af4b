"""GPU on bare metal: doctor's GPU row, what a run records about GPUs, scripts/setup --gpu, and the four apps on a GPU.

Everything around the GPU runs here for real: doctor's row from the facts of this environment (and from given facts,
a pure function), a real CPU run's GPU keys (0 and null), a real GPU run refused by the worker with the reason where
torch cannot use a GPU, the setup script's dry run.  The runs on a GPU need ``torch.cuda.is_available()`` in this
environment (``scripts/setup --gpu`` on a host with an NVIDIA GPU and driver) and skip with the reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, run_json
from e2ebench.gpu import GpuFacts, gpu_facts

FACTS = gpu_facts(import_torch=True)
needs_cuda = pytest.mark.skipif(not FACTS.usable, reason=f"torch cannot use a GPU here: {FACTS.reason}")


# -- doctor --------------------------------------------------------------------------------------------------------

def test_doctor_gpu_row_names_gpu_driver_cuda_and_torch_when_usable():
    from e2ebench.doctor import gpu_status

    facts = GpuFacts(True, 1, ("NVIDIA H200",), "580.159.03", "13.0", "2.11.0+cu130", "", ("/dev/nvidia0",))
    row = gpu_status(facts)
    assert row["usable"] is True and row["status"] == "usable"
    for needle in ("NVIDIA H200", "driver 580.159.03", "CUDA 13.0", "torch 2.11.0+cu130", "not the pinned torch==2.13.0"):
        assert needle in row["reason"], (needle, row["reason"])
    pinned = gpu_status(GpuFacts(True, 1, ("NVIDIA H200",), "580.159.03", "13.0", "2.13.0+cu130", "", ("/dev/nvidia0",)))
    assert "not the pinned" not in pinned["reason"]


@pytest.mark.parametrize("facts, fix", [
    (GpuFacts(False, torch_version="2.13.0+cpu", reason="no NVIDIA device node (/dev/nvidia0, ...); torch 2.13.0+cpu "
              "is a CPU build (torch.version.cuda is None)"), "run on a host with an NVIDIA GPU"),
    (GpuFacts(False, torch_version="2.13.0", reason="no NVIDIA driver (no nvidia-smi, no /proc/driver/nvidia, no "
              "loadable libcuda.so.1)", device_nodes=("/dev/nvidia0",)), "install the NVIDIA driver"),
    (GpuFacts(False, driver_version="580.1", torch_version="2.13.0+cpu", reason="torch 2.13.0+cpu is a CPU build "
              "(torch.version.cuda is None)", device_nodes=("/dev/nvidia0",)), "scripts/setup --gpu"),
])
def test_doctor_gpu_row_says_what_is_missing_and_the_fix(facts, fix):
    from e2ebench.doctor import gpu_status

    row = gpu_status(facts)
    assert row["usable"] is False and row["status"] == "unavailable"
    assert facts.reason in row["reason"] and "infeasible" in row["reason"]
    assert fix in row["fix"]
    assert row["facts"]["torch_version"] == facts.torch_version


def test_doctor_gpu_row_of_this_environment_asks_torch():
    from e2ebench.doctor import gpu_status

    row = gpu_status()
    assert row["usable"] is FACTS.usable
    assert row["facts"]["torch_version"] == FACTS.torch_version
    if not FACTS.usable:
        assert FACTS.reason in row["reason"]


# -- the worker's GPU facts ---------------------------------------------------------------------------------------

def test_worker_device_helpers_leave_a_cpu_run_alone():
    from e2ebench import worker

    assert worker._cuda_index("cpu") is None
    assert worker._cuda_index("cuda") == 0 and worker._cuda_index("cuda:3") == 3
    with pytest.raises(ValueError, match="cuda:N"):
        worker._cuda_index("cuda:x")
    assert worker.open_gpu("cpu") == {"effective_gpus": 0, "gpu_model": None, "cuda_version": None}
    assert worker.gpu_driver_version("cpu") is None
    assert worker.device_synchronize("cpu")() is None
    assert worker.gpu_memory_peak_bytes("cpu") == 0


def test_a_cpu_run_records_no_gpu(tmp_path):
    code, result, err = run_json(["run", "rs", "BM/1/PIN/CPU", "--variant", "tiny", "--requests", "8",
                                  "--store", str(tmp_path / "r.sqlite")], timeout=300)
    assert code == 0, err
    assert result["effective_gpus"] == 0 and result["gpu_model"] is None
    assert result["counters"]["gpu_memory_peak_bytes"] == 0
    assert result["environment"]["cuda_version"] is None


@pytest.mark.skipif(FACTS.usable, reason="torch can use a GPU here: the refusal without one cannot be seen")
def test_a_gpu_run_without_a_usable_gpu_fails_in_the_worker_with_the_reason(tmp_path):
    """The worker itself (as a platform would start it) refuses before loading the model, naming what is missing."""
    from e2ebench.scenario import Deployment
    from e2ebench.spec import WorkerSpec, extract_result

    spec = WorkerSpec(app="rs", deployment=Deployment.parse("BM/1/PIN/GPU").as_dict(), variant="tiny",
                      device="cuda", requests=4, batch_size=2, data=str(tmp_path / "not-reached"))
    proc = subprocess.run([sys.executable, "-m", "e2ebench.worker", "--spec", "-"], input=spec.to_json(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    result = extract_result(proc.stdout)
    assert "torch cannot use a GPU in this platform" in result["error"]
    assert FACTS.reason in result["error"]
    assert "Traceback" not in proc.stderr          # a sentence for the user, not a stack


# -- scripts/setup --gpu -------------------------------------------------------------------------------------------

def test_setup_gpu_dry_run_prints_the_cuda_index_and_installs_nothing():
    proc = subprocess.run([str(ROOT / "scripts" / "setup"), "--gpu", "--dry-run"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "dry run" in out
    assert "--index-url https://download.pytorch.org/whl/cu130 torch==2.13.0+cu130" in out
    assert "uninstall --quiet --yes onnxruntime" in out and "onnxruntime-gpu" in out
    assert all(line.startswith(("==", "would run:", "   ")) for line in out.splitlines()), out
    bad = subprocess.run([str(ROOT / "scripts" / "setup"), "--gpu", "--dry-run"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "TORCH_CUDA": "cu13;rm"})
    assert bad.returncode == 2 and "TORCH_CUDA" in bad.stderr


# -- the four apps on a GPU ------------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("app", ["ic", "sr", "nlp", "rs"])
def test_app_runs_on_bm_gpu(app, tmp_path):
    code, result, err = run_json(["run", app, "BM/1/PIN/GPU", "--variant", "tiny", "--requests", "8",
                                  "--batch-size", "4", "--store", str(tmp_path / "r.sqlite")], timeout=900)
    assert code == 0, (err, result and result.get("error"))
    assert result["effective_gpus"] == FACTS.count >= 1
    assert result["gpu_model"] in FACTS.names
    assert result["counters"]["gpu_memory_peak_bytes"] > 0
    assert result["phases_s"]["infer"] > 0 and result["completed"] == 8
    assert result["environment"]["cuda_version"] == FACTS.cuda_version
    json.dumps(result)                      # the whole result is plain JSON
