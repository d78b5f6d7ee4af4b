"""scripts/gpu-check: its dry run (--plan), its usage errors, the venv it makes over the host's packages, the
speed-up lines, and (with PyPI, E2EBENCH_TEST_NETWORK=1) --fetch-wheels followed by an offline --wheels install.

The checks themselves need a GPU host; here the script's every other part runs for real."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu-check"
needs_network = pytest.mark.skipif(os.environ.get("E2EBENCH_TEST_NETWORK") != "1",
                                   reason="downloads from PyPI: set E2EBENCH_TEST_NETWORK=1 to run it")


def gpu_check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def load_script():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_plan_lists_doctor_the_four_apps_on_gpu_and_cpu_and_ic_in_a_container(tmp_path):
    out = tmp_path / "results"
    proc = gpu_check("--plan", "--interpreter", sys.executable, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("gpu-check plan (dry run: nothing is installed or run)")
    import torch

    assert f"torch {torch.__version__}" in text
    numbered = [line for line in text.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert len(numbered) == 10, text
    assert "doctor --json" in numbered[0]
    scenarios = [line.split(":", 1)[0].split(". ", 1)[1] for line in numbered[1:]]
    assert scenarios == [f"{app}@BM/1/PIN/{device}" for app in ("ic", "sr", "nlp", "rs") for device in ("GPU", "CPU")] \
        + ["ic@CN/1/PIN/GPU"]
    assert all("--variant" not in line for line in numbered), "the checks run the full models"
    assert "budget: 450 s" in text and "speed-up" in text
    assert not out.exists(), "a dry run writes nothing"


def test_usage_errors_exit_2(tmp_path):
    for args, needle in [
        (["--python", "3.12"], "go with --fetch-wheels"),
        (["--install-only"], "--install-only goes with --wheels"),
        (["--fetch-wheels", str(tmp_path / "w"), "--plan"], "--fetch-wheels prepares"),
        (["--fetch-wheels", str(tmp_path / "w"), "--python", "3"], "a version like 3.12"),
        (["--fetch-wheels", str(tmp_path / "w"), "--only", "torch"], "never fetched"),
        (["--fetch-wheels", str(tmp_path / "w"), "--platform", "linux x86"], "platform tag"),
        (["--wheels", str(tmp_path / "missing"), "--plan"], "no such folder"),
    ]:
        proc = gpu_check(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr, (args, proc.stderr)


def test_wheels_for_another_python_are_refused_with_both_versions(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "gpu-check-wheels.json").write_text(json.dumps({"python": "3.9", "requirements": []}))
    proc = gpu_check("--plan", "--wheels", str(wheels), "--interpreter", sys.executable)
    assert proc.returncode == 2
    assert "for Python 3.9" in proc.stderr and f"--python {sys.version_info.major}.{sys.version_info.minor}" in proc.stderr


def test_wheels_venv_sees_the_host_interpreters_packages_and_installs_nothing_present(tmp_path):
    """The host interpreter here is the project's venv, as /opt/torch/.venv is on a GPU host: the new venv must see
    its torch (through the .pth file; --system-site-packages alone reaches only the base installation's)."""
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    wheels.mkdir()
    plan = gpu_check("--plan", "--wheels", str(wheels), "--interpreter", sys.executable, "--venv", str(venv))
    assert plan.returncode == 0, plan.stderr
    assert "-m venv --system-site-packages" in plan.stdout and not venv.exists()
    proc = gpu_check("--wheels", str(wheels), "--interpreter", sys.executable, "--venv", str(venv), "--install-only")
    assert proc.returncode == 0, proc.stderr
    [report] = json_lines(proc.stdout)
    assert report["ok"] is True and report["missing"] == [] and report["still_missing"] == []
    assert "mlcommons-loadgen>=4.0" in report["already_there"]
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import sys, torch, mlperf_loadgen; print(sys.prefix, torch.__version__)"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    prefix, version = probe.stdout.split()
    assert Path(prefix) == venv
    import torch

    assert version == torch.__version__


def test_speedups_are_cpu_over_gpu_and_none_where_a_run_failed():
    script = load_script()

    def run(app, device, e2e, infer, ok=True):
        return {"check": "run", "scenario": f"{app}@BM/1/PIN/{device}", "ok": ok, "e2e_s": e2e,
                "phases_s": {"infer": infer, "pre": 0.5}}

    rows = script.speedups([run("ic", "GPU", 2.0, 0.1), run("ic", "CPU", 5.0, 3.0), run("nlp", "GPU", 1.0, 0.5),
                            run("nlp", "CPU", None, None, ok=False)])
    by_app = {row["app"]: row for row in rows}
    assert [row["app"] for row in rows] == ["ic", "sr", "nlp", "rs"]
    assert by_app["ic"]["e2e_speedup"] == 2.5 and by_app["ic"]["infer_speedup"] == 30.0
    assert by_app["ic"]["gpu_run_pre_share"] == 0.25
    assert by_app["nlp"]["e2e_speedup"] is None and by_app["nlp"]["why_none"]
    assert by_app["sr"]["e2e_speedup"] is None


@needs_network
def test_fetch_wheels_then_install_offline_only_what_is_missing(tmp_path):
    """One requirement fetched from PyPI for this Python (and e2ebench's wheel built from the tree), then installed
    with --no-index into a venv over a bare interpreter: it is installed, the rest is named as not in the folder."""
    wheels = tmp_path / "wheels"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    proc = gpu_check("--fetch-wheels", str(wheels), "--python", version, "--only", "mlcommons-loadgen", timeout=600)
    assert proc.returncode == 0, proc.stderr
    [line] = json_lines(proc.stdout)
    assert line["ok"] is True
    assert any(w.startswith("mlcommons_loadgen-") for w in line["wheels"])
    assert any(w.startswith("e2ebench-") for w in line["wheels"])
    manifest = json.loads((wheels / "gpu-check-wheels.json").read_text())
    assert manifest["python"] == version and manifest["requirements"] == ["mlcommons-loadgen>=4.0"]

    bare = tmp_path / "bare"            # an interpreter with nothing of e2ebench's installed
    subprocess.run([sys.executable, "-m", "venv", str(bare)], check=True, timeout=300)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--wheels", str(wheels), "--interpreter",
                           str(bare / "bin" / "python"), "--venv", str(venv), "--install-only"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 1, proc.stderr          # the folder was filled with --only: the rest is missing
    [report] = json_lines(proc.stdout)
    assert report["missing"] == ["mlcommons-loadgen>=4.0"] and report["install_e2ebench"] is True
    assert "numpy>=1.26" in report["not_in_wheels"] and "fetch it again without --only" in report["error"]
    assert "mlcommons-loadgen>=4.0" not in report["still_missing"]
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import mlperf_loadgen; from importlib.metadata import version; print(version('e2ebench'))"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert probe.returncode == 0 and probe.stdout.strip() == "0.1.0", probe.stderr
