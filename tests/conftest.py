"""Shared fixtures: a small generated IC data set, a temporary store, and a CLI runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
E2EBENCH = [sys.executable, "-m", "e2ebench.cli"]


def _platform_reasons():
    import shutil

    from e2ebench.platforms import cgroups

    can_write, why = cgroups.writable()
    runc = ("runc is not installed" if not shutil.which("runc") else
            "runc containers need root here" if os.geteuid() != 0 else
            None if can_write else f"cgroups not writable: {why}")
    return can_write, why, runc


CAN_WRITE, WHY, RUNC_REASON = _platform_reasons()
needs_cgroups = pytest.mark.skipif(not CAN_WRITE, reason=f"cgroups not writable here: {WHY}")
needs_runc = pytest.mark.skipif(RUNC_REASON is not None, reason=RUNC_REASON or "")

# The Ctrl-C tests send SIGINT to e2ebench processes they start.  A suite launched as a background job of a
# non-interactive shell (`scripts/test &`, some CI runners) inherits SIGINT *ignored*; that disposition survives
# exec, so every child would ignore SIGINT too and Python would never raise KeyboardInterrupt in it.  Installing
# Python's handler here makes children start with the default disposition (handlers reset to default on exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's ~/.cache/e2ebench; the cache lives for the whole session."""
    if "E2EBENCH_CACHE" not in os.environ or os.environ.get("E2EBENCH_TEST_SHARED_CACHE") != "1":
        os.environ["E2EBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def ic_data(tmp_path_factory) -> Path:
    from e2ebench.apps import get_app_class

    out = tmp_path_factory.mktemp("ic-data")
    return Path(get_app_class("ic").make_data(out, 6, seed=1))


_CLI_CWD: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _cli_working_directory(tmp_path_factory):
    """CLI runs start in a session temp folder, so that what they write by default (LoadGen's ``results/logs``)
    never lands in the checkout."""
    _CLI_CWD.append(tmp_path_factory.mktemp("cli-cwd"))
    yield


def cli_cwd() -> Path:
    return _CLI_CWD[0] if _CLI_CWD else ROOT


def run_cli(args: list[str], timeout: float = 600, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run(E2EBENCH + args, capture_output=True, text=True, timeout=timeout, cwd=cwd or cli_cwd(),
                          env={**os.environ, **(env or {})})


def run_json(args: list[str], **kw) -> tuple[int, dict | None, str]:
    proc = run_cli(args + ["--json"], **kw)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    payload = json.loads(lines[-1]) if lines else None
    return proc.returncode, payload, proc.stderr


# -- RunResults for tests that need stored runs without running anything ---------------------------------------

PHASE_NAMES = ("io", "pre", "infer", "post", "other")


def make_result(scenario: str = "ic@BM/2/PIN/CPU", e2e_s: float | None = 1.5, *, error: str | None = None,
                phases_s: dict | None = None, requests: int = 8, started_at: float = 100.0, host_cpus: int = 2,
                extra: dict | None = None, **overrides):
    """A :class:`~e2ebench.result.RunResult` made by the constructors the code uses.

    ``e2e_s`` None (or ``error`` with ``e2e_s`` None): a failed run from ``RunResult.failure``; otherwise a measured
    run from ``RunResult.success`` whose values agree with each other (phases sum to ``e2e_s`` unless ``phases_s``
    is given, throughput = requests / E2E, CPUs and quota as the deployment asks).  ``overrides``: any field by name
    (a misspelt one is a TypeError); ``extra``: keys the RunResult does not know, kept as a newer writer's would be.
    """
    from e2ebench.result import RunResult
    from e2ebench.runner import Workload
    from e2ebench.scenario import Scenario

    parsed = Scenario.parse(scenario)
    dep = parsed.deployment
    workload = Workload(requests=requests, batch_size=2, loadgen_scenario="offline", backend="torch", variant="full")
    if e2e_s is None:
        result = RunResult.failure(parsed, workload, error or "worker failed: boom", started_at,
                                   **{"finished_at": started_at + 1.5, **overrides})
    else:
        phases = phases_s if phases_s is not None else {"io": 0.1 * e2e_s, "pre": 0.2 * e2e_s, "infer": 0.6 * e2e_s,
                                                        "post": 0.05 * e2e_s, "other": 0.05 * e2e_s}
        per_request_ms = 1000 * e2e_s / requests
        latency = {"p50": per_request_ms, "p90": 1.5 * per_request_ms, "p99": 2 * per_request_ms,
                   "mean": per_request_ms, "max": 2.2 * per_request_ms}
        cold = {"provision_s": 0.2, "process_start_s": 0.1, "import_s": 1.0, "model_load_s": 0.5,
                "first_inference_s": 0.2}
        measured = dict(
            scenario=str(parsed), app=parsed.app, deployment=dep.as_dict(), started_at=started_at,
            e2e_s=e2e_s, phases_s=phases, mode=parsed.mode, cache=parsed.cache, thread_policy=parsed.threads,
            requests=requests, batch_size=2, batch_size_requested=2, loadgen_scenario="offline", backend="torch",
            variant="full", completed=requests, throughput_sps=requests / e2e_s if e2e_s else None,
            window_wall_s=e2e_s, laps_coverage=0.999, laps_cover_window=True,
            service_time_ms=latency, latency_ms=dict(latency),
            loadgen_latency_ms={k: 10 * v for k, v in latency.items()}, warmup_requests=2,
            cold_start=cold, cold_start_s=sum(cold.values()),
            effective_cpus=list(range(dep.cores)) if dep.cpu_mode == "PIN" else list(range(host_cpus)),
            cpu_quota_cores=None if dep.cpu_mode == "PIN" else float(dep.cores),
            threads={"torch_intra_op": dep.cores, "process_threads": dep.cores + 3},
            counters={"voluntary_ctx_switches": 100, "involuntary_ctx_switches": 10, "cpu_migrations": 3,
                      "nr_throttled": 0, "throttled_time_s": 0.0, "steal_s": 0.0, "user_cpu_s": e2e_s,
                      "system_cpu_s": 0.01, "peak_rss_bytes": 10 ** 9},
            errors={"count": 0, "fraction": 0.0, "limit_fraction": 0.01, "samples": []}, error=error,
            quality={}, environment={"cpu_model": "Test CPU", "host_cpus": host_cpus, "kernel": "6.1.0-test"},
            loadgen={"result_valid": True}, platform_info={"platform": dep.platform},
            contended=False, contention=[], finished_at=started_at + e2e_s + 2.0,
        )
        measured.update(overrides)
        result = RunResult.success(**measured)
    result.extra.update(extra or {})
    return result


def as_version_5(path) -> None:
    """Make a store (closed) look as schema 5 left it: the schema-6 columns and schema 7's index dropped, the version
    set back -- an older store, for the migration and read-only tests."""
    import sqlite3

    from e2ebench.store import METRIC_COLUMNS

    db = sqlite3.connect(path)
    db.execute("DROP INDEX IF EXISTS runs_analysis")             # schema 7's, over some of those columns
    for column in ("metrics_version", *dict.fromkeys(c for c, _, _ in METRIC_COLUMNS)):
        db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    db.execute("UPDATE meta SET value='5' WHERE key='schema_version'")
    db.execute("DELETE FROM meta WHERE key='metrics_filled'")
    db.commit()
    db.close()
