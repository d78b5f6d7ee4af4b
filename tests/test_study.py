"""Study files (e2ebench.study): validation messages, matrix expansion, feasibility, presets, identity."""

from __future__ import annotations

import dataclasses
import random
import textwrap
from pathlib import Path

import pytest

from conftest import make_result
from e2ebench.platforms import get_platform_class
from e2ebench.result import RunResult
from e2ebench.scenario import PLATFORMS, Deployment, HostFacts, Scenario
from e2ebench.store import Store
from e2ebench.study import (PRESETS, StudyError, load_study, parse_study, preset_path, resolve_study_path)
from e2ebench.study_runner import open_study, round_order

BIG_HOST = HostFacts(cores=64, gpus=1, available_platforms=frozenset(PLATFORMS))
SMALL_HOST = HostFacts(cores=2, gpus=0, available_platforms=frozenset({"BM"}),
                       platform_reasons=(("VM", "no KVM here"), ("CN", "runc missing")))

MINIMAL = """
apps = ["ic"]
platforms = ["BM"]
cores = [1]
"""


def study_from(text: str, path: Path | None = None):
    return parse_study(textwrap.dedent(text), path=path)


def error_of(text: str) -> str:
    with pytest.raises(StudyError) as info:
        study_from(text)
    return str(info.value)


# -- validation ------------------------------------------------------------------------------------------


def test_typo_in_a_top_level_key_names_it_the_closest_and_the_accepted_ones():
    message = error_of(MINIMAL + 'platfroms = ["BM"]\n')
    assert "'platfroms'" in message
    assert "did you mean 'platforms'" in message
    for key in ("apps", "platforms", "cores", "cpu_modes", "devices", "repetition", "workload", "scenarios"):
        assert key in message


def test_typo_in_a_section_key_names_the_section():
    message = error_of(MINIMAL + "[repetition]\nmin_run = 3\n")
    assert "'repetition.min_run'" in message and "did you mean 'min_runs'" in message
    assert "target_ci_halfwidth_pct" in message
    message = error_of(MINIMAL + "[workload.ic]\nreqests = 4\n")
    assert "'workload.ic.reqests'" in message and "did you mean 'requests'" in message
    message = error_of(MINIMAL + "[workload.ic]\noptions = { sed = 1 }\n")
    assert "'workload.ic.options.sed'" in message and "did you mean 'seed'" in message


@pytest.mark.parametrize("extra, bad_value", [
    ('platforms = ["BX"]', "'BX'"),
    ('cpu_modes = ["PINNED"]', "'PINNED'"),
    ('devices = ["TPU"]', "'TPU'"),
    ("cores = [0]", "0"),
    ('cores = "many"', "'many'"),
    ('apps = ["icc"]', "'icc'"),
    ("seed = -1", "-1"),
    ("timeout_s = 0", "0"),
    ('scenarios = ["ic@BM/two/PIN/CPU"]', "'ic@BM/two/PIN/CPU'"),
    ("[repetition]\nconfidence = 1.5", "1.5"),
    ("[repetition]\nmin_runs = 0", "0"),
    ("[repetition]\nmin_runs = 5\nmax_runs = 3", "max_runs = 3"),
    ("[repetition]\ntarget_ci_halfwidth_pct = -2", "-2"),
    ("[repetition]\nkeep_outliers = 'yes'", "'yes'"),
    ('[workload.ic]\nloadgen_scenario = "online"', "'online'"),
    ('[workload.ic]\nbackend = "tensorflow"', "'tensorflow'"),
    ('[workload.ic]\nvariant = "huge"', "'huge'"),
    ('[workload.ic]\nmode = "training"', "'training'"),
    ("[workload.ic]\nrequests = 2.5", "2.5"),
    ('[workload.ic]\ndata = "no/such/folder"', "'no/such/folder'"),
])
def test_bad_values_are_named(extra, bad_value):
    text = MINIMAL + extra + "\n"
    if extra.startswith(("apps", "platforms", "cores", "cpu_modes", "devices")):
        key = extra.split()[0]
        text = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith(key)) + "\n" + extra + "\n"
    message = error_of(text)
    assert bad_value in message, message


