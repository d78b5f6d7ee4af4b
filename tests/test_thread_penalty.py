"""The thread-policy penalty (issue 13, parts 3 and 5): framework-default thread pools vs sized ones, on constructed
results written into a real SQLite store and read back through the analysis, the advice and the report.

Every E2E value is set exactly (no noise) so that the penalty, its CI and Welch's p can be computed by hand here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from e2ebench import analysis, recommend
from e2ebench.report.html import build_report
from e2ebench.result import RunResult
from e2ebench.store import Store
from test_analysis import make_result

HOST = 2


@pytest.fixture()
def store(tmp_path: Path):
    with Store(tmp_path / "results.sqlite") as s:
        yield s


def _result(deployment: str, e2e: float, policy: str, throttled_s: float = 0.0, nr_throttled: int = 0,
            involuntary: int = 10, start: float = 1_700_000_000.0) -> RunResult:
    """A RunResult of ``deployment`` whose E2E is exactly ``e2e`` s, made with thread policy ``policy``."""
    cores = int(deployment.split("/")[1])
    r = make_result("ic", deployment, {"pre": 0.6 * e2e, "infer": 0.4 * e2e}, host_cpus=HOST, started_at=start)
    r.e2e_s = e2e
    torch_threads = HOST if policy == "framework-default" else (int(policy) if policy.isdigit() else cores)
    r.thread_policy = policy
    r.thread_pools = {"torch_intra_op": torch_threads, "torch_inter_op": torch_threads, "opencv": torch_threads,
                         "onnxruntime_intra_op": None, "openmp": torch_threads, "process_threads": torch_threads + 3,
                         "os_cpu_count": HOST, "effective_cpus": HOST, "cpu_quota_cores": float(cores)}
    r.counters.update(throttled_time_s=throttled_s, nr_throttled=nr_throttled,
                         involuntary_ctx_switches=involuntary)
    return r


def _add(store: Store, sid: str, deployment: str, policy: str, values: list[float], **kw) -> None:
    for i, v in enumerate(values):
        store.add_run(_result(deployment, v, policy, start=1_700_000_000.0 + 100 * i, **kw), study_id=sid)


SIZED = [1.00, 1.02, 0.98, 1.00]
SLOWER = [1.20, 1.22, 1.18, 1.20]            # +20% exactly in the mean
EQUAL = [1.01, 0.99, 1.00, 1.00]


def _findings(store: Store, sid: str) -> analysis.Findings:
    return analysis.analyse(analysis.load_study(store, sid))


def _hand_ratio_ci(subject: list[float], baseline: list[float]) -> tuple[float, float]:
    """The delta-method 95% CI of mean(subject) / mean(baseline), Welch-Satterthwaite df, written out by hand."""
    ms, mb = sum(subject) / len(subject), sum(baseline) / len(baseline)
    vs = sum((x - ms) ** 2 for x in subject) / (len(subject) - 1)
    vb = sum((x - mb) ** 2 for x in baseline) / (len(baseline) - 1)
    a, b = vs / ms ** 2 / len(subject), vb / mb ** 2 / len(baseline)
    df = (a + b) ** 2 / (a ** 2 / (len(subject) - 1) + b ** 2 / (len(baseline) - 1))
    t = scipy_stats.t.ppf(0.975, df)
    se = math.sqrt(a + b)
    return ms / mb * math.exp(-t * se), ms / mb * math.exp(t * se)


def test_framework_default_clearly_slower_with_throttling_is_a_penalty(store):
    sid = store.create_study("threads")
    _add(store, sid, "CN/1/VNL/CPU", "sized", SIZED, throttled_s=0.0, nr_throttled=0, involuntary=10)
    _add(store, sid, "CN/1/VNL/CPU", "framework-default", SLOWER, throttled_s=0.5, nr_throttled=40, involuntary=900)
    f = _findings(store, sid)

    assert f.policies == ["sized", "framework-default"]
    [t] = f.thread_policies
    assert t.key == analysis.ScenarioKey("ic", "CN", 1, "VNL", "CPU")
    assert t.policy == "framework-default" and t.cores == 1
    assert t.sized.e2e_s.mean == pytest.approx(1.00) and t.other.e2e_s.mean == pytest.approx(1.20)
    assert t.penalty_pct == pytest.approx(20.0)
    low, high = _hand_ratio_ci(SLOWER, SIZED)
    assert t.penalty_ci_pct == pytest.approx((100 * (low - 1), 100 * (high - 1)))
    assert 0 < t.penalty_ci_pct[0] < 20.0 < t.penalty_ci_pct[1]
    assert t.comparison.p_value == pytest.approx(scipy_stats.ttest_ind(SLOWER, SIZED, equal_var=False).pvalue)
    assert t.comparison.p_value < 0.05
    assert t.verdict == analysis.THREADS_PENALTY
    # the counters that explain it, per policy
    assert t.other.counters["throttled_time_s"].mean == pytest.approx(0.5)
    assert t.other.counters["nr_throttled"].mean == pytest.approx(40)
    assert t.other.counters["involuntary_ctx_switches"].mean == pytest.approx(900)
    assert t.sized.counters["throttled_time_s"].mean == 0.0
    # the pools the framework default chose against the deployment's one core
    assert t.other.pools["torch_intra_op"] == HOST and t.sized.pools["torch_intra_op"] == 1
    assert t.other.pools["os_cpu_count"] == HOST and "onnxruntime_intra_op" not in t.other.pools
    assert t.other.oversubscribed(t.cores) == {"torch_intra_op": 2, "openmp": 2, "opencv": 2}
    assert t.sized.oversubscribed(t.cores) == {}
    # every other finding reads the sized scenarios only
    assert list(f.scenarios) == [analysis.ScenarioKey("ic", "CN", 1, "VNL", "CPU")]
    payload = json.dumps(f.to_dict(), allow_nan=False)
    assert '"thread_policy_penalties"' in payload


def test_equal_policies_show_no_effect(store):
    sid = store.create_study("threads")
    _add(store, sid, "BM/1/VNL/CPU", "sized", SIZED)
    _add(store, sid, "BM/1/VNL/CPU", "framework-default", EQUAL)
    [t] = _findings(store, sid).thread_policies
    assert t.penalty_pct == pytest.approx(0.0, abs=1e-9)
    assert t.comparison.p_value > 0.05
    assert t.penalty_ci_pct[0] < 0 < t.penalty_ci_pct[1]
    assert t.verdict == analysis.THREADS_NO_EFFECT


def test_one_run_each_is_not_enough_data(store):
    sid = store.create_study("threads")
    _add(store, sid, "CN/1/VNL/CPU", "sized", [1.0])
    _add(store, sid, "CN/1/VNL/CPU", "framework-default", [1.3])
    [t] = _findings(store, sid).thread_policies
    assert t.penalty_pct == pytest.approx(30.0)
    assert t.penalty_ci_pct is None and t.comparison.p_value is None
    assert t.verdict == analysis.THREADS_NOT_ENOUGH_DATA


def test_numeric_policy_and_rows_per_deployment(store):
    sid = store.create_study("threads")
    _add(store, sid, "CN/1/VNL/CPU", "sized", SIZED)
    _add(store, sid, "CN/1/VNL/CPU", "framework-default", SLOWER)
    _add(store, sid, "CN/1/VNL/CPU", "4", [1.40, 1.42, 1.38, 1.40])
    _add(store, sid, "CN/1/PIN/CPU", "sized", SIZED)
    _add(store, sid, "CN/1/PIN/CPU", "framework-default", EQUAL)
    _add(store, sid, "BM/1/VNL/CPU", "framework-default", SLOWER)      # no sized twin: no row
    f = _findings(store, sid)
    rows = [(t.key.deployment, t.policy, t.verdict) for t in f.thread_policies]
    assert rows == [("CN/1/VNL/CPU", "framework-default", "penalty"), ("CN/1/VNL/CPU", "4", "penalty"),
                    ("CN/1/PIN/CPU", "framework-default", "no effect shown")]
    four = f.thread_policies[1]
    assert four.penalty_pct == pytest.approx(40.0) and four.other.pools["torch_intra_op"] == 4
    assert f.policies == ["sized", "framework-default", "4"]
    # the scenario without a sized twin is left out of the other findings too
    assert all(k.thread_policy == "sized" for k in f.scenarios)


def test_runs_without_a_policy_are_sized(store):
    sid = store.create_study("old")
    r = make_result("ic", "CN/1/VNL/CPU", {"pre": 0.6, "infer": 0.4}).as_dict()
    del r["thread_policy"]                   # a result written before thread policies existed
    store.add_run(r, study_id=sid)
    f = _findings(store, sid)
    assert [k.thread_policy for k in f.scenarios] == ["sized"]
    assert f.thread_policies == [] and f.policies == ["sized"]
    assert analysis.thread_policy_of({"result": r}) == "sized"


# -- the eighth best practice ------------------------------------------------------------------------------


def _practice_8(store: Store, sid: str) -> recommend.Recommendation:
    recs = recommend.recommend(_findings(store, sid))
    assert [r.practice for r in recs.practices] == [1, 2, 3, 4, 5, 6, 7, 8]
    json.dumps(recs.to_dict(), allow_nan=False)
    return recs.practices[-1]


def test_practice_8_supported_by_a_penalty(store):
    sid = store.create_study("threads")
    _add(store, sid, "CN/1/VNL/CPU", "sized", SIZED)
    _add(store, sid, "CN/1/VNL/CPU", "framework-default", SLOWER, throttled_s=0.5, nr_throttled=40, involuntary=900)
    p = _practice_8(store, sid)
    assert p.title == recommend.BEST_PRACTICES[8] == "Size thread pools to the deployment's CPU limit."
    assert p.verdict == recommend.SUPPORTED
    assert "CN/1/VNL/CPU: framework-default (torch intra-op 2 threads on 1 core)" in p.text
    assert "+20.0% ± 3.1 vs sized" in p.text and "throttled 0.5 vs 0 s per run, 900 vs 10 involuntary switches" in p.text
    assert "significantly slower on CN/1/VNL/CPU (framework-default)" in p.text
    [ev] = p.evidence
    assert ev["relative_pct"] == pytest.approx(20.0) and ev["verdict"] == "penalty" and ev["cores"] == 1
    assert ev["counters"]["throttled_time_s"]["mean"] == pytest.approx(0.5)


def test_practice_8_no_effect_shown(store):
    sid = store.create_study("threads")
    _add(store, sid, "CN/1/VNL/CPU", "sized", SIZED)
    _add(store, sid, "CN/1/VNL/CPU", "framework-default", EQUAL)
    p = _practice_8(store, sid)
    assert p.verdict == recommend.NOT_SHOWN
    assert "No effect shown on this host (2 CPUs visible to the libraries)" in p.text


def test_practice_8_not_enough_data(store):
    sid = store.create_study("threads")
    _add(store, sid, "CN/1/VNL/CPU", "sized", [1.0])
    _add(store, sid, "CN/1/VNL/CPU", "framework-default", [1.3])
    p = _practice_8(store, sid)
    assert p.verdict == recommend.NOT_ENOUGH_DATA
    assert p.text.startswith("not enough data — fewer than 2 runs per policy; run `e2ebench study threads`")
    assert "+30.0% (no CI)" in p.text

    sid = store.create_study("sized only")
    _add(store, sid, "CN/1/VNL/CPU", "sized", SIZED)
    p = _practice_8(store, sid)
    assert p.verdict == recommend.NOT_ENOUGH_DATA
    assert p.text.startswith("not enough data — run `e2ebench study threads`") and p.evidence == []


def test_practice_8_contradicted_when_the_framework_default_is_faster(store):
    sid = store.create_study("threads")
    _add(store, sid, "CN/1/VNL/CPU", "sized", SLOWER)
    _add(store, sid, "CN/1/VNL/CPU", "framework-default", SIZED)
    p = _practice_8(store, sid)
    assert _findings(store, sid).thread_policies[0].verdict == analysis.THREADS_FASTER
    assert p.verdict == recommend.CONTRADICTED


# -- the report ----------------------------------------------------------------------------------------------


def test_report_section_and_figure_only_with_two_policies(store, tmp_path):
    sid = store.create_study("threads <b>x</b>")
    _add(store, sid, "CN/1/VNL/CPU", "sized", SIZED)
    _add(store, sid, "CN/1/VNL/CPU", "framework-default", SLOWER, throttled_s=0.5, nr_throttled=40, involuntary=900)
    _add(store, sid, "CN/1/VNL/CPU", "<i>evil</i>", EQUAL)          # a hostile policy string in the store
    out = build_report(store, sid, tmp_path / "report")
    html = out.html_path.read_text()
    assert 'id="threads"' in html and "Thread pools vs the CPU limit" in html
    assert "E2E by thread policy per platform and core count" in html
    names = [f.name for f in out.figures]
    assert "e2e-by-thread-policy-ic" in names
    # the figure is in the thread section, not repeated in the general one
    assert html.count('alt="ic: E2E by thread policy') == 1
    section = html[html.index('id="threads"'):html.index('id="model"')]
    assert "+20.0%" in section and "0 → 0.5" in section and "10 → 900" in section
    assert "torch intra-op 2" in section and "badge v-penalty" in section
    assert "&lt;i&gt;evil&lt;/i&gt;" in section and "<i>evil</i>" not in html
    assert "threads <b>x</b>" not in html
    assert "Size thread pools to the deployment&#x27;s CPU limit." in html
    rows = out.summary["native"]["findings"]["thread_policy_penalties"]
    assert [r["thread_policy"] for r in rows] == ["framework-default", "<i>evil</i>"]
    assert rows[0]["penalty_pct"] == pytest.approx(20.0) and rows[0]["verdict"] == "penalty"

    sid = store.create_study("sized only")
    _add(store, sid, "CN/1/VNL/CPU", "sized", SIZED)
    out = build_report(store, sid, tmp_path / "report2")
    html = out.html_path.read_text()
    assert 'id="threads"' not in html and "E2E by thread policy" not in html
    assert not any(f.name.startswith("e2e-by-thread-policy") for f in out.figures)
