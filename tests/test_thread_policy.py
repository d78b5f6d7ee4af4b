"""Thread policies (issue 13, part 1): ``sized`` (every pool = the deployment's cores, the default),
``framework-default`` (e2ebench sets no thread count: each library chooses) or a number N.

Pure tests: the notation, the study key ``thread_policies`` (expansion, exclusions, identity), the store's
version 3 -> 4 migration, the runner's limit check.  Real ones: ``e2ebench run ... --threads`` in a 1-core VNL
cgroup on this host (and in a runc container), where the framework default takes the host's core count."""

from __future__ import annotations

import json
import os
import sqlite3
import textwrap

import pytest

from conftest import make_result, run_cli, run_json
from e2ebench import store as store_module
from e2ebench.runner import verify_limits
from e2ebench.scenario import HostFacts, NotationError, Scenario, check_thread_policy, scenario_string
from e2ebench.spec import WorkerSpec
from e2ebench.store import SCHEMA_VERSION, Store
from e2ebench.study import StudyError, parse_study

HOST = HostFacts(cores=4, gpus=0, available_platforms=frozenset({"BM", "CN"}))
from conftest import needs_cgroups, needs_runc
TINY = ["--variant", "tiny", "--batch-size", "2", "-n", "4"]
# what a user's shell may have set: framework-default must remove it so each library chooses on its own
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}


def study_from(text: str):
    return parse_study(textwrap.dedent(text))


# -- notation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, canonical", [
    ("sized", "sized"), (" Sized ", "sized"), ("framework-default", "framework-default"),
    ("FRAMEWORK-DEFAULT", "framework-default"), ("4", "4"), ("04", "4"), (4, "4"), ("1", "1"),
])
def test_check_thread_policy_gives_the_canonical_form(text, canonical):
    assert check_thread_policy(text) == canonical


@pytest.mark.parametrize("bad", ["0", "-1", "x", "", "framework", "2.5", True, None, 0, "99999"])
def test_bad_thread_policies_are_refused_with_the_accepted_values(bad):
    with pytest.raises(NotationError) as info:
        check_thread_policy(bad)
    assert "sized, framework-default or a whole number" in str(info.value)


def test_scenario_notation_round_trips_and_leaves_existing_strings_unchanged():
    for text in ("ic@BM/2/PIN/CPU", "ic@BM/2/PIN/CPU#inference-only", "ic@BM/2/PIN/CPU#cold-cache",
                 "ic@BM/1/VNL/CPU#threads=framework-default", "ic@BM/1/VNL/CPU#cold-cache#threads=4",
                 "nlp@CN/1/PIN/CPU#inference-only#threads=16"):
        scenario = Scenario.parse(text)
        assert str(scenario) == text and Scenario.parse(str(scenario)) == scenario
    assert Scenario.parse("ic@BM/2/PIN/CPU").threads == "sized"
    assert str(Scenario.parse("ic@bm/1/vnl/cpu#THREADS=Framework-Default#cold-cache")) == \
        "ic@BM/1/VNL/CPU#cold-cache#threads=framework-default"
    assert str(Scenario.parse("ic@BM/1/VNL/CPU#threads=sized")) == "ic@BM/1/VNL/CPU"      # the default, not written
    assert str(Scenario.parse("ic@BM/1/VNL/CPU#threads=08")) == "ic@BM/1/VNL/CPU#threads=8"
    assert scenario_string("ic", "BM/1/VNL/CPU", "e2e", "warm", "2") == "ic@BM/1/VNL/CPU#threads=2"
    assert Scenario.parse("ic@BM/1/VNL/CPU#threads=2") != Scenario.parse("ic@BM/1/VNL/CPU")
    assert Scenario.parse("ic@BM/1/VNL/CPU").threads == Scenario("ic", Scenario.parse("ic@BM/1/VNL/CPU").deployment).threads


def test_bad_thread_suffixes_are_one_line_errors():
    for text, words in (("ic@BM/1/VNL/CPU#threads=0", "bad thread policy '0'"),
                        ("ic@BM/1/VNL/CPU#threads=lots", "bad thread policy 'lots'"),
                        ("ic@BM/1/VNL/CPU#threads=1#threads=2", "thread policy twice"),
                        ("ic@BM/1/VNL/CPU#thread=2", "#threads=sized|framework-default|N")):
        with pytest.raises(NotationError) as info:
            Scenario.parse(text)
        assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(NotationError):
        Scenario("ic", Scenario.parse("ic@BM/1/VNL/CPU").deployment, threads="none")


