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
