"""What the analysis reads of a study's runs, with SQL (issue 14, item 9: a store that scales with the fleet).

``show``, ``report`` and ``recommend`` used to turn every run into a dict of ~40 keys (twice for ``show``): at
10^5 runs that was 20 s and 650 MiB for ``show``.  This module reads a study with a few queries instead:

* **per run**, only what is compared run by run -- id, round, outlier flag, E2E and the five phase times of the
  measured successful runs -- as plain tuples, grouped by scenario (``scenario``, ``host_type``, ``emulated``) and
  turned into per-group columns (lists), with no dict per run;
* **per group**, everything that is only ever averaged, aggregated by SQLite (``COUNT``/``SUM``/``SUM`` of squares,
  ``GROUP BY``): throughput, LoadGen p99, cost per sample, cold start, the runs' counts per phase and status; and,
  for ``report``/``recommend`` only (``detail``), the cold-start parts (``json_each`` over the small
  ``cold_start_json`` column), the throttling counters and the most frequent pool sizes.

Every query runs on the columns of store schema 6, and the per-run and per-group ones are answered from the covering
index ``runs_analysis`` of schema 7 (:data:`e2ebench.store.ANALYSIS_INDEX_COLUMNS`), whose entries are ~150 bytes
where a table row is ~4 KB.  A read-only store of an older schema is read through a migrated copy in memory
(:meth:`e2ebench.store.Store.for_analysis`).

Means and intervals of the per-run columns are computed as before (:func:`e2ebench.stats.confidence_interval`);
those of the aggregated numbers from their count, sum and sum of squares (:func:`interval_from_moments`), which
agrees with the two-pass formula to ~1e-12 relative for timings (relative spread far above 1e-6).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

from e2ebench.stats import ConfidenceInterval, t_critical

PHASES = ("io", "pre", "infer", "post", "other")
# A group of runs: its scenario string, host type, emulated flag and thread policy -- and, in the rare store whose
# runs of one scenario string disagree in the other columns (results written by hand), those columns too.
GROUP_COLUMNS = ("scenario", "host_type", "emulated", "thread_policy")
KEY_COLUMNS = ("app", "platform", "cores", "cpu_mode", "device", "mode", "cache")
GroupKey = tuple
COUNTED = "study_id = ? AND phase = 'measure' AND status = 'ok' AND e2e_s IS NOT NULL"
COUNTERS = ("throttled_time_s", "nr_throttled", "involuntary_ctx_switches")
POOLS = ("torch_intra_op", "torch_inter_op", "onnxruntime_intra_op", "opencv", "openmp", "process_threads",
         "os_cpu_count")
# aggregated per group over the counted runs: name -> SQL expression.  ``show`` (no ``detail``) needs only the means
# of SHOWN_MEANS; report and recommend (``detail``) the intervals of the others (their phases come per run).
SHOWN_MEANS = (*(f"{p}_s" for p in PHASES), "throughput_sps", "cold_start_s")
AGGREGATED = {
    **{f"{p}_s": f"{p}_s" for p in PHASES},
    "throughput_sps": "throughput_sps",
    "latency_p99_ms": "loadgen_p99_ms",
    # e2e / completed samples (the requests when a run did not say; a run that completed 0 is left out)
    "cost_basis_s_per_sample": "e2e_s / (CASE WHEN completed IS NOT NULL THEN NULLIF(completed, 0) "
                               "ELSE NULLIF(requests, 0) END)",
    "cold_start_s": "cold_start_s",
}


@dataclasses.dataclass(frozen=True)
class Moments:
    """Count, sum and sum of squares of one number over some runs."""

    n: int
    total: float
    total_sq: float

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)

    def interval(self, confidence: float) -> ConfidenceInterval | None:
        return interval_from_moments(self, confidence) if self.n else None


NO_MOMENTS = Moments(0, 0.0, 0.0)


def interval_from_moments(m: Moments, confidence: float) -> ConfidenceInterval:
    """The Student-t interval of a mean from count, sum and sum of squares (as
    :func:`e2ebench.stats.confidence_interval` computes it from the values)."""
    if m.n == 0:
        return ConfidenceInterval(0, math.nan, math.nan, math.inf, confidence)
    mean = m.total / m.n
    if m.n < 2:
        return ConfidenceInterval(m.n, mean, math.nan, math.inf, confidence)
    var = max(0.0, (m.total_sq - m.total * mean) / (m.n - 1))
    sd = math.sqrt(var)
    return ConfidenceInterval(m.n, mean, sd, t_critical(confidence, m.n - 1) * sd / math.sqrt(m.n), confidence)


@dataclasses.dataclass
class RunGroup:
    """The measured successful runs (with an E2E time) of one scenario on one host type, as columns, oldest first;
    outliers included (``outlier`` says which)."""

    scenario: str
    host_type: str | None
    emulated: bool
    thread_policy: str
    columns: dict[str, Any]                  # KEY_COLUMNS: app, platform, cores, cpu_mode, device, mode, cache
    ids: list[int]
    rounds: list
    outlier: list[bool]
    e2e: list[float]
    phases: dict[str, list]                  # phase -> value per run (None where a run did not time it); detail only
    aggregates: dict[str, Moments] = dataclasses.field(default_factory=dict)   # AGGREGATED over the counted runs
    requests: int | None = None              # of the latest counted run
    # (first id, platform_info.host_cpus, environment.host_cpus, runs) per value pair the counted runs recorded
    host_cpus: list[tuple[int, Any, Any, int]] = dataclasses.field(default_factory=list)
    # detail (report, recommend): over the counted runs
    cold_parts: dict[str, Moments] = dataclasses.field(default_factory=dict)            # every counted run
    cold_parts_timed: dict[str, Moments] = dataclasses.field(default_factory=dict)      # runs with cold_start_s
    counters: dict[str, Moments] = dataclasses.field(default_factory=dict)
    pools: dict[str, int] = dataclasses.field(default_factory=dict)                     # the most frequent size

    def counted(self, keep_outliers: bool) -> list[int]:
        """Indices of the runs the means count."""
        return list(range(len(self.ids))) if keep_outliers else [i for i, o in enumerate(self.outlier) if not o]


@dataclasses.dataclass
class ScenarioCounts:
    """Every run of one scenario on one host type (any phase, any status): what ``show`` counts."""

    runs: int = 0
    warmup_runs: int = 0
    failed: int = 0
    emulated: bool = False
    trailing_failures: int = 0
    last_error: str | None = None
    first_id: int = 0                        # the scenario's first run (the order show lists unplanned ones in)


@dataclasses.dataclass
class StudyRuns:
    """A study's runs as the analysis reads them (see the module docstring)."""

    study: dict
    keep_outliers: bool
    groups: dict[GroupKey, RunGroup]
    counts: dict[tuple[str, str | None], ScenarioCounts]
    excluded: dict[str, int]
    drifts: list                               # e2ebench.drift.HostDrift per host ([] without calibration)
    detail: bool = False

    @property
    def drift_pct(self) -> float:
        from e2ebench.drift import drift_pct_of

        return drift_pct_of(self.drifts)

    def used_run_ids(self) -> set[int]:
        return {g.ids[i] for g in self.groups.values() for i in g.counted(self.keep_outliers)}


