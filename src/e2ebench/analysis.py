"""Findings from a study: what the measured runs say, each number with its confidence interval.

Input is the store.  Runs are grouped into *scenarios* by ``(app, platform, cores, cpu_mode, device, mode,
cache)`` plus the ``emulated`` flag (QEMU TCG results form their own scenarios and are never compared with native
ones).  Every comparison below pairs scenarios of the same page-cache state (warm with warm, cold with cold).  Only ``phase='measure'``, ``status='ok'`` runs are used, and runs the stopping rule flagged as
outliers are left out unless asked for.

Findings (every one is a dataclass with ``to_dict()``):

* **overhead vs BM** — for every non-BM scenario with a BM scenario of the same cores, CPU mode, device
  and mode: the E2E ratio and, per phase, the phase's own ratio and its *contribution* to the E2E
  overhead in percentage points of BM's E2E (the contributions of io, pre, infer, post and other add up
  to the E2E overhead).  Significance: Welch's t-test on the run values (``e2ebench.tdist.welch_p``,
  unequal variances), alpha 0.05.  Intervals: 95 %; a ratio's interval is the delta-method interval of
  the log of the ratio of two means with Welch-Satterthwaite degrees of freedom.
* **scale-up knee** — per (app, platform, CPU mode, device, mode): the fewest cores whose mean E2E is
  within ``tolerance_pct`` (default 5 %) of the best mean.
* **pinning gain** — PIN vs VNL at the same app, platform, cores, device and mode: ``100 * (VNL - PIN) / VNL``
  (positive = pinning is faster), with the verdict *helps* / *hurts* / *no significant difference* /
  *not enough data*.
* **GPU payoff** — CPU vs GPU E2E speedup next to the inference-only speedup, and the Amdahl bound: with an
  infinitely fast DNN, E2E cannot drop below the time spent outside ``infer``; the phase that takes most of
  that time *bounds* the payoff.  The bound is derived from the CPU run's phase shares even when no GPU was
  measured.
* **CHR** — container cores / host cores of every CN and VMCN scenario next to its overhead vs BM, and the
  rank correlation between the two when at least three CHR values were measured.
* **paired comparisons** (issue 11) — every comparison above (and the thread penalty below) pairs the two scenarios'
  runs by study round when both were measured in the same rounds (two or more common rounds): the ratio's interval
  and the test then come from the per-round log ratios (a paired t-test), so host drift that moved both runs of a
  round cancels; the ratio's point value is the ratio of the paired runs' means.  ``Comparison.method`` says
  ``paired`` (with ``pairs``) or ``welch`` (runs made before rounds were stored, ad-hoc runs, scenarios of different
  rounds).
* **host drift** — per host, the calibration probes and the round effect (:mod:`e2ebench.drift`); every scenario's
  E2E interval includes the drift (:func:`e2ebench.stats.drift_aware_interval`), its runs-only interval is kept as
  ``e2e_runs_s``.
* **idle host cores** — scenarios whose cores equal the host's cores (the paper's Fig. 9 case) next to the
  same platform's overhead when the host keeps idle cores.
* **cold start** per platform.
* **thread policy penalty** — a scenario measured with ``sized`` thread pools (e2ebench's default: every pool
  sized to the deployment's cores) and with ``framework-default`` pools (or a fixed count): the penalty
  ``100 * (policy / sized - 1)`` of mean E2E with the ratio's delta-method CI and Welch's test, the verdict
  *penalty* / *faster* / *no effect shown* / *not enough data*, the CFS throttling and involuntary context switches
  per run that explain it, and the pool sizes each library chose against the deployment's cores.  Every other
  finding reads the ``sized`` scenarios only (:func:`primary_scenarios`), so no comparison mixes policies.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

from e2ebench import tdist
from e2ebench.result import RunResult
from e2ebench.platforms import BASELINE_PLATFORM, is_container, platform_rank, shares_host_kernel
from e2ebench.scenario import Deployment, Scenario, cache_title, scenario_string
from e2ebench.stats import (ConfidenceInterval, confidence_interval, drift_aware_interval, mean, paired_log_ratio,
                            t_critical)
from e2ebench.store import ADHOC_STUDY
from e2ebench.study_runs import NO_MOMENTS, Moments, interval_from_moments

if TYPE_CHECKING:
    from e2ebench.study_runs import RunGroup, StudyRuns

Summary = ConfidenceInterval
"""A scenario number over runs: ``mean``, ``stdev``, ``n``, ``half_width`` (``inf`` below two runs), ``low``/``high``."""

PHASES: tuple[str, ...] = ("io", "pre", "infer", "post", "other")
PHASE_TITLES = {
    "io": "I/O (read input)",
    "pre": "pre-processing",
    "infer": "inference",
    "post": "post-processing",
    "other": "other (harness)",
}
CONFIDENCE = 0.95
ALPHA = 0.05
DEFAULT_KNEE_TOLERANCE_PCT = 5.0
SIGNIFICANCE_METHOD = (
    "paired t-test on the per-round log ratios when both scenarios ran in the same study rounds, else Welch's t-test "
    "on per-run values (unequal variances), alpha 0.05; 95% intervals: means include the host's "
    "measured drift (Student-t on the runs plus the drift in quadrature), paired ratios Student-t on the log ratios, "
    "unpaired ratios the delta method on the log ratio"
)


def has_ci(summary: Summary | None) -> bool:
    """True when the summary has a finite confidence interval (two or more runs)."""
    return summary is not None and summary.n >= 2 and math.isfinite(summary.half_width)


def ci_bounds(summary: Summary | None) -> tuple[float, float] | None:
    """``(low, high)`` of the 95% CI of the mean, or ``None`` below two runs."""
    return (summary.low, summary.high) if summary is not None and has_ci(summary) else None


def _finite(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def summary_dict(summary: Summary | None) -> dict | None:
    """JSON-safe form (unbounded or undefined values become ``None``)."""
    if summary is None:
        return None
    bounds = ci_bounds(summary)
    return {"mean": _finite(summary.mean), "stdev": _finite(summary.stdev), "n": summary.n,
            "ci_low": bounds[0] if bounds else None, "ci_high": bounds[1] if bounds else None,
            "half_width": _finite(summary.half_width), "half_width_pct": _finite(summary.half_width_pct),
            "confidence": summary.confidence}


# ---------------------------------------------------------------------------------------------
# Scenario keys and per-scenario statistics


@dataclasses.dataclass(frozen=True)
class ScenarioKey:
    """The identity of a scenario in the analysis; emulated results are separate scenarios, and so are cold-cache
    ones (``cache='cold'``: the data files were dropped from the page cache before the timed window)."""

    app: str
    platform: str
    cores: int
    cpu_mode: str
    device: str
    mode: str = "e2e"
    emulated: bool = False
    cache: str = "warm"
    thread_policy: str = "sized"
    host_type: str | None = None          # a fleet host's machine type (e2ebench.fleet); None: the local host

    @property
    def deployment(self) -> str:
        return f"{self.platform}/{self.cores}/{self.cpu_mode}/{self.device}"

    @property
    def scenario(self) -> str:
        """``APP@DEPLOYMENT`` (``#inference-only``, ``#cold-cache`` and ``#threads=POLICY`` appended where they
        apply) — what a study file accepts."""
        threads = f"#threads={self.thread_policy}" if self.thread_policy != "sized" else ""
        return scenario_string(self.app, self.deployment, self.mode, self.cache) + threads

    @property
    def cache_title(self) -> str:
        """``"cold cache"`` for a cold-cache scenario, ``""`` for the default warm cache."""
        return cache_title(self.cache)

    @property
    def label(self) -> str:
        return self.scenario + (f" on {self.host_type}" if self.host_type else "") + (" [EMULATED]" if self.emulated else "")

    def with_(self, **changes: Any) -> "ScenarioKey":
        return dataclasses.replace(self, **changes)

    def sort_key(self) -> tuple:
        return (self.emulated, self.app, self.mode, self.cache != "warm", self.device, platform_rank(self.platform),
                self.cores, self.cpu_mode != "VNL", self.host_type or "")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(deployment=self.deployment, scenario=self.scenario, label=self.label)
        return d


def scenario_text(app: str, platform: str, cores: int, cpu_mode: str, device: str, mode: str = "e2e",
                  cache: str = "warm") -> str:
    """A scenario string the user can put in a study (validated by :class:`e2ebench.scenario.Scenario`)."""
    return str(Scenario(app, Deployment(platform, int(cores), cpu_mode, device), mode, cache))


@dataclasses.dataclass
class ScenarioStats:
    """What the runs of one scenario measured: mean and 95% CI over runs of every number."""

    key: ScenarioKey
    run_ids: list[int]
    e2e_s: Summary
    phases_s: dict[str, Summary]
    e2e_values_s: list[float]
    phase_values_s: dict[str, list[float]]
    latency_p99_ms: Summary | None
    throughput_sps: Summary | None
    cost_basis_s_per_sample: Summary | None      # e2e_s / completed, per run (for cost per inference)
    cold_start_s: Summary | None
    cold_start_parts_s: dict[str, Summary]
    requests: int | None
    host_cores: int | None
    host_cores_source: str
    rounds: list = dataclasses.field(default_factory=list)      # each run's study round (None: unknown), as run_ids
    e2e_runs_s: Summary | None = None                            # the runs-only interval (without the host's drift)

    @property
    def n(self) -> int:
        return self.e2e_s.n

    @property
    def chr(self) -> float | None:
        """Container-to-host ratio (container cores / host cores) for container platforms (CN, VMCN); ``None``
        otherwise."""
        if not is_container(self.key.platform) or not self.host_cores:
            return None
        return self.key.cores / self.host_cores

    def phase_share(self, phase: str) -> float | None:
        """Mean time in ``phase`` / mean E2E (a fraction)."""
        summary = self.phases_s.get(phase)
        if summary is None or not self.e2e_s.mean:
            return None
        return summary.mean / self.e2e_s.mean

    def to_dict(self) -> dict:
        return {
            **self.key.to_dict(),
            "runs": len(self.run_ids),
            "run_ids": list(self.run_ids),
            "e2e_s": summary_dict(self.e2e_s),
            "phases_s": {k: summary_dict(v) for k, v in self.phases_s.items()},
            "phase_shares": {k: self.phase_share(k) for k in self.phases_s},
            "latency_p99_ms": summary_dict(self.latency_p99_ms),
            "throughput_sps": summary_dict(self.throughput_sps),
            "cold_start_s": summary_dict(self.cold_start_s),
            "cold_start_parts_s": {k: summary_dict(v) for k, v in self.cold_start_parts_s.items()},
            "requests": self.requests,
            "host_cores": self.host_cores,
            "host_cores_source": self.host_cores_source,
            "chr": self.chr,
            "rounds": list(self.rounds),
            "e2e_runs_s": summary_dict(self.e2e_runs_s),
        }


@dataclasses.dataclass
class StudyData:
    """The runs of one study, grouped into scenarios, plus what was left out and why."""

    study: dict
    scenarios: dict[ScenarioKey, ScenarioStats]
    used_run_ids: set[int]
    excluded: dict[str, int]               # reason -> number of runs
    host_cores: int | None
    include_outliers: bool = False
    drifts: list = dataclasses.field(default_factory=list)       # e2ebench.drift.HostDrift per host
    # each scenario's runs as read (e2ebench.study_runs.RunGroup): cold-start parts, counters, pool sizes
    groups: dict = dataclasses.field(default_factory=dict)
    detail: bool = True                    # whether ``groups`` hold those (load_study(detail=True))

    @property
    def drift_pct(self) -> float:
        """The host drift every scenario's E2E interval includes (0 without probes or rounds)."""
        from e2ebench.drift import drift_pct_of

        return drift_pct_of(self.drifts)

    @property
    def infeasible(self) -> list[dict]:
        """Scenarios the study planned but could not run on its host, with the reason (from the study record)."""
        plan = (self.study.get("config") or {}).get("plan") or []
        return [p for p in plan if isinstance(p, dict) and p.get("feasible") is False]

    def select(self, emulated: bool | None = False) -> dict[ScenarioKey, ScenarioStats]:
        if emulated is None:
            return dict(self.scenarios)
        return {k: v for k, v in self.scenarios.items() if k.emulated == emulated}

    @property
    def has_emulated(self) -> bool:
        return any(k.emulated for k in self.scenarios)

    @property
    def apps(self) -> list[str]:
        return sorted({k.app for k in self.scenarios})


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _host_cores_of(platform: str, platform_host_cpus: Any, env_host_cpus: Any) -> tuple[int | None, str]:
    """The host's core count a run recorded (``platform_info.host_cpus``, else for BM and CN the worker's
    ``environment.host_cpus``)."""
    host = _num(platform_host_cpus)
    if host:
        return int(host), "platform_info.host_cpus"
    if shares_host_kernel(platform):               # BM, CN: the worker's environment is the host's
        host = _num(env_host_cpus)
        if host:
            return int(host), "environment.host_cpus"
    return None, "unknown"


