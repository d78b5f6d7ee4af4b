"""Do a study's answers survive a re-run?  Coverage and verdict agreement over replicates of one study.

``e2ebench study FILE --replicate K`` runs the same study K times (fresh study ids, same configuration, one after the
other) and hands the K study ids to :func:`replicate_report`:

* **coverage** — for every scenario measured in every replicate and every ordered pair of replicates (i, j), i != j:
  does replicate i's mean E2E fall inside replicate j's 95% interval?  A 95% interval of "the mean a re-run gets"
  should hold about 19 times in 20.  Two intervals are checked on the same runs: the runs-only Student-t interval
  (what e2ebench reported before issue 11: ``runs``) and the interval with the host's measured drift
  (``drift``, :func:`e2ebench.stats.drift_aware_interval`, what it reports now).
* **verdict agreement** — every comparison the analysis makes between two scenarios (PIN vs VNL, platform vs BM,
  each core count vs the best, thread policy vs sized) gets a verdict per replicate: ``faster``, ``slower`` (the
  subject vs its baseline, significant at 0.05) or ``no difference``; once from the paired comparison (runs paired by
  round) and once from Welch's test on the same runs.  A comparison *agrees* when its replicates never say both
  ``faster`` and ``slower``; it is *identical* when every replicate says the same.

Everything here reads the store; nothing is measured.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from typing import Sequence

from e2ebench.analysis import (ScenarioKey, ScenarioStats, StudyData, compare_stats, load_study,
                               primary_scenarios)

FASTER, SLOWER, NO_DIFFERENCE = "faster", "slower", "no difference"
INTERVALS = ("runs", "drift")
TESTS = ("paired", "welch")


@dataclasses.dataclass
class ScenarioCoverage:
    scenario: str
    means_s: list[float]
    half_widths_pct: dict[str, list[float]]      # interval kind -> per replicate
    hits: dict[str, int]                         # interval kind -> ordered pairs covered
    checks: int                                  # ordered pairs checked

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class VerdictAgreement:
    comparison: str                              # "ic@BM/2/PIN/CPU vs ic@BM/2/VNL/CPU"
    kind: str                                    # pinning | platform | cores | threads
    verdicts: dict[str, list[str]]               # test -> per replicate
    relative_pct: dict[str, list[float | None]]  # test -> per replicate

    def agrees(self, test: str) -> bool:
        return not ({FASTER, SLOWER} <= set(self.verdicts[test]))

    def identical(self, test: str) -> bool:
        return len(set(self.verdicts[test])) == 1

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "agrees": {t: self.agrees(t) for t in self.verdicts},
                "identical": {t: self.identical(t) for t in self.verdicts}}


@dataclasses.dataclass
class ReplicateReport:
    study_ids: list[str]
    scenarios: list[ScenarioCoverage]
    comparisons: list[VerdictAgreement]
    drift_pct: list[float]                       # per replicate

    def coverage_pct(self, kind: str) -> float | None:
        checks = sum(s.checks for s in self.scenarios)
        return 100.0 * sum(s.hits[kind] for s in self.scenarios) / checks if checks else None

    def agreement(self, test: str) -> tuple[int, int, int]:
        """(agreeing, identical, comparisons) for ``test``."""
        return (sum(c.agrees(test) for c in self.comparisons), sum(c.identical(test) for c in self.comparisons),
                len(self.comparisons))

    def to_dict(self) -> dict:
        return {
            "study_ids": self.study_ids, "replicates": len(self.study_ids), "drift_pct": self.drift_pct,
            "coverage_pct": {k: self.coverage_pct(k) for k in INTERVALS},
            "checks": sum(s.checks for s in self.scenarios),
            "agreement": {t: dict(zip(("agree", "identical", "comparisons"), self.agreement(t))) for t in TESTS},
            "scenarios": [s.to_dict() for s in self.scenarios],
            "comparisons": [c.to_dict() for c in self.comparisons],
        }


def verdict(cmp) -> str:
    """``faster`` / ``slower`` (the subject, significant at 0.05) or ``no difference`` (not significant or untested)."""
    if not cmp.significant or cmp.ratio is None:
        return NO_DIFFERENCE
    return FASTER if cmp.ratio < 1.0 else SLOWER


def comparison_pairs(scenarios: dict[ScenarioKey, ScenarioStats]) -> list[tuple[str, ScenarioKey, ScenarioKey]]:
    """(kind, subject, baseline) of every comparison the analysis makes between two measured scenarios."""
    from e2ebench.platforms import BASELINE_PLATFORM

    out = []
    primary = primary_scenarios(scenarios)
    for key in primary:
        if key.cpu_mode == "PIN" and key.with_(cpu_mode="VNL") in primary:
            out.append(("pinning", key, key.with_(cpu_mode="VNL")))
        if key.platform != BASELINE_PLATFORM and key.with_(platform=BASELINE_PLATFORM) in primary:
            out.append(("platform", key, key.with_(platform=BASELINE_PLATFORM)))
    groups: dict[tuple, list[ScenarioKey]] = defaultdict(list)
    for key in primary:
        groups[(key.app, key.platform, key.cpu_mode, key.device, key.mode, key.emulated, key.cache)].append(key)
    for keys in groups.values():
        ordered = sorted(keys, key=lambda k: k.cores)
        for a, b in zip(ordered, ordered[1:]):
            out.append(("cores", b, a))
    for key in scenarios:
        if key.thread_policy != "sized" and key.with_(thread_policy="sized") in scenarios:
            out.append(("threads", key, key.with_(thread_policy="sized")))
    return out


def replicate_report(store, study_ids: Sequence[str]) -> ReplicateReport:
    datas: list[StudyData] = [load_study(store, sid) for sid in study_ids]
    common = set(datas[0].scenarios)
    for data in datas[1:]:
        common &= set(data.scenarios)
    ordered = sorted(common, key=ScenarioKey.sort_key)
    scenarios = []
    for key in ordered:
        stats = [d.scenarios[key] for d in datas]
        intervals = {"runs": [s.e2e_runs_s or s.e2e_s for s in stats], "drift": [s.e2e_s for s in stats]}
        hits = {k: 0 for k in INTERVALS}
        checks = 0
        for i, j in itertools.permutations(range(len(stats)), 2):
            checks += 1
            for kind in INTERVALS:
                ci = intervals[kind][j]
                if ci.low <= stats[i].e2e_s.mean <= ci.high:
                    hits[kind] += 1
        scenarios.append(ScenarioCoverage(key.label, [s.e2e_s.mean for s in stats],
                                          {k: [ci.half_width_pct for ci in v] for k, v in intervals.items()},
                                          hits, checks))
    comparisons = []
    seen = set()
    for kind, subject, baseline in comparison_pairs({k: datas[0].scenarios[k] for k in ordered}):
        if (subject, baseline) in seen:
            continue
        seen.add((subject, baseline))
        verdicts: dict[str, list[str]] = {t: [] for t in TESTS}
        relative: dict[str, list[float | None]] = {t: [] for t in TESTS}
        for data in datas:
            for test in TESTS:
                cmp = compare_stats("e2e_s", data.scenarios[subject], data.scenarios[baseline],
                                    paired=test == "paired")
                verdicts[test].append(verdict(cmp))
                relative[test].append(cmp.relative_pct)
        comparisons.append(VerdictAgreement(f"{subject.label} vs {baseline.label}", kind, verdicts, relative))
    return ReplicateReport(list(study_ids), scenarios, comparisons, [d.drift_pct for d in datas])


def report_lines(report: ReplicateReport) -> list[str]:
    """The report as text lines (what ``study --replicate`` prints)."""
    lines = [f"{len(report.study_ids)} replicates: {', '.join(report.study_ids)}",
             "host drift per replicate: " + ", ".join(f"{d:.1f}%" for d in report.drift_pct)]
    lines.append("coverage: how often a replicate's mean E2E lies in another replicate's 95% interval")
    lines.append(f"  {'scenario':<34} {'means (s)':<28} {'±runs-only %':<22} {'±with drift %':<22} runs-only  with drift")
    for s in report.scenarios:
        means = " ".join(f"{m:.3g}" for m in s.means_s)
        runs = " ".join(f"{h:.1f}" for h in s.half_widths_pct["runs"])
        drift = " ".join(f"{h:.1f}" for h in s.half_widths_pct["drift"])
        lines.append(f"  {s.scenario:<34} {means:<28} {runs:<22} {drift:<22} "
                     f"{s.hits['runs']}/{s.checks:<8} {s.hits['drift']}/{s.checks}")
    for kind, title in (("runs", "runs-only intervals (before issue 11)"), ("drift", "intervals with the drift (now)")):
        value = report.coverage_pct(kind)
        lines.append(f"  coverage, {title}: " + ("n/a" if value is None else f"{value:.0f}%"))
    if report.comparisons:
        lines.append("verdicts per replicate (subject vs baseline): paired by round | Welch")
        for c in report.comparisons:
            lines.append(f"  {c.comparison}: {', '.join(c.verdicts['paired'])} | {', '.join(c.verdicts['welch'])}"
                         + ("" if c.agrees("paired") else "  <- paired verdicts CONTRADICT"))
        for test in TESTS:
            agree, identical, total = report.agreement(test)
            lines.append(f"  {test}: {agree}/{total} comparisons never contradict (faster vs slower), "
                         f"{identical}/{total} identical in every replicate")
    return lines