def _calibrates(study: dict, adhoc: bool) -> bool:
    if adhoc:
        return False
    repetition = ((study.get("config") or {}).get("config") or {}).get("repetition") or {}
    return repetition.get("calibrate", True) is not False


def _rows(store, sql: str, args: Sequence[Any]) -> list[tuple]:
    """Plain tuples (no ``sqlite3.Row``: a study can hold 10^5 runs), store faults raised as such."""
    with store._guard():
        cursor = store.db.raw.cursor()
        cursor.row_factory = None
        return cursor.execute(sql, tuple(args)).fetchall()


def load(store, study: dict, keep_outliers: bool, detail: bool = False,
         exclude_ids: Iterable[int] = ()) -> StudyRuns:
    """Read ``study`` (a study record of ``store``) for the analysis.

    ``keep_outliers``: count runs flagged as outliers in the means; ``detail``: also the cold-start parts, counters
    and pool sizes (``report``, ``recommend``); ``exclude_ids``: runs to leave out as if they were not stored (ad-hoc
    runs of another workload, see :func:`e2ebench.analysis.adhoc_other_workloads`)."""
    from e2ebench.store import ADHOC_STUDY

    store = store.for_analysis()
    study_id = study["id"]
    excluded_ids = sorted({int(i) for i in exclude_ids})
    # ad-hoc runs of another workload: left out of every query (a JSON list of ids, never SQL text)
    not_excluded = " AND runs.id NOT IN (SELECT value FROM json_each(?))" if excluded_ids else ""
    extra = [json.dumps(excluded_ids)] if excluded_ids else []
    counted_sql = COUNTED + not_excluded + ("" if keep_outliers else " AND outlier = 0")

    # -- per run: the values compared run by run ----------------------------------------------------------
    # which key columns go with each group (one row per group unless the runs of a scenario string disagree)
    combos = _rows(store, f"SELECT DISTINCT {', '.join(GROUP_COLUMNS + KEY_COLUMNS)} FROM runs WHERE {COUNTED}"
                          f"{not_excluded}", [study_id, *extra])
    by_group: dict[tuple, list[tuple]] = defaultdict(list)
    for combo in combos:
        by_group[_norm(combo[:len(GROUP_COLUMNS)])].append(combo)
    wide = any(len(v) > 1 for v in by_group.values())
    group_columns = GROUP_COLUMNS + (KEY_COLUMNS if wide else ())
    width = len(group_columns)
    # one query per group, each a seek in the index: every row holds only the run's own values (at 10^5 runs this
    # is half the time of one query whose rows repeat the group's columns)
    per_run = "id, round, outlier, e2e_s" + "".join(f", {p}_s" for p in PHASES) * detail
    match = " AND ".join(f"{c} IS ?" for c in group_columns)
    sql = f"SELECT {per_run} FROM runs WHERE {COUNTED}{not_excluded} AND {match}"
    groups: dict[GroupKey, RunGroup] = {}
    for combo in combos:
        raw_key = combo[:width]
        key = _norm(raw_key)
        if key in groups:
            continue
        members = _rows(store, sql, [study_id, *extra, *raw_key])
        members.sort()                                                # oldest first (the index orders by value)
        columns = list(zip(*members))
        names = dict(zip(KEY_COLUMNS, combo[len(GROUP_COLUMNS):]))
        groups[key] = RunGroup(key[0], key[1], key[2], key[3], names, ids=list(columns[0]), rounds=list(columns[1]),
                               outlier=[bool(o) for o in columns[2]], e2e=list(columns[3]),
                               phases={p: list(columns[4 + i]) for i, p in enumerate(PHASES)} if detail else {})

    def group_of(row: tuple) -> RunGroup | None:
        return groups.get(_norm(row[:width]))

    select_group = ", ".join(group_columns)
    by = ", ".join(str(i + 1) for i in range(width))

    # -- per group: what is only averaged --------------------------------------------------------------------
    # (at 10^5 runs every aggregate function costs ~0.01 s: show asks only for the means it prints)
    names = [n for n in AGGREGATED if n[:-2] not in PHASES] if detail else list(SHOWN_MEANS)
    step = 3 if detail else 2
    sums = ", ".join(f"COUNT({AGGREGATED[n]}), TOTAL({AGGREGATED[n]})"
                     + (f", TOTAL(({AGGREGATED[n]}) * ({AGGREGATED[n]}))" if detail else "") for n in names)
    for row in _rows(store, f"SELECT {select_group}, {sums} FROM runs WHERE {counted_sql} GROUP BY {by}",
                     [study_id, *extra]):
        group = group_of(row)
        if group is not None:
            group.aggregates = {name: Moments(int(row[width + step * i]), float(row[width + 1 + step * i]),
                                              float(row[width + 2 + step * i]) if detail else math.nan)
                                for i, name in enumerate(names)}
    if detail:
        _load_requests_and_hosts(store, groups, group_of, select_group, by, width, counted_sql, [study_id, *extra])

    # -- every run, any phase and status: what show counts, and what was left out --------------------------
    # (grouped in the index's order -- phase, status, scenario, host type -- and summed up here)
    counts: dict[tuple[str, str | None], ScenarioCounts] = {}
    last_ok: dict[tuple[str, str | None], int] = {}
    excluded: dict[str, int] = defaultdict(int)
    if excluded_ids:
        from e2ebench.analysis import ADHOC_OTHER_WORKLOAD

        excluded[ADHOC_OTHER_WORKLOAD] = len(excluded_ids)
    not_ok: set[tuple[str, str]] = set()
    for phase, status, scenario, host_type, n, emulated, first, last, outliers, no_e2e, no_e2e_outliers in _rows(
            store, "SELECT phase, status, scenario, host_type, COUNT(*), MAX(emulated), MIN(id), MAX(id), "
                   "TOTAL(outlier != 0), TOTAL(outlier = 0 AND e2e_s IS NULL), TOTAL(outlier != 0 AND e2e_s IS NULL) "
                   "FROM runs "
                   f"WHERE study_id = ?{not_excluded} GROUP BY 1, 2, 3, 4", [study_id, *extra]):
        entry = counts.setdefault((scenario, host_type), ScenarioCounts(first_id=int(first)))
        entry.runs += int(n)
        entry.warmup_runs += int(n) if phase == "warmup" else 0
        entry.failed += int(n) if status != "ok" else 0
        entry.emulated = entry.emulated or bool(emulated)
        entry.first_id = min(entry.first_id, int(first))
        if status == "ok":
            last_ok[(scenario, host_type)] = max(last_ok.get((scenario, host_type), 0), int(last))
        else:
            not_ok.add((phase, status))
        # the first reason that applies
        if phase != "measure":
            excluded[f"phase {phase}"] += int(n)
        elif status != "ok":
            excluded[f"status {status}"] += int(n)
        else:
            if not keep_outliers and outliers:
                excluded["outlier"] += int(outliers)
            no_e2e = int(no_e2e) + (int(no_e2e_outliers) if keep_outliers else 0)
            if no_e2e:
                excluded["no e2e_s"] += no_e2e
    failures = []
    for phase, status in sorted(not_ok):       # the failed runs, each (phase, status) a seek in the index
        failures += _rows(store, f"SELECT scenario, host_type, id, error FROM runs WHERE study_id = ? AND phase = ? "
                                 f"AND status = ?{not_excluded}", [study_id, phase, status, *extra])
    for scenario, host_type, run_id, error in sorted(failures, key=lambda row: row[2]):
        if run_id > last_ok.get((scenario, host_type), 0):        # failed after the scenario's last success
            entry = counts[(scenario, host_type)]
            entry.trailing_failures += 1
            entry.last_error = error

    drifts = []
    if _calibrates(study, study_id == ADHOC_STUDY):
        from e2ebench.drift import study_drift

        rounds = {}
        for key, group in groups.items():
            rounds[key] = {int(group.rounds[i]): group.e2e[i] for i in group.counted(keep_outliers)
                           if group.rounds[i] is not None}
        drifts = study_drift(store, study_id, rounds)

    out = StudyRuns(study, keep_outliers, groups, dict(counts), dict(excluded), drifts, detail)
    if detail:
        _load_detail(store, out, counted_sql, [study_id, *extra], group_columns)
    return out