def study_keeps_outliers(study: dict) -> bool:
    """The study's own ``repetition.keep_outliers`` (stored with the study), ``False`` when absent."""
    config = study.get("config") or {}
    repetition = (config.get("config") or {}).get("repetition") or config.get("repetition") or {}
    return bool(repetition.get("keep_outliers", False))


def _configured_host_cores(study: dict) -> int | None:
    host = (study.get("config") or {}).get("host") or {}
    cores = _num(host.get("cores"))
    return int(cores) if cores else None


ADHOC_OTHER_WORKLOAD = "another workload than the app's latest ad-hoc run"


def workload_of(result: dict | RunResult) -> tuple:
    """What a run measured besides its scenario: requests, batch size, variant, backend, LoadGen scenario, app options
    and weights.  A study gives every run of an app the same; ``e2ebench run`` takes them from its command line.
    ``result``: a stored run's JSON (any version) or a RunResult."""
    run = result if isinstance(result, RunResult) else RunResult.from_dict(result)
    info = run.app_info or {}
    batch = run.batch_size_requested or run.batch_size
    options = tuple(sorted((str(k), repr(v)) for k, v in (info.get("options") or {}).items()))
    return (run.requests, batch, run.variant, run.backend, run.loadgen_scenario, options, info.get("weights"))


def describe_workload(workload: tuple) -> str:
    requests, batch, variant, backend, loadgen_scenario, options, weights = workload
    text = f"{requests} requests, batch size {batch}, {variant} variant, {backend}, {loadgen_scenario}"
    if options:
        text += ", options " + ", ".join(f"{k}={v}" for k, v in options)
    return text + (f", weights {weights}" if weights and not str(weights).startswith("random") else "")


def adhoc_other_workloads(runs: Sequence[dict]) -> tuple[set[int], dict[str, tuple[str, int]]]:
    """Ad-hoc runs (``e2ebench run``, study ``adhoc``) of one app can differ in workload (``-n 8`` here, ``-n 64``
    there), and a mean over both means nothing.  Per app, the successful measured runs made with the workload of the
    app's latest successful run count; this returns the ids of the others and, per app that has such others,
    (the kept workload in words, how many runs were left out)."""
    ok = [r for r in runs if r.get("phase") == "measure" and r.get("status") == "ok" and r.get("result")]
    latest: dict[str, dict] = {}
    for run in ok:
        if run["app"] not in latest or (run["started_at"], run["id"]) > (latest[run["app"]]["started_at"],
                                                                         latest[run["app"]]["id"]):
            latest[run["app"]] = run
    kept = {app: workload_of(run["result"]) for app, run in latest.items()}
    left_out = {r["id"] for r in ok if workload_of(r["result"]) != kept[r["app"]]}
    notes = {}
    for app, workload in kept.items():
        n = sum(1 for r in ok if r["app"] == app and r["id"] in left_out)
        if n:
            notes[app] = (describe_workload(workload), n)
    return left_out, notes


