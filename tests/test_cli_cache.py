"""`--cache warm|cold` around the worker: CLI validation, the spec the runner writes, the result it returns.

The worker's dropping of the page cache is tested elsewhere; nothing here runs a worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import make_result
from e2ebench.cli import public_result
from e2ebench.result import RunResult
from e2ebench.runner import Workload, _spec_for, execute
from e2ebench.scenario import Scenario

CLI = [sys.executable, "-c", "from e2ebench.cli import main; main()"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


def test_run_rejects_a_bad_cache_state_with_one_line(tmp_path):
    proc = cli("run", "ic", "BM/1/VNL/CPU", "--cache", "bogus", "--store", str(tmp_path / "r.sqlite"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "'bogus'" in lines[0] and "warm, cold" in lines[0]
    assert not (tmp_path / "r.sqlite").exists()


def test_run_rejects_cold_cache_with_inference_only(tmp_path):
    proc = cli("run", "ic", "BM/1/VNL/CPU", "--cache", "cold", "--mode", "inference-only",
               "--store", str(tmp_path / "r.sqlite"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cold cache has no effect in inference-only mode: no io is timed" in lines[0]


def test_run_help_explains_the_cache_option():
    proc = cli("run", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--cache" in text and "page cache" in text


def test_the_spec_and_a_failed_result_carry_the_cache(tmp_path):
    cold = Scenario.parse("ic@BM/1/VNL/CPU#cold-cache")
    workload = Workload(requests=4, batch_size=2)
    spec = _spec_for(cold, workload, tmp_path, tmp_path)
    assert spec.cache == "cold" and spec.mode == "e2e"
    assert _spec_for(Scenario.parse("ic@BM/1/VNL/CPU"), workload, tmp_path, tmp_path).cache == "warm"
    failed = RunResult.failure(cold, workload, "boom", 0.0)
    assert failed.cache == "cold" and failed.scenario == "ic@BM/1/VNL/CPU#cold-cache"
    out = public_result(failed.as_dict())
    assert out["cache"] == "cold"


class _FakeSession:
    """Just enough of platforms.base.Session for runner.execute, with a canned worker result."""

    emulated = False
    info: dict = {}
    provision_s = 0.0
    shares_host_kernel = False

    def __init__(self, result: dict):
        self.result = result
        self.spec = None

    def host_path(self, path):
        return path

    def run_worker(self, spec, timeout):
        self.spec = spec
        return dict(self.result)

    def expected_limits(self):
        return None, None


def test_execute_passes_the_cache_to_the_worker_and_names_the_scenario(tmp_path):
    # a worker that does not know the cache suffix: the runner's scenario string wins
    worker_result = make_result("ic@BM/1/VNL/CPU", 1.0, host_cpus=1).as_dict()
    session = _FakeSession(worker_result)
    cold = Scenario.parse("ic@BM/1/VNL/CPU#cold-cache")
    result = execute(session, cold, Workload(requests=4, batch_size=2), tmp_path, tmp_path / "logs")
    assert session.spec.cache == "cold"
    assert result.scenario == "ic@BM/1/VNL/CPU#cold-cache" and result.cache == "cold"
    assert json.loads(json.dumps(public_result(result.as_dict())))["cache"] == "cold"


def test_study_plan_shows_cold_cache_scenarios(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('apps = ["ic"]\ncores = [1]\ncpu_modes = ["PIN"]\nstore = "never.sqlite"\n'
                     '[workload.ic]\nmode = ["e2e", "inference-only"]\ncache = ["warm", "cold"]\n')
    proc = cli("study", str(study), "--plan", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert [(s["scenario"], s["cache"]) for s in plan["scenarios"]] == [
        ("ic@BM/1/PIN/CPU", "warm"), ("ic@BM/1/PIN/CPU#cold-cache", "cold"), ("ic@BM/1/PIN/CPU#inference-only", "warm")]
    human = cli("study", str(study), "--plan", cwd=tmp_path)
    assert human.returncode == 0 and "ic@BM/1/PIN/CPU#cold-cache" in human.stdout
    assert not (tmp_path / "never.sqlite").exists()