def _load_requests_and_hosts(store, groups, group_of, select_group: str, by: str, width: int, counted_sql: str,
                             args: list) -> None:
    """The latest counted run's requests, and the host core counts the runs recorded (``report``, ``recommend``)."""
    # the latest counted run's requests (SQLite gives the bare column of the row that has the MAX)
    for row in _rows(store, f"SELECT {select_group}, MAX(id), requests FROM runs WHERE {counted_sql} GROUP BY {by}",
                     args):
        group = group_of(row)
        if group is not None and isinstance(row[width + 1], (int, float)) and row[width + 1]:
            group.requests = int(row[width + 1])
    # the host core counts the runs recorded
    for row in _rows(store, f"SELECT {select_group}, MIN(id), platform_host_cpus, env_host_cpus, COUNT(*) FROM runs "
                            f"WHERE {counted_sql} GROUP BY {by}, {width + 2}, {width + 3}", args):
        group = group_of(row)
        if group is not None:
            group.host_cpus.append((int(row[width]), row[width + 1], row[width + 2], int(row[width + 3])))
    for group in groups.values():
        group.host_cpus.sort(key=lambda entry: entry[0])


def _norm(key: tuple) -> tuple:
    """A group key as read from SQL, with ``emulated`` as a bool."""
    return (key[0], key[1], bool(key[2]), *key[3:])