def load_study(store, study_id: str, include_outliers: bool | None = None, detail: bool = True,
               runs: "StudyRuns | None" = None) -> StudyData:
    """Read a study's runs from ``store`` (an :class:`e2ebench.store.Store`) and summarise every scenario.

    ``include_outliers``: count runs flagged as outliers; ``None`` follows the study's ``repetition.keep_outliers``
    (default: outliers left out).  ``detail``: also the cold-start parts, counters and pool sizes (the report's and
    recommend's findings; ``show`` does without).  ``runs``: the study as :func:`read_study_runs` read it (``show``
    reads it once for its table and its comparisons).
    """
    if runs is None:
        runs = read_study_runs(store, study_id, include_outliers, detail)
    study = runs.study
    keep = runs.keep_outliers
    keys = {gkey: _scenario_key(group) for gkey, group in runs.groups.items()}
    # The study's host: as the study runner recorded it, else the most frequent host core count reported by
    # BM/CN runs (the runner's host).
    study_host = _configured_host_cores(study)
    if study_host is None:
        counts: dict[int, int] = defaultdict(int)
        for gkey, key in keys.items():
            for _, platform_cpus, env_cpus, n in runs.groups[gkey].host_cpus:
                cores, source = _host_cores_of(key.platform, platform_cpus, env_cpus)
                if cores and source != "unknown":
                    counts[cores] += n
        study_host = max(counts, key=lambda c: (counts[c], c)) if counts else None
    drift = runs.drift_pct
    scenarios: dict[ScenarioKey, ScenarioStats] = {}
    extras: dict[ScenarioKey, Any] = {}
    for gkey in sorted(keys, key=lambda g: keys[g].sort_key()):
        group = runs.groups[gkey]
        if not group.counted(keep):
            continue
        scenarios[keys[gkey]] = _scenario_stats(keys[gkey], group, keep, study_host, drift)
        extras[keys[gkey]] = group
    return StudyData(study=study, scenarios=scenarios, used_run_ids=runs.used_run_ids(), excluded=runs.excluded,
                     host_cores=study_host, include_outliers=keep, drifts=runs.drifts, groups=extras,
                     detail=runs.detail)


def read_study_runs(store, study_id: str, include_outliers: bool | None = None, detail: bool = True) -> "StudyRuns":
    """A study's runs as the analysis reads them (:func:`e2ebench.study_runs.load`): the ad-hoc runs of another
    workload than their app's latest left out."""
    from e2ebench.study_runs import load

    study = store.get_study(study_id)
    if study is None:
        raise LookupError(f"no study {study_id!r} in {store.path}")
    if include_outliers is None:
        include_outliers = study_keeps_outliers(study)
    other_workload: set[int] = set()
    if study_id == ADHOC_STUDY:       # ad-hoc runs are few; their workloads are compared on their JSON
        other_workload = adhoc_other_workloads(store.runs(study_id=study_id, phase=None, with_result=True))[0]
    return load(store, study, include_outliers, detail, exclude_ids=other_workload)


def _scenario_key(group: "RunGroup") -> ScenarioKey:
    """The analysis key of a group of runs (:mod:`e2ebench.study_runs`), from its runs' columns."""
    c = group.columns
    return ScenarioKey(c["app"], c["platform"], int(c["cores"]), c["cpu_mode"], c["device"], c["mode"] or "e2e",
                       group.emulated, c["cache"] or "warm", group.thread_policy or THREADS_SIZED,
                       group.host_type or None)


def study_calibrates(study: dict) -> bool:
    """Whether the study's intervals include the host's drift (``repetition.calibrate``, default on; ad-hoc runs have
    no rounds and no probes)."""
    if study.get("id") == ADHOC_STUDY:
        return False
    repetition = ((study.get("config") or {}).get("config") or {}).get("repetition") or {}
    return repetition.get("calibrate", True) is not False


def _summary_or_none(values: Sequence[float]) -> Summary | None:
    return confidence_interval(values, CONFIDENCE) if values else None


def _scenario_stats(key: ScenarioKey, group: "RunGroup", keep_outliers: bool, study_host: int | None,
                    drift_pct: float = 0.0) -> ScenarioStats:
    counted = group.counted(keep_outliers)
    e2e = group.e2e if len(counted) == len(group.e2e) else [group.e2e[i] for i in counted]
    phase_values: dict[str, list[float]] = {}
    phases_s: dict[str, Summary] = {}
    for phase in PHASES:
        if group.phases:                      # each run's value (detail): compared run by run
            column = group.phases[phase]
            values = column if len(counted) == len(column) else [column[i] for i in counted]
            if None not in values and all(map(math.isfinite, values)):
                phase_values[phase] = values
                phases_s[phase] = confidence_interval(values, CONFIDENCE)
        else:                                 # only the phase's mean and interval (show), from SQL
            moments = group.aggregates.get(f"{phase}_s")
            if moments is not None and moments.n == len(counted) and math.isfinite(moments.total_sq):
                phases_s[phase] = interval_from_moments(moments, CONFIDENCE)
    aggregates = group.aggregates
    parts = group.cold_parts
    host_cores, source = None, "unknown"
    for _, platform_cpus, env_cpus, _n in group.host_cpus:
        host_cores, source = _host_cores_of(key.platform, platform_cpus, env_cpus)
        if host_cores:
            break
    if not host_cores and study_host:
        host_cores, source = study_host, "study host"
    return ScenarioStats(
        key=key,
        run_ids=[group.ids[i] for i in counted],
        e2e_s=drift_aware_interval(e2e, drift_pct, CONFIDENCE),
        phases_s=phases_s,
        e2e_values_s=e2e,
        phase_values_s=phase_values,
        latency_p99_ms=_moments_interval(aggregates.get("latency_p99_ms")),
        throughput_sps=_moments_interval(aggregates.get("throughput_sps")),
        cost_basis_s_per_sample=_moments_interval(aggregates.get("cost_basis_s_per_sample")),
        cold_start_s=_moments_interval(aggregates.get("cold_start_s")),
        cold_start_parts_s={k: interval_from_moments(m, CONFIDENCE) for k, m in parts.items() if m.n == len(counted)},
        requests=group.requests,
        host_cores=host_cores,
        host_cores_source=source,
        rounds=[group.rounds[i] for i in counted],
        e2e_runs_s=confidence_interval(e2e, CONFIDENCE),
    )


def _moments_interval(moments: "Moments | None") -> Summary | None:
    """The interval of an aggregated number; ``None`` when no run had it, or when only its mean was read (``show``)."""
    if moments is None or not moments.n or math.isnan(moments.total_sq):
        return None
    return interval_from_moments(moments, CONFIDENCE)


# ---------------------------------------------------------------------------------------------
# Two-sample comparisons


@dataclasses.dataclass
class Comparison:
    """``subject`` vs ``baseline`` on one number: difference, ratio, both with 95% CI, and Welch's test.

    ``relative_pct`` = 100 * (subject / baseline - 1); positive means the subject takes longer.
    ``significant`` is ``None`` when either side has fewer than two runs (no test possible).
    ``method``: ``welch`` (two independent samples) or ``paired`` (``pairs`` runs of each side from the same study
    rounds: the difference, ratio interval and test come from the pairs, see :func:`compare_stats`).
    """

    metric: str
    subject_mean: float
    baseline_mean: float
    subject_n: int
    baseline_n: int
    difference: float
    difference_ci: tuple[float, float] | None
    ratio: float | None
    ratio_ci: tuple[float, float] | None
    p_value: float | None
    significant: bool | None
    method: str = "welch"
    pairs: int = 0

    @property
    def relative_pct(self) -> float | None:
        return None if self.ratio is None else 100.0 * (self.ratio - 1.0)

    @property
    def relative_ci_pct(self) -> tuple[float, float] | None:
        if self.ratio_ci is None:
            return None
        return 100.0 * (self.ratio_ci[0] - 1.0), 100.0 * (self.ratio_ci[1] - 1.0)

    @property
    def relative_half_width_pct(self) -> float | None:
        ci = self.relative_ci_pct
        return None if ci is None else (ci[1] - ci[0]) / 2.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(relative_pct=self.relative_pct, relative_ci_pct=self.relative_ci_pct)
        return d


def _welch_df(a_var_n: float, b_var_n: float, n_a: int, n_b: int) -> float:
    denominator = 0.0
    if n_a > 1:
        denominator += a_var_n ** 2 / (n_a - 1)
    if n_b > 1:
        denominator += b_var_n ** 2 / (n_b - 1)
    if denominator <= 0.0:
        return float(max(1, n_a + n_b - 2))
    return (a_var_n + b_var_n) ** 2 / denominator


