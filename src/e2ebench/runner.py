"""Runs scenarios: provisions the platform, runs the worker, checks the limits, stores the result.

The runner is the only part that knows both applications (through the registry and the worker
spec) and platforms (through :class:`~e2ebench.platforms.base.Platform`).  Study-level logic
(repetition, interleaving, resuming) lives in :mod:`e2ebench.study_runner`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator

from e2ebench.housekeeping import clean_leftovers, other_measurements, temp_prefix
from e2ebench.lifecycle import Lifeline
from e2ebench.platforms.base import Session
from e2ebench.result import RunResult
from e2ebench.scenario import Scenario, policy_threads
from e2ebench.spec import WorkerFailure, WorkerSpec

DEFAULT_TIMEOUT_S = 1800.0
DATA_CAP = 256


def cache_dir() -> Path:
    return Path(os.environ.get("E2EBENCH_CACHE", Path.home() / ".cache" / "e2ebench"))


@dataclasses.dataclass
class Workload:
    """What is fed to the application in one run (independent of the deployment)."""

    requests: int | None = None          # None: the app's default
    batch_size: int | None = None        # None: the app's default
    loadgen_scenario: str = "offline"    # offline | single-stream
    backend: str = "torch"
    variant: str = "full"                # full | tiny (tests)
    data: str | None = None              # folder/file; None: generated once and cached
    weights: str | None = None
    app_options: dict = dataclasses.field(default_factory=dict)
    max_error_fraction: float = 0.01
    timeout_s: float = DEFAULT_TIMEOUT_S
    seed: int = 0

    def resolved(self, app: str) -> "Workload":
        from e2ebench.apps import get_app_class

        cls = get_app_class(app)
        return dataclasses.replace(
            self,
            requests=self.requests or cls.default_requests,
            batch_size=self.batch_size or cls.default_batch_size,
        )


def default_data(app: str, count: int, variant: str = "full", seed: int = 0, options: dict | None = None) -> Path:
    """A deterministic synthetic data set for ``app``, generated once and cached."""
    from e2ebench.apps import get_app_class

    cls = get_app_class(app)
    count = max(1, min(count, DATA_CAP))
    target = cache_dir() / "data" / f"{app}-n{count}-s{seed}"
    marker = target / ".complete"
    if marker.exists():
        return Path(marker.read_text().strip() or target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        produced = cls.make_data(tmp, count, seed=seed, **(options or {}))
        rel = Path(produced).resolve().relative_to(tmp.resolve())
        try:
            tmp.rename(target)
        except OSError:
            if not marker.exists():
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
        path = target / rel
        marker.write_text(str(path))
        return path
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verify_limits(result: RunResult | dict, expected_cpus: list[int] | None, expected_quota: float | None) -> str | None:
    """Compare what the worker saw with what the deployment asked for; a message when they differ."""
    if isinstance(result, RunResult):
        result = result.as_dict()
    problems = []
    seen_cpus = result.get("effective_cpus")
    if expected_cpus is not None and sorted(seen_cpus or []) != sorted(expected_cpus):
        problems.append(f"effective CPUs {seen_cpus} != expected {sorted(expected_cpus)}")
    seen_quota = result.get("cpu_quota_cores")
    if expected_quota is None:
        pass
    elif seen_quota is None or abs(float(seen_quota) - float(expected_quota)) > 1e-6:
        problems.append(f"CPU quota {seen_quota} cores != expected {expected_quota}")
    # torch's pool must be what the thread policy asked for: the deployment's cores (sized) or N; with
    # framework-default the library's own choice is the point of the run, so it is recorded, not checked.
    threads = (result.get("threads") or {}).get("torch_intra_op")
    cores = (result.get("deployment") or {}).get("cores")
    policy = str(result.get("thread_policy") or "sized")
    if threads is not None and cores is not None and policy == "sized" and threads != cores:
        problems.append(f"torch uses {threads} threads but the deployment has {cores} cores")
    elif threads is not None and policy.isdigit() and threads != int(policy):
        problems.append(f"torch uses {threads} threads but the thread policy asks for {policy}")
    if not problems:
        return None
    return "the platform did not apply the deployment's CPU limits: " + "; ".join(problems)


def _spec_for(scenario: Scenario, workload: Workload, data: Path, output_dir: Path) -> WorkerSpec:
    return WorkerSpec(
        app=scenario.app,
        deployment=scenario.deployment.as_dict(),
        requests=int(workload.requests),
        batch_size=int(workload.batch_size),
        loadgen_scenario=workload.loadgen_scenario,
        backend=workload.backend,
        mode=scenario.mode,
        cache=scenario.cache,
        variant=workload.variant,
        threads=policy_threads(scenario.threads) or scenario.deployment.cores,
        thread_policy=scenario.threads,
        device="cuda" if scenario.deployment.device == "GPU" else "cpu",
        data=str(data),
        weights=workload.weights,
        output_dir=str(output_dir),
        max_error_fraction=workload.max_error_fraction,
        app_options=dict(workload.app_options),
        seed=workload.seed,
    )


def execute(session: Session, scenario: Scenario, workload: Workload, data: Path, logs_dir: Path) -> RunResult:
    """One run in an open session.  Never raises for a failed run: the result carries ``error``."""
    started = time.time()
    logs_dir.mkdir(parents=True, exist_ok=True)
    spec = _spec_for(scenario, workload, Path(session.host_path(data)), Path(session.host_path(logs_dir)))
    spec.emulated = session.emulated
    host_cpus = session.info.get("pinned_cpus") or session.info.get("pinned_host_cpus") or None
    contention = other_measurements(host_cpus)          # before: what already runs on our cores
    try:
        with Lifeline(logs_dir) as lifeline:
            if session.shares_host_kernel:
                spec.lifeline = session.host_path(lifeline.path)
            result = RunResult.from_dict(session.run_worker(spec, timeout=workload.timeout_s))
    except WorkerFailure as exc:
        return RunResult.failure(scenario, workload, f"worker failed: {exc}", started,
                                 output_tail=exc.output_tail[-4000:], emulated=session.emulated,
                                 platform_info=session.info)
    except Exception as exc:
        return RunResult.failure(scenario, workload, f"{type(exc).__name__}: {exc}", started,
                                 output_tail=traceback.format_exc()[-4000:], platform_info=session.info)
    _record_contention(result, contention, other_measurements(host_cpus))
    # The scenario (with its cache state) is the runner's: the worker's string may not carry the cache suffix.
    result.scenario = str(scenario)
    result.cache = scenario.cache
    result.thread_policy = scenario.threads
    result.emulated = bool(result.emulated or session.emulated)
    result.started_at = started
    result.finished_at = time.time()
    result.logs_dir = str(logs_dir)
    cold = dict(result.cold_start or {})
    cold["provision_s"] = session.provision_s
    result.cold_start = cold
    if result.cold_start_s is not None:
        result.cold_start_s = sum(v for v in cold.values() if isinstance(v, (int, float)))
    if not result.error:
        expected_cpus, expected_quota = session.expected_limits()
        mismatch = verify_limits(result, expected_cpus, expected_quota)
        if mismatch:
            result.error = mismatch
    return result


def _record_contention(result: RunResult, before: list[dict], after: list[dict]) -> None:
    """``contended``: another e2ebench measurement ran on this run's cores when it started or ended
    (``contention`` says which: pid, what, owner, CPUs).  Checked at both ends of the run, not in between."""
    seen: dict[int, dict] = {}
    for moment, procs in (("start", before), ("end", after)):
        for proc in procs:
            seen.setdefault(proc["pid"], {**proc, "seen_at": []})["seen_at"].append(moment)
    result.contended = bool(seen)
    result.contention = list(seen.values())
    if seen:
        what = ", ".join(f"{p['what']} {p['pid']} of e2ebench process {p['owner_pid']}" for p in seen.values())
        result.warnings.append(
            f"another e2ebench measurement ran on this run's cores ({what}): the run is flagged contended")


@contextlib.contextmanager
def platform_workdir() -> Iterator[Path]:
    """A temporary folder for one deployment (bundles, specs, sockets), named ``e2ebench-<pid>-*`` so that
    :func:`e2ebench.housekeeping.clean_leftovers` can remove it if this process dies."""
    with tempfile.TemporaryDirectory(prefix=temp_prefix()) as tmp:
        yield Path(tmp)


def say_on_stderr(message: str) -> None:
    print(f"e2ebench: {message}", file=sys.stderr, flush=True)


def housekeeping(say: Callable[[str], None] | None = None) -> list[str]:
    """Remove what dead e2ebench processes left (orphans, containers, cgroups, temp folders) and say so
    (on stderr unless ``say`` is given)."""
    say = say or say_on_stderr
    removed = clean_leftovers()
    if removed:
        say(f"removed what dead e2ebench runs left behind ({len(removed)}): " + "; ".join(removed))
    return removed


def run_single(scenario: Scenario, workload: Workload, store=None, study_id: str | None = None,
               results_dir: Path = Path("results"), progress: Callable[[str], None] | None = None,
               platform_options: dict | None = None) -> RunResult:
    """Provision, run once, tear down, store.  Returns the RunResult (``error`` set on failure)."""
    from e2ebench.platforms import get_platform
    from e2ebench.store import ADHOC_STUDY

    workload = workload.resolved(scenario.app)
    started = time.time()
    say = progress or (lambda message: None)
    if workload.data:
        data = Path(workload.data)
    else:
        say(f"preparing the default {scenario.app} data set")
        data = default_data(scenario.app, int(workload.requests), seed=workload.seed, options=None)
    data = data.resolve()
    platform = get_platform(scenario.deployment.platform, **(platform_options or {}))
    run_tag = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    logs_dir = (results_dir / "logs" / f"{scenario.app}-{str(scenario.deployment).replace('/', '_')}-{run_tag}").resolve()
    housekeeping(progress)
    with platform_workdir() as tmp:
        try:
            say(f"provisioning {scenario.deployment}")
            with platform.session(scenario.deployment, tmp) as session:
                say(f"running {scenario}")
                result = execute(session, scenario, workload, data, logs_dir)
        except Exception as exc:
            result = RunResult.failure(scenario, workload, f"provisioning failed: {type(exc).__name__}: {exc}", started)
    if store is not None:
        result.run_id = store.add_run(result, study_id=study_id or ADHOC_STUDY)
    return result
