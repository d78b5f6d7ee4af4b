"""The quick cases of the fault-injection suite (benchmarks/faults.py), with small counts.

Each case injects a real fault into real e2ebench commands and asserts the suite's goal for it: nothing lost,
nothing duplicated, nothing left running, every failure explained in a sentence.  The full suite (20 kills per
signal, 200 mutated study files, VM faults) is `benchmarks/faults.py`; its table is in docs/faults.md.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("faults", ROOT / "benchmarks" / "faults.py")
faults = importlib.util.module_from_spec(_spec)
sys.modules["faults"] = faults
_spec.loader.exec_module(faults)

pytestmark = [pytest.mark.platform, pytest.mark.timeout(900),
              pytest.mark.skipif(os.geteuid() != 0, reason="fault injection needs root (cgroups, tmpfs, /proc)")]
needs_runc = pytest.mark.skipif(not shutil.which("runc"), reason="runc is not installed")


def assert_goal(outcome) -> None:
    assert outcome.injected > 0, outcome.notes
    assert not (outcome.lost or 0), (outcome.lost, outcome.notes)
    assert outcome.duplicated == 0, outcome.notes
    assert outcome.left.total == 0, (str(outcome.left), outcome.notes)
    assert outcome.clear == outcome.errors, outcome.notes


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_study_survives_sigkill_and_sigterm_at_random_moments(work):
    for sig in (signal.SIGKILL, signal.SIGTERM):
        outcome = faults.fault_study_signal(work, sig, kills=2, seed=5, platforms=["BM"], runs=1)
        assert_goal(outcome)
        assert outcome.stored == outcome.expected


def test_sigkilled_worker_is_a_failed_run_that_says_so(work):
    outcome = faults.fault_kill_process(work, "worker", "BM/1/VNL/CPU", ("worker",), 0.3,
                                        ("killed by sigkill",))
    assert_goal(outcome)
    assert outcome.stored == 1


@needs_runc
def test_sigkilled_container_process_and_runc_are_failed_runs(work):
    for kinds in (("worker",), ("runc",)):
        outcome = faults.fault_kill_process(work, f"kill {kinds[0]}", "CN/1/PIN/CPU", kinds, 0.5,
                                            ("killed", "signal"))
        assert_goal(outcome)


def test_hung_worker_times_out_and_leaves_nothing(work):
    outcome = faults.fault_kill_process(work, "hung", "BM/1/VNL/CPU", ("worker",), 0.3, ("timed out",),
                                        sig=signal.SIGSTOP, timeout_s=10)
    assert_goal(outcome)


def test_oom_killed_worker_is_a_failed_run_with_the_limit(work):
    assert_goal(faults.fault_oom(work, "BM/1/VNL/CPU"))


def test_corrupt_stores_get_one_sentence_naming_the_file(work):
    outcome = faults.fault_corrupt_store(work)
    assert outcome.errors >= 8
    assert_goal(outcome)


def test_full_file_system_under_the_store_loses_no_run(work):
    outcome = faults.fault_full_disk(work)
    if any("not permitted" in n for n in outcome.notes):
        pytest.skip(outcome.notes[0])
    assert_goal(outcome)
    assert outcome.stored == 2


def test_read_only_store_is_one_sentence(work):
    outcome = faults.fault_readonly_store(work)
    if any("not permitted" in n for n in outcome.notes):
        pytest.skip(outcome.notes[0])
    assert_goal(outcome)


def test_mutated_study_files_are_refused_clearly_and_inject_nothing(work):
    outcome = faults.fault_hostile_studies(work, count=40, seed=3)
    assert outcome.injected == 40
    assert_goal(outcome)
    assert not [n for n in outcome.notes if "INJECTION" in n]


def test_damaged_data_is_counted_or_refused_with_a_sentence(work):
    outcome = faults.fault_hostile_data(work, seed=2, apps=("ic", "rs"))
    assert_goal(outcome)


def test_table_renders_every_column():
    row = faults.Outcome("x", injected=3, expected=4, stored=4, errors=2, clear=2)
    text = faults.render_table([row])
    for column in faults.COLUMNS:
        assert column in text
    assert "0 lost, 0 duplicated, 0 left running, 100% clear errors" in text
