"""Runs a study: warm-ups, adaptive repetition, interleaved order, outliers, failures, resume.

Every run provisions its deployment afresh (``platform.session(...)`` around
:func:`e2ebench.runner.execute`), so each run's cold start is measured and nothing is shared between
runs except the cached data set.  Each finished run — successful or failed — is committed to the
store on its own, with ``phase`` (``warmup``/``measure``) and a per-(scenario, phase) ``seq``;
the store's unique index on (study, scenario, phase, seq) makes resuming idempotent: a resumed study
reads what is stored and runs only what is missing.  A run that is interrupted (Ctrl-C, SIGTERM,
SIGKILL, power loss) is never stored; its resources are released by the platform's context managers
(Ctrl-C/SIGTERM) or by :func:`e2ebench.platforms.cgroups.remove_stale` at the next start (SIGKILL).

Order: the study proceeds in *rounds*; each round gives every still-active scenario one run, in an
order shuffled by ``random.Random(f"{seed}:{round}")``, so that slow drift of the machine (thermal,
background load, page cache) is spread over all scenarios instead of biasing the ones measured last.
A resumed study continues with round numbers after the number of runs already stored.  Every run stores its
round (``runs.round``), so that the analysis can compare two scenarios run by run within rounds.

Calibration (``repetition.calibrate``, on by default): every round starts with the calibration probe
(:mod:`e2ebench.calibration`), stored per round; the host's drift it measures (:mod:`e2ebench.drift`) goes into
the interval the stopping rule uses (:func:`e2ebench.stats.drift_aware_interval`).  A probe that fails is
reported once and the study goes on without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import math
import os
import random
import time
from pathlib import Path
from collections import defaultdict
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from e2ebench.result import RunResult
from e2ebench.runner import Workload, default_data, execute, housekeeping, platform_workdir, say_on_stderr
from e2ebench.stats import (StopDecision, drift_aware_interval, outlier_mask,
                            predicted_runs_needed, stopping_decision)
from e2ebench.store import Store, StoreError
from e2ebench.study import Plan, PlannedScenario, RepetitionPolicy, Study
from e2ebench.study_runs import ScenarioCounts

if TYPE_CHECKING:
    from e2ebench.study_runs import StudyRuns

PHASE_WARMUP, PHASE_MEASURE = "warmup", "measure"

# Scenario states
PENDING, ACTIVE, TARGET, MAX_RUNS, ABANDONED, INFEASIBLE, ADHOC, DRIFT = (
    "pending", "active", "target", "max-runs", "abandoned", "infeasible", "ad-hoc", "drift")
ANSWERED = (TARGET, MAX_RUNS, DRIFT)
STATUS_TITLES = {
    PENDING: "not started", ACTIVE: "running", TARGET: "CI target reached", MAX_RUNS: "max runs reached",
    ABANDONED: "abandoned", INFEASIBLE: "infeasible", ADHOC: "ad-hoc runs (e2ebench run)",
    DRIFT: "as narrow as the host's drift allows",
}

# Study states (studies.status in the store)
STUDY_RUNNING, STUDY_COMPLETE, STUDY_INCOMPLETE, STUDY_INTERRUPTED = "running", "complete", "incomplete", "interrupted"


class StudyLockedError(RuntimeError):
    """Another process is running the same study on the same store."""


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def round_order(keys: list[str], seed: int, round_index: int) -> list[str]:
    """The order in which the active scenarios run in one round: sorted, then shuffled by
    ``random.Random(f"{seed}:{round_index}")`` (string seeds are hashed with SHA-512: stable across
    Python versions and processes)."""
    order = sorted(keys)
    random.Random(f"{seed}:{round_index}").shuffle(order)
    return order


# ---------------------------------------------------------------------------
# Per-scenario state


@dataclasses.dataclass
class ScenarioState:
    """What the store holds for one scenario of the study, and what it still needs."""

    planned: PlannedScenario
    warmup_next_seq: int = 0
    measure_next_seq: int = 0
    measured: list[tuple[int, float]] = dataclasses.field(default_factory=list)   # (run id, e2e_s) of ok runs
    rounds: dict[int, int] = dataclasses.field(default_factory=dict)             # run id -> round
    outliers: dict[int, bool] = dataclasses.field(default_factory=dict)          # run id -> flagged
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    run_wall_s: list[float] = dataclasses.field(default_factory=list)
    status: str = PENDING
    data: Path | None = None
    drift_pct: float = 0.0                   # the host's drift, set by the runner after every probe
    host_type: str | None = None             # the fleet machine type measured (None: this host; e2ebench.fleet)
    _remaining_cache: tuple | None = dataclasses.field(default=None, repr=False)

    @property
    def key(self) -> str:
        return self.planned.key

    def values(self, keep_outliers: bool) -> list[float]:
        """E2E times (s) of the successful measured runs that count for the mean."""
        return [v for run_id, v in self.measured if keep_outliers or not self.outliers.get(run_id, False)]

    @property
    def outlier_count(self) -> int:
        return sum(1 for run_id, _ in self.measured if self.outliers.get(run_id, False))

    def decision(self, policy: RepetitionPolicy, keep_outliers: bool) -> StopDecision:
        return stopping_decision(self.values(keep_outliers), policy.min_runs, policy.max_runs,
                                 policy.target_ci_halfwidth_pct, policy.confidence, runs_done=len(self.measured),
                                 drift_pct=self.drift_pct)

    def round_values(self, keep_outliers: bool) -> dict[int, float]:
        """{round: E2E} of the counted runs whose round is known."""
        return {self.rounds[run_id]: v for run_id, v in self.measured
                if run_id in self.rounds and (keep_outliers or not self.outliers.get(run_id, False))}

    @property
    def abandon_reason(self) -> str | None:
        if self.status != ABANDONED:
            return None
        return f"failed {self.consecutive_failures} runs in a row; last error: {self.last_error}"

    def refresh_status(self, policy: RepetitionPolicy, keep_outliers: bool) -> str:
        if self.consecutive_failures >= policy.max_consecutive_failures:
            self.status = ABANDONED
        elif self.warmup_next_seq < policy.warmup_runs:
            self.status = ACTIVE if (self.warmup_next_seq or self.measured or self.failures) else PENDING
        else:
            decision = self.decision(policy, keep_outliers)
            if decision.stop:
                self.status = {"target": TARGET, "drift": DRIFT}.get(decision.reason, MAX_RUNS)
            else:
                self.status = ACTIVE if (self.warmup_next_seq or self.measured or self.failures) else PENDING
        return self.status

    @property
    def needs_run(self) -> bool:
        return self.status in (PENDING, ACTIVE)

    def next_run(self, policy: RepetitionPolicy) -> tuple[str, int]:
        if self.warmup_next_seq < policy.warmup_runs:
            return PHASE_WARMUP, self.warmup_next_seq
        return PHASE_MEASURE, self.measure_next_seq

    def begin_run(self, policy: RepetitionPolicy) -> tuple[str, int]:
        """The (phase, seq) of the run that starts now: :meth:`next_run` (a fleet's per-machine-type state takes its
        seq from the counter its scenario's states share, so that two of them in flight never get the same one)."""
        return self.next_run(policy)

    def record_seq(self, phase: str, seq: int) -> None:
        """Count a stored run (its phase and seq; ``-1`` when unknown): the next run of that phase comes after it."""
        if phase == PHASE_WARMUP:
            self.warmup_next_seq = max(self.warmup_next_seq, seq + 1)
        else:
            self.measure_next_seq = max(self.measure_next_seq, seq + 1)

    def remaining_runs_estimate(self, policy: RepetitionPolicy, keep_outliers: bool) -> int:
        """Runs this scenario probably still needs (warm-ups + measured; see :func:`predicted_runs_needed`).

        Cached until the scenario's runs change (the live display asks for it on every refresh).
        """
        version = (self.warmup_next_seq, self.measure_next_seq, len(self.measured), self.status, keep_outliers,
                   self.drift_pct)
        if self._remaining_cache is not None and self._remaining_cache[0] == version:
            return self._remaining_cache[1]
        remaining = self._remaining_runs(policy, keep_outliers)
        self._remaining_cache = (version, remaining)
        return remaining

    def _remaining_runs(self, policy: RepetitionPolicy, keep_outliers: bool) -> int:
        if not self.needs_run:
            return 0
        warmups = max(0, policy.warmup_runs - self.warmup_next_seq)
        values = self.values(keep_outliers)
        needed = predicted_runs_needed(values, policy.min_runs, policy.max_runs, policy.target_ci_halfwidth_pct,
                                       policy.confidence, drift_pct=self.drift_pct)
        return warmups + max(1, min(needed - len(values), policy.max_runs - len(self.measured)))


@dataclasses.dataclass(frozen=True)
class RunEvent:
    """One finished (stored) run, as reported to observers and by ``e2ebench study --json``."""

    study_id: str
    scenario: str
    seq: int
    phase: str
    status: str                     # ok | failed
    e2e_s: float | None
    mean_s: float | None            # mean E2E of the scenario's counted runs so far
    ci_halfwidth_pct: float | None  # relative half-width of its confidence interval (None while unbounded)
    n: int                          # counted runs (outliers excluded unless kept)
    run_id: int
    outlier: bool
    error: str | None
    scenario_status: str
    run_wall_s: float
    host_type: str | None = None    # the fleet machine type whose state the run counts for (None: one host)

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


class StudyObserver(Protocol):
    def study_started(self, runner: "StudyRunner") -> None: ...
    def run_started(self, state: ScenarioState, phase: str, seq: int) -> None: ...
    def run_finished(self, event: RunEvent, state: ScenarioState) -> None: ...
    def study_finished(self, outcome: "StudyOutcome") -> None: ...


class SilentObserver:
    def study_started(self, runner: "StudyRunner") -> None:
        pass

    def run_started(self, state: ScenarioState, phase: str, seq: int) -> None:
        pass

    def run_finished(self, event: RunEvent, state: ScenarioState) -> None:
        pass

    def study_finished(self, outcome: "StudyOutcome") -> None:
        pass


@dataclasses.dataclass(frozen=True)
class StudyOutcome:
    study_id: str
    status: str                      # complete | incomplete | interrupted
    resumed: bool
    runs_this_session: int
    wall_s: float
    scenarios: tuple[tuple[str, str, str | None], ...]    # (scenario, status, reason)

    @property
    def abandoned(self) -> list[tuple[str, str | None]]:
        return [(k, r) for k, s, r in self.scenarios if s == ABANDONED]

    @property
    def exit_code(self) -> int:
        """0: every feasible scenario answered; 1: some abandoned (or nothing feasible); 130: interrupted."""
        if self.status == STUDY_INTERRUPTED:
            return 130
        if not self.scenarios or any(s not in ANSWERED for _, s, _ in self.scenarios):
            return 1
        return 0


# ---------------------------------------------------------------------------
# Study identity in the store


def study_record(study: Study, plan: Plan) -> dict:
    """What ``studies.config_json`` holds: identity, normalised configuration and the plan."""
    return {
        "identity": study.identity(),
        "config": study.config,
        "plan": [{"scenario": p.key, "feasible": p.feasible, "reason": p.reason, "origin": p.origin, "note": p.note}
                 for p in plan.scenarios],
        "host": {"cores": plan.host.cores, "gpus": plan.host.gpus},
    }


def open_study(store: Store, study: Study, plan: Plan, fresh: bool = False) -> tuple[str, bool]:
    """The study id to run under: the stored study with the same identity (resume) or a new one.

    Returns ``(study_id, resumed)``.
    """
    if not fresh:
        existing = store.find_study(study.name, study.source, study.config_sha256)
        if existing is not None:
            return existing["id"], True
    return store.create_study(study.name, study_record(study, plan), source=study.source), False


# ---------------------------------------------------------------------------
# One run (here, or on a fleet host: e2ebench.fleet calls the same function there)


def run_slug(scenario: str, phase: str, seq: int) -> str:
    """The folder name of one run's logs."""
    return scenario.replace("/", "_").replace("@", "_").replace("#", "_") + f"-{phase}-{seq}"


def run_in_platform(scenario, workload: Workload, data: Path, platform_options: dict, logs_dir: Path) -> RunResult:
    """Provision the scenario's deployment, run the worker once, tear down.  Never raises for a failed run."""
    from e2ebench.platforms import get_platform

    started = time.time()
    with platform_workdir() as tmp:
        try:
            platform = get_platform(scenario.deployment.platform, **platform_options)
            with platform.session(scenario.deployment, tmp) as session:
                return execute(session, scenario, workload, data, logs_dir)
        except Exception as exc:
            return RunResult.failure(scenario, workload, f"provisioning failed: {type(exc).__name__}: {exc}", started)


# ---------------------------------------------------------------------------
# The runner


class StudyRunner:
    """Runs the feasible scenarios of a plan into ``store`` under ``study_id``."""

    def __init__(self, plan: Plan, store: Store, study_id: str, keep_outliers: bool | None = None,
                 observer: StudyObserver | None = None, results_dir: Path | None = None,
                 retry_abandoned: bool = False, resumed: bool = False):
        self.plan = plan
        self.study = plan.study
        self.policy = plan.study.repetition
        self.store = store
        self.study_id = study_id
        self.keep_outliers = self.policy.keep_outliers if keep_outliers is None else keep_outliers
        self.observer = observer or SilentObserver()
        self.notice: Callable[[str], None] | None = None     # where housekeeping says what it removed (stderr)
        self.leftovers_removed: list[str] = []
        self.results_dir = (results_dir or store.path.resolve().parent)
        self.retry_abandoned = retry_abandoned
        self.resumed = resumed
        self.states: list[ScenarioState] = self._new_states()
        self.runs_this_session = 0
        self.started_monotonic = time.monotonic()
        self.current: tuple[ScenarioState, str, int] | None = None
        self._round = 0
        self.drifts: list = []                   # e2ebench.drift.HostDrift per host, after each probe
        self.probe_error: str | None = None
        self._probe_cpus: list[int] | None = None
        self._load()

    # -- state from the store ---------------------------------------------------------
    def _new_states(self) -> list[ScenarioState]:
        """One state per feasible scenario (a fleet has one per scenario and machine type)."""
        return [ScenarioState(p) for p in self.plan.feasible]

    def _state_key(self, row: dict) -> str:
        """The :attr:`ScenarioState.key` a stored run belongs to: its scenario (one host's runs are all one type)."""
        return row["scenario"]

    def _load(self) -> None:
        by_key = {s.key: s for s in self.states}
        rows = self.store.runs(study_id=self.study_id, phase=None, with_result=False)
        for row in rows:                      # ordered by id = the order the runs finished
            state = by_key.get(self._state_key(row))
            if state is None:
                continue
            state.record_seq(row["phase"], row["seq"] if row["seq"] is not None else -1)
            if row["status"] == "ok":
                state.consecutive_failures = 0
                if row["phase"] == PHASE_MEASURE and row["e2e_s"] is not None:
                    state.measured.append((row["id"], float(row["e2e_s"])))
                    state.outliers[row["id"]] = bool(row["outlier"])
                    if row.get("round") is not None:
                        state.rounds[row["id"]] = int(row["round"])
            else:
                state.failures += 1
                state.consecutive_failures += 1
                state.last_error = row["error"]
            if row["finished_at"] and row["started_at"]:
                state.run_wall_s.append(max(0.0, float(row["finished_at"]) - float(row["started_at"])))
        stored_rounds = [int(r["round"]) for r in rows if r.get("round") is not None]
        self._round = max(len(rows), max(stored_rounds, default=-1) + 1)
        self._update_drift()
        for state in self.states:
            self._update_outliers(state)
            if self.retry_abandoned:
                state.consecutive_failures = 0
            state.refresh_status(self.policy, self.keep_outliers)

    # -- calibration and drift ----------------------------------------------------------
    def _calibrate(self) -> None:
        """Probe the host at the start of the round (see the module docstring), then update every scenario's drift."""
        if not self.policy.calibrate:
            return
        from e2ebench.calibration import ProbeError, probe_cpus, run_probe

        if self._probe_cpus is None:
            self._probe_cpus = probe_cpus(max((s.planned.scenario.deployment.cores for s in self.states), default=1))
        try:
            probe = run_probe(self._probe_cpus)
        except ProbeError as exc:
            if self.probe_error is None:
                (self.notice or say_on_stderr)(f"{exc}; the study goes on without calibrating this round")
            self.probe_error = str(exc)
            return
        try:
            self.store.add_calibration(self.study_id, self._round, probe)
        except StoreError as exc:    # the run that follows meets the same fault and keeps its result in a spill file
            (self.notice or say_on_stderr)(f"round {self._round}'s calibration probe was not stored: {exc}")
            return
        self._update_drift()

    def _update_drift(self) -> None:
        from e2ebench.drift import drift_pct_of, study_drift

        if not self.policy.calibrate:
            return
        by_scenario = {s.key: s.round_values(self.keep_outliers) for s in self.states}
        self.drifts = study_drift(self.store, self.study_id, by_scenario)
        drift = drift_pct_of(self.drifts)
        for state in self.states:
            state.drift_pct = drift

    def _update_outliers(self, state: ScenarioState) -> dict[int, bool]:
        ids = [run_id for run_id, _ in state.measured]
        mask = outlier_mask([v for _, v in state.measured], self.policy.outlier_sigmas)
        changed = {run_id: flag for run_id, flag in zip(ids, mask) if state.outliers.get(run_id, False) != flag}
        if changed:
            self.store.mark_outliers(changed)
            state.outliers.update(changed)
        return changed

    # -- progress helpers -------------------------------------------------------------
    def remaining_runs_estimate(self) -> int:
        return sum(s.remaining_runs_estimate(self.policy, self.keep_outliers) for s in self.states)

    def mean_run_wall_s(self) -> float | None:
        walls = [w for s in self.states for w in s.run_wall_s]
        return sum(walls) / len(walls) if walls else None

    def eta_s(self) -> float | None:
        """Seconds left: estimated remaining runs (see :func:`predicted_runs_needed`) x each scenario's mean run wall time."""
        total, known = 0.0, False
        fallback = self.mean_run_wall_s()
        for state in self.states:
            remaining = state.remaining_runs_estimate(self.policy, self.keep_outliers)
            if not remaining:
                continue
            per_run = (sum(state.run_wall_s) / len(state.run_wall_s)) if state.run_wall_s else fallback
            if per_run is None:
                return None
            total += remaining * per_run
            known = True
        return total if known else 0.0

    def summary_of(self, state: ScenarioState) -> tuple[float | None, float | None, int]:
        values = state.values(self.keep_outliers)
        ci = drift_aware_interval(values, state.drift_pct, self.policy.confidence)
        return (finite_or_none(ci.mean) if values else None), finite_or_none(ci.half_width_pct), ci.n

    # -- running ----------------------------------------------------------------------
    def run(self) -> StudyOutcome:
        """Run until every scenario is answered or abandoned; Ctrl-C (KeyboardInterrupt) stops cleanly.

        The interrupted run is discarded (never stored) and the study is marked ``interrupted``;
        running the same study again resumes it.
        """
        self.leftovers_removed = housekeeping(self.notice)
        status = STUDY_INTERRUPTED
        with self._lock():
            self.store.set_study_status(self.study_id, STUDY_RUNNING)
            self.observer.study_started(self)
            try:
                while True:
                    active = [s for s in self.states if s.needs_run]
                    if not active:
                        break
                    by_key = {s.key: s for s in active}
                    self._calibrate()
                    self._run_round([by_key[key] for key in round_order(list(by_key), self.study.seed, self._round)])
                    self._round += 1
                status = STUDY_COMPLETE if all(s.status in ANSWERED for s in self.states) and self.states \
                    else STUDY_INCOMPLETE
            except KeyboardInterrupt:
                status = STUDY_INTERRUPTED
            finally:
                self.current = None
                with contextlib.suppress(Exception):
                    self.store.set_study_status(self.study_id, status)
        outcome = StudyOutcome(
            study_id=self.study_id, status=status, resumed=self.resumed, runs_this_session=self.runs_this_session,
            wall_s=time.monotonic() - self.started_monotonic,
            scenarios=tuple((s.key, s.status, s.abandon_reason) for s in self.states),
        )
        self.observer.study_finished(outcome)
        return outcome

    def _run_round(self, states: list[ScenarioState]) -> None:
        """One run of every state that still needs one, in this order, one after the other on this host
        (:class:`e2ebench.fleet.FleetStudyRunner` runs them on a cluster's hosts at once)."""
        for state in states:
            if state.needs_run:
                self._run_one(state)

    def _begin_run(self, state: ScenarioState) -> tuple[str, int]:
        """The (phase, seq) of the state's next run, announced to the observer."""
        phase, seq = state.begin_run(self.policy)
        self.current = (state, phase, seq)
        if state.status == PENDING:
            state.status = ACTIVE
        self.observer.run_started(state, phase, seq)
        return phase, seq

    def _run_one(self, state: ScenarioState) -> None:
        phase, seq = self._begin_run(state)
        t0 = time.perf_counter()
        result = self.execute_run(state, phase, seq)           # KeyboardInterrupt: nothing stored
        self._finish_run(state, phase, seq, result, time.perf_counter() - t0)

    def _finish_run(self, state: ScenarioState, phase: str, seq: int, result: RunResult, wall_s: float) -> None:
        """Store a finished run (ok or failed), update the state's counts, outliers and status, tell the observer."""
        result.run_wall_s = wall_s
        result.study_id = self.study_id
        result.round = self._round
        run_id = self.store.add_run(result, study_id=self.study_id, phase=phase, seq=seq)
        self.current = None
        self.runs_this_session += 1
        ok = result.ok
        state.run_wall_s.append(wall_s)
        state.record_seq(phase, seq)
        if ok:
            state.consecutive_failures = 0
            if phase == PHASE_MEASURE:
                state.measured.append((run_id, float(result.e2e_s)))
                state.rounds[run_id] = self._round
                state.outliers[run_id] = False
                self._update_outliers(state)
        else:
            state.failures += 1
            state.consecutive_failures += 1
            state.last_error = str(result.error)
        state.refresh_status(self.policy, self.keep_outliers)
        mean_s, hw_pct, n = self.summary_of(state)
        event = RunEvent(
            study_id=self.study_id, scenario=state.planned.key, seq=seq, phase=phase, status="ok" if ok else "failed",
            e2e_s=finite_or_none(result.e2e_s) if ok else None, mean_s=mean_s, ci_halfwidth_pct=hw_pct, n=n,
            run_id=run_id, outlier=state.outliers.get(run_id, False), error=None if ok else str(result.error),
            scenario_status=state.status, run_wall_s=wall_s, host_type=state.host_type,
        )
        self.observer.run_finished(event, state)

    def execute_run(self, state: ScenarioState, phase: str, seq: int) -> RunResult:
        """One run: provision the deployment, run the worker, tear down.  Never raises for a failed run."""
        planned = state.planned
        scenario, workload = planned.scenario, planned.workload
        assert workload is not None
        started = time.time()
        try:
            data = self._data_for(state, workload)
        except Exception as exc:
            return RunResult.failure(scenario, workload, f"preparing the data set failed: {type(exc).__name__}: {exc}",
                                     started)
        logs_dir = (self.results_dir / "logs" / self.study_id / run_slug(str(scenario), phase, seq)).resolve()
        return run_in_platform(scenario, workload, data, self.plan.study.platform_options(scenario.deployment.platform),
                               logs_dir)

    def _data_for(self, state: ScenarioState, workload: Workload) -> Path:
        if state.data is None:
            if workload.data:
                state.data = Path(workload.data).resolve()
            else:
                state.data = default_data(state.planned.scenario.app, int(workload.requests), variant=workload.variant,
                                          seed=workload.seed).resolve()
        return state.data

    # -- single-runner lock -----------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """An exclusive ``flock`` next to the store, so that two processes never run the same study at once.

        The kernel drops the lock when the process dies, also on SIGKILL.
        """
        path = self.store.path.resolve().with_name(f".{self.store.path.name}.{self.study_id}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise StudyLockedError(f"study {self.study_id} is being run by another process (pid {owner}) "
                                           f"on {self.store.path}") from None
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------
# Summaries (``e2ebench show``)


PHASES = ("io", "pre", "infer", "post", "other")


@dataclasses.dataclass(frozen=True)
class ScenarioSummary:
    """One row of ``e2ebench show``: a scenario's mean E2E time and what it rests on."""

    scenario: str
    app: str
    deployment: str
    mode: str
    status: str
    n: int                            # runs in the mean
    runs_ok: int                      # successful measured runs (outliers included)
    outliers: int
    failed: int                       # failed runs (warm-up and measured)
    warmup_runs: int
    mean_s: float | None
    stdev_s: float | None
    ci_halfwidth_s: float | None
    ci_halfwidth_pct: float | None
    confidence: float
    phases_s: dict                    # phase -> mean over the runs in the mean
    cold_start_s: float | None        # mean cold start over the runs in the mean
    throughput_sps: float | None
    emulated: bool
    reason: str | None                # why infeasible / last error of an abandoned scenario
    cache: str = "warm"               # page cache at the start of the timed window: warm | cold
    thread_policy: str = "sized"      # sized | framework-default | N
    drift_pct: float = 0.0            # the host drift included in ci_halfwidth_* (percent, 1 sd; 0 without probes)
    runs_ci_halfwidth_pct: float | None = None   # the runs' own part of the interval (the interval without drift)
    host_type: str | None = None      # the fleet machine type the runs ran on (None: one host, no fleet)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize_study(store: Store, study_id: str, keep_outliers: bool | None = None,
                    runs: "StudyRuns | None" = None) -> list[ScenarioSummary]:
    """Per-scenario summaries of a stored study (scenarios in the study's plan order, then any others; a scenario
    measured on several machine types of a fleet has one summary per type).  ``runs``: the study as
    :func:`e2ebench.analysis.read_study_runs` read it (``show`` reads it once)."""
    from e2ebench.analysis import read_study_runs
    from e2ebench.scenario import Scenario

    record = store.get_study(study_id)
    if record is None:
        raise KeyError(study_id)
    config = record["config"].get("config")
    adhoc = config is None                      # runs of `e2ebench run`, not of a study: no policy to judge them by
    config = config or {}
    repetition = config.get("repetition") or {}
    policy = RepetitionPolicy(**{k: v for k, v in repetition.items()
                                 if k in {f.name for f in dataclasses.fields(RepetitionPolicy)}})
    keep = policy.keep_outliers if keep_outliers is None else keep_outliers
    if runs is None or runs.keep_outliers != keep or runs.detail:       # (the phase means come with detail=False)
        runs = read_study_runs(store, study_id, keep, detail=False)
    plan = record["config"].get("plan") or []
    # one entry per (scenario, host type), emulated and native runs of a scenario together
    by_scenario: dict[tuple[str, str | None], list] = defaultdict(list)
    for group in runs.groups.values():
        by_scenario[(group.scenario, group.host_type)].append(group)
    present = sorted(set(by_scenario) | set(runs.counts),
                     key=lambda k: runs.counts[k].first_id if k in runs.counts else 0)   # the order they first ran
    planned = [p["scenario"] for p in plan]
    order = []
    for scenario_text in planned:
        order += [k for k in present if k[0] == scenario_text] or [(scenario_text, None)]
    order += [k for k in present if k[0] not in set(planned)]
    order = list(dict.fromkeys(order))
    infeasible = {p["scenario"]: p.get("reason") for p in plan if not p.get("feasible", True)}
    drift = runs.drift_pct if (not adhoc and policy.calibrate) else 0.0
    out = []
    for key, host_type in order:
        try:
            scenario = Scenario.parse(key)
        except ValueError:
            continue
        groups = by_scenario.get((key, host_type), [])
        counts = runs.counts.get((key, host_type))
        if key in infeasible and counts is None:
            out.append(ScenarioSummary(key, scenario.app, str(scenario.deployment), scenario.mode, INFEASIBLE, 0, 0, 0,
                                       0, 0, None, None, None, None, policy.confidence, {p: None for p in PHASES},
                                       None, None, False, infeasible[key], scenario.cache, scenario.threads,
                                       host_type=host_type))
            continue
        counts = counts or ScenarioCounts()
        runs_ok = sum(len(g.ids) for g in groups)
        values = [g.e2e[i] for g in groups for i in g.counted(keep)]
        ci = drift_aware_interval(values, drift, policy.confidence)
        if adhoc:
            status = ADHOC
        elif counts.trailing_failures >= policy.max_consecutive_failures:
            status = ABANDONED
        elif counts.warmup_runs < policy.warmup_runs:
            status = ACTIVE if counts.runs else PENDING
        else:
            decision = stopping_decision(values, policy.min_runs, policy.max_runs, policy.target_ci_halfwidth_pct,
                                         policy.confidence, runs_done=runs_ok, drift_pct=drift)
            status = ({"target": TARGET, "drift": DRIFT}.get(decision.reason, MAX_RUNS) if decision.stop
                      else (ACTIVE if counts.runs else PENDING))
            if status == ACTIVE and record["status"] in (STUDY_COMPLETE, STUDY_INCOMPLETE) and drift:
                # the runner stopped it under the drift it knew then; probes since have moved the drift
                status = DRIFT
        phases = {p: _aggregate_mean(groups, f"{p}_s") for p in PHASES}
        out.append(ScenarioSummary(
            scenario=key, app=scenario.app, deployment=str(scenario.deployment), mode=scenario.mode, status=status,
            n=ci.n, runs_ok=runs_ok, outliers=sum(sum(g.outlier) for g in groups),
            failed=counts.failed, warmup_runs=counts.warmup_runs,
            mean_s=finite_or_none(ci.mean) if values else None, stdev_s=finite_or_none(ci.stdev),
            ci_halfwidth_s=finite_or_none(ci.half_width), ci_halfwidth_pct=finite_or_none(ci.half_width_pct),
            confidence=policy.confidence, phases_s=phases,
            cold_start_s=_aggregate_mean(groups, "cold_start_s"),
            throughput_sps=_aggregate_mean(groups, "throughput_sps"),
            emulated=counts.emulated,
            reason=(f"failed {counts.trailing_failures} runs in a row; last error: {counts.last_error}"
                    if status == ABANDONED else None),
            cache=scenario.cache, thread_policy=scenario.threads,
            drift_pct=ci.drift_pct, runs_ci_halfwidth_pct=finite_or_none(ci.runs_half_width_pct),
            host_type=host_type,
        ))
    return out


def _aggregate_mean(groups: list, name: str) -> float | None:
    """The mean of an aggregated number (:data:`e2ebench.study_runs.AGGREGATED`) over the counted runs of ``groups``."""
    n = sum(g.aggregates[name].n for g in groups if name in g.aggregates)
    return sum(g.aggregates[name].total for g in groups if name in g.aggregates) / n if n else None
