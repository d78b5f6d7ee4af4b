"""The typed, versioned RunResult (e2ebench.result): its JSON keys against real runs, old results, failures.

The keys are never checked against a list typed here: the second source is always real output, either a tiny
bare-metal run made now or the results recorded in ``tests/data/run_results_v1.json`` from the code before the
typed result (version 1: no ``result_schema``, failed runs with only some keys).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import make_result, needs_cgroups, run_json
from e2ebench.result import SCHEMA_VERSION, RunResult, field_names
from e2ebench.runner import Workload
from e2ebench.scenario import Scenario
from e2ebench.spec import RESULT_SCHEMA, WorkerSpec
from e2ebench.store import Store

V1 = json.loads((Path(__file__).parent / "data" / "run_results_v1.json").read_text())
TINY = ["--variant", "tiny", "--batch-size", "2", "--requests", "4"]
# what a failed run cannot have measured: the worker's numbers (the platform's and runner's fields may be set)
MEASURED = ("e2e_s", "phases_s", "window_wall_s", "laps_coverage", "service_time_ms", "latency_ms",
            "loadgen_latency_ms", "completed", "throughput_sps", "counters", "cold_start_s", "effective_cpus")


# -- the type on its own -----------------------------------------------------------------------------------------

def test_as_dict_and_from_dict_round_trip_through_json():
    for result in (make_result(), make_result("nlp@BM/1/VNL/CPU#cold-cache", 2.0, extra={"from_the_future": [1]}),
                   make_result(e2e_s=None, error="provisioning failed: boom")):
        text = json.dumps(result.as_dict(), sort_keys=True)
        back = RunResult.from_dict(json.loads(text))
        assert back == result
        assert json.dumps(back.as_dict(), sort_keys=True) == text
        assert back.as_dict()["result_schema"] == SCHEMA_VERSION and back.schema == RESULT_SCHEMA


def test_every_field_is_a_key_and_unknown_keys_are_kept_not_lost():
    result = make_result(extra={"from_the_future": {"x": 1}})
    d = result.as_dict()
    assert set(d) == field_names() | {"from_the_future"}
    back = RunResult.from_dict({**d, "result_schema": SCHEMA_VERSION + 1})
    assert back.extra == {"from_the_future": {"x": 1}}
    assert back.result_schema == SCHEMA_VERSION + 1         # a newer result keeps its number
    assert back.as_dict()["from_the_future"] == {"x": 1}


def test_the_constructors_reject_a_key_that_is_no_field():
    with pytest.raises(TypeError, match="no field e2e_seconds"):
        make_result(e2e_seconds=1.0)
    with pytest.raises(TypeError, match="no field bogus"):
        RunResult.failure(Scenario.parse("ic@BM/1/VNL/CPU"), None, "boom", 0.0, bogus=1)


def test_a_failure_has_the_keys_of_a_success_with_none_where_nothing_was_measured():
    scenario = Scenario.parse("sr@BM/2/PIN/CPU#threads=framework-default")
    workload = Workload(requests=4, batch_size=2, variant="tiny")
    failed = RunResult.failure(scenario, workload, "provisioning failed: boom", 12.5, output_tail="trace")
    d = failed.as_dict()
    assert set(d) == set(make_result().as_dict())
    assert all(d[k] is None for k in MEASURED)
    assert d["error"] == "provisioning failed: boom" and not failed.ok and d["output_tail"] == "trace"
    assert (d["scenario"], d["app"], d["thread_policy"], d["deployment"]) == (
        str(scenario), "sr", "framework-default", {"platform": "BM", "cores": 2, "cpu_mode": "PIN", "device": "CPU"})
    assert (d["requests"], d["batch_size"], d["variant"], d["started_at"]) == (4, 2, "tiny", 12.5)
    assert d["warnings"] == [] and d["emulated"] is False and d["finished_at"] >= 12.5
    # the worker's own failure: what its spec says, the scenario with the spec's policy
    spec = WorkerSpec(app="ic", deployment=scenario.deployment.as_dict(), requests=3, thread_policy="2")
    from_spec = RunResult.failure(Scenario("ic", scenario.deployment, threads="2"), spec, "no samples", 1.0)
    assert from_spec.scenario == "ic@BM/2/PIN/CPU#threads=2" and from_spec.requests == 3
    assert from_spec.backend == "torch" and from_spec.loadgen_scenario == "offline"


def test_gpu_fields_have_their_place():
    result = make_result()
    assert result.effective_gpus == 0 and result.gpu_model is None
    assert make_result("ic@BM/1/PIN/GPU", effective_gpus=1, gpu_model="Test GPU").as_dict()["gpu_model"] == "Test GPU"


# -- results written before the typed RunResult ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["stored_ok", "stored_failed", "json_ok", "json_failed"])
def test_a_version_1_result_loads_with_every_key_and_value_kept(name):
    old = V1[name]
    assert "result_schema" not in old
    result = RunResult.from_dict(old)
    assert result.extra == {}, "a key the old code wrote is no field of RunResult"
    d = result.as_dict()
    assert {k: d[k] for k in old} == old                    # nothing renamed, nothing changed
    assert set(d) == field_names()                         # the keys it lacked are there now, with defaults
    assert d["result_schema"] == SCHEMA_VERSION


def test_an_old_result_missing_keys_takes_the_defaults():
    old = dict(V1["stored_ok"])
    for key in ("cache", "thread_policy", "warnings", "mode", "contended", "schema", "thread_pools"):
        old.pop(key)
    old["warnings"] = None                                 # and one written as null
    result = RunResult.from_dict(old)
    assert (result.cache, result.thread_policy, result.mode, result.warnings) == ("warm", "sized", "e2e", [])
    assert result.contended is None and result.thread_pools is None and result.schema == RESULT_SCHEMA
    assert result.e2e_s == V1["stored_ok"]["e2e_s"] and result.ok


def test_the_analysis_reads_old_and_new_results_alike():
    from e2ebench.analysis import workload_of

    old = V1["stored_ok"]
    assert workload_of(old) == workload_of(RunResult.from_dict(old)) == workload_of(RunResult.from_dict(old).as_dict())
    assert workload_of(old)[:5] == (4, 2, "tiny", "torch", "offline")


def test_the_store_takes_a_run_result_or_a_stored_dict(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        new_id = store.add_run(make_result("ic@BM/1/VNL/CPU"))
        old_id = store.add_run(V1["stored_ok"])                 # a spill file's or an older version's: as it is
        runs = {r["id"]: r for r in store.runs()}
    assert runs[new_id]["result"] == make_result("ic@BM/1/VNL/CPU").as_dict()
    assert runs[old_id]["result"] == V1["stored_ok"]


# -- a real run now ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, ic_data):
    """One successful and one failed (empty data folder) tiny ic run on BM, through the CLI: --json and stored."""
    tmp = tmp_path_factory.mktemp("result-runs")
    store = tmp / "r.sqlite"
    empty = tmp / "empty"
    empty.mkdir()
    rc_ok, json_ok, err_ok = run_json(["run", "ic", "BM/1/VNL/CPU", "--data", str(ic_data), "--store", str(store)]
                                      + TINY)
    rc_failed, json_failed, err_failed = run_json(["run", "ic", "BM/1/VNL/CPU", "--data", str(empty),
                                                   "--store", str(store)] + TINY)
    assert rc_ok == 0, err_ok
    assert rc_failed == 1 and json_failed["error"], err_failed
    with Store(store) as s:
        stored = {r["status"]: r["result"] for r in s.runs()}
    return {"json_ok": json_ok, "json_failed": json_failed, "stored_ok": stored["ok"], "stored_failed": stored["failed"]}


@needs_cgroups
def test_run_json_keeps_every_key_it_had(real_runs):
    for name in ("json_ok", "json_failed"):
        now = real_runs[name]
        assert set(V1[name]) | {"result_schema"} <= set(now), name      # keys are added, never removed
        assert now["result_schema"] == SCHEMA_VERSION
        assert set(now) <= field_names()
    for key in ("scenario", "app", "deployment", "cache", "thread_policy", "requests", "batch_size_requested"):
        assert real_runs["json_ok"][key] == V1["json_ok"][key], key


@needs_cgroups
def test_a_real_result_is_every_field_and_nothing_else(real_runs):
    for name in ("stored_ok", "stored_failed"):
        stored = real_runs[name]
        assert set(stored) == field_names(), name                           # nothing undeclared, nothing missing
        assert set(V1[name]) <= set(stored), name                           # every key the old code wrote
        result = RunResult.from_dict(stored)
        assert result.extra == {} and result.as_dict() == stored
        assert stored["result_schema"] == SCHEMA_VERSION and stored["study_id"] is None
    ok, failed = real_runs["stored_ok"], real_runs["stored_failed"]
    assert ok["error"] is None and ok["e2e_s"] > 0 and ok["oom_killed"] is False
    assert "holds no" in failed["error"]
    assert all(failed[k] is None for k in MEASURED)
    # a worker failure still says what was asked for
    assert (failed["backend"], failed["variant"], failed["requests"]) == ("torch", "tiny", 4)


def test_every_field_is_documented():
    """docs/measurement.md names every key of a RunResult (the reader's promise)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "measurement.md").read_text()
    missing = sorted(name for name in field_names() if f"`{name}`" not in text)
    assert missing == []


def test_fields_are_declared_once():
    names = [f.name for f in dataclasses.fields(RunResult)]
    assert len(names) == len(set(names)) and "extra" in names
