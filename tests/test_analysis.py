"""Findings from constructed RunResults written into a real SQLite store (no stand-ins).

``make_result`` builds a RunResult with the constructor the worker uses; ``fill_store`` writes runs with
``Store.add_run`` into a real file.  The other report tests import these two builders.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_result as make_run_result
from e2ebench import analysis
from e2ebench.analysis import ScenarioKey
from e2ebench.result import RunResult
from e2ebench.store import Store

PHASE_ORDER = ("io", "pre", "infer", "post", "other")


def make_result(app: str, deployment: str, phases_s: dict[str, float], mode: str = "e2e", requests: int = 64,
                host_cpus: int = 2, emulated: bool = False, cold_start_s: float = 3.0, started_at: float | None = None,
                hostname: str = "testhost", cache: str = "warm") -> RunResult:
    """A RunResult from ``RunResult.success`` (through conftest's builder) whose phases are ``phases_s``."""
    platform, cores, cpu_mode, device = deployment.split("/")
    cores_n = int(cores)
    phases = {k: float(phases_s.get(k, 0.0)) for k in PHASE_ORDER}
    e2e = phases["infer"] if mode == "inference-only" else sum(phases.values())
    started = started_at if started_at is not None else time.time()
    scenario = f"{app}@{deployment}" + ("" if mode == "e2e" else f"#{mode}") + ("" if cache == "warm" else f"#{cache}-cache")
    cold = {"provision_s": 0.1 * cold_start_s, "process_start_s": 0.05 * cold_start_s,
            "import_s": 0.5 * cold_start_s, "model_load_s": 0.25 * cold_start_s,
            "first_inference_s": 0.1 * cold_start_s}
    latency = {"p50": 500 * e2e / requests, "p90": 800 * e2e / requests, "p99": 1000 * e2e / requests,
               "mean": 500 * e2e / requests, "max": 1100 * e2e / requests}
    return make_run_result(
        scenario, e2e, phases_s=phases, requests=requests, started_at=started, host_cpus=host_cpus,
        batch_size=8, latency_ms=latency, service_time_ms=dict(latency),
        # Offline: every request issued at once, so LoadGen's latency runs up to the whole window
        loadgen_latency_ms={"p50": 500 * e2e, "p90": 900 * e2e, "p99": 990 * e2e, "mean": 500 * e2e, "max": 1000 * e2e},
        cold_start_s=cold_start_s, cold_start=cold, emulated=emulated,
        environment={"cpu_model": "Test CPU", "host_cpus": host_cpus, "kernel": "6.1.0-test", "machine": "x86_64",
                     "hostname": hostname, "python": "3.11.7",
                     "libraries": {"torch": "2.13.0", "numpy": "2.4.6"}, "cgroup_version": 1,
                     "in_container": platform in ("CN", "VMCN")},
        loadgen={"result_valid": True, "log_dir": "/tmp/loadgen"},
        platform_info={"platform": platform, "pinned_cpus": list(range(cores_n)) if cpu_mode == "PIN" else None},
        finished_at=started + e2e + cold_start_s,
    )


def fill_store(store: Store, study_id: str, spec: dict[str, dict], runs: int = 5, seed: int = 0,
               noise: float = 0.01, app: str = "ic", host_cpus: int = 2, mode: str = "e2e",
               emulated: bool = False, cache: str = "warm") -> None:
    """``spec``: deployment -> mean phase seconds; ``runs`` runs each with relative Gaussian noise ``noise``."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000.0
    seq: dict[str, int] = {}
    for i in range(runs):
        for deployment, phases in spec.items():
            noisy = {k: max(0.0, v * (1.0 + noise * rng.standard_normal())) for k, v in phases.items()}
            result = make_result(app, deployment, noisy, mode=mode, host_cpus=host_cpus, emulated=emulated,
                                 started_at=t0 + 100 * i, cache=cache)
            s = seq.get(result.scenario, 0)
            store.add_run(result, study_id=study_id, seq=s)
            seq[result.scenario] = s + 1


def phases(io=0.02, pre=0.6, infer=0.35, post=0.01, other=0.02) -> dict[str, float]:
    return {"io": io, "pre": pre, "infer": infer, "post": post, "other": other}


def scale(p: dict[str, float], factor: float) -> dict[str, float]:
    return {k: v * factor for k, v in p.items()}


@pytest.fixture()
def store(tmp_path: Path):
    with Store(tmp_path / "results.sqlite") as s:
        yield s


def _findings(store: Store, study_id: str, **kw) -> analysis.Findings:
    return analysis.analyse(analysis.load_study(store, study_id), **kw)


def test_grouping_excludes_failed_warmup_and_outliers(store):
    sid = store.create_study("grouping")
    fill_store(store, sid, {"BM/2/PIN/CPU": phases()}, runs=4)
    warm = make_result("ic", "BM/2/PIN/CPU", phases())
    store.add_run(warm, study_id=sid, phase="warmup", seq=0)
    failed = make_result("ic", "BM/2/PIN/CPU", phases())
    failed.error = "worker failed: <boom>"
    store.add_run(failed, study_id=sid, seq=10)
    outlier = make_result("ic", "BM/2/PIN/CPU", scale(phases(), 3.0))
    outlier_id = store.add_run(outlier, study_id=sid, seq=11)
    store.mark_outliers({outlier_id: True})

    data = analysis.load_study(store, sid)
    key = ScenarioKey("ic", "BM", 2, "PIN", "CPU")
    assert list(data.scenarios) == [key]
    stats = data.scenarios[key]
    assert stats.n == 4
    assert outlier_id not in stats.run_ids
    assert data.excluded == {"phase warmup": 1, "status failed": 1, "outlier": 1}
    assert stats.e2e_s.mean == pytest.approx(sum(phases().values()), rel=0.03)
    assert stats.phase_share("pre") == pytest.approx(0.6, rel=0.05)
    assert stats.host_cores == 2

    with_outliers = analysis.load_study(store, sid, include_outliers=True)
    assert with_outliers.scenarios[key].n == 5


def test_emulated_runs_are_separate_scenarios(store):
    sid = store.create_study("emu")
    fill_store(store, sid, {"BM/1/VNL/CPU": phases(), "CN/1/VNL/CPU": phases()}, runs=3)
    fill_store(store, sid, {"VM/1/VNL/CPU": scale(phases(), 200)}, runs=3, emulated=True)
    data = analysis.load_study(store, sid)
    native = analysis.analyse(data)
    assert all(not k.emulated for k in native.scenarios)
    emulated = analysis.analyse(data, emulated=True)
    assert [k.platform for k in emulated.scenarios] == ["VM"]
    # no BM among emulated runs -> no overhead computed against the native BM
    assert emulated.overheads == []
    assert [o.subject.platform for o in native.overheads] == ["CN"]


def test_overhead_vs_bm_per_phase_adds_up_and_is_significant(store):
    sid = store.create_study("overhead")
    bm = phases()
    cn = dict(bm, pre=bm["pre"] * 1.2)           # +0.12 s of pre -> +12% of 1.0 s E2E
    fill_store(store, sid, {"BM/2/VNL/CPU": bm, "CN/2/VNL/CPU": cn, "BM/1/VNL/CPU": bm,
                            "CN/1/VNL/CPU": dict(bm)}, runs=8, noise=0.005)
    f = _findings(store, sid)
    by = {o.subject.deployment: o for o in f.overheads}
    o2 = by["CN/2/VNL/CPU"]
    assert o2.baseline == ScenarioKey("ic", "BM", 2, "VNL", "CPU")
    assert o2.e2e.relative_pct == pytest.approx(12.0, abs=1.5)
    assert o2.e2e.significant is True
    lo, hi = o2.e2e.relative_ci_pct
    assert lo < o2.e2e.relative_pct < hi
    assert o2.largest_phase == "pre"
    assert o2.phases["pre"].contribution_pct == pytest.approx(12.0, abs=1.5)
    total = sum(p.contribution_pct for p in o2.phases.values())
    assert total == pytest.approx(o2.e2e.relative_pct, rel=0.02)
    assert o2.phases["infer"].comparison.significant in (False, True)
    assert abs(o2.phases["infer"].contribution_pct) < 1.0
    o1 = by["CN/1/VNL/CPU"]
    assert abs(o1.e2e.relative_pct) < 1.5


def test_scale_up_knee_at_known_core_count(store):
    sid = store.create_study("knee")
    base = phases()                               # 1.0 s at 1 core
    spec = {"BM/1/PIN/CPU": scale(base, 4.0), "BM/2/PIN/CPU": scale(base, 2.1), "BM/4/PIN/CPU": scale(base, 1.03),
            "BM/8/PIN/CPU": scale(base, 1.0), "BM/16/PIN/CPU": scale(base, 1.2)}
    fill_store(store, sid, spec, runs=5, noise=0.005, host_cpus=16)
    f = _findings(store, sid)
    [knee] = f.knees
    assert (knee.best_cores, knee.knee_cores) == (8, 4)
    assert knee.knee_vs_best is not None and knee.knee_vs_best.relative_pct == pytest.approx(3.0, abs=1.0)
    assert knee.slower_beyond_best == [16]
    f1 = _findings(store, sid, knee_tolerance_pct=1.0)
    assert f1.knees[0].knee_cores == 8


def test_pinning_clearly_helps_clearly_not_and_too_little_data(store):
    sid = store.create_study("pinning")
    base = phases()
    spec = {
        "CN/1/VNL/CPU": scale(base, 1.15), "CN/1/PIN/CPU": base,           # clearly helps (~13%)
        "VM/1/VNL/CPU": base, "VM/1/PIN/CPU": base,                        # no difference
        "VMCN/1/VNL/CPU": base, "VMCN/1/PIN/CPU": scale(base, 1.2),        # hurts
    }
    fill_store(store, sid, spec, runs=6, noise=0.01)
    fill_store(store, sid, {"MVM/2/VNL/CPU": base, "BM/2/VNL/CPU": scale(base, 1.3), "BM/2/PIN/CPU": base},
               runs=1, seed=3)
    f = _findings(store, sid)
    verdicts = {(p.pinned.platform, p.pinned.cores): p for p in f.pinning}
    cn = verdicts[("CN", 1)]
    assert cn.verdict == analysis.PINNING_HELPS
    assert cn.gain_pct == pytest.approx(100 * 0.15 / 1.15, abs=1.5)
    assert cn.gain_ci_pct[0] > 0
    assert verdicts[("VM", 1)].verdict == analysis.PINNING_NO_DIFFERENCE
    assert verdicts[("VMCN", 1)].verdict == analysis.PINNING_HURTS
    assert verdicts[("BM", 2)].verdict == analysis.PINNING_NOT_ENOUGH_DATA
    assert verdicts[("BM", 2)].comparison.p_value is None


def test_gpu_payoff_bounded_by_preprocessing(store):
    sid = store.create_study("gpu")
    cpu = phases(io=0.02, pre=0.61, infer=0.35, post=0.01, other=0.01)
    gpu = dict(cpu, infer=0.035)                                        # 10x faster DNN
    fill_store(store, sid, {"BM/4/PIN/CPU": cpu, "BM/4/PIN/GPU": gpu}, runs=5, noise=0.005, host_cpus=4)
    f = _findings(store, sid)
    [payoff] = f.gpu
    assert payoff.gpu == ScenarioKey("ic", "BM", 4, "PIN", "GPU")
    assert payoff.bounding_phase == "pre"
    assert payoff.inference_speedup[0] == pytest.approx(10.0, rel=0.05)
    assert payoff.inference_source == "infer phase of the E2E runs"
    # Amdahl: 1 / (0.65 + 0.35/10) = 1.46x measured E2E speedup
    assert payoff.e2e_speedup[0] == pytest.approx(1.0 / 0.685, rel=0.03)
    assert payoff.amdahl_predicted_speedup == pytest.approx(payoff.e2e_speedup[0], rel=0.03)
    assert payoff.amdahl_bound == pytest.approx(1.0 / 0.65, rel=0.03)
    assert payoff.e2e_speedup[1][0] < payoff.e2e_speedup[0] < payoff.e2e_speedup[1][1]


def test_amdahl_bound_without_gpu_data_and_inference_only_runs(store):
    sid = store.create_study("amdahl")
    cpu = phases(io=0.02, pre=0.61, infer=0.35, post=0.01, other=0.01)
    fill_store(store, sid, {"BM/2/PIN/CPU": cpu}, runs=3)
    f = _findings(store, sid)
    [payoff] = f.gpu
    assert payoff.gpu is None and payoff.e2e_speedup is None
    assert payoff.amdahl_bound == pytest.approx(1.0 / 0.65, rel=0.03)
    assert payoff.bounding_phase == "pre"
    assert payoff.bounding_phase_share == pytest.approx(0.61, rel=0.03)

    sid2 = store.create_study("inference-only")
    fill_store(store, sid2, {"BM/2/PIN/CPU": cpu, "BM/2/PIN/GPU": dict(cpu, infer=0.07)}, runs=3)
    fill_store(store, sid2, {"BM/2/PIN/CPU": cpu, "BM/2/PIN/GPU": dict(cpu, infer=0.05)}, runs=3,
               mode="inference-only")
    f2 = _findings(store, sid2)
    payoff2 = next(g for g in f2.gpu if g.gpu is not None)
    assert payoff2.inference_source == "inference-only runs"
    assert payoff2.inference_speedup[0] == pytest.approx(7.0, rel=0.05)


def test_chr_and_idle_host_cores(store):
    sid = store.create_study("chr")
    base = phases()
    spec = {
        "BM/1/VNL/CPU": base, "BM/2/VNL/CPU": scale(base, 0.6), "BM/4/VNL/CPU": scale(base, 0.4),
        "CN/1/VNL/CPU": scale(base, 1.30), "CN/2/VNL/CPU": scale(base, 0.6 * 1.10),
        "CN/4/VNL/CPU": scale(base, 0.4 * 1.20),
    }
    fill_store(store, sid, spec, runs=5, noise=0.005, host_cpus=4)
    f = _findings(store, sid)
    chrs = {p.key.cores: p.chr for p in f.chr.points}
    assert chrs == {1: 0.25, 2: 0.5, 4: 1.0}
    assert all(p.host_cores == 4 and p.overhead is not None for p in f.chr.points)
    rho, p_value, n = f.chr.correlation["VNL"]
    assert n == 3 and rho == pytest.approx(-0.5)
    [idle] = f.idle_cores
    assert idle.full == ScenarioKey("ic", "CN", 4, "VNL", "CPU")
    assert idle.idle == ScenarioKey("ic", "CN", 2, "VNL", "CPU")
    assert idle.worse_without_idle_cores is True
    assert idle.full_overhead.relative_pct == pytest.approx(20.0, abs=1.5)


def test_cold_start_and_to_dict_is_json(store):
    import json

    sid = store.create_study("cold")
    fill_store(store, sid, {"BM/1/VNL/CPU": phases(), "CN/1/VNL/CPU": phases()}, runs=2)
    f = _findings(store, sid)
    platforms = [c.platform for c in f.cold_starts]
    assert platforms == ["BM", "CN"]
    assert f.cold_starts[0].total_s.mean == pytest.approx(3.0)
    assert set(f.cold_starts[0].parts_s) == set(analysis.COLD_START_PARTS)
    text = json.dumps(f.to_dict(), allow_nan=False)
    assert "overhead_vs_bm" in text


def test_comparison_with_single_run_has_no_test_or_interval():
    cmp = analysis.compare("e2e_s", [1.1], [1.0, 1.01])
    assert cmp.p_value is None and cmp.significant is None
    assert cmp.ratio == pytest.approx(1.1 / 1.005)
    assert cmp.ratio_ci is None and cmp.difference_ci is None
    same = analysis.compare("e2e_s", [1.0, 1.0], [1.0, 1.0])
    assert same.p_value == 1.0 and same.significant is False
    assert math.isclose(same.relative_pct, 0.0)


# ---------------------------------------------------------------------------------------------
# overhead model (scaling fits)

from e2ebench import overhead_model  # noqa: E402


def test_amdahl_fit_recovers_known_parameters_and_predicts(store):
    sid = store.create_study("amdahl-fit")
    spec = {}
    for cores in (1, 2, 4, 8):
        total = 0.2 + 1.6 / cores                        # serial 0.2 s, parallel 1.6 s
        spec[f"BM/{cores}/PIN/CPU"] = scale(phases(), total)
    fill_store(store, sid, spec, runs=5, noise=0.01, host_cpus=16)
    data = analysis.load_study(store, sid)
    [model] = overhead_model.fit_scaling_models(data.scenarios, data.host_cores)
    amdahl = model.fits["e2e"][overhead_model.AMDAHL]
    assert amdahl.params["serial_s"] == pytest.approx(0.2, rel=0.1)
    assert amdahl.params["parallel_s"] == pytest.approx(1.6, rel=0.05)
    assert amdahl.r2 > 0.99 and not amdahl.saturated
    assert amdahl.core_levels == [1, 2, 4, 8] and amdahl.n_runs == 20
    # per-phase fits exist too (pre scales with the same law here)
    assert model.fits["pre"][overhead_model.AMDAHL].params["parallel_s"] == pytest.approx(0.6 * 1.6, rel=0.05)
    cores = [p.cores for p in model.predictions]
    assert cores == [1, 2, 4, 8, 16]
    p16 = next(p for p in model.predictions if p.cores == 16)
    assert p16.predicted and p16.extrapolated and not p16.measured
    assert p16.value_s == pytest.approx(0.3, rel=0.1)
    assert p16.ci_s[0] < p16.value_s < p16.ci_s[1]
    assert p16.pi_s[0] <= p16.ci_s[0] and p16.pi_s[1] >= p16.ci_s[1]
    p4 = next(p for p in model.predictions if p.cores == 4)
    assert p4.measured and not p4.extrapolated and p4.predicted


def test_usl_preferred_when_time_rises_past_a_core_count(store):
    sid = store.create_study("usl-fit")
    spec = {}
    for cores in (1, 2, 4, 8, 16):
        total = 2.0 * (1 + 0.05 * (cores - 1) + 0.01 * cores * (cores - 1)) / cores
        spec[f"BM/{cores}/VNL/CPU"] = scale(phases(), total / sum(phases().values()))
    fill_store(store, sid, spec, runs=4, noise=0.005, host_cpus=16)
    data = analysis.load_study(store, sid)
    [model] = overhead_model.fit_scaling_models(data.scenarios, data.host_cores)
    assert model.preferred["e2e"] == overhead_model.USL
    usl = model.fits["e2e"][overhead_model.USL]
    assert usl.params["kappa"] == pytest.approx(0.01, rel=0.2)
    assert usl.params["sigma"] == pytest.approx(0.05, abs=0.02)
    assert usl.r2 > model.fits["e2e"][overhead_model.AMDAHL].r2


def test_model_needs_two_core_counts_and_is_saturated_with_two(store):
    sid = store.create_study("two-levels")
    fill_store(store, sid, {"BM/1/PIN/CPU": scale(phases(), 1.9), "BM/2/PIN/CPU": phases(),
                            "CN/2/PIN/CPU": phases()}, runs=3)
    data = analysis.load_study(store, sid)
    models = overhead_model.fit_scaling_models(data.scenarios, data.host_cores)
    assert [(m.platform, m.cpu_mode) for m in models] == [("BM", "PIN")]   # CN has one core count: no fit
    fits = models[0].fits["e2e"]
    assert set(fits) == {overhead_model.AMDAHL}                             # USL needs three core counts
    assert fits[overhead_model.AMDAHL].saturated
    json.dumps(models[0].to_dict(), allow_nan=False)


def test_predicted_overhead_from_two_models(store):
    sid = store.create_study("predicted-overhead")
    spec = {}
    for cores in (1, 2, 4):
        spec[f"BM/{cores}/PIN/CPU"] = scale(phases(), 0.2 + 1.6 / cores)
        spec[f"CN/{cores}/PIN/CPU"] = scale(phases(), 1.1 * (0.2 + 1.6 / cores))
    fill_store(store, sid, spec, runs=3, noise=0.002, host_cpus=8)
    data = analysis.load_study(store, sid)
    models = overhead_model.fit_scaling_models(data.scenarios, data.host_cores)
    assert overhead_model.predicted_overhead(models, "ic", "CN", "PIN", "CPU", 8) == pytest.approx(10.0, abs=1.0)
    assert overhead_model.predicted_overhead(models, "ic", "VM", "PIN", "CPU", 8) is None


# ---------------------------------------------------------------------------------------------
# The page-cache state: cold-cache runs are scenarios of their own, compared only with cold-cache ones


def test_cold_cache_runs_are_separate_scenarios_labelled_as_such(store):
    sid = store.create_study("cache")
    fill_store(store, sid, {"BM/2/PIN/CPU": phases()}, runs=3)
    fill_store(store, sid, {"BM/2/PIN/CPU": phases(io=0.3)}, runs=3, cache="cold")
    data = analysis.load_study(store, sid)
    warm, cold = ScenarioKey("ic", "BM", 2, "PIN", "CPU"), ScenarioKey("ic", "BM", 2, "PIN", "CPU", cache="cold")
    assert list(data.scenarios) == [warm, cold]
    assert cold.scenario == "ic@BM/2/PIN/CPU#cold-cache" and cold.label == "ic@BM/2/PIN/CPU#cold-cache"
    assert warm.scenario == "ic@BM/2/PIN/CPU" and warm.cache_title == "" and cold.cache_title == "cold cache"
    assert data.scenarios[cold].phases_s["io"].mean == pytest.approx(0.3, rel=0.05)
    assert data.scenarios[warm].phases_s["io"].mean == pytest.approx(0.02, rel=0.05)
    assert cold.to_dict()["cache"] == "cold"
    assert analysis.scenario_text("ic", "BM", 2, "PIN", "CPU", cache="cold") == "ic@BM/2/PIN/CPU#cold-cache"


def test_comparisons_pair_only_the_same_cache_state(store):
    sid = store.create_study("cache-pairs")
    base = phases()
    fill_store(store, sid, {"BM/1/VNL/CPU": base, "BM/2/VNL/CPU": scale(base, 0.6), "CN/2/VNL/CPU": scale(base, 0.66),
                            "CN/2/PIN/CPU": scale(base, 0.6)}, runs=4, noise=0.005)
    cold = phases(io=0.4)
    # cold: a CN twice as slow to read, no BM at 1 core, and no CN PIN
    fill_store(store, sid, {"BM/2/VNL/CPU": scale(cold, 0.6), "CN/2/VNL/CPU": dict(scale(cold, 0.6), io=0.48),
                            "CN/1/VNL/CPU": cold}, runs=4, noise=0.005, cache="cold")
    f = _findings(store, sid)
    # cold CN/1 has no cold BM/1 and is not paired with the warm one; warm CN/2/PIN has no BM/2/PIN at all
    pairs = {(o.subject.scenario, o.baseline.scenario) for o in f.overheads}
    assert pairs == {("ic@CN/2/VNL/CPU", "ic@BM/2/VNL/CPU"), ("ic@CN/2/VNL/CPU#cold-cache", "ic@BM/2/VNL/CPU#cold-cache")}
    cold_overhead = next(o for o in f.overheads if o.subject.cache == "cold")
    assert cold_overhead.largest_phase == "io"
    assert cold_overhead.phases["io"].comparison.ratio == pytest.approx(2.0, rel=0.05)
    # pinning: only warm CN has both modes
    assert [(p.pinned.scenario, p.vanilla.scenario) for p in f.pinning] == [("ic@CN/2/PIN/CPU", "ic@CN/2/VNL/CPU")]
    # knees: BM warm (1, 2 cores) and CN cold (1, 2 cores) are separate groups; nothing mixes the states
    assert sorted((k.platform, k.cache, [c for c, _ in k.points]) for k in f.knees) == [
        ("BM", "warm", [1, 2]), ("CN", "cold", [1, 2])]
    assert next(k for k in f.knees if k.cache == "cold").key.scenario == "ic@CN/2/VNL/CPU#cold-cache"
    # scaling models group by cache state too
    models = overhead_model.fit_scaling_models(f.scenarios, 2)
    assert sorted((m.platform, m.cache) for m in models) == [("BM", "warm"), ("CN", "cold")]
    assert next(m for m in models if m.cache == "cold").label == "ic@CN/*/VNL/CPU#cold-cache"


def test_gpu_payoff_of_a_cold_cache_scenario_uses_the_inference_only_runs(store):
    sid = store.create_study("cache-gpu")
    cpu = phases(io=0.3, pre=0.3, infer=0.35, post=0.01, other=0.01)
    fill_store(store, sid, {"BM/2/PIN/CPU": cpu, "BM/2/PIN/GPU": dict(cpu, infer=0.05)}, runs=3, cache="cold")
    fill_store(store, sid, {"BM/2/PIN/CPU": cpu, "BM/2/PIN/GPU": dict(cpu, infer=0.05)}, runs=3,
               mode="inference-only")
    f = _findings(store, sid)
    [payoff] = [g for g in f.gpu if g.gpu is not None]
    assert payoff.cpu.cache == "cold" and payoff.gpu.cache == "cold"
    assert payoff.inference_source == "inference-only runs"
    assert payoff.inference_speedup[0] == pytest.approx(7.0, rel=0.05)


def test_findings_for_one_cache_state(store):
    sid = store.create_study("cache-view")
    base = phases()
    for cache in ("warm", "cold"):
        fill_store(store, sid, {"BM/2/VNL/CPU": base, "CN/2/VNL/CPU": scale(base, 1.1)}, runs=3, cache=cache)
    fill_store(store, sid, {"BM/2/VNL/CPU": base}, runs=3, mode="inference-only")
    f = _findings(store, sid)
    assert f.caches == ["warm", "cold"] and len(f.overheads) == 2
    warm, cold = f.for_cache("warm"), f.for_cache("cold")
    assert (warm.cache, cold.cache) == ("warm", "cold")
    assert {k.scenario for k in cold.scenarios} == {"ic@BM/2/VNL/CPU#cold-cache", "ic@CN/2/VNL/CPU#cold-cache",
                                                    "ic@BM/2/VNL/CPU#inference-only"}
    assert [o.subject.scenario for o in cold.overheads] == ["ic@CN/2/VNL/CPU#cold-cache"]
    assert [o.subject.scenario for o in warm.overheads] == ["ic@CN/2/VNL/CPU"]
    json.dumps(cold.to_dict(), allow_nan=False)


def test_a_version_1_store_reads_in_the_analysis(tmp_path):
    from test_store import _v1_store

    path = tmp_path / "v1.sqlite"
    _v1_store(path)
    with Store(path) as s:
        data = analysis.load_study(s, "old")
    [key] = data.scenarios
    assert key.cache == "warm" and key.scenario == "ic@BM/2/PIN/CPU"