def test_unknown_app_gets_a_suggestion():
    message = error_of('apps = ["icc"]\n')
    assert "'icc'" in message and "did you mean 'ic'" in message
    message = error_of(MINIMAL + "[workload.nl]\nrequests = 4\n")
    assert "'nl'" in message and "did you mean 'nlp'" in message


def test_exclusions_need_a_reason_and_a_field():
    assert "reason is missing" in error_of(MINIMAL + '[[exclude]]\napps = ["ic"]\n')
    assert "matches every scenario" in error_of(MINIMAL + '[[exclude]]\nreason = "x"\n')
    assert "'exclude.devics'" in error_of(MINIMAL + '[[exclude]]\ndevics = ["GPU"]\nreason = "x"\n')


def test_toml_syntax_errors_and_missing_apps():
    assert "not valid TOML" in error_of("apps = [\n")
    assert "nothing to run" in error_of('platforms = ["BM"]\n')


def test_error_messages_name_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL + "cors = [1]\n")
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert str(path) in str(info.value) and "did you mean 'cores'" in str(info.value)


# -- expansion and feasibility ---------------------------------------------------------------------------


def test_matrix_expands_every_combination_in_order():
    study = study_from("""
        apps = ["ic", "rs"]
        platforms = ["bm", "CN"]
        cores = [1, 2]
        cpu_modes = ["vnl", "PIN"]
        devices = ["CPU"]
    """)
    plan = study.plan(BIG_HOST)
    keys = [p.key for p in plan.scenarios]
    assert len(keys) == 2 * 2 * 2 * 2
    assert keys[0] == "ic@BM/1/VNL/CPU" and keys[-1] == "rs@CN/2/PIN/CPU"
    assert all(p.feasible for p in plan.scenarios)


def test_infeasible_scenarios_are_listed_with_their_reason():
    study = study_from("""
        apps = ["ic"]
        platforms = ["BM", "VM", "MVM"]
        cores = [2, 4]
        cpu_modes = ["VNL", "PIN"]
        devices = ["CPU", "GPU"]
    """)
    plan = study.plan(SMALL_HOST)
    reasons = {p.key: p.reason for p in plan.scenarios}
    assert len(reasons) == 3 * 2 * 2 * 2                      # nothing silently dropped
    assert reasons["ic@BM/2/VNL/CPU"] is None and reasons["ic@BM/2/PIN/CPU"] is None
    assert "4 cores requested but the host has 2" in reasons["ic@BM/4/VNL/CPU"]
    assert "no GPU" in reasons["ic@BM/2/PIN/GPU"]
    assert "MVM supports only VNL/CPU" in reasons["ic@MVM/2/PIN/CPU"]
    assert "platform VM unavailable: no KVM here" == reasons["ic@VM/2/VNL/CPU"]
    assert [p.key for p in plan.feasible] == ["ic@BM/2/VNL/CPU", "ic@BM/2/PIN/CPU"]
    assert plan.run_estimate() == (2 * (1 + 5), 2 * (1 + 50))     # defaults: 1 warm-up, 5..50 runs


def test_cores_all_and_explicit_scenarios():
    study = study_from("""
        apps = ["ic"]
        cores = "all"
        cpu_modes = ["VNL"]
        scenarios = ["ic@BM/2/PIN/CPU#inference-only", "ic@BM/2/VNL/CPU", "rs@bm/1/pin/cpu"]
        [workload.ic]
        requests = 4
        variant = "tiny"
    """)
    plan = study.plan(SMALL_HOST)
    by_key = {p.key: p for p in plan.scenarios}
    assert list(by_key) == ["ic@BM/2/VNL/CPU", "ic@BM/2/PIN/CPU#inference-only", "rs@BM/1/PIN/CPU"]
    assert by_key["ic@BM/2/VNL/CPU"].origin == "matrix"              # the explicit duplicate is merged
    assert by_key["ic@BM/2/PIN/CPU#inference-only"].scenario.mode == "inference-only"
    assert by_key["ic@BM/2/PIN/CPU#inference-only"].origin == "explicit"
    workload = by_key["ic@BM/2/VNL/CPU"].workload
    assert workload.requests == 4 and workload.variant == "tiny" and workload.batch_size >= 1
    # rs has no [workload.rs]: the app's defaults
    from e2ebench.apps import get_app_class

    assert by_key["rs@BM/1/PIN/CPU"].workload.requests == get_app_class("rs").default_requests
    big = study.plan(BIG_HOST)
    assert "ic@BM/64/VNL/CPU" in {p.key for p in big.scenarios}