def _load_detail(store, runs: StudyRuns, counted_sql: str, args: list, group_columns: tuple) -> None:
    """Cold-start parts, throttling counters and pool sizes per group (``report`` and ``recommend``)."""
    from e2ebench.store import COLD_START_PARTS

    groups = runs.groups
    width = len(group_columns)
    select_group = ", ".join(group_columns)
    by = ", ".join(str(i + 1) for i in range(width))
    parts_sql = []
    for part in COLD_START_PARTS:       # each part over every counted run, and over those that timed a cold start
        column, timed = f"cold_{part}", f"CASE WHEN cold_start_s IS NOT NULL THEN cold_{part} END"
        parts_sql.append(f"COUNT({column}), TOTAL({column}), TOTAL({column} * {column}), "
                         f"COUNT({timed}), TOTAL({timed}), TOTAL(({timed}) * ({timed}))")
    counters_sql = ", ".join(f"COUNT({c}), TOTAL({c}), TOTAL({c} * {c})" for c in COUNTERS)
    other = False
    for row in _rows(store, f"SELECT {select_group}, {', '.join(parts_sql)}, {counters_sql}, TOTAL(cold_start_other) "
                            f"FROM runs WHERE {counted_sql} GROUP BY {by}", args):
        group = groups.get(_norm(row[:width]))
        if group is None:
            continue
        at = width
        for part in COLD_START_PARTS:
            every, timed = Moments(int(row[at]), float(row[at + 1]), float(row[at + 2])), \
                Moments(int(row[at + 3]), float(row[at + 4]), float(row[at + 5]))
            at += 6
            if every.n:
                group.cold_parts[part] = every
            if timed.n:
                group.cold_parts_timed[part] = timed
        for name in COUNTERS:
            moments = Moments(int(row[at]), float(row[at + 1]), float(row[at + 2]))
            at += 3
            if moments.n:
                group.counters[name] = moments
        other = other or bool(row[at])
    if other:        # parts of other names (a third-party platform's): read from the JSON of the runs that have them
        known = ", ".join(f"'{part}'" for part in COLD_START_PARTS)
        for row in _rows(store, f"SELECT {select_group}, cold_start_s IS NOT NULL, j.key, COUNT(*), TOTAL(j.value), "
                                f"TOTAL(j.value * j.value) FROM runs, json_each(runs.cold_start_json) AS j WHERE "
                                f"{counted_sql} AND cold_start_other > 0 AND j.key NOT IN ({known}) "
                                f"AND j.type IN ('integer', 'real') GROUP BY {by}, {width + 1}, {width + 2}", args):
            group = groups.get(_norm(row[:width]))
            timed, part, n, total, total_sq = row[width:]
            if group is None:
                continue
            moments = Moments(int(n), float(total), float(total_sq))
            group.cold_parts[part] = group.cold_parts.get(part, NO_MOMENTS) + moments
            if timed:
                group.cold_parts_timed[part] = group.cold_parts_timed.get(part, NO_MOMENTS) + moments
    pools = ", ".join(f"pool_{p}" for p in POOLS)
    pool_counts: dict[GroupKey, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    pool_by = ", ".join(str(width + 2 + i) for i in range(len(POOLS)))
    for row in _rows(store, f"SELECT {select_group}, COUNT(*), {pools} FROM runs WHERE {counted_sql} "
                            f"GROUP BY {by}, {pool_by}", args):
        key = _norm(row[:width])
        group = groups.get(key)
        if group is None:
            continue
        n = int(row[width])
        for i, pool in enumerate(POOLS):
            value = row[width + 1 + i]
            if isinstance(value, (int, float)) and math.isfinite(value):
                pool_counts[key][pool][int(value)] += n
    for key, by_pool in pool_counts.items():
        groups[key].pools = {pool: max(sizes, key=lambda v: (sizes[v], v)) for pool, sizes in by_pool.items()}
    for group in groups.values():       # the parts in the order of their names (as the stored JSON has them)
        group.cold_parts = dict(sorted(group.cold_parts.items()))
        group.cold_parts_timed = dict(sorted(group.cold_parts_timed.items()))
