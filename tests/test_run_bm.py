"""`e2ebench run` on bare metal, end to end: real worker, real LoadGen, real cgroups, real SQLite."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import E2EBENCH, run_cli, run_json
from e2ebench import measure
from e2ebench.gpu import gpu_facts
from e2ebench.platforms import cgroups
from e2ebench.store import Store

HOST_CPUS = sorted(os.sched_getaffinity(0))
CAN_WRITE, WHY = cgroups.writable()
needs_cgroups = pytest.mark.skipif(not CAN_WRITE, reason=f"cgroups not writable here: {WHY}")
TINY = ["--variant", "tiny", "--batch-size", "2"]

JSON_KEYS = {
    "scenario", "app", "deployment", "requests", "e2e_s", "phases_s", "latency_ms", "throughput_sps",
    "effective_cpus", "cpu_quota_cores", "counters", "cold_start_s", "emulated", "errors",
}


def _worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"e2ebench.worker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def leftovers() -> list[Path]:
    """e2ebench cgroups whose owner process is gone (another live e2ebench run's cgroups are not ours)."""
    out = []
    for d in cgroups.list_children():
        owner = cgroups.owner_pid(d.name)
        if owner is None or not Path(f"/proc/{owner}").exists():
            out.append(d)
    return out


def _check_phases(result: dict) -> None:
    """Every phase was timed, and the laps' E2E agrees with the outside clock around the same window
    (the laps summing to ``e2e_s`` holds by construction and is not checked here; see test_measurement.py)."""
    phases = result["phases_s"]
    assert set(phases) == {"io", "pre", "infer", "post", "other"}
    for phase in ("io", "pre", "infer", "post"):
        assert phases[phase] > 0
    assert phases["other"] >= 0
    window = result["window_wall_s"]
    assert result["e2e_s"] - 1e-6 <= window < result["e2e_s"] + 0.002 + 0.001 * window


@needs_cgroups
def test_run_pinned_json_schema_and_limits(tmp_path, ic_data):
    store = tmp_path / "r.sqlite"
    cores = len(HOST_CPUS)
    rc, result, err = run_json(["run", "ic", f"bm/{cores}/pin/cpu", "--requests", "6", "--data", str(ic_data),
                                "--store", str(store)] + TINY)
    assert rc == 0, err
    assert JSON_KEYS <= set(result)
    assert result["scenario"] == f"ic@BM/{cores}/PIN/CPU"
    assert result["deployment"] == {"platform": "BM", "cores": cores, "cpu_mode": "PIN", "device": "CPU"}
    assert result["effective_cpus"] == list(cgroups.plan_limits(cores, "PIN", HOST_CPUS).cpus)
    assert result["cpu_quota_cores"] is None
    assert result["threads"]["torch_intra_op"] == cores
    assert result["requests"] == 6 and result["completed"] == 6
    assert set(result["latency_ms"]) >= {"p50", "p90", "p99"}
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p90"] <= result["latency_ms"]["p99"]
    assert result["emulated"] is False and result["errors"]["count"] == 0
    assert result["environment"]["in_container"] is False  # BM is not a container, even on a containerised host
    assert result["cold_start_s"] > 0 and result["throughput_sps"] > 0
    assert {"voluntary_ctx_switches", "involuntary_ctx_switches", "cpu_migrations", "nr_throttled",
            "peak_rss_bytes"} <= set(result["counters"])
    _check_phases(result)
    assert Path(result["logs_dir"], "mlperf_log_summary.txt").exists()
    with Store(store) as s:
        [row] = s.runs()
        assert row["scenario"] == result["scenario"] and row["e2e_s"] == pytest.approx(result["e2e_s"])
    assert leftovers() == []


@needs_cgroups
def test_run_vanilla_reports_quota_of_one_core(tmp_path, ic_data):
    rc, result, err = run_json(["run", "ic", "BM/1/VNL/CPU", "--requests", "4", "--data", str(ic_data),
                                "--store", str(tmp_path / "r.sqlite"), "--scenario", "single-stream"] + TINY)
    assert rc == 0, err
    assert result["cpu_quota_cores"] == pytest.approx(1.0)
    assert result["effective_cpus"] == HOST_CPUS
    assert result["threads"]["torch_intra_op"] == 1
    _check_phases(result)
    assert leftovers() == []


@needs_cgroups
def test_limits_are_applied_while_the_worker_runs(tmp_path, ic_data):
    """Read the worker's /proc status and its cgroup files from outside while it measures."""
    plan = cgroups.plan_limits(1, "PIN", HOST_CPUS)
    proc = subprocess.Popen(
        E2EBENCH + ["run", "ic", "BM/1/PIN/CPU", "--requests", "400", "--data", str(ic_data), "--store",
                    str(tmp_path / "r.sqlite"), "--json"] + TINY,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    seen = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for d in cgroups.list_children():
                pids = [int(p) for p in (d / "cgroup.procs").read_text().split()] if (d / "cgroup.procs").exists() else []
                for pid in pids:
                    try:
                        status = Path(f"/proc/{pid}/status").read_text()
                        tasks = os.listdir(f"/proc/{pid}/task")
                    except OSError:
                        continue
                    ppid = int([line.split(":", 1)[1] for line in status.splitlines() if line.startswith("PPid")][0])
                    if ppid != proc.pid or not tasks:
                        continue  # not our worker (another e2ebench run may share the machine)
                    allowed = [line.split(":", 1)[1].strip() for line in status.splitlines()
                               if line.startswith("Cpus_allowed_list")][0]
                    seen = {"pid": pid, "allowed": measure.parse_cpu_list(allowed),
                            "cgroup_cpus": measure.parse_cpu_list((d / "cpuset.cpus").read_text()),
                            "limits": measure.cpu_limits(pid)}
            if seen:
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen is not None, "never saw the worker inside an e2ebench cgroup"
    assert seen["allowed"] == list(plan.cpus)
    assert seen["cgroup_cpus"] == list(plan.cpus)
    assert seen["limits"].effective_cpus == list(plan.cpus)
    assert proc.returncode == 0, err
    assert leftovers() == []


def test_usage_errors_exit_2_with_one_clear_line(tmp_path):
    gpu = gpu_facts()
    # BM/1/PIN/GPU is a usage error only where this environment has no usable GPU; the message is BM's own reason,
    # naming the first missing part (device node, driver or CUDA build of torch), whatever this host lacks
    gpu_case = [] if gpu.usable else [(["run", "ic", "BM/1/PIN/GPU"], "BM has no usable GPU here: "
                                       + gpu.reason.split(";")[0])]
    for args, needle in gpu_case + [
        (["run", "ic", "BM/x/PIN/CPU"], "'x'"),
        (["run", "ic", "QQ/1/PIN/CPU"], "BM, CN, VM, MVM, VMCN"),
        (["run", "nosuchapp", "BM/1/PIN/CPU"], "known applications: ic, sr, nlp, rs"),
        (["run", "ic", "BM/999/PIN/CPU"], "host has"),
        (["run", "ic", "MVM/1/PIN/CPU"], "MVM supports only VNL/CPU"),
        (["run", "ic", "BM/1/PIN/CPU", "--scenario", "server"], "offline, single-stream"),
        (["run", "ic", "BM/1/PIN/CPU", "--engine", "podman"], "CN deployments only"),
        (["run", "ic", "CN/1/PIN/CPU", "--engine", "lxc"], "runc, podman, docker"),
        (["run", "ic", "BM/1/PIN/CPU", "--vm-memory-mib", "2048"], "VM, MVM and VMCN deployments only"),
        (["run", "ic", "BM/1/PIN/CPU", "--data", str(tmp_path / "missing")], "does not exist"),
    ]:
        proc = run_cli(args + ["--store", str(tmp_path / "r.sqlite")], timeout=120)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr.replace("\n", " "), (args, proc.stderr)


@needs_cgroups
def test_corrupt_images_are_per_request_errors(tmp_path, ic_data):
    data = tmp_path / "data"
    shutil.copytree(ic_data, data)
    (data / "zz_corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    base = ["run", "ic", "BM/1/PIN/CPU", "--requests", str(len(list(data.glob("*.JPEG")))), "--data", str(data),
            "--store", str(tmp_path / "r.sqlite")] + TINY
    # above the default 1% limit: the run fails and names the file
    rc, result, _ = run_json(base)
    assert rc == 1
    assert result["errors"]["count"] >= 1
    assert "zz_corrupt.JPEG" in result["error"]
    assert result["completed"] == result["requests"] - result["errors"]["count"]
    # with a higher limit the same run succeeds and still reports the error
    rc, result, err = run_json(base + ["--max-error-fraction", "0.5"])
    assert rc == 0, err
    assert result["errors"]["count"] >= 1
    assert any("zz_corrupt.JPEG" in e["where"] for e in result["errors"]["samples"])
    assert leftovers() == []


@needs_cgroups
def test_a_worker_past_its_timeout_is_killed_and_the_run_fails(tmp_path, ic_data):
    rc, result, _ = run_json(["run", "ic", "BM/1/VNL/CPU", "--requests", "2", "--data", str(ic_data), "--store",
                              str(tmp_path / "r.sqlite"), "--timeout", "1"] + TINY)
    assert rc == 1
    assert "timed out" in result["error"]
    time.sleep(0.5)
    assert _worker_pids() == []
    assert leftovers() == []
    with Store(tmp_path / "r.sqlite") as s:
        [row] = s.runs(phase=None)
        assert row["status"] == "failed" and "timed out" in row["error"]


@needs_cgroups
def test_ctrl_c_leaves_nothing_behind(tmp_path, ic_data):
    proc = subprocess.Popen(
        E2EBENCH + ["run", "ic", "BM/1/PIN/CPU", "--requests", "2000", "--data", str(ic_data), "--store",
                    str(tmp_path / "r.sqlite"), "--json"] + TINY,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _worker_pids():
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    time.sleep(0.5)
    assert _worker_pids() == []
    assert leftovers() == []


@needs_cgroups
def test_inference_only_mode_times_the_dnn_alone(tmp_path, ic_data):
    rc, result, err = run_json(["run", "ic", "BM/1/PIN/CPU", "--requests", "4", "--data", str(ic_data), "--mode",
                                "inference-only", "--store", str(tmp_path / "r.sqlite")] + TINY)
    assert rc == 0, err
    assert result["mode"] == "inference-only"
    assert result["scenario"] == "ic@BM/1/PIN/CPU#inference-only"
    assert result["phases_s"]["io"] == 0 and result["phases_s"]["pre"] == 0 and result["phases_s"]["post"] == 0
    assert result["e2e_s"] == pytest.approx(result["phases_s"]["infer"])


def test_apps_and_doctor_commands():
    proc = run_cli(["apps", "--json"], timeout=120)
    assert proc.returncode == 0
    names = [a["name"] for a in json.loads(proc.stdout)]
    assert names[:4] == ["ic", "sr", "nlp", "rs"]
    proc = run_cli(["doctor", "--json"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["host"]["cpus"] == len(HOST_CPUS)
    assert set(report["platforms"]) == {"BM", "CN", "VM", "MVM", "VMCN"}
    assert report["platforms"]["BM"]["usable"] is True
    assert report["devices"]["GPU"]["usable"] in (True, False) and report["devices"]["GPU"]["reason"]