def test_worker_spec_sizes_threads_from_the_policy():
    spec = WorkerSpec(app="ic", deployment={})
    spec.size_threads(2)
    assert spec.threads == 2
    spec.thread_policy = "5"
    spec.size_threads(2)
    assert spec.threads == 5
    spec.thread_policy = "framework-default"
    spec.size_threads(3)
    assert spec.threads == 3
    assert WorkerSpec.from_json(spec.to_json()).thread_policy == "framework-default"


def test_verify_limits_checks_threads_for_sized_and_n_only():
    base = {"deployment": {"cores": 1}, "effective_cpus": [0, 1], "cpu_quota_cores": 1.0}
    assert verify_limits({**base, "threads": {"torch_intra_op": 1}}, [0, 1], 1.0) is None
    assert "torch uses 2 threads" in verify_limits({**base, "threads": {"torch_intra_op": 2}}, [0, 1], 1.0)
    assert "torch uses 2 threads" in verify_limits({**base, "thread_policy": "sized",
                                                    "threads": {"torch_intra_op": 2}}, [0, 1], 1.0)
    fd = {**base, "thread_policy": "framework-default", "threads": {"torch_intra_op": 2}}
    assert verify_limits(fd, [0, 1], 1.0) is None
    assert verify_limits({**base, "thread_policy": "3", "threads": {"torch_intra_op": 3}}, [0, 1], 1.0) is None
    assert "thread policy asks for 3" in verify_limits({**base, "thread_policy": "3",
                                                        "threads": {"torch_intra_op": 1}}, [0, 1], 1.0)
    # the CPU limits are still checked under every policy
    assert "CPU quota" in verify_limits({**fd, "cpu_quota_cores": None}, [0, 1], 1.0)


# -- studies ----------------------------------------------------------------------------------------------


BASE = """
apps = ["ic"]
platforms = ["BM", "CN"]
cores = [1]
cpu_modes = ["VNL", "PIN"]
"""


def test_thread_policies_expand_the_matrix_and_are_part_of_the_scenario_identity():
    study = study_from(BASE + 'thread_policies = ["sized", "Framework-Default", 4, "sized"]\n')
    assert study.thread_policies == ("sized", "framework-default", "4")
    plan = study.plan(HOST)
    keys = [p.key for p in plan.feasible]
    assert len(keys) == 2 * 2 * 3 and len(set(keys)) == len(keys)
    assert "ic@BM/1/VNL/CPU" in keys and "ic@BM/1/VNL/CPU#threads=framework-default" in keys
    assert "ic@CN/1/PIN/CPU#threads=4" in keys
    entry = next(p.as_dict() for p in plan.feasible if p.key == "ic@CN/1/PIN/CPU#threads=4")
    assert entry["thread_policy"] == "4"
    one = study_from(BASE + 'thread_policies = "framework-default"\n')
    assert [p.key for p in one.plan(HOST).feasible][0].endswith("#threads=framework-default")


def test_thread_policies_can_be_excluded_with_a_reason():
    study = study_from(BASE + 'thread_policies = ["sized", "framework-default"]\n'
                       '[[exclude]]\ncpu_modes = ["PIN"]\nthread_policies = ["framework-default"]\n'
                       'reason = "a cpuset shows the limit: the default is sized there"\n')
    plan = study.plan(HOST)
    excluded = {p.key: p.reason for p in plan.infeasible}
    assert set(excluded) == {"ic@BM/1/PIN/CPU#threads=framework-default", "ic@CN/1/PIN/CPU#threads=framework-default"}
    assert all("a cpuset shows the limit" in r for r in excluded.values())
    assert len(plan.feasible) == 6


def test_bad_thread_policies_in_a_study_name_the_key():
    with pytest.raises(StudyError) as info:
        study_from(BASE + 'thread_policies = ["sized", "framwork-default"]\n')
    assert "thread_policies has the bad value 'framwork-default'" in str(info.value)
    assert "did you mean 'framework-default'" in str(info.value)
    with pytest.raises(StudyError) as info:
        study_from(BASE + "thread_policies = []\n")
    assert "thread_policies is empty" in str(info.value)
    with pytest.raises(StudyError) as info:
        study_from(BASE + '[[exclude]]\nthread_policies = ["0"]\nreason = "x"\n')
    assert "exclude[0].thread_policies has the bad value '0'" in str(info.value)
    with pytest.raises(StudyError) as info:
        study_from(BASE + 'thread_polices = ["sized"]\n')
    assert "did you mean 'thread_policies'" in str(info.value)