def welch_p_value(subject: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; ``None`` when a side has fewer than two values."""
    return tdist.welch_p(subject, baseline)     # (both without spread: 1.0 when the means agree, else 0.0)


def ratio_interval(numerator: Summary, denominator: Summary) -> tuple[float, tuple[float, float] | None] | None:
    """Ratio of two means and its 95% CI (delta method on the log ratio, Welch-Satterthwaite df).

    ``None`` when a mean is not positive.  The interval is ``None`` when either side has one run.
    """
    if numerator.mean <= 0 or denominator.mean <= 0:
        return None
    ratio = numerator.mean / denominator.mean
    if numerator.n < 2 or denominator.n < 2:
        return ratio, None
    a = (numerator.stdev / numerator.mean) ** 2 / numerator.n
    b = (denominator.stdev / denominator.mean) ** 2 / denominator.n
    se = math.sqrt(a + b)
    if se == 0.0:
        return ratio, (ratio, ratio)
    t = t_critical(CONFIDENCE, _welch_df(a, b, numerator.n, denominator.n))
    return ratio, (ratio * math.exp(-t * se), ratio * math.exp(t * se))


def difference_interval(subject: Summary, baseline: Summary) -> tuple[float, float] | None:
    """95% Welch interval of ``subject.mean - baseline.mean``; ``None`` when a side has one run."""
    if subject.n < 2 or baseline.n < 2:
        return None
    a = subject.stdev ** 2 / subject.n
    b = baseline.stdev ** 2 / baseline.n
    diff = subject.mean - baseline.mean
    se = math.sqrt(a + b)
    if se == 0.0:
        return diff, diff
    t = t_critical(CONFIDENCE, _welch_df(a, b, subject.n, baseline.n))
    return diff - t * se, diff + t * se


def compare(metric: str, subject: Sequence[float], baseline: Sequence[float]) -> Comparison:
    s, b = confidence_interval(subject, CONFIDENCE), confidence_interval(baseline, CONFIDENCE)
    ratio = ratio_interval(s, b)
    p = welch_p_value(subject, baseline)
    return Comparison(
        metric=metric, subject_mean=s.mean, baseline_mean=b.mean, subject_n=s.n, baseline_n=b.n,
        difference=s.mean - b.mean, difference_ci=difference_interval(s, b),
        ratio=ratio[0] if ratio else None, ratio_ci=ratio[1] if ratio else None,
        p_value=p, significant=None if p is None else p < ALPHA,
    )


MIN_PAIRS = 2


def _values_of(stats: ScenarioStats, phase: str | None) -> list[float] | None:
    return stats.e2e_values_s if phase is None else stats.phase_values_s.get(phase)


def paired_values(subject: ScenarioStats, baseline: ScenarioStats,
                  phase: str | None = None) -> tuple[list[float], list[float]] | None:
    """The two scenarios' values (E2E, or ``phase``) from the rounds both were measured in, in round order; ``None``
    below :data:`MIN_PAIRS` common rounds or when a scenario has no stored rounds."""
    a_values, b_values = _values_of(subject, phase), _values_of(baseline, phase)
    if a_values is None or b_values is None or not subject.rounds or not baseline.rounds:
        return None
    if subject.rounds == baseline.rounds and _rounds_in_order(subject):     # (the usual case: the same rounds)
        return (list(a_values), list(b_values)) if len(a_values) >= MIN_PAIRS else None
    a = {r: v for r, v in zip(subject.rounds, a_values) if r is not None}
    b = {r: v for r, v in zip(baseline.rounds, b_values) if r is not None}
    common = sorted(set(a) & set(b))
    if len(common) < MIN_PAIRS:
        return None
    return [a[r] for r in common], [b[r] for r in common]


def _rounds_in_order(stats: ScenarioStats) -> bool:
    """Whether a scenario's runs have known, distinct rounds in ascending order (remembered per scenario: a scenario
    is compared with many others)."""
    cached = stats.__dict__.get("_rounds_in_order")
    if cached is None or cached[0] is not stats.rounds:
        rounds = stats.rounds
        ok = None not in rounds and all(x < y for x, y in zip(rounds, rounds[1:]))
        cached = stats.__dict__["_rounds_in_order"] = (rounds, ok)
    return cached[1]


def compare_stats(metric: str, subject: ScenarioStats, baseline: ScenarioStats, phase: str | None = None,
                  paired: bool = True) -> Comparison:
    """``subject`` vs ``baseline`` on E2E (or ``phase``): paired by round when both scenarios were measured in the
    same rounds (and ``paired``), else Welch (:func:`compare`).  The means shown are each scenario's over all its
    runs; the difference, the ratio (ratio of the paired runs' means), the ratio's interval (per-round log ratios)
    and the p-value (paired t-test) come from the pairs."""
    s_values, b_values = _values_of(subject, phase) or [], _values_of(baseline, phase) or []
    pairs = paired_values(subject, baseline, phase) if paired else None
    if pairs is None:
        return compare(metric, s_values, b_values)
    result = paired_log_ratio(pairs[0], pairs[1], CONFIDENCE)
    assert result is not None
    s, b = confidence_interval(s_values, CONFIDENCE), confidence_interval(b_values, CONFIDENCE)
    pair_b = mean(pairs[1])
    ratio = mean(pairs[0]) / pair_b if pair_b > 0 and mean(pairs[0]) > 0 else None
    return Comparison(
        metric=metric, subject_mean=s.mean, baseline_mean=b.mean, subject_n=s.n, baseline_n=b.n,
        difference=result.difference, difference_ci=result.difference_ci,
        ratio=ratio, ratio_ci=result.ratio_ci if ratio is not None else None,
        p_value=result.p_value, significant=None if result.p_value is None else result.p_value < ALPHA,
        method="paired", pairs=result.pairs,
    )


def speedup(cmp: Comparison) -> tuple[float, tuple[float, float] | None] | None:
    """A comparison as ``(ratio, ratio CI)`` (what :func:`ratio_interval` returns), ``None`` without a ratio."""
    return None if cmp.ratio is None else (cmp.ratio, cmp.ratio_ci)


# ---------------------------------------------------------------------------------------------
# Overhead vs BM


@dataclasses.dataclass
class PhaseOverhead:
    """One phase of a platform vs the same phase on BM.

    ``contribution_pct``: (phase on platform - phase on BM) / BM's mean E2E, in percentage points; the
    contributions of all phases add up to the E2E overhead in percent.
    """

    phase: str
    comparison: Comparison
    contribution_pct: float
    contribution_ci_pct: tuple[float, float] | None

    def to_dict(self) -> dict:
        return {"phase": self.phase, **self.comparison.to_dict(), "contribution_pct": self.contribution_pct,
                "contribution_ci_pct": self.contribution_ci_pct}


@dataclasses.dataclass
class OverheadFinding:
    """A non-BM scenario vs its BM baseline (same cores, CPU mode, device, mode, cache state and emulation)."""

    subject: ScenarioKey
    baseline: ScenarioKey
    e2e: Comparison
    phases: dict[str, PhaseOverhead]

    @property
    def largest_phase(self) -> str | None:
        """The phase that contributes most (in absolute value) to the E2E difference."""
        if not self.phases:
            return None
        return max(self.phases.values(), key=lambda p: abs(p.contribution_pct)).phase

    def to_dict(self) -> dict:
        return {"subject": self.subject.to_dict(), "baseline": self.baseline.to_dict(), "e2e": self.e2e.to_dict(),
                "phases": {k: v.to_dict() for k, v in self.phases.items()}, "largest_phase": self.largest_phase}


def overhead_vs_bm(scenarios: dict[ScenarioKey, ScenarioStats], phases: bool = True) -> list[OverheadFinding]:
    """Every non-BM scenario vs BM; ``phases``: also each phase's contribution (``show`` prints only E2E)."""
    out = []
    for key, stats in scenarios.items():
        if key.platform == BASELINE_PLATFORM:
            continue
        base_key = key.with_(platform=BASELINE_PLATFORM)
        base = scenarios.get(base_key)
        if base is None:
            continue
        e2e = compare_stats("e2e_s", stats, base)
        by_phase = {}
        if key.mode == "e2e" and phases:
            for phase in PHASES:
                if phase in stats.phase_values_s and phase in base.phase_values_s:
                    cmp = compare_stats(phase, stats, base, phase=phase)
                    scale = 100.0 / base.e2e_s.mean if base.e2e_s.mean else math.nan
                    ci = cmp.difference_ci
                    by_phase[phase] = PhaseOverhead(
                        phase, cmp, cmp.difference * scale,
                        (ci[0] * scale, ci[1] * scale) if ci is not None else None,
                    )
        out.append(OverheadFinding(key, base_key, e2e, by_phase))
    return out


# ---------------------------------------------------------------------------------------------
# Scale-up knee


@dataclasses.dataclass
class KneeFinding:
    """E2E vs cores of one platform: the best core count and the knee (fewest cores within tolerance)."""

    app: str
    platform: str
    cpu_mode: str
    device: str
    mode: str
    emulated: bool
    tolerance_pct: float
    points: list[tuple[int, Summary]]          # (cores, E2E summary), ascending cores
    best_cores: int
    knee_cores: int
    knee_vs_best: Comparison | None            # knee's E2E vs the best's (None when they are the same)
    slower_beyond_best: list[int]              # core counts above the best whose E2E is significantly worse
    cache: str = "warm"
    host_type: str | None = None               # a fleet's machine type: core counts are compared within one

    @property
    def best(self) -> Summary:
        return dict(self.points)[self.best_cores]

    @property
    def knee(self) -> Summary:
        return dict(self.points)[self.knee_cores]

    @property
    def key(self) -> ScenarioKey:
        return ScenarioKey(self.app, self.platform, self.knee_cores, self.cpu_mode, self.device, self.mode,
                           self.emulated, self.cache, host_type=self.host_type)

    def to_dict(self) -> dict:
        return {
            "app": self.app, "platform": self.platform, "cpu_mode": self.cpu_mode, "device": self.device,
            "mode": self.mode, "cache": self.cache, "emulated": self.emulated, "host_type": self.host_type,
            "tolerance_pct": self.tolerance_pct,
            "points": [{"cores": c, "e2e_s": summary_dict(s)} for c, s in self.points],
            "best_cores": self.best_cores, "knee_cores": self.knee_cores,
            "knee_vs_best": self.knee_vs_best.to_dict() if self.knee_vs_best else None,
            "slower_beyond_best": self.slower_beyond_best,
        }


def scale_up_knees(scenarios: dict[ScenarioKey, ScenarioStats],
                   tolerance_pct: float = DEFAULT_KNEE_TOLERANCE_PCT) -> list[KneeFinding]:
    """One finding per (app, platform, CPU mode, device, mode, emulated, cache, host type) measured at two or more
    core counts."""
    groups: dict[tuple, dict[int, ScenarioStats]] = defaultdict(dict)
    for key, stats in scenarios.items():
        groups[(key.app, key.platform, key.cpu_mode, key.device, key.mode, key.emulated, key.cache,
                key.host_type)][key.cores] = stats
    out = []
    for group, by_cores in groups.items():
        if len(by_cores) < 2:
            continue
        cores_sorted = sorted(by_cores)
        best = min(cores_sorted, key=lambda c: (by_cores[c].e2e_s.mean, c))
        limit = by_cores[best].e2e_s.mean * (1.0 + tolerance_pct / 100.0)
        knee = next(c for c in cores_sorted if by_cores[c].e2e_s.mean <= limit)
        knee_vs_best = None
        if knee != best:
            knee_vs_best = compare_stats("e2e_s", by_cores[knee], by_cores[best])
        slower = []
        for c in cores_sorted:
            if c > best:
                cmp = compare_stats("e2e_s", by_cores[c], by_cores[best])
                if cmp.significant:
                    slower.append(c)
        app, platform, cpu_mode, device, mode, emulated, cache, host_type = group
        out.append(KneeFinding(app, platform, cpu_mode, device, mode, emulated, tolerance_pct,
                               [(c, by_cores[c].e2e_s) for c in cores_sorted], best, knee, knee_vs_best, slower,
                               cache, host_type))
    out.sort(key=lambda k: (k.emulated, k.app, k.mode, k.cache != "warm", k.device, platform_rank(k.platform),
                            k.cpu_mode, k.host_type or ""))
    return out


# ---------------------------------------------------------------------------------------------
# Pinning gain

PINNING_HELPS = "helps"
PINNING_HURTS = "hurts"
PINNING_NO_DIFFERENCE = "no significant difference"
PINNING_NOT_ENOUGH_DATA = "not enough data"


@dataclasses.dataclass
class PinningFinding:
    """PIN vs VNL of one app/platform/cores/device/mode/cache state.

    ``gain_pct`` = 100 * (VNL mean - PIN mean) / VNL mean: the share of E2E time pinning saves.
    """

    pinned: ScenarioKey
    vanilla: ScenarioKey
    comparison: Comparison                      # PIN (subject) vs VNL (baseline)
    verdict: str

    @property
    def gain_pct(self) -> float:
        if self.comparison.ratio is not None:        # PIN/VNL (of the paired runs when paired)
            return 100.0 * (1.0 - self.comparison.ratio)
        return 100.0 * (self.comparison.baseline_mean - self.comparison.subject_mean) / self.comparison.baseline_mean

    @property
    def gain_ci_pct(self) -> tuple[float, float] | None:
        ci = self.comparison.ratio_ci
        if ci is None:
            return None
        return 100.0 * (1.0 - ci[1]), 100.0 * (1.0 - ci[0])

    def to_dict(self) -> dict:
        return {"pinned": self.pinned.to_dict(), "vanilla": self.vanilla.to_dict(),
                "comparison": self.comparison.to_dict(), "gain_pct": self.gain_pct, "gain_ci_pct": self.gain_ci_pct,
                "verdict": self.verdict}


def pinning_gains(scenarios: dict[ScenarioKey, ScenarioStats]) -> list[PinningFinding]:
    out = []
    for key, stats in scenarios.items():
        if key.cpu_mode != "PIN":
            continue
        vanilla_key = key.with_(cpu_mode="VNL")
        vanilla = scenarios.get(vanilla_key)
        if vanilla is None:
            continue
        cmp = compare_stats("e2e_s", stats, vanilla)
        if cmp.significant is None:
            verdict = PINNING_NOT_ENOUGH_DATA
        elif not cmp.significant:
            verdict = PINNING_NO_DIFFERENCE
        else:
            verdict = PINNING_HELPS if cmp.subject_mean < cmp.baseline_mean else PINNING_HURTS
        out.append(PinningFinding(key, vanilla_key, cmp, verdict))
    return out


# ---------------------------------------------------------------------------------------------
# GPU payoff and the Amdahl bound


@dataclasses.dataclass
class GpuPayoff:
    """What a GPU buys (or could at most buy) one CPU scenario.

    * ``amdahl_bound``: CPU E2E / the time the E2E run spends outside ``infer`` — the E2E speedup of an
      infinitely fast DNN.  Taken from the GPU E2E run's non-inference time when it exists (its pre/post
      run on the GPU host's CPU), else from the CPU run's phase shares.
    * ``e2e_speedup``: CPU E2E / GPU E2E (measured), with its 95% CI.
    * ``inference_speedup``: CPU / GPU inference time, from ``inference-only`` runs when both exist
      (``inference_source='inference-only runs'``), else from the ``infer`` phase of the E2E runs.
    * ``bounding_phase``: the non-inference phase that takes most of the E2E time on the GPU run (or the CPU
      run when no GPU was measured) — the phase to speed up next.
    """

    cpu: ScenarioKey
    gpu: ScenarioKey | None
    infer_share: float | None                          # CPU run: infer / E2E
    bounding_phase: str | None
    bounding_phase_share: float | None                 # of the run it was taken from
    amdahl_bound: float | None
    amdahl_source: str
    e2e_speedup: tuple[float, tuple[float, float] | None] | None = None
    inference_speedup: tuple[float, tuple[float, float] | None] | None = None
    inference_source: str | None = None
    amdahl_predicted_speedup: float | None = None      # 1 / (s + (1-s)/k) with the measured inference speedup k

    def to_dict(self) -> dict:
        return {
            "cpu": self.cpu.to_dict(), "gpu": self.gpu.to_dict() if self.gpu else None,
            "infer_share": self.infer_share, "bounding_phase": self.bounding_phase,
            "bounding_phase_share": self.bounding_phase_share, "amdahl_bound": self.amdahl_bound,
            "amdahl_source": self.amdahl_source,
            "e2e_speedup": _pair(self.e2e_speedup), "inference_speedup": _pair(self.inference_speedup),
            "inference_source": self.inference_source, "amdahl_predicted_speedup": self.amdahl_predicted_speedup,
        }


def _pair(value: tuple[float, tuple[float, float] | None] | None) -> dict | None:
    if value is None:
        return None
    return {"value": value[0], "ci": value[1]}


def _non_infer_phases(stats: ScenarioStats) -> dict[str, float]:
    return {p: s.mean for p, s in stats.phases_s.items() if p != "infer"}


def gpu_payoffs(scenarios: dict[ScenarioKey, ScenarioStats]) -> list[GpuPayoff]:
    """One entry per CPU E2E scenario that has phase times (with GPU numbers where a GPU twin exists)."""
    out = []
    for key, cpu in scenarios.items():
        if key.device != "CPU" or key.mode != "e2e" or "infer" not in cpu.phases_s or not cpu.e2e_s.mean:
            continue
        gpu_key = key.with_(device="GPU")
        gpu = scenarios.get(gpu_key)
        infer_share = cpu.phase_share("infer")
        source_stats = gpu if (gpu is not None and "infer" in gpu.phases_s) else cpu
        non_infer = _non_infer_phases(source_stats)
        bounding = max(non_infer, key=non_infer.get) if non_infer else None
        outside = sum(non_infer.values())
        bound = cpu.e2e_s.mean / outside if outside > 0 else None
        payoff = GpuPayoff(
            cpu=key, gpu=gpu_key if gpu is not None else None, infer_share=infer_share,
            bounding_phase=bounding,
            bounding_phase_share=(non_infer[bounding] / source_stats.e2e_s.mean) if bounding else None,
            amdahl_bound=bound,
            amdahl_source="GPU E2E run's time outside inference" if source_stats is gpu else "CPU E2E run's phase shares",
        )
        if gpu is not None:
            payoff.e2e_speedup = speedup(compare_stats("e2e_s", cpu, gpu))
            # inference-only runs time no io, so they are warm-cache scenarios whatever the E2E pair's cache state
            cpu_inf = scenarios.get(key.with_(mode="inference-only", cache="warm"))
            gpu_inf = scenarios.get(gpu_key.with_(mode="inference-only", cache="warm"))
            if cpu_inf is not None and gpu_inf is not None:
                payoff.inference_speedup = speedup(compare_stats("e2e_s", cpu_inf, gpu_inf))
                payoff.inference_source = "inference-only runs"
            elif "infer" in gpu.phases_s:
                payoff.inference_speedup = speedup(compare_stats("infer", cpu, gpu, phase="infer"))
                payoff.inference_source = "infer phase of the E2E runs"
            if payoff.inference_speedup and infer_share is not None and payoff.inference_speedup[0] > 0:
                k = payoff.inference_speedup[0]
                payoff.amdahl_predicted_speedup = 1.0 / ((1.0 - infer_share) + infer_share / k)
        out.append(payoff)
    return out


# ---------------------------------------------------------------------------------------------
# CHR, idle host cores, cold start


@dataclasses.dataclass
class ChrPoint:
    key: ScenarioKey
    chr: float
    host_cores: int
    host_cores_source: str
    overhead: Comparison | None


@dataclasses.dataclass
class ChrFinding:
    """CHR of every CN/VMCN scenario and, per CPU mode, how overhead vs BM moves with CHR.

    ``correlation``: {cpu_mode: (Spearman rho, p-value, number of scenarios)} over E2E scenarios with an overhead;
    the paper expects a negative rho for VNL CN (lower CHR, higher overhead).  Needs three distinct CHRs.
    Warm-cache scenarios are keyed by the CPU mode alone (``"VNL"``), cold-cache ones as ``"VNL, cold cache"``.
    """

    points: list[ChrPoint]
    correlation: dict[str, tuple[float, float, int]]

    def to_dict(self) -> dict:
        return {
            "points": [{"scenario": p.key.to_dict(), "chr": p.chr, "host_cores": p.host_cores,
                        "host_cores_source": p.host_cores_source,
                        "overhead": p.overhead.to_dict() if p.overhead else None} for p in self.points],
            "correlation": {k: {"spearman_rho": v[0], "p_value": v[1], "n": v[2]} for k, v in self.correlation.items()},
        }


def chr_finding(scenarios: dict[ScenarioKey, ScenarioStats], overheads: list[OverheadFinding]) -> ChrFinding:
    by_subject = {o.subject: o for o in overheads}
    points = []
    for key, stats in scenarios.items():
        if stats.chr is None:
            continue
        o = by_subject.get(key)
        points.append(ChrPoint(key, stats.chr, int(stats.host_cores or 0), stats.host_cores_source,
                               o.e2e if o else None))
    correlation = {}
    for cache in ("warm", "cold"):
        for cpu_mode in ("VNL", "PIN"):
            pts = [p for p in points if p.key.cpu_mode == cpu_mode and p.overhead and p.overhead.relative_pct is not None
                   and p.key.mode == "e2e" and p.key.cache == cache]
            if len({p.chr for p in pts}) >= 3:
                rho, p_value = tdist.spearman([p.chr for p in pts], [p.overhead.relative_pct for p in pts])
                if math.isfinite(rho) and p_value is not None:
                    name = cpu_mode if cache == "warm" else f"{cpu_mode}, {cache_title(cache)}"
                    correlation[name] = (float(rho), float(p_value), len(pts))
    return ChrFinding(points, correlation)


@dataclasses.dataclass
class IdleCoresFinding:
    """A platform at all host cores (no idle core, the paper's Fig. 9) vs the same platform leaving cores idle.

    Both overheads are vs BM at the same cores.  ``worse_without_idle_cores`` is judged by CI overlap:
    ``True`` when the full-host overhead's CI lies wholly above the idle-core one, ``False`` when wholly
    below or overlapping, ``None`` when an interval is missing.
    """

    full: ScenarioKey
    full_overhead: Comparison | None
    idle: ScenarioKey | None
    idle_overhead: Comparison | None
    host_cores: int

    @property
    def worse_without_idle_cores(self) -> bool | None:
        if self.full_overhead is None or self.idle_overhead is None:
            return None
        a, b = self.full_overhead.relative_ci_pct, self.idle_overhead.relative_ci_pct
        if a is None or b is None:
            return None
        return a[0] > b[1]

    def to_dict(self) -> dict:
        return {"full": self.full.to_dict(), "full_overhead": self.full_overhead.to_dict() if self.full_overhead else None,
                "idle": self.idle.to_dict() if self.idle else None,
                "idle_overhead": self.idle_overhead.to_dict() if self.idle_overhead else None,
                "host_cores": self.host_cores, "worse_without_idle_cores": self.worse_without_idle_cores}


def idle_core_findings(scenarios: dict[ScenarioKey, ScenarioStats],
                       overheads: list[OverheadFinding]) -> list[IdleCoresFinding]:
    by_subject = {o.subject: o.e2e for o in overheads}
    out = []
    for key, stats in scenarios.items():
        if key.platform == BASELINE_PLATFORM or not stats.host_cores or key.cores != stats.host_cores:
            continue
        fewer = sorted((k for k in scenarios if k.with_(cores=key.cores) == key and k.cores < key.cores
                        and k in by_subject), key=lambda k: k.cores)
        idle = fewer[-1] if fewer else None
        out.append(IdleCoresFinding(key, by_subject.get(key), idle, by_subject.get(idle) if idle else None,
                                    stats.host_cores))
    return out


@dataclasses.dataclass
class ColdStartFinding:
    """Cold start (provision + process start + imports + model load + first inference) of one app on one platform,
    over every run of that app/platform/device (cores and CPU modes pooled)."""

    app: str
    platform: str
    device: str
    emulated: bool
    total_s: Summary
    parts_s: dict[str, Summary]

    def to_dict(self) -> dict:
        return {"app": self.app, "platform": self.platform, "device": self.device, "emulated": self.emulated,
                "total_s": summary_dict(self.total_s), "parts_s": {k: summary_dict(v) for k, v in self.parts_s.items()}}


COLD_START_PARTS = ("provision_s", "process_start_s", "import_s", "model_load_s", "first_inference_s")


def cold_starts(data: StudyData, scenarios: dict[ScenarioKey, ScenarioStats]) -> list[ColdStartFinding]:
    """Per app, platform and device (cores and CPU modes pooled): the cold start of every run that timed one, and
    each part that all of them timed (from the groups' aggregates, :mod:`e2ebench.study_runs`)."""
    totals: dict[tuple, Moments] = defaultdict(lambda: NO_MOMENTS)
    parts: dict[tuple, dict[str, Moments]] = defaultdict(lambda: defaultdict(lambda: NO_MOMENTS))
    for key in scenarios:
        group = data.groups.get(key)
        moments = group.aggregates.get("cold_start_s") if group is not None else None
        if not moments or not moments.n:
            continue
        where = (key.app, key.platform, key.device, key.emulated)
        totals[where] += moments
        for name, part in group.cold_parts_timed.items():
            parts[where][name] += part
    out = []
    for where in sorted(totals, key=lambda g: (g[3], g[0], g[2], platform_rank(g[1]))):
        n = totals[where].n
        out.append(ColdStartFinding(*where, total_s=interval_from_moments(totals[where], CONFIDENCE),
                                    parts_s={k: interval_from_moments(v, CONFIDENCE)
                                             for k, v in parts[where].items() if v.n == n}))
    return out


# ---------------------------------------------------------------------------------------------
# Thread pools against the CPU limit (issue 13): framework-default (or a fixed count) vs sized pools

THREADS_SIZED = "sized"
THREADS_FRAMEWORK_DEFAULT = "framework-default"
THREADS_PENALTY = "penalty"
THREADS_FASTER = "faster"
THREADS_NO_EFFECT = "no effect shown"
THREADS_NOT_ENOUGH_DATA = "not enough data"
THREAD_COUNTERS: tuple[str, ...] = ("throttled_time_s", "nr_throttled", "involuntary_ctx_switches")
THREAD_POOLS: tuple[str, ...] = ("torch_intra_op", "torch_inter_op", "onnxruntime_intra_op", "opencv", "openmp")
COMPUTE_POOLS: tuple[str, ...] = ("torch_intra_op", "onnxruntime_intra_op", "openmp", "opencv")
POOL_TITLES = {"torch_intra_op": "torch intra-op", "torch_inter_op": "torch inter-op",
               "onnxruntime_intra_op": "ONNX Runtime intra-op", "opencv": "OpenCV", "openmp": "OpenMP",
               "process_threads": "process threads", "os_cpu_count": "os.cpu_count()"}


def thread_policy_of(run: dict) -> str:
    """A run's thread policy: the store column, else the result's ``thread_policy``, else ``"sized"`` (runs made
    before policies existed sized their pools to the deployment)."""
    policy = run.get("thread_policy") or (run.get("result") or {}).get("thread_policy")
    return str(policy) if policy else THREADS_SIZED


def thread_policy_rank(policy: str) -> tuple:
    """Order of policies in tables and figures: sized, framework-default, then numbers ascending."""
    if policy == THREADS_SIZED:
        return (0, 0, "")
    if policy == THREADS_FRAMEWORK_DEFAULT:
        return (1, 0, "")
    try:
        return (2, int(policy), "")
    except ValueError:
        return (3, 0, policy)


@dataclasses.dataclass
class PolicyStats:
    """One thread policy of one scenario: E2E, the counters that show a quota's cost, and the pool sizes recorded.

    ``counters``: mean per run (over the timed window) of ``throttled_time_s``, ``nr_throttled`` and
    ``involuntary_ctx_switches``, each with its 95% CI; a counter no run recorded is absent.  ``pools``: the size
    each library's pool had (``thread_pools`` of the result, ``threads`` for older results), the most frequent value
    over the runs, plus ``process_threads`` and ``os_cpu_count`` (what a library sizing from the host sees).
    """

    key: ScenarioKey
    e2e_s: Summary
    counters: dict[str, Summary]
    pools: dict[str, int]

    @property
    def policy(self) -> str:
        return self.key.thread_policy

    @property
    def largest_compute_pool(self) -> tuple[str, int] | None:
        """The largest compute pool (torch intra-op, ONNX Runtime intra-op, OpenMP, OpenCV), as ``(name, size)``."""
        sizes = [(p, self.pools[p]) for p in COMPUTE_POOLS if p in self.pools]
        return max(sizes, key=lambda x: x[1]) if sizes else None

    def oversubscribed(self, cores: int) -> dict[str, int]:
        """The compute pools larger than the deployment's ``cores``."""
        return {p: self.pools[p] for p in COMPUTE_POOLS if p in self.pools and self.pools[p] > cores}

    def to_dict(self) -> dict:
        return {"thread_policy": self.policy, "scenario": self.key.to_dict(), "e2e_s": summary_dict(self.e2e_s),
                "counters": {k: summary_dict(v) for k, v in self.counters.items()}, "pools": dict(self.pools),
                "oversubscribed": self.oversubscribed(self.key.cores)}


def _policy_stats(stats: ScenarioStats, group: "RunGroup | None") -> PolicyStats:
    """The counters and pool sizes of a scenario's counted runs (the store's columns, aggregated in SQL)."""
    counters = {name: interval_from_moments(m, CONFIDENCE) for name, m in (group.counters if group else {}).items()
                if name in THREAD_COUNTERS and m.n}
    pools = {name: group.pools[name] for name in (*THREAD_POOLS, "process_threads", "os_cpu_count")
             if group is not None and name in group.pools}
    return PolicyStats(stats.key, stats.e2e_s, counters, pools)


@dataclasses.dataclass
class ThreadPolicyFinding:
    """A thread policy (``framework-default`` or a fixed count) vs ``sized`` pools in the same scenario.

    ``penalty_pct`` = 100 * (mean E2E with the policy / mean E2E sized - 1): positive = the policy is slower.  Its
    95% CI is the ratio's (delta method on the log of the ratio of means, Welch-Satterthwaite df, as for the
    overhead vs BM); the test is Welch's.  ``verdict``: *penalty* (p < 0.05 and the CI above 0), *faster* (p < 0.05
    and the CI below 0), *no effect shown*, or *not enough data* (fewer than two runs of a policy).
    """

    sized: PolicyStats
    other: PolicyStats
    comparison: Comparison                  # the policy (subject) vs sized (baseline), on E2E
    verdict: str

    @property
    def key(self) -> ScenarioKey:
        """The sized scenario (the row's identity)."""
        return self.sized.key

    @property
    def policy(self) -> str:
        return self.other.policy

    @property
    def cores(self) -> int:
        return self.key.cores

    @property
    def penalty_pct(self) -> float | None:
        return self.comparison.relative_pct

    @property
    def penalty_ci_pct(self) -> tuple[float, float] | None:
        return self.comparison.relative_ci_pct

    def to_dict(self) -> dict:
        return {"scenario": self.key.to_dict(), "thread_policy": self.policy, "cores": self.cores,
                "sized": self.sized.to_dict(), "policy": self.other.to_dict(), "e2e": self.comparison.to_dict(),
                "penalty_pct": self.penalty_pct, "penalty_ci_pct": self.penalty_ci_pct, "p_value": self.comparison.p_value,
                "verdict": self.verdict}


def _thread_verdict(cmp: Comparison) -> str:
    if cmp.significant is None:
        return THREADS_NOT_ENOUGH_DATA
    ci = cmp.relative_ci_pct
    if cmp.significant and ci is not None and ci[0] > 0:
        return THREADS_PENALTY
    if cmp.significant and ci is not None and ci[1] < 0:
        return THREADS_FASTER
    return THREADS_NO_EFFECT


def thread_policy_penalties(scenarios: dict[ScenarioKey, ScenarioStats],
                            groups: dict) -> list[ThreadPolicyFinding]:
    """One finding per scenario measured with ``sized`` pools and another policy: that policy vs sized.

    ``scenarios``: every policy's scenarios (not only the sized ones); ``groups``: their runs as read
    (:attr:`StudyData.groups`: counters and pool sizes).  Scenarios with a policy but no sized twin give no finding.
    """
    out = []
    for key in sorted(scenarios, key=lambda k: (k.sort_key(), thread_policy_rank(k.thread_policy))):
        if key.thread_policy == THREADS_SIZED:
            continue
        sized = scenarios.get(key.with_(thread_policy=THREADS_SIZED))
        if sized is None:
            continue
        stats = scenarios[key]
        cmp = compare_stats("e2e_s", stats, sized)
        out.append(ThreadPolicyFinding(_policy_stats(sized, groups.get(sized.key)), _policy_stats(stats, groups.get(key)), cmp,
                                       _thread_verdict(cmp)))
    return out


def primary_scenarios(scenarios: dict[ScenarioKey, ScenarioStats]) -> dict[ScenarioKey, ScenarioStats]:
    """The scenarios every other finding reads: those with ``sized`` pools (e2ebench's default), or — when no
    scenario has them — those of the most frequent policy, so that no comparison mixes policies."""
    policies: dict[str, int] = defaultdict(int)
    for key in scenarios:
        policies[key.thread_policy] += 1
    if len(policies) <= 1:
        return dict(scenarios)
    keep = THREADS_SIZED if THREADS_SIZED in policies else max(policies, key=lambda p: (policies[p], p))
    return {k: v for k, v in scenarios.items() if k.thread_policy == keep}


# ---------------------------------------------------------------------------------------------
# Everything at once


@dataclasses.dataclass
class Findings:
    """All findings of one study, for one emulation class (native by default)."""

    emulated: bool
    scenarios: dict[ScenarioKey, ScenarioStats]
    overheads: list[OverheadFinding]
    knees: list[KneeFinding]
    pinning: list[PinningFinding]
    gpu: list[GpuPayoff]
    chr: ChrFinding
    idle_cores: list[IdleCoresFinding]
    cold_starts: list[ColdStartFinding]
    host_cores: int | None
    knee_tolerance_pct: float
    method: str = SIGNIFICANCE_METHOD
    cache: str | None = None          # set by for_cache(): the page-cache state these findings are restricted to
    thread_policies: list[ThreadPolicyFinding] = dataclasses.field(default_factory=list)
    policies: list[str] = dataclasses.field(default_factory=list)   # every thread policy measured (all scenarios)

    def to_dict(self) -> dict:
        return {
            "emulated": self.emulated, "host_cores": self.host_cores, "knee_tolerance_pct": self.knee_tolerance_pct,
            "significance_method": self.method,
            "scenarios": [s.to_dict() for s in self.scenarios.values()],
            "overhead_vs_bm": [o.to_dict() for o in self.overheads],
            "scale_up_knees": [k.to_dict() for k in self.knees],
            "pinning": [p.to_dict() for p in self.pinning],
            "gpu_payoff": [g.to_dict() for g in self.gpu],
            "chr": self.chr.to_dict(),
            "idle_host_cores": [i.to_dict() for i in self.idle_cores],
            "cold_start": [c.to_dict() for c in self.cold_starts],
            "thread_policies": list(self.policies),
            "thread_policy_penalties": [t.to_dict() for t in self.thread_policies],
        }

    @property
    def caches(self) -> list[str]:
        """The page-cache states of the E2E scenarios, warm first."""
        present = {k.cache for k in self.scenarios if k.mode == "e2e"}
        return [c for c in ("warm", "cold") if c in present]

    def for_cache(self, cache: str) -> "Findings":
        """The findings of one page-cache state: its E2E scenarios plus every inference-only one (no io is timed
        there, so those serve both states), and the findings about them.  Cold starts are kept as they are."""
        def mine(key: ScenarioKey) -> bool:
            return key.cache == cache or key.mode == "inference-only"

        suffix = "" if cache == "warm" else f", {cache_title(cache)}"
        correlation = {k: v for k, v in self.chr.correlation.items()
                       if (k.endswith(suffix) if suffix else "," not in k)}
        return dataclasses.replace(
            self,
            scenarios={k: v for k, v in self.scenarios.items() if mine(k)},
            overheads=[o for o in self.overheads if mine(o.subject)],
            knees=[k for k in self.knees if mine(k.key)],
            pinning=[p for p in self.pinning if mine(p.pinned)],
            gpu=[g for g in self.gpu if mine(g.cpu)],
            chr=ChrFinding([p for p in self.chr.points if mine(p.key)], correlation),
            idle_cores=[i for i in self.idle_cores if mine(i.full)],
            cache=cache,
            thread_policies=[t for t in self.thread_policies if mine(t.key)],
        )


def analyse(data: StudyData, emulated: bool = False,
            knee_tolerance_pct: float = DEFAULT_KNEE_TOLERANCE_PCT) -> Findings:
    """Every finding over the native (``emulated=False``) or the emulated scenarios of a study."""
    every_policy = data.select(emulated)
    scenarios = primary_scenarios(every_policy)         # no finding below compares two thread policies ...
    overheads = overhead_vs_bm(scenarios)
    return Findings(
        emulated=emulated,
        scenarios=scenarios,
        overheads=overheads,
        knees=scale_up_knees(scenarios, knee_tolerance_pct),
        pinning=pinning_gains(scenarios),
        gpu=gpu_payoffs(scenarios),
        chr=chr_finding(scenarios, overheads),
        idle_cores=idle_core_findings(scenarios, overheads),
        cold_starts=cold_starts(data, scenarios),
        host_cores=data.host_cores,
        knee_tolerance_pct=knee_tolerance_pct,
        thread_policies=thread_policy_penalties(every_policy, data.groups),    # ... but this one
        policies=sorted({k.thread_policy for k in every_policy}, key=thread_policy_rank),
    )


# ---------------------------------------------------------------------------------------------
# Formatting helpers shared by recommend, report and the CLI


def fmt_s(summary: Summary | None, digits: int = 3) -> str:
    """``1.234 s ± 0.012`` (95% CI half-width), or ``1.234 s (n=1)``."""
    if summary is None:
        return "—"
    if not has_ci(summary):
        return f"{fmt_number(summary.mean, digits)} s (n={summary.n}, no CI)"
    return f"{fmt_number(summary.mean, digits)} s ± {fmt_number(summary.half_width, 2)}"


def fmt_number(value: float, digits: int = 3) -> str:
    """``digits`` significant digits, trailing zeros kept (1.00, 0.0120), no exponent below 10**digits."""
    if not math.isfinite(value):
        return str(value)
    if value != 0 and abs(value) >= 10 ** digits:
        return f"{value:.0f}"
    return f"{value:#.{digits}g}".rstrip(".")


def fmt_pct(value: float | None, ci: tuple[float, float] | None = None, signed: bool = True) -> str:
    """``+12.0% ± 3.0`` (CI half-width), ``+64.5% [-20.1, +240.3]`` when the CI is clearly asymmetric, or
    ``+12.0% (no CI)``."""
    if value is None:
        return "—"
    digits = 2 if abs(value) < 1 else 1
    text = f"{value:+.{digits}f}%" if signed else f"{value:.{digits}f}%"
    if ci is None:
        return text + " (no CI)"
    half = abs(ci[1] - ci[0]) / 2
    lower, upper = value - ci[0], ci[1] - value
    if abs(upper - lower) > 0.2 * max(half, 1e-12):      # a clearly asymmetric interval (a ratio's): show both ends
        d = 2 if half < 1 else 1
        return text + f" [{ci[0]:+.{d}f}, {ci[1]:+.{d}f}]"
    return text + (f" ± {half:.2f}" if half < 1 else f" ± {half:.1f}")


def fmt_ratio(value: tuple[float, tuple[float, float] | None] | None) -> str:
    if value is None:
        return "—"
    ratio, ci = value
    if ci is None:
        return f"{ratio:.2f}x (no CI)"
    return f"{ratio:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]"


def significance_text(cmp: Comparison) -> str:
    if cmp.p_value is None:
        return "not tested (fewer than 2 runs)"
    test = f"paired over {cmp.pairs} rounds, p={cmp.p_value:.3g}" if cmp.method == "paired" else f"Welch p={cmp.p_value:.3g}"
    return f"{'significant' if cmp.significant else 'not significant'}, {test}"

