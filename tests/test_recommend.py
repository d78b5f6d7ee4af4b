"""Recommendation rules on constructed studies whose right answer is known (real SQLite store, real analysis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2ebench import analysis, recommend
from e2ebench.scenario import Scenario
from e2ebench.store import Store
from test_analysis import fill_store, phases, scale

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def store(tmp_path: Path):
    with Store(tmp_path / "results.sqlite") as s:
        yield s


def _recs(store: Store, spec: dict, runs: int = 5, host_cpus: int = 2, noise: float = 0.01,
          extra: list[tuple[dict, dict]] = (), **kw) -> recommend.RecommendationSet:
    sid = store.create_study("t")
    fill_store(store, sid, spec, runs=runs, host_cpus=host_cpus, noise=noise)
    for spec2, kw2 in extra:
        fill_store(store, sid, spec2, host_cpus=host_cpus, **kw2)
    findings = analysis.analyse(analysis.load_study(store, sid), **kw)
    return recommend.recommend(findings)


def _practice(recs: recommend.RecommendationSet, number: int, app: str = "ic") -> recommend.Recommendation:
    return next(r for r in recs.practices if r.app == app and r.practice == number)


def _assert_parse(scenarios: list[str]) -> None:
    for text in scenarios:
        assert str(Scenario.parse(text)) == text


def test_pinning_clearly_helps_is_in_the_answer(store):
    base = phases()
    recs = _recs(store, {"CN/2/VNL/CPU": scale(base, 1.15), "CN/2/PIN/CPU": base})
    [answer] = recs.answers
    assert answer.best == "ic@CN/2/PIN/CPU"
    assert answer.cpu_mode == "PIN"
    assert "pinning saves 13." in answer.text and "on CN at 2 cores" in answer.text
    assert answer.text.startswith("ic on CPU: ")


def test_pinning_clearly_does_not_help(store):
    base = phases()
    recs = _recs(store, {"CN/2/VNL/CPU": base, "CN/2/PIN/CPU": base}, noise=0.01)
    [answer] = recs.answers
    assert "pinning made no significant difference on CN at 2 cores" in answer.text
    recs_hurt = _recs(store, {"VM/2/VNL/CPU": base, "VM/2/PIN/CPU": scale(base, 1.2)})
    [answer] = recs_hurt.answers
    assert answer.cpu_mode == "VNL"
    assert "pinning costs 20." in answer.text


def test_pinning_with_too_little_data(store):
    base = phases()
    recs = _recs(store, {"CN/2/VNL/CPU": scale(base, 1.15), "CN/2/PIN/CPU": base}, runs=1)
    [answer] = recs.answers
    assert "not enough runs to test" in answer.text and "n=1/1" in answer.text
    # one core count only: scale-up unknown, and the scenarios to add name real, parseable deployments
    p2 = _practice(recs, 2)
    assert p2.verdict == recommend.NOT_ENOUGH_DATA
    assert "ic@CN/1/PIN/CPU" in p2.runs_to_add and "ic@CN/1/VNL/CPU" in p2.runs_to_add
    _assert_parse(p2.runs_to_add + answer.runs_to_add)


def test_knee_at_known_core_count(store):
    base = phases()
    spec = {"BM/1/PIN/CPU": scale(base, 4.0), "BM/2/PIN/CPU": scale(base, 2.1), "BM/4/PIN/CPU": scale(base, 1.03),
            "BM/8/PIN/CPU": scale(base, 1.0), "BM/16/PIN/CPU": scale(base, 1.2)}
    recs = _recs(store, spec, host_cpus=16, noise=0.005)
    [answer] = recs.answers
    assert answer.cores == 4
    assert "4 cores is within 5% of the best (8) on BM PIN" in answer.text
    p2 = _practice(recs, 2)
    assert p2.verdict == recommend.EVIDENCE
    assert "4 cores" in p2.text and "best (8 cores" in p2.text
    assert "more cores were significantly slower (16)" in p2.text


def test_gpu_bounded_by_preprocessing_measured(store):
    cpu = phases(io=0.02, pre=0.61, infer=0.35, post=0.01, other=0.01)
    gpu = dict(cpu, infer=0.035)
    recs = _recs(store, {"BM/4/PIN/CPU": cpu, "BM/4/PIN/GPU": gpu}, host_cpus=4, noise=0.005)
    p6 = _practice(recs, 6)
    assert p6.verdict == recommend.SUPPORTED
    assert "GPU E2E speedup 1.4" in p6.text and "bounded by pre-processing" in p6.text
    assert "inference 10.0" in p6.text or "inference 9.9" in p6.text
    [answer] = recs.answers
    assert answer.best == "ic@BM/4/PIN/GPU"
    assert answer.gpu == "marginal"


def test_gpu_amdahl_bound_without_gpu_data(store):
    cpu = phases(io=0.02, pre=0.61, infer=0.35, post=0.01, other=0.01)
    recs = _recs(store, {"BM/2/PIN/CPU": cpu}, runs=3)
    [answer] = recs.answers
    assert "a GPU would cut E2E by at most 1.54x because pre-processing is 61% of E2E" in answer.text
    assert answer.gpu == "unlikely"
    p6 = _practice(recs, 6)
    assert p6.verdict == recommend.SUPPORTED
    assert p6.runs_to_add == ["ic@BM/2/PIN/GPU"]
    p5 = _practice(recs, 5)
    assert p5.verdict == recommend.SUPPORTED and "Inference is 35% of E2E" in p5.text
    assert p5.runs_to_add == ["ic@BM/2/PIN/CPU#inference-only"]
    _assert_parse(p5.runs_to_add)


def test_gpu_worth_it_when_inference_dominates(store):
    cpu = phases(io=0.01, pre=0.05, infer=0.9, post=0.01, other=0.01)
    gpu = dict(cpu, infer=0.09)
    recs = _recs(store, {"BM/2/PIN/CPU": cpu, "BM/2/PIN/GPU": gpu}, noise=0.005)
    assert _practice(recs, 6).verdict == recommend.EVIDENCE
    assert recs.answers[0].gpu == "yes"


def test_idle_host_cores_supported(store):
    base = phases()
    spec = {"BM/2/VNL/CPU": scale(base, 0.6), "BM/4/VNL/CPU": scale(base, 0.4),
            "CN/2/VNL/CPU": scale(base, 0.6 * 1.02), "CN/4/VNL/CPU": scale(base, 0.4 * 1.20)}
    recs = _recs(store, spec, host_cpus=4, noise=0.005)
    p3 = _practice(recs, 3)
    assert p3.verdict == recommend.SUPPORTED
    assert "with all 4 host cores" in p3.text and "at 2 cores (idle host cores)" in p3.text


def test_idle_host_cores_not_enough_data_names_scenarios(store):
    recs = _recs(store, {"BM/2/VNL/CPU": phases(), "CN/2/VNL/CPU": phases()}, host_cpus=4)
    p3 = _practice(recs, 3)
    assert p3.verdict == recommend.NOT_ENOUGH_DATA
    assert set(p3.runs_to_add) == {"ic@CN/4/VNL/CPU", "ic@BM/4/VNL/CPU"}
    _assert_parse(p3.runs_to_add)


def test_container_least_overhead_supported_and_contradicted(store):
    base = phases()
    recs = _recs(store, {"BM/2/PIN/CPU": base, "CN/2/PIN/CPU": scale(base, 1.01), "VM/2/PIN/CPU": scale(base, 1.10)},
                 noise=0.005)
    assert _practice(recs, 7).verdict == recommend.SUPPORTED
    recs = _recs(store, {"BM/2/PIN/CPU": base, "CN/2/PIN/CPU": scale(base, 1.15), "VM/2/PIN/CPU": scale(base, 1.02)},
                 noise=0.005)
    p7 = _practice(recs, 7)
    assert p7.verdict == recommend.CONTRADICTED
    assert "VM/2/PIN/CPU" in p7.text
    recs = _recs(store, {"BM/2/PIN/CPU": base, "CN/2/PIN/CPU": base})
    p7 = _practice(recs, 7)
    assert p7.verdict == recommend.EVIDENCE
    assert "ic@VM/2/PIN/CPU" in p7.runs_to_add and "ic@MVM/2/VNL/CPU" in p7.runs_to_add
    recs = _recs(store, {"BM/2/PIN/CPU": base})
    p7 = _practice(recs, 7)
    assert p7.verdict == recommend.NOT_ENOUGH_DATA and p7.runs_to_add == ["ic@CN/2/PIN/CPU"]


def test_every_practice_is_evaluated_and_emulated_is_labelled(store):
    sid = store.create_study("emu")
    fill_store(store, sid, {"VM/1/VNL/CPU": phases(), "VM/2/VNL/CPU": scale(phases(), 0.6)}, runs=3, emulated=True)
    data = analysis.load_study(store, sid)
    native = recommend.recommend(analysis.analyse(data))
    assert native.answers == [] and native.practices == []
    emulated = recommend.recommend(analysis.analyse(data, emulated=True))
    assert [r.practice for r in emulated.practices] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(r.verdict in recommend.VERDICTS for r in emulated.practices)
    assert all(r.text.startswith("[EMULATED] ") for r in emulated.practices)
    assert emulated.answers[0].text.startswith("[EMULATED] ")
    json.dumps(emulated.to_dict(), allow_nan=False)


def test_recommend_cli_json_and_terminal(store, tmp_path):
    base = phases()
    sid = store.create_study("cli <b>study</b>")
    fill_store(store, sid, {"BM/1/VNL/CPU": scale(base, 1.9), "BM/2/VNL/CPU": base, "CN/1/VNL/CPU": scale(base, 2.0),
                            "CN/2/VNL/CPU": scale(base, 1.05), "BM/2/PIN/CPU": scale(base, 0.97),
                            "CN/2/PIN/CPU": scale(base, 0.98)}, runs=3)
    argv = [sys.executable, "-c", "from e2ebench.cli import main; main()", "recommend", "--store", str(store.path)]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(argv + ["--json"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload["study"]["id"] == sid
    assert payload["native"]["answers"][0]["app"] == "ic"
    assert len(payload["native"]["practices"]) == 8
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "cli <b>study</b>" in proc.stdout             # rich markup escaped, shown literally
    assert "ic on CPU:" in proc.stdout and "best practice" in proc.stdout
    proc = subprocess.run(argv + ["--study", "no-such-study"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=env)
    assert proc.returncode == 2 and "no study" in proc.stderr


# -- the page-cache state ------------------------------------------------------------------------------


def test_advice_reads_warm_runs_and_storage_reads_the_cold_twin(store):
    sid = store.create_study("cache")
    warm = phases(io=0.02)
    cold = phases(io=0.30)
    fill_store(store, sid, {"BM/2/PIN/CPU": warm, "CN/2/PIN/CPU": scale(warm, 1.01)}, runs=4, noise=0.005)
    fill_store(store, sid, {"BM/2/PIN/CPU": cold, "CN/2/PIN/CPU": dict(cold, io=0.45)}, runs=4, noise=0.005,
               cache="cold")
    recs = recommend.recommend(analysis.analyse(analysis.load_study(store, sid)))
    [answer] = recs.answers
    assert answer.best == "ic@BM/2/PIN/CPU" and not answer.text.startswith("[")
    assert "cold" not in answer.text
    p4 = _practice(recs, 4)
    assert "2.0% of E2E on BM/2/PIN/CPU" in p4.text
    assert "With a cold page cache (ic@BM/2/PIN/CPU#cold-cache" in p4.text and ", 15.0" in p4.text and "x the warm-cache io" in p4.text
    assert "Storage matters for this application when its inputs are not in the page cache." in p4.text
    assert "With a cold cache, the largest io change vs BM: CN/2/PIN/CPU +50." in p4.text
    whats = [e["what"] for e in p4.evidence]
    assert "io, cold vs warm cache" in whats and "io vs BM, cold cache" in whats
    assert p4.runs_to_add == []
    # the other practices compare warm with warm only
    p7 = _practice(recs, 7)
    assert all("cold" not in e["scenario"] for e in p7.evidence)


def test_storage_suggests_the_cold_twin(store):
    recs = _recs(store, {"BM/2/PIN/CPU": phases()}, runs=3)
    p4 = _practice(recs, 4)
    assert p4.runs_to_add == ["ic@BM/2/PIN/CPU#cold-cache"]
    assert "Add ic@BM/2/PIN/CPU#cold-cache to time io from storage" in p4.text
    _assert_parse(p4.runs_to_add)


def test_an_app_measured_only_with_a_cold_cache_is_advised_on_that_and_says_so(store):
    sid = store.create_study("cold-only")
    fill_store(store, sid, {"BM/2/PIN/CPU": phases(io=0.3)}, runs=3, cache="cold")
    recs = recommend.recommend(analysis.analyse(analysis.load_study(store, sid)))
    [answer] = recs.answers
    assert answer.text.startswith("[cold cache] ic on CPU: ") and answer.best == "ic@BM/2/PIN/CPU#cold-cache"
    assert all(r.text.startswith("[cold cache] ") for r in recs.practices)
    p5, p6 = _practice(recs, 5), _practice(recs, 6)
    assert p5.runs_to_add == ["ic@BM/2/PIN/CPU#inference-only"]          # no io timed: no cache state
    assert p6.runs_to_add == ["ic@BM/2/PIN/GPU#cold-cache"]
    assert "ic@BM/2/PIN/GPU#cold-cache" in answer.runs_to_add
    for r in recs.practices + [answer]:
        _assert_parse(r.runs_to_add)
        assert all(t.endswith(("#cold-cache", "#inference-only")) for t in r.runs_to_add)
    p2 = _practice(recs, 2)
    assert p2.runs_to_add and all(t in p2.text for t in p2.runs_to_add)    # the text names them as listed
    json.dumps(recs.to_dict(), allow_nan=False)