def test_the_identity_hash_is_unchanged_for_studies_without_the_key():
    base = study_from(BASE)
    sized = study_from(BASE + 'thread_policies = ["sized"]\n')
    both = study_from(BASE + 'thread_policies = ["sized", "framework-default"]\n')
    assert "thread_policies" not in base.config
    assert base.config_sha256 == sized.config_sha256              # the default, spelled out: the same study
    assert both.config_sha256 != base.config_sha256
    # the hash of this study text before thread policies existed (computed with the code of commit 91f39a0)
    assert base.config_sha256 == "ac167e1776c3fc338a6b034fffb06851a7a94114b26231339e6b349b950a5e62"


def test_explicit_scenarios_keep_their_policy():
    study = study_from(BASE + 'scenarios = ["ic@BM/1/VNL/CPU#threads=3"]\n')
    assert study.config["scenarios"] == ["ic@BM/1/VNL/CPU#threads=3"]
    assert any(p.key == "ic@BM/1/VNL/CPU#threads=3" and p.origin == "explicit" for p in study.plan(HOST).scenarios)


# -- store ------------------------------------------------------------------------------------------------


def _result(scenario: str = "ic@BM/1/VNL/CPU", policy: str | None = None, e2e: float = 1.5) -> dict:
    """A stored run's JSON (conftest's builder); without ``thread_policy`` unless ``policy`` is given, as results
    written before thread policies existed, so that the store reads the policy from the scenario's suffix."""
    out = make_result(scenario, e2e, started_at=100.0, finished_at=101.5).as_dict()
    del out["thread_policy"]
    if policy is not None:
        out["thread_policy"] = policy
    return out


def _v3_store(path) -> None:
    """A store as schema version 3 left it: no ``thread_policy`` column, two runs."""
    schema_v3 = store_module._SCHEMA.replace("    thread_policy TEXT NOT NULL DEFAULT 'sized',\n", "")
    assert schema_v3 != store_module._SCHEMA
    db = sqlite3.connect(path)
    db.executescript(schema_v3)
    db.execute(store_module._UUID_INDEX)
    db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '3')")
    db.execute("INSERT INTO studies(id, name, created_at) VALUES ('old', 'old', 1.0)")
    for i in range(2):
        r = _result(e2e=1.0 + i)
        db.execute(
            "INSERT INTO runs(study_id, scenario, app, platform, cores, cpu_mode, device, mode, cache, phase, seq, "
            "status, started_at, finished_at, e2e_s, result_json, uuid) VALUES ('old', ?, 'ic', 'BM', 1, 'VNL', 'CPU', "
            "'e2e', 'warm', 'measure', ?, 'ok', 100.0, 101.0, ?, ?, ?)",
            (r["scenario"], i, r["e2e_s"], json.dumps(r, sort_keys=True), f"{i:032x}"))
    db.commit()
    db.close()


def test_a_version_3_store_is_read_only_as_it_is_and_migrated_when_writable(tmp_path):
    path = tmp_path / "v3.sqlite"
    _v3_store(path)
    reader = Store.__new__(Store)                       # the read-only opening (root would write a chmod'ed file)
    reader.path, reader.imported = path, []
    reader._open_read_only()
    with reader:
        assert not reader.writable and reader.schema_version == 3
        assert [r["thread_policy"] for r in reader.runs(study_id="old")] == ["sized", "sized"]
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 7
        runs = store.runs(study_id="old")
        assert [(r["thread_policy"], r["e2e_s"], r["seq"]) for r in runs] == [("sized", 1.0, 0), ("sized", 2.0, 1)]
        store.add_run(_result("ic@BM/1/VNL/CPU#threads=framework-default", "framework-default"), study_id="old", seq=0)
        store.add_run(_result("ic@BM/1/VNL/CPU#threads=3"), study_id="old", seq=0)     # from the scenario's suffix
        assert [r["thread_policy"] for r in store.runs(study_id="old")] == ["sized", "sized", "framework-default", "3"]
        rows = store.export_rows("old")
        assert [r["thread_policy"] for r in rows] == ["sized", "sized", "framework-default", "3"]
    db = sqlite3.connect(path)
    columns = {row[1]: row for row in db.execute("PRAGMA table_info(runs)")}
    assert columns["thread_policy"][2] == "TEXT" and columns["thread_policy"][3] == 1
    assert columns["thread_policy"][4] == "'sized'"
    db.close()
    with Store(path) as store:                           # opening again: nothing left to migrate
        assert store.schema_version == 7 and len(store.runs(phase=None)) == 4