def test_modes_multiply_the_matrix_and_exclusions_give_reasons():
    study = study_from("""
        apps = ["ic", "sr"]
        cores = [1]
        cpu_modes = ["VNL"]
        devices = ["CPU", "GPU"]
        [workload.ic]
        mode = ["e2e", "inference-only"]
        [[exclude]]
        apps = ["sr"]
        devices = ["GPU"]
        reason = "SR was evaluated on CPUs only"
    """)
    plan = study.plan(BIG_HOST)
    reasons = {p.key: p.reason for p in plan.scenarios}
    assert set(reasons) == {"ic@BM/1/VNL/CPU", "ic@BM/1/VNL/GPU", "ic@BM/1/VNL/CPU#inference-only",
                            "ic@BM/1/VNL/GPU#inference-only", "sr@BM/1/VNL/CPU", "sr@BM/1/VNL/GPU"}
    assert reasons["sr@BM/1/VNL/GPU"] == "excluded by the study: SR was evaluated on CPUs only"
    assert sum(r is None for r in reasons.values()) == 5


def test_data_paths_are_relative_to_the_study_file(tmp_path):
    (tmp_path / "images").mkdir()
    path = tmp_path / "s.toml"
    path.write_text(MINIMAL + '[workload.ic]\ndata = "images"\n')
    study = load_study(path)
    assert study.workload_for("ic").data == str((tmp_path / "images").resolve())


# -- presets -------------------------------------------------------------------------------------------


def test_presets_load_and_quick_is_the_default():
    for name in PRESETS:
        assert preset_path(name).is_file()
        load_study(preset_path(name))
    assert resolve_study_path(None) == preset_path("quick")
    assert resolve_study_path("paper") == preset_path("paper")
    with pytest.raises(StudyError):
        resolve_study_path("no-such-study.toml")


def test_quick_preset_is_small_and_uses_full_models():
    study = load_study(preset_path("quick"))
    assert {"ic", "rs"} <= set(study.apps)
    assert set(study.cpu_modes) == {"VNL", "PIN"} and study.platforms == ("BM",)
    assert all(study.workload_for(app).variant == "full" for app in study.apps)
    plan = study.plan(HostFacts(cores=2, gpus=0, available_platforms=frozenset({"BM"})))
    assert len(plan.feasible) == len(plan.scenarios) >= 4
    fewest, most = plan.run_estimate()
    assert most <= 60


