"""Deployment advice from measurements: the paper's seven best practices, and an eighth, evaluated on a study's data.

For every application the study measured, :func:`recommend` returns

* one **deployment answer** — which platform, how many cores, pinned or not, GPU or not — in one sentence
  with its numbers ("ic on CPU: 8 cores is within 5% of the best (16); pinning saves 12% ± 3% on CN; a GPU
  would cut E2E by at most 1.4x because pre-processing is 61% of E2E"), and
* the seven **best practices** of the paper's section VI, and an eighth from issue 13 ("size thread pools to the
  deployment's CPU limit": framework-default pools vs sized ones), each with a verdict (*supported*,
  *contradicted*, *no effect shown*, *evidence* for informational ones, or *not enough data*), a sentence
  with the measured numbers and 95% CIs, the evidence behind it, and — when data is missing — the
  scenarios to add to a study, written ``app@PLATFORM/CORES/CPUMODE/DEVICE``.

The advice is about the warm page cache (the default state, a service's steady state): an application's
answer and practices are evaluated on its warm-cache scenarios, and only on its cold-cache ones (``#cold-cache``,
texts prefixed ``[cold cache]``) when it has no warm one.  Practice 4 (storage) also reads the cold-cache
twins, which time ``io`` from storage rather than from the page cache.

Every number comes from :mod:`e2ebench.analysis`; nothing here measures or guesses.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from typing import Iterable

from e2ebench.analysis import (
    PHASE_TITLES,
    PINNING_HELPS,
    PINNING_HURTS,
    PINNING_NO_DIFFERENCE,
    POOL_TITLES,
    THREADS_FASTER,
    THREADS_NOT_ENOUGH_DATA,
    THREADS_PENALTY,
    Comparison,
    Findings,
    GpuPayoff,
    PolicyStats,
    ScenarioKey,
    ScenarioStats,
    ThreadPolicyFinding,
    ci_bounds,
    compare_stats,
    fmt_pct,
    fmt_ratio,
    fmt_s,
    scenario_text,
    significance_text,
    summary_dict,
)
from e2ebench.platforms import BASELINE_PLATFORM, platform_classes, platform_rank
from e2ebench.scenario import NotationError, Scenario

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOT_SHOWN = "no effect shown"
EVIDENCE = "evidence"
NOT_ENOUGH_DATA = "not enough data"
VERDICTS = (SUPPORTED, CONTRADICTED, NOT_SHOWN, EVIDENCE, NOT_ENOUGH_DATA)

BEST_PRACTICES: dict[int, str] = {
    1: "Scrutinize the resource use of all three phases before choosing an execution platform.",
    2: "Investigate how scale-up changes E2E time to find the best number of cores (16 is a good start).",
    3: "Do not scale up to all CPU cores of a host: a few idle cores mitigate the virtualization overhead.",
    4: "High-performance storage improves DL applications with many small input files.",
    5: "Benchmark the E2E inference time, not only the inference operation.",
    6: "If pre- and post-processing dominate E2E, a GPU is not necessarily helpful; more cores may pay off better.",
    7: "Containers impose the least overhead (suggested for the Edge).",
    8: "Size thread pools to the deployment's CPU limit.",
}

IO_SHARE_MATTERS = 0.10        # io >= 10% of E2E: storage is worth looking at
PRE_POST_DOMINATE = 0.50       # non-inference >= 50% of E2E: "pre/post dominate"
GPU_WORTH_IT_SPEEDUP = 2.0     # an E2E speedup below this is "not necessarily helpful"
INFER_ONLY_MISLEADS = 0.90     # infer < 90% of E2E: an inference-only benchmark misses > 10% of the time


@dataclasses.dataclass
class Recommendation:
    """One best practice evaluated for one application."""

    practice: int
    title: str
    app: str
    verdict: str
    text: str
    evidence: list[dict] = dataclasses.field(default_factory=list)
    runs_to_add: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DeploymentAnswer:
    """The plain answer for one application: where and how to deploy it, and why."""

    app: str
    text: str
    best: str | None                     # fastest measured scenario
    cores: int | None                    # recommended cores (knee)
    platform: str | None
    cpu_mode: str | None
    gpu: str       # yes (>= 2x, significant) | marginal (significant, < 2x) | no | unclear | unlikely (Amdahl < 2x) | unknown
    evidence: list[dict] = dataclasses.field(default_factory=list)
    runs_to_add: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RecommendationSet:
    emulated: bool
    answers: list[DeploymentAnswer]
    practices: list[Recommendation]
    note: str = ""

    def for_app(self, app: str) -> list[Recommendation]:
        return [r for r in self.practices if r.app == app]

    def to_dict(self) -> dict:
        return {"emulated": self.emulated, "note": self.note, "answers": [a.to_dict() for a in self.answers],
                "practices": [r.to_dict() for r in self.practices]}


# ---------------------------------------------------------------------------------------------
# helpers


def _evidence(stats: ScenarioStats, what: str = "E2E") -> dict:
    s = stats.e2e_s
    return {"scenario": stats.key.label, "what": what, "mean_s": s.mean, "ci_s": ci_bounds(s),
            "n": s.n}


def _comparison_evidence(subject: ScenarioKey, baseline: ScenarioKey, cmp: Comparison, what: str) -> dict:
    return {"scenario": subject.label, "baseline": baseline.label, "what": what,
            "relative_pct": cmp.relative_pct, "ci_pct": cmp.relative_ci_pct, "p_value": cmp.p_value,
            "n": [cmp.subject_n, cmp.baseline_n]}


def _scenario(app: str, platform: str, cores: int, cpu_mode: str, device: str, mode: str = "e2e",
              cache: str = "warm") -> str | None:
    try:
        return scenario_text(app, platform, cores, cpu_mode, device, mode, cache)
    except NotationError:
        return None


def _unique(items: Iterable[str | None]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item and item not in out:
            out.append(item)
    return out


def candidate_cores(host_cores: int | None, measured: Iterable[int] = ()) -> list[int]:
    """Core counts worth measuring: powers of two up to the host's cores and the host's cores themselves.

    Without a known host: the measured counts' halves and doubles.
    """
    measured = sorted(set(measured))
    if host_cores:
        out = {c for c in (1, 2, 4, 8, 16, 32, 64, 128, 256) if c <= host_cores} | {host_cores}
    else:
        out = {max(1, c // 2) for c in measured} | {c * 2 for c in measured} | {1}
    return sorted(out)


def _neighbour_cores(host_cores: int | None, measured: Iterable[int], count: int = 2) -> list[int]:
    """Unmeasured core counts nearest to the measured ones (the paper's 16 first when the host has it)."""
    measured = sorted(set(measured))
    options = [c for c in candidate_cores(host_cores, measured) if c not in measured]
    if not options:
        return []
    centre = measured[len(measured) // 2] if measured else 1
    options.sort(key=lambda c: (0 if c == 16 else 1, abs(math.log2(c) - math.log2(centre)), c))
    return sorted(options[:count])


def _phase_name(phase: str | None) -> str:
    return PHASE_TITLES.get(phase or "", phase or "?")


def _reference(findings: Findings, app: str, device: str | None = "CPU") -> ScenarioStats | None:
    """The app's reference E2E scenario: the fastest BM one (the fastest of any platform without BM)."""
    cands = [s for k, s in findings.scenarios.items() if k.app == app and k.mode == "e2e"
             and (device is None or k.device == device) and s.phases_s]
    if not cands:
        return None
    bm = [s for s in cands if s.key.platform == BASELINE_PLATFORM]
    return min(bm or cands, key=lambda s: s.e2e_s.mean)


def _app_scenarios(findings: Findings, app: str, mode: str | None = "e2e") -> list[ScenarioStats]:
    return [s for k, s in findings.scenarios.items() if k.app == app and (mode is None or k.mode == mode)]


def _pct_of_e2e(stats: ScenarioStats, phase: str) -> float:
    share = stats.phase_share(phase)
    return 100.0 * share if share is not None else math.nan


def _default_deployment(findings: Findings, app: str) -> tuple[int, str]:
    cores = findings.host_cores or 1
    existing = [k for k in findings.scenarios if k.app == app]
    if existing:
        cores = max(k.cores for k in existing)
    return cores, "PIN"


# ---------------------------------------------------------------------------------------------
# the deployment answer


def deployment_answer(findings: Findings, app: str) -> DeploymentAnswer:
    scenarios = [s for s in _app_scenarios(findings, app) if s.key.mode == "e2e"]
    if not scenarios:
        cores, mode = _default_deployment(findings, app)
        add = _unique([_scenario(app, BASELINE_PLATFORM, cores, mode, "CPU")])
        return DeploymentAnswer(app, f"{app}: no E2E runs — not enough data; run {', '.join(add)}.", None, None, None,
                                None, "unknown", [], add)
    best = min(scenarios, key=lambda s: s.e2e_s.mean)
    key = best.key
    parts: list[str] = [f"fastest measured: {key.deployment} ({fmt_s(best.e2e_s)})"]
    evidence = [_evidence(best)]
    add: list[str] = []

    knee = next((k for k in findings.knees if (k.app, k.platform, k.cpu_mode, k.device, k.mode)
                 == (app, key.platform, key.cpu_mode, key.device, "e2e")), None)
    cores = key.cores
    if knee is not None:
        cores = knee.knee_cores
        if knee.knee_cores == knee.best_cores:
            parts.append(f"{_cores(knee.best_cores)} is the best of {', '.join(str(c) for c, _ in knee.points)} "
                         f"on {key.platform} {key.cpu_mode}")
        else:
            parts.append(f"{_cores(knee.knee_cores)} is within {knee.tolerance_pct:g}% of the best "
                         f"({knee.best_cores}) on {key.platform} {key.cpu_mode}")
        evidence.append({"what": "scale-up knee", "knee_cores": knee.knee_cores, "best_cores": knee.best_cores,
                         "tolerance_pct": knee.tolerance_pct})
    else:
        more = _neighbour_cores(findings.host_cores, [key.cores])
        add += [_scenario(app, key.platform, c, key.cpu_mode, key.device) for c in more]
        parts.append(f"only {_cores(key.cores)} measured on {key.platform} {key.cpu_mode} — scale-up unknown")

    pin_candidates = [p for p in findings.pinning if p.pinned.app == app and p.pinned.platform == key.platform
                      and p.pinned.device == key.device and p.pinned.mode == "e2e"]
    pin = next((p for p in pin_candidates if p.pinned.cores == cores), None) or (pin_candidates[0] if pin_candidates else None)
    cpu_mode = key.cpu_mode
    if pin is not None:
        evidence.append(_comparison_evidence(pin.pinned, pin.vanilla, pin.comparison, "PIN vs VNL"))
        if pin.verdict == PINNING_HELPS:
            cpu_mode = "PIN"
            parts.append(f"pinning saves {fmt_pct(pin.gain_pct, pin.gain_ci_pct, signed=False)} on {key.platform} "
                         f"at {pin.pinned.cores} cores")
        elif pin.verdict == PINNING_HURTS:
            cpu_mode = "VNL"
            parts.append(f"pinning costs {fmt_pct(-pin.gain_pct, _neg(pin.gain_ci_pct), signed=False)} on "
                         f"{key.platform} at {pin.pinned.cores} cores")
        elif pin.verdict == PINNING_NO_DIFFERENCE:
            parts.append(f"pinning made no significant difference on {key.platform} at {pin.pinned.cores} cores "
                         f"({fmt_pct(pin.gain_pct, pin.gain_ci_pct)} saved, {_test_words(pin.comparison)})")
        else:
            parts.append(f"pinning on {key.platform}: not enough runs to test "
                         f"({fmt_pct(pin.gain_pct, None)} saved, n={pin.comparison.subject_n}/{pin.comparison.baseline_n})")
    else:
        other = "VNL" if key.cpu_mode == "PIN" else "PIN"
        add.append(_scenario(app, key.platform, key.cores, other, key.device))
        parts.append(f"pinning on {key.platform} not measured")

    gpu = "unknown"
    payoff = _payoff_for(findings, key.with_(device="CPU"))
    if payoff is not None and payoff.gpu is not None and payoff.e2e_speedup is not None:
        sp = payoff.e2e_speedup
        if sp[1] is None:
            gpu = "unclear"
        elif sp[1][0] > 1.0:
            gpu = "yes" if sp[0] >= GPU_WORTH_IT_SPEEDUP else "marginal"
        else:
            gpu = "no"
        verdict = {"yes": "worth it", "marginal": f"below {GPU_WORTH_IT_SPEEDUP:g}x: weigh the GPU's price",
                   "no": "no significant gain", "unclear": "one run: no CI"}[gpu]
        parts.append(f"a GPU measured {fmt_ratio(sp)} E2E speedup ({verdict}; inference alone "
                     f"{fmt_ratio(payoff.inference_speedup)})"
                     + (f", bounded by {_phase_name(payoff.bounding_phase)} "
                        f"({100 * payoff.bounding_phase_share:.0f}% of GPU E2E)" if payoff.bounding_phase_share else ""))
        evidence.append({"what": "GPU payoff", **payoff.to_dict()})
    elif payoff is not None and payoff.amdahl_bound is not None:
        gpu = "unlikely" if payoff.amdahl_bound < GPU_WORTH_IT_SPEEDUP else "unknown"
        parts.append(f"a GPU would cut E2E by at most {payoff.amdahl_bound:.2f}x because "
                     f"{_phase_name(payoff.bounding_phase)} is {100 * (payoff.bounding_phase_share or 0):.0f}% of E2E "
                     f"(inference {100 * (payoff.infer_share or 0):.0f}%; Amdahl bound, no GPU measured)")
        evidence.append({"what": "Amdahl bound", **payoff.to_dict()})
        add.append(_scenario(app, key.platform, key.cores, key.cpu_mode, "GPU"))

    isolated = [o for o in findings.overheads if o.subject.app == app and o.subject.mode == "e2e"
                and o.subject.cores == key.cores and o.subject.cpu_mode == key.cpu_mode and o.subject.device == key.device]
    platform = key.platform
    if isolated:
        least = min(isolated, key=lambda o: o.e2e.relative_pct if o.e2e.relative_pct is not None else math.inf)
        parts.append(f"with isolation, {least.subject.platform} adds {fmt_pct(least.e2e.relative_pct, least.e2e.relative_ci_pct)}"
                     f" vs BM ({significance_text(least.e2e)})")
        evidence.append(_comparison_evidence(least.subject, least.baseline, least.e2e, "overhead vs BM"))

    device_word = key.device
    text = f"{app} on {device_word}: " + "; ".join(parts) + "."
    return DeploymentAnswer(app, text, key.scenario, cores, platform, cpu_mode, gpu, evidence, _unique(add))


def _cores(n: int) -> str:
    return f"{n} core" if n == 1 else f"{n} cores"


def _test_words(cmp: Comparison) -> str:
    """``paired over N rounds p=…`` or ``Welch p=…``: which test the verdict rests on."""
    if cmp.method == "paired":
        return f"paired over {cmp.pairs} rounds, p={cmp.p_value:.2g}"
    return f"Welch p={cmp.p_value:.2g}"


def _neg(ci: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if ci is None else (-ci[1], -ci[0])


def _payoff_for(findings: Findings, key: ScenarioKey) -> GpuPayoff | None:
    return next((g for g in findings.gpu if g.cpu == key), None)


# ---------------------------------------------------------------------------------------------
# the best practices (the paper's seven; the eighth, thread pools, follows practice 7)


def practice_1_phases(findings: Findings, app: str) -> Recommendation:
    ref = _reference(findings, app, device=None)
    if ref is None:
        cores, mode = _default_deployment(findings, app)
        return Recommendation(1, BEST_PRACTICES[1], app, NOT_ENOUGH_DATA,
                              f"not enough data — run {_scenario(app, BASELINE_PLATFORM, cores, mode, 'CPU')} (an E2E run with phase times).",
                              runs_to_add=_unique([_scenario(app, BASELINE_PLATFORM, cores, mode, "CPU")]))
    shares = sorted(((p, _pct_of_e2e(ref, p)) for p in ref.phases_s), key=lambda x: -x[1])
    dominant = shares[0][0]
    share_text = ", ".join(f"{_phase_name(p)} {v:.0f}%" for p, v in shares)
    if dominant == "infer":
        why = "inference dominates: the DNN's speed (cores, GPU) decides the platform and machine type."
    else:
        why = f"{_phase_name(dominant)} dominates, so it — not only the DNN — decides the platform and machine type."
    text = f"On {ref.key.deployment} ({fmt_s(ref.e2e_s)}) the E2E time splits into {share_text}; {why}"
    evidence = [_evidence(ref)] + [{"scenario": ref.key.label, "what": f"{p} share of E2E", "share_pct": v}
                                   for p, v in shares]
    overheads = [o for o in findings.overheads if o.subject.app == app and o.phases]
    if overheads:
        worst = max(overheads, key=lambda o: abs(o.e2e.relative_pct or 0.0))
        phase = worst.largest_phase
        contribution = worst.phases[phase] if phase else None
        if contribution is not None:
            text += (f" The largest platform overhead ({worst.subject.deployment}: "
                     f"{fmt_pct(worst.e2e.relative_pct, worst.e2e.relative_ci_pct)} vs BM) comes mostly from "
                     f"{_phase_name(phase)} ({fmt_pct(contribution.contribution_pct, contribution.contribution_ci_pct)} "
                     f"points of BM's E2E).")
            evidence.append(_comparison_evidence(worst.subject, worst.baseline, worst.e2e, "overhead vs BM"))
    return Recommendation(1, BEST_PRACTICES[1], app, EVIDENCE, text, evidence)


def practice_2_scale_up(findings: Findings, app: str) -> Recommendation:
    knees = [k for k in findings.knees if k.app == app and k.mode == "e2e"]
    groups: dict[tuple, set[int]] = {}
    for k in findings.scenarios:
        if k.app == app and k.mode == "e2e":
            groups.setdefault((k.platform, k.cpu_mode, k.device), set()).add(k.cores)
    single = {g: c for g, c in groups.items() if len(c) < 2}
    add = []
    for (platform, cpu_mode, device), cores in sorted(single.items()):
        add += [_scenario(app, platform, c, cpu_mode, device) for c in _neighbour_cores(findings.host_cores, cores)]
    if not knees:
        why = "every deployment was measured at one core count only"
        if not groups:
            why = "no E2E runs"
            cores, mode = _default_deployment(findings, app)
            add = [_scenario(app, BASELINE_PLATFORM, c, mode, "CPU")
                   for c in candidate_cores(findings.host_cores, [cores])[:3]]
        return Recommendation(2, BEST_PRACTICES[2], app, NOT_ENOUGH_DATA,
                              f"not enough data — {why}; run " + (", ".join(_unique(add)) or "more core counts") + ".",
                              runs_to_add=_unique(add))
    sentences = []
    evidence = []
    for k in knees:
        best = k.best
        where = f"{k.platform} {k.cpu_mode} {k.device}"
        if k.knee_cores == k.best_cores:
            s = f"{where}: {_cores(k.best_cores)} is the fastest of {', '.join(str(c) for c, _ in k.points)} ({fmt_s(best)})"
        else:
            s = (f"{where}: {_cores(k.knee_cores)} ({fmt_s(k.knee)}) is within {k.tolerance_pct:g}% of the best "
                 f"({_cores(k.best_cores)}, {fmt_s(best)})")
        if k.slower_beyond_best:
            s += f"; more cores were significantly slower ({', '.join(str(c) for c in k.slower_beyond_best)})"
        sentences.append(s)
        evidence.append({"what": "scale-up", **k.to_dict()})
    text = "; ".join(sentences) + "."
    if findings.host_cores and findings.host_cores >= 16 and not any(16 in c for c in groups.values()):
        text += " The paper suggests 16 cores as a starting point; it was not measured."
        add += [_scenario(app, p, 16, m, d) for (p, m, d) in sorted(groups)][:2]
    return Recommendation(2, BEST_PRACTICES[2], app, EVIDENCE, text, evidence, _unique(add))


def practice_3_idle_cores(findings: Findings, app: str) -> Recommendation:
    items = [i for i in findings.idle_cores if i.full.app == app and i.full.mode == "e2e"]
    host = findings.host_cores
    complete = [i for i in items if i.full_overhead is not None and i.idle_overhead is not None]
    if not complete:
        add: list[str | None] = []
        platforms = sorted({k.platform for k in findings.scenarios if k.app == app and k.platform != BASELINE_PLATFORM},
                           key=platform_rank) or ["CN"]
        modes = sorted({k.cpu_mode for k in findings.scenarios if k.app == app}) or ["VNL"]
        if host:
            fewer = max(1, host // 2)
            for platform in platforms[:2]:
                for mode in modes[:1]:
                    for p in (platform, BASELINE_PLATFORM):
                        for c in (host, fewer):
                            key = ScenarioKey(app, p, c, mode, "CPU", cache=findings.cache or "warm")
                            if key not in findings.scenarios:
                                add.append(_scenario(app, p, c, mode, "CPU"))
            if host == 1:
                text = "not enough data — the host has a single core, so no deployment can leave a core idle."
                return Recommendation(3, BEST_PRACTICES[3], app, NOT_ENOUGH_DATA, text)
        text = ("not enough data — needs a non-BM platform at all host cores "
                f"({host if host else '?'}) and at fewer cores, with BM at both"
                + (f"; run {', '.join(_unique(add))}" if add else "") + ".")
        return Recommendation(3, BEST_PRACTICES[3], app, NOT_ENOUGH_DATA, text, runs_to_add=_unique(add))
    sentences, evidence, worse, better = [], [], 0, 0
    for i in complete:
        assert i.full_overhead is not None and i.idle_overhead is not None and i.idle is not None
        flag = i.worse_without_idle_cores
        full_ci, idle_ci = i.full_overhead.relative_ci_pct, i.idle_overhead.relative_ci_pct
        if flag:
            worse += 1
        elif full_ci is not None and idle_ci is not None and full_ci[1] < idle_ci[0]:
            better += 1
        sentences.append(
            f"{i.full.platform} {i.full.cpu_mode}: overhead vs BM {fmt_pct(i.full_overhead.relative_pct, full_ci)} "
            f"with all {i.host_cores} host cores vs {fmt_pct(i.idle_overhead.relative_pct, idle_ci)} at "
            f"{_cores(i.idle.cores)} (idle host cores)")
        evidence.append({"what": "idle host cores", **i.to_dict()})
    if worse and not better:
        verdict = SUPPORTED
        tail = "Using every host core raised the overhead (95% CIs do not overlap): leave some host cores idle."
    elif better and not worse:
        verdict = CONTRADICTED
        tail = "Here the overhead was lower with every host core in use (95% CIs do not overlap)."
    elif worse and better:
        verdict = EVIDENCE
        tail = "The effect differs between platforms."
    else:
        verdict = NOT_SHOWN
        tail = "The 95% CIs overlap: no effect of idle host cores shown on this host."
    return Recommendation(3, BEST_PRACTICES[3], app, verdict, "; ".join(sentences) + ". " + tail, evidence)


def practice_4_storage(findings: Findings, app: str, cold: Findings | None = None) -> Recommendation:
    """``cold``: the cold-cache findings, read for the reference scenario's cold-cache twin."""
    ref = _reference(findings, app, device=None)
    if ref is None or "io" not in ref.phases_s:
        cores, mode = _default_deployment(findings, app)
        add = _unique([_scenario(app, BASELINE_PLATFORM, cores, mode, "CPU")])
        return Recommendation(4, BEST_PRACTICES[4], app, NOT_ENOUGH_DATA,
                              f"not enough data — run {', '.join(add)} (an E2E run times io apart).", runs_to_add=add)
    io_pct = _pct_of_e2e(ref, "io")
    io = ref.phases_s["io"]
    text = (f"Reading inputs (io) takes {io.mean * 1000:.3g} ms per workload, {io_pct:.1f}% of E2E on "
            f"{ref.key.deployment}: faster storage could save at most {io_pct:.1f}% of E2E. ")
    verdict = EVIDENCE
    twin = cold.scenarios.get(ref.key.with_(cache="cold")) if cold is not None and ref.key.cache == "warm" else None
    if twin is not None and "io" not in twin.phases_s:
        twin = None
    cold_pct = _pct_of_e2e(twin, "io") if twin is not None else None
    if io_pct >= 100 * IO_SHARE_MATTERS:
        text += "Storage matters for this application."
    elif cold_pct is not None and cold_pct >= 100 * IO_SHARE_MATTERS:
        text += "Storage matters for this application when its inputs are not in the page cache."
    else:
        text += "Storage is not what limits this application on this host."
    evidence = [{"scenario": ref.key.label, "what": "io share of E2E", "share_pct": io_pct,
                 "io_s": summary_dict(io)}]
    io_over = [(o, o.phases["io"]) for o in findings.overheads if o.subject.app == app and "io" in o.phases]
    significant = [(o, p) for o, p in io_over if p.comparison.significant]
    if io_over:
        worst = max(io_over, key=lambda x: abs(x[1].contribution_pct))
        o, p = worst
        text += (f" The largest io change vs BM: {o.subject.deployment} "
                 f"{fmt_pct(p.comparison.relative_pct, p.comparison.relative_ci_pct)} "
                 f"({significance_text(p.comparison)}; {fmt_pct(p.contribution_pct, p.contribution_ci_pct)} points of "
                 "BM's E2E); "
                 f"{len(significant)} of {len(io_over)} platform comparisons show a significant io difference.")
        evidence += [_comparison_evidence(o.subject, o.baseline, p.comparison, "io vs BM") for o, p in io_over]
    add: list[str | None] = []
    if twin is not None:
        cmp = compare_stats("io", twin, ref, phase="io")
        text += (f" With a cold page cache ({twin.key.scenario}: the data files dropped before timing) io takes "
                 f"{twin.phases_s['io'].mean * 1000:.3g} ms, {cold_pct:.1f}% of E2E"
                 + (f", {cmp.ratio:.2f}x the warm-cache io" if cmp.ratio is not None else "")
                 + f" ({significance_text(cmp)}).")
        evidence.append({"scenario": twin.key.label, "what": "io share of E2E, cold cache", "share_pct": cold_pct,
                         "io_s": summary_dict(twin.phases_s["io"])})
        evidence.append(_comparison_evidence(twin.key, ref.key, cmp, "io, cold vs warm cache"))
    elif ref.key.cache == "warm":
        add.append(_scenario(app, ref.key.platform, ref.key.cores, ref.key.cpu_mode, ref.key.device, cache="cold"))
    cold_over = [(o, o.phases["io"]) for o in (cold.overheads if twin is not None else [])
                 if o.subject.app == app and "io" in o.phases]
    if cold_over:
        o, p = max(cold_over, key=lambda x: abs(x[1].contribution_pct))
        text += (f" With a cold cache, the largest io change vs BM: {o.subject.deployment} "
                 f"{fmt_pct(p.comparison.relative_pct, p.comparison.relative_ci_pct)} "
                 f"({significance_text(p.comparison)}).")
        evidence += [_comparison_evidence(o.subject, o.baseline, p.comparison, "io vs BM, cold cache")
                     for o, p in cold_over]
    if add:
        text += (f" Add {', '.join(_unique(add))} to time io from storage instead of the page cache "
                 "(the worker drops the data files from the cache before timing).")
    text += " (The storage device itself was not varied: compare hosts or volumes to test it.)"
    return Recommendation(4, BEST_PRACTICES[4], app, verdict, text, evidence, _unique(add))


def practice_5_e2e(findings: Findings, app: str) -> Recommendation:
    ref = _reference(findings, app, device=None)
    if ref is None or "infer" not in ref.phases_s:
        cores, mode = _default_deployment(findings, app)
        add = _unique([_scenario(app, BASELINE_PLATFORM, cores, mode, "CPU")])
        return Recommendation(5, BEST_PRACTICES[5], app, NOT_ENOUGH_DATA,
                              f"not enough data — run {', '.join(add)}.", runs_to_add=add)
    infer_pct = _pct_of_e2e(ref, "infer")
    text = (f"Inference is {infer_pct:.0f}% of E2E on {ref.key.deployment}: a benchmark timing only the DNN "
            f"would miss {100 - infer_pct:.0f}% of the time a request takes.")
    evidence = [{"scenario": ref.key.label, "what": "infer share of E2E", "share_pct": infer_pct}]
    verdict = SUPPORTED if infer_pct < 100 * INFER_ONLY_MISLEADS else NOT_SHOWN
    add: list[str | None] = []
    inf_key = ref.key.with_(mode="inference-only", cache="warm")      # inference-only times no io: warm only
    inf = findings.scenarios.get(inf_key)
    if inf is not None:
        ratio = ref.e2e_s.mean / inf.e2e_s.mean if inf.e2e_s.mean else math.nan
        text += (f" Measured inference-only ({fmt_s(inf.e2e_s)}) vs E2E ({fmt_s(ref.e2e_s)}): E2E is "
                 f"{ratio:.2f}x the inference-only time.")
        evidence.append(_evidence(inf, "inference-only"))
        knee_e2e = next((k for k in findings.knees if (k.app, k.platform, k.cpu_mode, k.device, k.mode) ==
                         (app, ref.key.platform, ref.key.cpu_mode, ref.key.device, "e2e")), None)
        knee_inf = next((k for k in findings.knees if (k.app, k.platform, k.cpu_mode, k.device, k.mode) ==
                         (app, ref.key.platform, ref.key.cpu_mode, ref.key.device, "inference-only")), None)
        if knee_e2e and knee_inf:
            if knee_e2e.knee_cores != knee_inf.knee_cores:
                text += (f" The core count an inference-only benchmark suggests ({knee_inf.knee_cores}) differs from "
                         f"the E2E one ({knee_e2e.knee_cores}).")
                verdict = SUPPORTED
            else:
                text += f" Both suggest {knee_e2e.knee_cores} cores."
        payoff = _payoff_for(findings, ref.key.with_(device="CPU"))
        if payoff and payoff.inference_speedup and payoff.e2e_speedup:
            text += (f" GPU: inference {fmt_ratio(payoff.inference_speedup)} faster, E2E only "
                     f"{fmt_ratio(payoff.e2e_speedup)}.")
    else:
        add.append(_scenario(app, ref.key.platform, ref.key.cores, ref.key.cpu_mode, ref.key.device, "inference-only"))
        text += " (Add the inference-only twin to see the two side by side.)"
    return Recommendation(5, BEST_PRACTICES[5], app, verdict, text, evidence, _unique(add))


def practice_6_gpu(findings: Findings, app: str, costs: dict | None = None) -> Recommendation:
    payoffs = [g for g in findings.gpu if g.cpu.app == app]
    if not payoffs:
        cores, mode = _default_deployment(findings, app)
        add = _unique([_scenario(app, BASELINE_PLATFORM, cores, mode, "CPU")])
        return Recommendation(6, BEST_PRACTICES[6], app, NOT_ENOUGH_DATA,
                              f"not enough data — run {', '.join(add)} (an E2E run with phase times).", runs_to_add=add)
    measured = [g for g in payoffs if g.gpu is not None and g.e2e_speedup is not None]
    ref = _reference(findings, app)
    base = next((g for g in payoffs if ref is not None and g.cpu == ref.key), payoffs[0])
    non_infer = 1.0 - (base.infer_share or 0.0)
    dominate = non_infer >= PRE_POST_DOMINATE
    evidence = [{"what": "GPU payoff", **g.to_dict()} for g in (measured or [base])]
    add: list[str | None] = []
    knee = next((k for k in findings.knees if (k.app, k.platform, k.cpu_mode, k.device, k.mode) ==
                 (app, base.cpu.platform, base.cpu.cpu_mode, "CPU", "e2e")), None)
    scale_text = ""
    if knee is not None:
        slowest = max(knee.points, key=lambda p: p[1].mean)
        gain = slowest[1].mean / knee.best.mean
        scale_text = (f" Scaling up on CPU ({slowest[0]} → {knee.best_cores} cores) gave {gain:.2f}x.")
    if measured:
        sentences = []
        for g in measured:
            sentences.append(
                f"{g.cpu.platform}/{g.cpu.cores}/{g.cpu.cpu_mode}: GPU E2E speedup {fmt_ratio(g.e2e_speedup)} vs "
                f"inference {fmt_ratio(g.inference_speedup)} ({g.inference_source}); bounded by "
                f"{_phase_name(g.bounding_phase)} ({100 * (g.bounding_phase_share or 0):.0f}% of GPU E2E)")
        best_speedup = max(g.e2e_speedup[0] for g in measured if g.e2e_speedup)
        if dominate and best_speedup < GPU_WORTH_IT_SPEEDUP:
            verdict = SUPPORTED
        elif dominate and best_speedup >= GPU_WORTH_IT_SPEEDUP:
            verdict = CONTRADICTED
        else:
            verdict = EVIDENCE
        text = ("; ".join(sentences) + f". Outside inference the CPU run spends {100 * non_infer:.0f}% of E2E."
                + scale_text)
    else:
        bound = base.amdahl_bound
        text = (f"No GPU measured. On {base.cpu.deployment} inference is {100 * (base.infer_share or 0):.0f}% of E2E and "
                f"{_phase_name(base.bounding_phase)} {100 * (base.bounding_phase_share or 0):.0f}%: even an infinitely "
                f"fast GPU would cut E2E by at most {bound:.2f}x (Amdahl)." if bound else "No GPU measured.")
        text += scale_text
        if dominate and bound is not None and bound < GPU_WORTH_IT_SPEEDUP:
            verdict = SUPPORTED
            text += " Pre/post-processing dominate: more or faster CPU cores are the better lever."
        else:
            verdict = EVIDENCE
            text += " Inference dominates: a GPU could pay off; measure it."
        add.append(_scenario(app, base.cpu.platform, base.cpu.cores, base.cpu.cpu_mode, "GPU"))
    if costs:
        text += " " + costs.get(app, "")
    return Recommendation(6, BEST_PRACTICES[6], app, verdict, text.strip(), evidence, _unique(add))


def practice_7_containers(findings: Findings, app: str) -> Recommendation:
    over = [o for o in findings.overheads if o.subject.app == app and o.subject.mode == "e2e"]
    cn = [o for o in over if o.subject.platform == "CN"]
    others = [o for o in over if o.subject.platform not in ("CN", BASELINE_PLATFORM)]
    add: list[str | None] = []
    bm_keys = [k for k in findings.scenarios if k.app == app and k.platform == BASELINE_PLATFORM and k.mode == "e2e"]
    if not cn:
        for k in bm_keys[:2]:
            add.append(_scenario(app, "CN", k.cores, k.cpu_mode, k.device))
        if not bm_keys:
            cores, mode = _default_deployment(findings, app)
            add += [_scenario(app, BASELINE_PLATFORM, cores, mode, "CPU"), _scenario(app, "CN", cores, mode, "CPU")]
        return Recommendation(7, BEST_PRACTICES[7], app, NOT_ENOUGH_DATA,
                              f"not enough data — needs CN next to BM at the same deployment; run {', '.join(_unique(add))}.",
                              runs_to_add=_unique(add))
    evidence = [_comparison_evidence(o.subject, o.baseline, o.e2e, "overhead vs BM") for o in cn + others]
    cn_text = "; ".join(f"CN/{o.subject.cores}/{o.subject.cpu_mode}: {fmt_pct(o.e2e.relative_pct, o.e2e.relative_ci_pct)} "
                        f"vs BM ({significance_text(o.e2e)})" for o in cn)
    full = [o for o in cn if findings.scenarios[o.subject].chr == 1.0]
    if full:
        cn_text += f". At CHR=1 (all {findings.host_cores} host cores, as on an Edge device): " + ", ".join(
            f"{o.subject.cpu_mode} {fmt_pct(o.e2e.relative_pct, o.e2e.relative_ci_pct)}" for o in full)
    if not others:
        for o in cn[:1]:
            k = o.subject
            for platform, cls in platform_classes().items():   # the nearest deployment each one supports
                if platform in ("CN", BASELINE_PLATFORM):
                    continue
                mode = k.cpu_mode if k.cpu_mode in cls.cpu_modes else cls.cpu_modes[0]
                device = k.device if k.device in cls.devices else cls.devices[0]
                add.append(_scenario(app, platform, k.cores, mode, device))
        return Recommendation(7, BEST_PRACTICES[7], app, EVIDENCE,
                              cn_text + ". No other virtualized platform measured to rank CN against; run "
                              + ", ".join(_unique(add)) + ".", evidence, _unique(add))
    lower_elsewhere, cn_lowest, shared = [], 0, 0
    for o in cn:
        rivals = [r for r in others if r.subject.with_(platform="CN") == o.subject]
        if not rivals:
            continue
        shared += 1
        cn_ci = o.e2e.relative_ci_pct
        if all((r.e2e.relative_pct or 0) >= (o.e2e.relative_pct or 0) for r in rivals):
            cn_lowest += 1
        for r in rivals:
            r_ci = r.e2e.relative_ci_pct
            if cn_ci is not None and r_ci is not None and r_ci[1] < cn_ci[0]:
                lower_elsewhere.append(f"{r.subject.deployment} ({fmt_pct(r.e2e.relative_pct, r_ci)})")
    per_platform = {}
    for r in others:
        per_platform.setdefault(r.subject.platform, []).append(r.e2e.relative_pct or 0.0)
    ranking = ", ".join(f"{p} median {statistics.median(v):+.1f}%" for p, v in sorted(per_platform.items()))
    text = cn_text + f". Other platforms vs BM: {ranking}."
    if shared == 0:
        verdict = EVIDENCE
        text += " No deployment has CN and another platform side by side."
    elif lower_elsewhere:
        verdict = CONTRADICTED
        text += " Lower overhead than CN (non-overlapping 95% CIs): " + ", ".join(lower_elsewhere) + "."
    elif cn_lowest == shared:
        verdict = SUPPORTED
        text += f" CN had the lowest mean overhead in all {shared} shared deployments."
    else:
        verdict = NOT_SHOWN
        text += " CN is not clearly lower or higher than the other platforms (overlapping CIs)."
    return Recommendation(7, BEST_PRACTICES[7], app, verdict, text, evidence)


def _pools_text(stats: PolicyStats, cores: int) -> str:
    """``torch intra-op 2 threads on 1 core`` — the largest compute pool the policy gave, against the cores."""
    largest = stats.largest_compute_pool
    if largest is None:
        return "pool sizes not recorded"
    name, size = largest
    return f"{POOL_TITLES.get(name, name)} {size} thread{'s' if size != 1 else ''} on {_cores(cores)}"


def _throttle_text(t: ThreadPolicyFinding) -> str:
    """``throttled 0.5 vs 0 s per run, 900 vs 10 involuntary switches`` (the policy's mean vs sized's)."""
    bits = []
    for name, what in (("throttled_time_s", "throttled {} s per run"), ("involuntary_ctx_switches",
                                                                       "{} involuntary switches")):
        a, b = t.other.counters.get(name), t.sized.counters.get(name)
        if a is not None and b is not None:
            bits.append(what.format(f"{a.mean:.3g} vs {b.mean:.3g}"))
    return ", ".join(bits)


def practice_8_thread_pools(findings: Findings, app: str) -> Recommendation:
    """Size thread pools to the deployment's CPU limit: framework-default (or fixed) pools vs sized ones."""
    rows = [t for t in findings.thread_policies if t.key.app == app and t.key.mode == "e2e"] or \
        [t for t in findings.thread_policies if t.key.app == app]
    how = ("run `e2ebench study threads` (framework-default next to sized thread pools), or add "
           "thread_policies = [\"sized\", \"framework-default\"] to a study")
    if not rows:
        return Recommendation(8, BEST_PRACTICES[8], app, NOT_ENOUGH_DATA,
                              f"not enough data — {how}.")
    evidence = [{"what": "thread policy vs sized", "scenario": t.other.key.label, "baseline": t.key.label,
                 "thread_policy": t.policy, "cores": t.cores, "relative_pct": t.penalty_pct,
                 "ci_pct": t.penalty_ci_pct, "p_value": t.comparison.p_value,
                 "n": [t.comparison.subject_n, t.comparison.baseline_n], "verdict": t.verdict,
                 "pools": t.other.pools, "sized_pools": t.sized.pools,
                 "counters": {k: summary_dict(v) for k, v in t.other.counters.items()},
                 "sized_counters": {k: summary_dict(v) for k, v in t.sized.counters.items()}} for t in rows]
    sentences = []
    for t in rows:
        s = (f"{t.key.deployment}: {t.policy} ({_pools_text(t.other, t.cores)}) "
             f"{fmt_pct(t.penalty_pct, t.penalty_ci_pct)} vs sized ({fmt_s(t.other.e2e_s)} vs {fmt_s(t.sized.e2e_s)}; "
             f"{significance_text(t.comparison)}; {t.verdict})")
        throttle = _throttle_text(t)
        if throttle:
            s += f"; {throttle}"
        sentences.append(s)
    text = "; ".join(sentences) + "."
    penalties = [t for t in rows if t.verdict == THREADS_PENALTY]
    faster = [t for t in rows if t.verdict == THREADS_FASTER]
    tested = [t for t in rows if t.verdict != THREADS_NOT_ENOUGH_DATA]
    if penalties and not faster:
        verdict = SUPPORTED
        text += (" Pools not sized to the CPU limit were significantly slower on "
                 + ", ".join(f"{t.key.deployment} ({t.policy})" for t in penalties)
                 + ": set each library's thread count (torch.set_num_threads, OMP_NUM_THREADS, ONNX Runtime's "
                   "intra_op_num_threads) to the deployment's cores.")
    elif faster and not penalties:
        verdict = CONTRADICTED
        text += " Here pools not sized to the CPU limit were significantly faster."
    elif faster and penalties:
        verdict = EVIDENCE
        text += " The effect differs between deployments."
    elif tested:
        verdict = NOT_SHOWN
        hosts = sorted({t.other.pools["os_cpu_count"] for t in tested if "os_cpu_count" in t.other.pools})
        text += (" No effect shown on this host"
                 + (f" ({' / '.join(str(h) for h in hosts)} CPUs visible to the libraries)" if hosts else "")
                 + "; the trap grows with the host's core count, so measure on the production host.")
    else:
        verdict = NOT_ENOUGH_DATA
        text = f"not enough data — fewer than 2 runs per policy; {how}. " + text
    return Recommendation(8, BEST_PRACTICES[8], app, verdict, text, evidence)


def _in_cache(item: DeploymentAnswer | Recommendation, cache: str) -> None:
    """Make an answer or practice evaluated on ``cache``-state findings say so: its E2E scenarios to add get the
    cache suffix (in the list and in the text), and its text a ``[cold cache]`` prefix."""
    renamed = {}
    for text in item.runs_to_add:
        try:
            s = Scenario.parse(text)
        except NotationError:
            continue
        if s.mode == "e2e" and s.cache != cache:
            renamed[text] = str(dataclasses.replace(s, cache=cache))
    item.runs_to_add = [renamed.get(t, t) for t in item.runs_to_add]
    for old, new in renamed.items():
        item.text = re.sub(re.escape(old) + r"(?![#\w/])", new, item.text)
    item.text = f"[{cache} cache] {item.text}"


def recommend(findings: Findings, cost_notes: dict[str, str] | None = None) -> RecommendationSet:
    """The deployment answer and the eight practices for every application in ``findings``.

    An application is judged on its warm-cache scenarios, or on its cold-cache ones when it has no warm one;
    practice 4 also reads the cold-cache twins.
    """
    apps = sorted({k.app for k in findings.scenarios})
    answers, practices = [], []
    views = {cache: findings.for_cache(cache) for cache in ("warm", "cold")}
    for app in apps:
        measured = {k.cache for k in findings.scenarios if k.app == app and k.mode == "e2e"}
        cache = "cold" if measured == {"cold"} else "warm"
        view = views[cache]
        answer = deployment_answer(view, app)
        mine = [
            practice_1_phases(view, app),
            practice_2_scale_up(view, app),
            practice_3_idle_cores(view, app),
            practice_4_storage(view, app, views["cold"] if "cold" in measured else None),
            practice_5_e2e(view, app),
            practice_6_gpu(view, app, cost_notes),
            practice_7_containers(view, app),
            practice_8_thread_pools(view, app),
        ]
        if cache != "warm":
            for item in [answer, *mine]:
                _in_cache(item, cache)
        answers.append(answer)
        practices += mine
    note = ""
    if findings.emulated:
        note = ("EMULATED results (QEMU TCG): comparisons are between emulated scenarios only and say nothing about "
                "native performance.")
        for item in answers:
            item.text = "[EMULATED] " + item.text
        for item in practices:
            item.text = "[EMULATED] " + item.text
    return RecommendationSet(findings.emulated, answers, practices, note)


__all__ = [
    "BEST_PRACTICES", "CONTRADICTED", "DeploymentAnswer", "EVIDENCE", "NOT_ENOUGH_DATA", "NOT_SHOWN", "Recommendation",
    "RecommendationSet", "SUPPORTED", "VERDICTS", "candidate_cores", "deployment_answer", "recommend",
]