def test_the_repair_copy_keeps_the_thread_policy(tmp_path):
    from e2ebench.store_check import repair_store

    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.add_run(_result("ic@BM/1/VNL/CPU#threads=framework-default", "framework-default"))
        store.add_run(_result())
    repair_store(path, tmp_path / "copy.sqlite")
    with Store(tmp_path / "copy.sqlite") as store:
        assert sorted(r["thread_policy"] for r in store.runs()) == ["framework-default", "sized"]


def test_analysis_keys_separate_the_policies(tmp_path):
    from e2ebench.analysis import load_study

    path = tmp_path / "a.sqlite"
    with Store(path) as store:
        for i in range(3):
            store.add_run(_result(e2e=1.0 + 0.01 * i), study_id="adhoc", seq=i)
            store.add_run(_result("ic@BM/1/VNL/CPU#threads=framework-default", "framework-default", 1.2 + 0.01 * i),
                          study_id="adhoc", seq=i)
        data = load_study(store, "adhoc")
    policies = sorted(k.thread_policy for k in data.scenarios)
    assert policies == ["framework-default", "sized"]


# -- real runs (a worker in a 1-core VNL cgroup or a runc container) --------------------------------------


def _run(deployment: str, policy: str, tmp_path, env: dict | None = None) -> dict:
    rc, result, err = run_json(["run", "ic", deployment, *TINY, "--threads", policy,
                                "--store", str(tmp_path / "r.sqlite")], env=env)
    assert rc == 0 and result is not None, (rc, err[-3000:], result and result.get("error"))
    assert result["error"] is None
    return result


@needs_cgroups
def test_framework_default_in_a_1_core_vnl_cgroup_takes_the_host_count(tmp_path):
    result = _run("BM/1/VNL/CPU", "framework-default", tmp_path, env=THREAD_ENV)
    pools = result["thread_pools"]
    assert result["thread_policy"] == "framework-default"
    assert result["scenario"] == "ic@BM/1/VNL/CPU#threads=framework-default"
    assert pools["torch_intra_op"] == os.cpu_count() == pools["os_cpu_count"]     # the host's count, not the limit
    assert pools["cpu_quota_cores"] == 1.0 and pools["effective_cpus"] == len(os.sched_getaffinity(0))
    assert pools["opencv"] is not None and pools["onnxruntime_intra_op"] is None      # torch backend: no ORT
    assert isinstance(pools["openmp"], list) and pools["process_threads"] >= 1
    assert all(set(p) == {"user_api", "internal_api", "num_threads"} for p in pools["openmp"])
    assert result["threads"]["torch_intra_op"] == pools["torch_intra_op"]          # the old key, same meaning
    with Store(tmp_path / "r.sqlite") as store:
        (run,) = store.runs(phase=None)
        assert run["thread_policy"] == "framework-default" and run["status"] == "ok"


@needs_cgroups
@pytest.mark.parametrize("policy, expected", [("sized", 1), ("3", 3)])
def test_sized_and_n_in_a_1_core_vnl_cgroup(tmp_path, policy, expected):
    result = _run("BM/1/VNL/CPU", policy, tmp_path)
    assert result["thread_policy"] == policy
    assert result["thread_pools"]["torch_intra_op"] == expected
    assert result["thread_pools"]["torch_inter_op"] == 1
    assert result["thread_pools"]["opencv"] == expected


@needs_runc
def test_framework_default_in_a_1_core_vnl_runc_container(tmp_path):
    result = _run("CN/1/VNL/CPU", "framework-default", tmp_path, env=THREAD_ENV)
    assert result["thread_policy"] == "framework-default"
    assert result["thread_pools"]["torch_intra_op"] == os.cpu_count()
    assert result["thread_pools"]["cpu_quota_cores"] == 1.0


def test_bad_threads_option_is_a_usage_error(tmp_path):
    proc = run_cli(["run", "ic", "BM/1/VNL/CPU", "--threads", "many", "--store", str(tmp_path / "r.sqlite")])
    assert proc.returncode == 2
    assert "--threads: bad thread policy 'many'" in proc.stderr
    assert not (tmp_path / "r.sqlite").exists()