def test_paper_preset_is_figure_3():
    study = load_study(preset_path("paper"))
    plan = study.plan(BIG_HOST)
    assert len(plan.scenarios) == 5 * 5 * 2 * 2 * 4          # every path of Fig. 3, feasible or not
    feasible = {p.key for p in plan.feasible}
    reasons = {p.key: p.reason for p in plan.scenarios}
    # GPU scenarios are feasible or not by each platform's own rule on the host facts given here (BIG_HOST: one GPU
    # usable by torch), not by what this test machine has
    gpu_platforms = {name for name in ("BM", "CN", "VM", "VMCN")
                     if get_platform_class(name).supports(Deployment.parse(f"{name}/4/PIN/GPU"), BIG_HOST) is None}
    for key in ("nlp@VM/32/PIN/GPU", "rs@VM/8/VNL/GPU", "ic@BM/4/PIN/GPU", "ic@CN/64/VNL/GPU", "nlp@VMCN/16/PIN/GPU"):
        d = Scenario.parse(key).deployment
        assert reasons[key] == get_platform_class(d.platform).supports(d, BIG_HOST)
    # BM, CN, VM, VMCN on CPU: 4 x 5 x 2 x 4 = 160; on GPU 5 x 2 per app, SR excluded (CPUs only) and RS in CN/VMCN
    # excluded, on the platforms whose rule accepts BIG_HOST's GPU; MVM: only MVM/16/VNL/CPU for the 4 apps
    gpu_apps = {"BM": 3, "VM": 3, "CN": 2, "VMCN": 2}
    assert len(feasible) == 160 + sum(5 * 2 * gpu_apps[p] for p in gpu_platforms) + 4
    assert {k for k in feasible if "@MVM/" in k} == {f"{a}@MVM/16/VNL/CPU" for a in ("ic", "sr", "nlp", "rs")}
    assert "CPUs only" in reasons["sr@VM/32/PIN/GPU"]
    assert "containers" in reasons["rs@CN/8/VNL/GPU"]
    assert "MVM/16/VNL/CPU" in reasons["ic@MVM/4/VNL/CPU"]
    assert "MVM supports only VNL/CPU" in reasons["ic@MVM/16/PIN/CPU"]
    assert study.workload_for("ic").requests == 1000 and study.workload_for("sr").requests == 1200
    # on a 2-core host without GPU every scenario is listed, each with a reason
    small = study.plan(SMALL_HOST)
    assert len(small.scenarios) == 400 and all(p.reason for p in small.infeasible)
    # a host with the cores and every platform but no usable GPU: each GPU scenario says its platform's own reason,
    # which names what the host facts say is missing; MVM's is its design limit (no GPU passthrough at all)
    no_gpu = dataclasses.replace(BIG_HOST, gpus=0, gpu_reason="no NVIDIA device node (/dev/nvidia0, ...)")
    reasons = {p.key: p.reason for p in study.plan(no_gpu).scenarios}
    assert reasons["nlp@VM/32/PIN/GPU"].startswith("VM ") and "GPU" in reasons["nlp@VM/32/PIN/GPU"]
    assert reasons["ic@BM/4/PIN/GPU"].startswith("BM ") and "no NVIDIA device node" in reasons["ic@BM/4/PIN/GPU"]
    assert reasons["ic@CN/4/VNL/GPU"].startswith("CN ") and "GPU" in reasons["ic@CN/4/VNL/GPU"]
    assert "Firecracker has no GPU passthrough" in reasons["ic@MVM/16/VNL/GPU"]
    assert all(r is not None for k, r in reasons.items() if k.endswith("/GPU"))


def test_edge_preset_uses_all_cores_and_vanilla_cpus():
    study = load_study(preset_path("edge"))
    assert study.cores == ("all",) and study.cpu_modes == ("VNL",)
    plan = study.plan(HostFacts(cores=4, gpus=0, available_platforms=frozenset(PLATFORMS)))
    assert sorted(p.key for p in plan.feasible) == sorted(
        f"{a}@{p}/4/VNL/CPU" for a in ("ic", "sr") for p in ("BM", "CN", "VM", "VMCN"))


# -- identity --------------------------------------------------------------------------------------------


def test_identity_ignores_formatting_but_not_the_matrix(tmp_path):
    a = study_from(MINIMAL)
    b = study_from("# a comment\n" + MINIMAL.replace("cores = [1]", "cores   =   [ 1 ]") + 'store = "elsewhere.sqlite"\n')
    c = study_from(MINIMAL.replace("cores = [1]", "cores = [1, 2]"))
    d = study_from(MINIMAL + "[repetition]\nmin_runs = 7\n")
    assert a.config_sha256 == b.config_sha256
    assert len({a.config_sha256, c.config_sha256, d.config_sha256}) == 3


