"""The thread probe (issue 13, part 4): what torch, OpenCV, ONNX Runtime and OpenMP/BLAS would choose for their
pools, in this process and inside a deployment (`e2ebench threads`, `e2ebench doctor --threads`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import run_cli, run_json
from e2ebench.thread_probe import cpu_limit, verdict

HOST_CPUS = sorted(os.sched_getaffinity(0))
from conftest import RUNC_REASON, needs_cgroups, needs_runc
LIBRARIES = {("torch", "intra-op"), ("torch", "inter-op"), ("opencv", "parallel_for"), ("onnxruntime", "intra-op")}


def _pool(probe: dict, library: str, pool: str) -> dict:
    return next(p for p in probe["pools"] if (p["library"], p["pool"]) == (library, pool))


@pytest.fixture(scope="module")
def unlimited() -> dict:
    """The probe in a fresh process of this host with OMP_NUM_THREADS=1 set: the probe must remove it."""
    code = "import json; from e2ebench.thread_probe import probe_threads; print(json.dumps(probe_threads()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_verdict_and_limit():
    assert verdict(2, 1.0) == "exceeds the limit (2 threads for a limit of 1 cores)"
    assert verdict(1, 1.0) == verdict(2, 2.0) == "within the limit"
    assert verdict(None, 1.0) == "unknown"
    assert cpu_limit([0, 1], None) == 2.0
    assert cpu_limit([0, 1], 1.0) == 1.0
    assert cpu_limit([3], 4.0) == 1.0          # a quota above the cpuset: the CPUs are the tighter limit


def test_probe_in_process_reports_sane_numbers(unlimited):
    probe = unlimited
    assert probe["cpu_count"] == os.cpu_count()
    assert probe["affinity"] == HOST_CPUS
    assert set(probe["effective_cpus"]) <= set(HOST_CPUS)
    assert {"OMP_NUM_THREADS", "MKL_NUM_THREADS"} <= set(probe["removed_variables"])
    assert probe["imported_before_probe"] == [] and probe["errors"] == {}
    assert LIBRARIES <= {(p["library"], p["pool"]) for p in probe["pools"]}
    for pool in probe["pools"]:
        assert isinstance(pool["threads"], int) and 1 <= pool["threads"] <= 4 * os.cpu_count(), pool
        assert pool["verdict"] == verdict(pool["threads"], probe["limit_cores"])
    # OMP_NUM_THREADS=1 was removed before torch was imported: torch sized its pool from the host
    assert _pool(probe, "torch", "intra-op")["threads"] == min(os.cpu_count(), len(probe["effective_cpus"]))
    assert any(p["library"].startswith("openmp") for p in probe["pools"])
    json.dumps(probe)


@needs_cgroups
def test_threads_bm_vnl_1_core_exceeds_on_a_multicore_host(unlimited):
    code, probe, err = run_json(["threads", "BM/1/VNL/CPU"], timeout=300)
    assert code == 0, err
    assert probe["deployment"] == "BM/1/VNL/CPU" and probe["cpu_quota_cores"] == 1.0
    assert probe["limit_cores"] == 1.0 and probe["limit_source"] == "CFS quota"
    assert probe["cpu_count"] == os.cpu_count()
    torch_pool = _pool(probe, "torch", "intra-op")
    # a CFS quota hides nothing: torch sizes its pool from the host's CPUs, as it does with no limit at all
    assert torch_pool["threads"] == os.cpu_count() == _pool(unlimited, "torch", "intra-op")["threads"]
    if os.cpu_count() > 1:
        assert torch_pool["verdict"] == f"exceeds the limit ({os.cpu_count()} threads for a limit of 1 cores)"
        assert probe["exceeding"] >= 1
    else:
        assert torch_pool["verdict"] == "within the limit"


@needs_cgroups
def test_threads_bm_pin_1_core_is_within_the_limit():
    """The control: a cpuset of one CPU is what libgomp sees, so torch chooses 1 thread."""
    code, probe, err = run_json(["threads", "BM/1/PIN/CPU"], timeout=300)
    assert code == 0, err
    assert len(probe["effective_cpus"]) == 1 and probe["cpu_quota_cores"] is None and probe["limit_cores"] == 1.0
    assert _pool(probe, "torch", "intra-op")["threads"] == 1
    assert _pool(probe, "torch", "intra-op")["verdict"] == "within the limit"


@needs_runc
def test_threads_cn_vnl_1_core_with_runc(unlimited):
    code, probe, err = run_json(["threads", "CN/1/VNL/CPU", "--engine", "runc"], timeout=300)
    assert code == 0, err
    assert probe["deployment"] == "CN/1/VNL/CPU" and probe["platform_info"]["platform"] == "CN"
    assert probe["cpu_quota_cores"] == 1.0 and probe["limit_cores"] == 1.0
    torch_pool = _pool(probe, "torch", "intra-op")
    assert torch_pool["threads"] == os.cpu_count() == _pool(unlimited, "torch", "intra-op")["threads"]
    if os.cpu_count() > 1:
        assert torch_pool["verdict"].startswith("exceeds the limit")
    proc = run_cli(["threads", "CN/1/VNL/CPU"], timeout=300)     # the table
    assert proc.returncode == 0, proc.stderr
    assert "torch" in proc.stdout and "intra-op" in proc.stdout and "1 cores" in proc.stdout


@pytest.mark.parametrize("bad", ["BM/x/VNL/CPU", "XX/1/VNL/CPU", "BM/1/VNL", "BM/999/VNL/CPU", "MVM/1/PIN/CPU"])
def test_bad_or_infeasible_deployment_is_a_usage_error(bad):
    proc = run_cli(["threads", bad])
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_engine_only_for_cn():
    proc = run_cli(["threads", "BM/1/VNL/CPU", "--engine", "runc"])
    assert proc.returncode == 2 and "CN deployments only" in proc.stderr


@needs_cgroups
def test_doctor_threads_json_has_the_keys():
    code, report, err = run_json(["doctor", "--threads"], timeout=600)
    assert code == 0, err
    assert set(report) == {"host", "deployments"}
    assert report["host"]["cpu_count"] == os.cpu_count()
    assert set(report["deployments"]) == {"BM/1/VNL/CPU", "CN/1/VNL/CPU"}
    bm = report["deployments"]["BM/1/VNL/CPU"]
    assert {"pools", "limit_cores", "cpu_quota_cores", "effective_cpus", "cpu_count", "exceeding"} <= set(bm)
    assert bm["limit_cores"] == 1.0
    cn = report["deployments"]["CN/1/VNL/CPU"]
    assert "pools" in cn or "skipped" in cn or "error" in cn
    if RUNC_REASON is None:
        assert "pools" in cn, cn