def test_open_study_resumes_by_identity_and_fresh_starts_a_new_one(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(MINIMAL)
    study = load_study(path)
    plan = study.plan(SMALL_HOST)
    with Store(tmp_path / "r.sqlite") as store:
        first, resumed = open_study(store, study, plan)
        assert not resumed
        again, resumed = open_study(store, load_study(path), plan)
        assert again == first and resumed
        fresh, resumed = open_study(store, study, plan, fresh=True)
        assert fresh != first and not resumed
        assert open_study(store, study, plan)[0] == fresh            # the latest one is resumed
        path.write_text(MINIMAL.replace("cores = [1]", "cores = [2]"))
        edited, resumed = open_study(store, load_study(path), load_study(path).plan(SMALL_HOST))
        assert edited not in (first, fresh) and not resumed
        record = store.get_study(first)
        assert record["source"] == str(path.resolve())
        assert record["config"]["identity"]["config_sha256"] == study.config_sha256
        assert [p["scenario"] for p in record["config"]["plan"]] == ["ic@BM/1/VNL/CPU", "ic@BM/1/PIN/CPU"]


def test_round_order_is_seeded_and_varies_between_rounds():
    keys = [f"ic@BM/{n}/VNL/CPU" for n in range(1, 9)]
    assert round_order(keys, seed=0, round_index=3) == round_order(list(reversed(keys)), seed=0, round_index=3)
    orders = {tuple(round_order(keys, seed=0, round_index=r)) for r in range(10)}
    assert len(orders) > 5
    assert round_order(keys, 0, 0) != round_order(keys, 1, 0)
    expected = sorted(keys)
    random.Random("0:0").shuffle(expected)
    assert round_order(keys, 0, 0) == expected


# -- the runner's view of a store ----------------------------------------------------------------------


def stored_result(scenario: str, e2e_s: float | None, error: str | None = None) -> RunResult:
    """A RunResult as the runner stores it (conftest's builder on RunResult's constructors), 2 s of wall time."""
    return make_result(scenario, e2e_s, error=error, started_at=1.0, finished_at=3.0)


def test_runner_reads_the_store_flags_outliers_and_has_nothing_left_to_do(tmp_path):
    from e2ebench.study_runner import StudyRunner, summarize_study

    study = study_from("""
        name = "from-store"
        apps = ["ic"]
        cores = [1]
        cpu_modes = ["VNL", "PIN"]
        [repetition]
        warmup_runs = 1
        min_runs = 3
        max_runs = 12
        max_consecutive_failures = 2
    """)
    plan = study.plan(SMALL_HOST)
    vnl, pin = "ic@BM/1/VNL/CPU", "ic@BM/1/PIN/CPU"
    values = [1.000, 1.002, 0.999, 1.001, 0.998, 1.000, 1.003, 0.999, 1.001, 1.6]    # the last is an outlier
    with Store(tmp_path / "s.sqlite") as store:
        study_id, _ = open_study(store, study, plan)
        store.add_run(stored_result(vnl, 1.2), study_id, phase="warmup", seq=0)
        for seq, value in enumerate(values):
            store.add_run(stored_result(vnl, value), study_id, phase="measure", seq=seq)
        store.add_run(stored_result(pin, 1.0), study_id, phase="warmup", seq=0)
        store.add_run(stored_result(pin, None, "worker failed: boom"), study_id, phase="measure", seq=0)
        store.add_run(stored_result(pin, None, "worker failed: boom again"), study_id, phase="measure", seq=1)

        runner = StudyRunner(plan, store, study_id)
        by_key = {s.key: s for s in runner.states}
        assert by_key[vnl].outlier_count == 1 and by_key[vnl].status == "target"
        assert 1.6 not in by_key[vnl].values(keep_outliers=False) and 1.6 in by_key[vnl].values(keep_outliers=True)
        flagged = [r["e2e_s"] for r in store.runs(study_id=study_id, scenario=vnl) if r["outlier"]]
        assert flagged == [1.6]                                   # kept in the store with outlier = 1
        assert by_key[pin].status == "abandoned" and by_key[pin].measure_next_seq == 2
        assert "failed 2 runs in a row" in by_key[pin].abandon_reason and "boom again" in by_key[pin].abandon_reason
        outcome = runner.run()                                    # nothing is missing: no run is made
        assert outcome.runs_this_session == 0 and outcome.status == "incomplete" and outcome.exit_code == 1
        assert store.get_study(study_id)["status"] == "incomplete"

        # kept outliers widen the interval past the target: the study would need more runs
        assert StudyRunner(plan, store, study_id, keep_outliers=True).states[0].status == "active"
        # a retry gives the abandoned scenario another chance
        assert {s.key: s.status for s in StudyRunner(plan, store, study_id, retry_abandoned=True).states}[pin] == "active"

        rows = {s.scenario: s for s in summarize_study(store, study_id)}
        assert rows[vnl].n == 9 and rows[vnl].outliers == 1 and rows[vnl].runs_ok == 10 and rows[vnl].status == "target"
        assert rows[vnl].mean_s == pytest.approx(sum(values[:-1]) / 9)
        assert rows[vnl].phases_s["infer"] == pytest.approx(0.6 * sum(values[:-1]) / 9)
        assert rows[vnl].ci_halfwidth_pct < 2.0
        kept = {s.scenario: s for s in summarize_study(store, study_id, keep_outliers=True)}[vnl]
        assert kept.n == 10 and kept.mean_s == pytest.approx(sum(values) / 10)
        assert rows[pin].status == "abandoned" and rows[pin].failed == 2 and "boom again" in rows[pin].reason


def test_presets_are_package_data_for_wheel_installs():
    """`src/e2ebench/studies` links to the repository's `studies/`, and pyproject ships it in the wheel."""
    from importlib import resources
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "studies/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["e2ebench"]
    for name in PRESETS:
        packaged = resources.files("e2ebench").joinpath("studies").joinpath(f"{name}.toml")
        assert packaged.is_file(), name
        assert parse_study(packaged.read_text(), Path(f"{name}.toml")).name == name


# -- the page-cache state ------------------------------------------------------------------------------


def test_cache_multiplies_the_matrix_without_cold_inference_only():
    study = study_from("""
        apps = ["ic", "sr"]
        cores = [1]
        cpu_modes = ["PIN"]
        [workload.ic]
        mode = ["e2e", "inference-only"]
        cache = ["warm", "cold"]
        [workload.sr]
        cache = "cold"
    """)
    keys = [p.key for p in study.plan(BIG_HOST).scenarios]
    assert keys == ["ic@BM/1/PIN/CPU", "ic@BM/1/PIN/CPU#cold-cache", "ic@BM/1/PIN/CPU#inference-only",
                    "sr@BM/1/PIN/CPU#cold-cache"]
    assert study.workload_for("ic").caches == ("warm", "cold")
    assert [p.scenario.cache for p in study.plan(BIG_HOST).scenarios] == ["warm", "cold", "warm", "cold"]
    assert study.plan(BIG_HOST).as_dict()["scenarios"][1]["cache"] == "cold"


@pytest.mark.parametrize(
    "value, names",
    [
        ('"bogus"', ["workload.ic.cache", "'bogus'", "accepted: warm, cold"]),
        ('["warm", "colt"]', ["workload.ic.cache", "'colt'", "did you mean 'cold'?", "accepted: warm, cold"]),
        ("[]", ["workload.ic.cache is empty", "warm, cold"]),
        ("3", ["workload.ic.cache", "3"]),
    ],
)
def test_bad_cache_values_are_named(value, names):
    message = error_of(MINIMAL + f"[workload.ic]\ncache = {value}\n")
    assert "\n" not in message
    for name in names:
        assert name in message


def test_a_cold_cache_needs_an_e2e_mode():
    message = error_of(MINIMAL + '[workload.ic]\nmode = "inference-only"\ncache = ["warm", "cold"]\n')
    assert "workload.ic.cache" in message and "workload.ic.mode" in message
    assert "cold cache has no effect in inference-only mode: no io is timed" in message
    message = error_of(MINIMAL + 'scenarios = ["ic@BM/1/PIN/CPU#inference-only#cold-cache"]\n')
    assert "scenarios has the bad value" in message and "no io is timed" in message


def test_explicit_cold_scenarios_and_exclusions_by_cache():
    study = study_from("""
        apps = ["ic"]
        platforms = ["BM", "CN"]
        cores = [1]
        cpu_modes = ["VNL"]
        scenarios = ["ic@CN/1/VNL/CPU#cold-cache", "ic@BM/1/VNL/CPU#warm-cache"]
        [workload.ic]
        cache = ["warm", "cold"]
        [[exclude]]
        platforms = ["CN"]
        caches = ["cold"]
        reason = "no cold CN runs in the matrix"
    """)
    plan = study.plan(BIG_HOST)
    reasons = {(p.key, p.origin): p.reason for p in plan.scenarios}
    assert reasons == {
        ("ic@BM/1/VNL/CPU", "matrix"): None,
        ("ic@BM/1/VNL/CPU#cold-cache", "matrix"): None,
        ("ic@CN/1/VNL/CPU", "matrix"): None,
        ("ic@CN/1/VNL/CPU#cold-cache", "matrix"): "excluded by the study: no cold CN runs in the matrix",
    }
    assert study.config["scenarios"] == ["ic@CN/1/VNL/CPU#cold-cache", "ic@BM/1/VNL/CPU"]
    assert study.config["exclude"][0]["caches"] == ["cold"]
    message = error_of(MINIMAL + '[[exclude]]\ncaches = ["hot"]\nreason = "r"\n')
    assert "exclude[0].caches" in message and "'hot'" in message and "warm, cold" in message


def test_identity_changes_only_when_a_study_uses_cold():
    base = study_from(MINIMAL + "[workload.ic]\nrequests = 8\n")
    warm = study_from(MINIMAL + '[workload.ic]\nrequests = 8\ncache = "warm"\n')
    cold = study_from(MINIMAL + '[workload.ic]\nrequests = 8\ncache = ["warm", "cold"]\n')
    assert base.config_sha256 == warm.config_sha256               # the default, spelled out: the same study
    assert cold.config_sha256 != base.config_sha256
    assert "caches" not in base.config["workload"]["ic"]
    assert cold.config["workload"]["ic"]["caches"] == ["warm", "cold"]
    excluded = study_from(MINIMAL + '[[exclude]]\ncaches = ["cold"]\nreason = "r"\n')
    assert excluded.config_sha256 != study_from(MINIMAL).config_sha256


# Identity hashes of the shipped presets: a change here makes every stored study of them a new study.
PRESET_SHA256 = {
    "quick": "f9aae4de7c1349134c3b0fa957e1a35156f5e0020b408439274a6ca6609ed340",
    "paper": "772618b8fa81bdea148003f1266cd6aa28b6c2c384855a6cd13ac8e3ec16f239",
    "edge": "d9e5f57c8a14aee55cb3700df663b5a2cae0f03ec0fcb07aa7072bdf007d3cd4",
}


@pytest.mark.parametrize("name", sorted(PRESET_SHA256))
def test_preset_identity_is_unchanged_by_the_cache_key(name):
    assert load_study(preset_path(name)).config_sha256 == PRESET_SHA256[name]


def test_resume_keeps_cold_and_warm_runs_apart(tmp_path):
    from e2ebench.study_runner import StudyRunner, summarize_study

    study = study_from("""
        apps = ["ic"]
        cores = [1]
        cpu_modes = ["PIN"]
        [workload.ic]
        cache = ["warm", "cold"]
        [repetition]
        warmup_runs = 0
        min_runs = 2
        max_runs = 2
    """)
    plan = study.plan(SMALL_HOST)
    warm, cold = "ic@BM/1/PIN/CPU", "ic@BM/1/PIN/CPU#cold-cache"
    with Store(tmp_path / "s.sqlite") as store:
        study_id, _ = open_study(store, study, plan)
        for seq in range(2):
            store.add_run(stored_result(warm, 1.0 + seq / 100), study_id, seq=seq)
        store.add_run(stored_result(cold, 1.5), study_id, seq=0)
        by_key = {s.key: s for s in StudyRunner(plan, store, study_id).states}
        assert by_key[warm].status == "target" or by_key[warm].status == "max-runs"
        assert by_key[cold].status == "active" and by_key[cold].measure_next_seq == 1
        assert len(by_key[cold].measured) == 1 and len(by_key[warm].measured) == 2
        rows = {s.scenario: s for s in summarize_study(store, study_id)}
        assert rows[cold].cache == "cold" and rows[warm].cache == "warm" and rows[cold].runs_ok == 1
