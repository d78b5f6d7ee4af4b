"""``e2ebench study``, ``e2ebench show`` and ``e2ebench studies`` (registered on :data:`e2ebench.cli.app`).

Exit codes of ``study``: 0 every feasible scenario answered (CI target or max runs reached), 1 some
scenario abandoned after repeated failures (or nothing feasible on this host), 2 usage or study-file
error, 3 the store cannot be used (see e2ebench.store.StoreFault), 130 interrupted (Ctrl-C / SIGTERM; run the same
command again to resume).
"""

from __future__ import annotations

import csv
import math
import shlex
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from e2ebench.cli import EXIT_FAILED, EXIT_OK, app, console, emit_json, err_console, fail_store, fail_usage
from e2ebench.store import DEFAULT_STORE

EXIT_INTERRUPTED = 130


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _fmt_mean_ci(mean_s: float | None, half_pct: float | None) -> str:
    if mean_s is None:
        return "—"
    if half_pct is None:
        return f"{mean_s:.3f} s ± ?"
    return f"{mean_s:.3f} s ± {half_pct:.1f}%"


def _fmt_sig(value: float | None) -> str:
    """Seconds with 3 significant digits, at most 5 characters below 10,000 s (``—`` when unknown)."""
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


# ---------------------------------------------------------------------------
# Progress observers


class LiveProgress:
    """A live display on stderr: per-scenario runs, mean ± CI and status; overall runs and ETA."""

    MAX_ROWS = 14

    def __init__(self) -> None:
        self.runner = None
        self.live: Live | None = None
        self.current: tuple[str, str, int, float] | None = None
        self.runs_done = 0
        self.last_finished: dict[str, float] = {}

    # observer protocol
    def study_started(self, runner) -> None:
        self.runner = runner
        self.runs_done = len(runner.store.runs(study_id=runner.study_id, phase=None, with_result=False))
        self.live = Live(get_renderable=self.render, console=err_console, refresh_per_second=1, transient=False)
        self.live.start()

    def run_started(self, state, phase: str, seq: int) -> None:
        self.current = (state.key, phase, seq, time.monotonic())

    def run_finished(self, event, state) -> None:
        self.current = None
        self.runs_done += 1
        self.last_finished[state.key] = time.monotonic()      # (a fleet's key: "scenario on host type")
        if event.status != "ok":
            err_console.print(f"[yellow]run failed[/] {escape(state.key)} {event.phase} #{event.seq}: "
                              f"{escape(str(event.error))[:300]}")
        if event.scenario_status == "abandoned":
            err_console.print(f"[red]abandoned[/] {escape(state.key)}: {escape(state.abandon_reason or '')[:300]}")

    def study_finished(self, outcome) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None
            if not err_console.is_terminal:     # Live's last render in a file or pipe ends without a newline
                err_console.line()

    # rendering
    def render(self):
        runner = self.runner
        if runner is None:
            return Text("")
        policy = runner.policy
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for column, justify in (("scenario", "left"), ("warm-up", "right"), ("runs", "right"),
                                ("mean E2E ± CI", "right"), ("status", "left")):
            table.add_column(column, justify=justify)
        current_key = self.current[0] if self.current else None
        states = sorted(runner.states, key=lambda s: (s.key != current_key, not s.needs_run,
                                                      -self.last_finished.get(s.key, 0.0), s.key))
        for state in states[: self.MAX_ROWS]:
            mean_s, hw_pct, n = runner.summary_of(state)
            status = state.status if state.key != current_key else "▶ " + self.current[1]
            colour = {"target": "green", "drift": "green", "max-runs": "yellow", "abandoned": "red"}.get(state.status, "")
            table.add_row(
                escape(state.key), f"{state.warmup_next_seq}/{policy.warmup_runs}",
                f"{n}/{policy.min_runs}..{policy.max_runs}" + (f" ({state.failures} failed)" if state.failures else ""),
                _fmt_mean_ci(mean_s, hw_pct), f"[{colour}]{escape(status)}[/]" if colour else escape(status),
            )
        if len(states) > self.MAX_ROWS:
            table.add_row(f"… {len(states) - self.MAX_ROWS} more", "", "", "", "")
        remaining = runner.remaining_runs_estimate()
        total = self.runs_done + remaining
        eta = runner.eta_s()
        answered = sum(1 for s in runner.states if s.status in ("target", "max-runs", "drift"))
        line = Text.assemble(
            (f"runs {self.runs_done}/~{total}", "bold"),
            f" · answered {answered}/{len(runner.states)}",
            f" · {_fmt_duration(time.monotonic() - runner.started_monotonic)} elapsed",
            f" · ETA {_fmt_duration(eta)}",
        )
        overall = Table.grid(padding=(0, 1))
        overall.add_column(width=20)
        overall.add_column()
        overall.add_row(ProgressBar(total=max(total, 1), completed=self.runs_done, width=20), line)
        parts = [table, overall]
        if self.current:
            key, phase, seq, t0 = self.current
            parts.append(Text(f"running {key} {phase} #{seq} ({_fmt_duration(time.monotonic() - t0)})", style="dim"))
        return Group(*parts)


class PlainProgress:
    """One plain line per finished run on stderr, flushed: for logs, when stderr is not a terminal.

    ``12:03:15 ic@BM/2/PIN/CPU: run 4 of ~7 (study: run 9 of ~40), measure #2, E2E 1.234 s; mean 1.250 s ± 0.021 s
    (±1.7%, n=3); ETA 4m10s``.  The counts of runs still to come are estimates (``~``) until they are known: a scenario
    runs until its confidence target or its max runs.
    """

    def __init__(self, stream=None) -> None:
        self.stream = stream
        self.runner = None
        self.runs_done = 0

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def study_started(self, runner) -> None:
        self.runner = runner
        self.runs_done = len(runner.store.runs(study_id=runner.study_id, phase=None, with_result=False))
        remaining = runner.remaining_runs_estimate()
        self._write(f"{time.strftime('%H:%M:%S')} {self.runs_done} runs stored, about {remaining} to go; "
                    "one line per finished run")

    def run_started(self, state, phase: str, seq: int) -> None:
        pass

    def run_finished(self, event, state) -> None:
        runner = self.runner
        self.runs_done += 1
        done = state.warmup_next_seq + state.measure_next_seq         # this scenario's stored runs, failed ones too
        left = state.remaining_runs_estimate(runner.policy, runner.keep_outliers)
        left_study = runner.remaining_runs_estimate()
        what = "warm-up" if event.phase == "warmup" else "measure"
        # the run's ordinal in its phase (= seq + 1 on one host; a fleet's host types share the seqs of a scenario)
        ordinal = state.warmup_next_seq if event.phase == "warmup" else state.measure_next_seq
        line = (f"{time.strftime('%H:%M:%S')} {state.key}: run {done} of {_of(done, left)} "
                f"(study: run {self.runs_done} of {_of(self.runs_done, left_study)}), {what} #{ordinal}, ")
        if event.status == "ok":
            line += f"E2E {_fmt_sig(event.e2e_s)} s" + (" (outlier)" if event.outlier else "")
        else:
            line += "FAILED: " + " ".join(str(event.error).split())[:200]
        line += "; " + _fmt_ci_so_far(event.mean_s, event.ci_halfwidth_pct, event.n)
        if event.scenario_status in ("target", "max-runs", "drift", "abandoned"):
            line += {"target": " — CI target reached", "max-runs": " — max runs reached",
                     "drift": " — as narrow as the host's drift allows",
                     "abandoned": " — ABANDONED after repeated failures"}[event.scenario_status]
        line += f"; ETA {_fmt_duration(runner.eta_s()) if left_study else 'done'}"
        self._write(line)

    def study_finished(self, outcome) -> None:
        pass


def _of(done: int, left: int) -> str:
    """The total of runs: exact when none is left, else an estimate."""
    return str(done) if left <= 0 else f"~{done + left}"


def _fmt_ci_so_far(mean_s: float | None, half_pct: float | None, n: int) -> str:
    if mean_s is None or n == 0:
        return "no measured run yet"
    if half_pct is None or n < 2:
        return f"mean {_fmt_sig(mean_s)} s (n={n}, no CI yet)"
    return f"mean {_fmt_sig(mean_s)} s ± {_fmt_sig(mean_s * half_pct / 100)} s (±{half_pct:.1f}%, n={n})"


class JsonLines:
    """One JSON line per finished run on stdout."""

    KEYS = ("study_id", "scenario", "seq", "phase", "status", "e2e_s", "mean_s", "ci_halfwidth_pct", "n",
            "outlier", "error", "run_id", "scenario_status", "host_type")

    def study_started(self, runner) -> None:
        pass

    def run_started(self, state, phase: str, seq: int) -> None:
        pass

    def run_finished(self, event, state) -> None:
        data = event.as_json()
        emit_json({k: data[k] for k in self.KEYS})

    def study_finished(self, outcome) -> None:
        pass


# ---------------------------------------------------------------------------
# study


def _print_plan(plan) -> None:
    study = plan.study
    fewest, most = plan.run_estimate()
    r = study.repetition
    title = f"study {study.name}: {len(plan.scenarios)} scenarios, {len(plan.feasible)} feasible here"
    table = Table(title=escape(title), header_style="bold")
    for column in ("scenario", "feasible", "why not / note", "origin"):
        table.add_column(column)
    for p in plan.scenarios:
        table.add_row(escape(p.key), "[green]yes[/]" if p.feasible else "[red]no[/]",
                      escape(p.reason or p.note or ""), p.origin)
    console.print(table)
    host = plan.host
    console.print(f"host: {host.cores} cores, {host.gpus} GPU(s), platforms available: "
                  f"{', '.join(sorted(host.available_platforms))}")
    if host.gpus == 0 and host.gpu_reason:
        console.print(f"GPU: none usable here — {escape(host.gpu_reason)}")
    _print_platform_support()
    console.print(f"repetition: {r.warmup_runs} warm-up + {r.min_runs}..{r.max_runs} measured runs per scenario, "
                  f"until the {100 * r.confidence:g}% CI of the mean E2E is within ±{r.target_ci_halfwidth_pct:g}%")
    console.print(f"estimated runs: {fewest} to {most} ({len(plan.feasible)} feasible scenarios)")
    console.print(f"study file: {study.source}  (config sha256 {study.config_sha256[:16]})")


def _print_platform_support() -> None:
    """Which CPU modes and devices each registered platform supports in principle (its class says so)."""
    from e2ebench.study import platform_support

    console.print("platforms support in principle:")
    for entry in platform_support():
        limit = f" — {entry['design_limit']}" if entry["design_limit"] else ""
        console.print(f"  {entry['name']} ({escape(entry['title'])}): {', '.join(entry['cpu_modes'])} × "
                      f"{', '.join(entry['devices'])}{escape(limit)}")


def _resume_command() -> str:
    args = [a for a in sys.argv[1:] if a != "--fresh"]
    return "e2ebench " + shlex.join(args)


@app.command()
def study(
    study_file: Optional[str] = typer.Argument(
        None, metavar="FILE",
        help="Study file (TOML) or preset name: quick (default), paper, edge, threads. See docs/studies.md."),
    plan_only: bool = typer.Option(False, "--plan", help="Print the expanded matrix and the estimated run count; run nothing."),
    as_json: bool = typer.Option(False, "--json", help="--plan: one JSON object; otherwise one JSON line per finished run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display and no table."),
    store_path: Optional[Path] = typer.Option(None, "--store", help="SQLite results file (default: the study file's `store`)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start a new study id instead of resuming the stored one."),
    keep_outliers: Optional[bool] = typer.Option(
        None, "--keep-outliers/--drop-outliers",
        help="Count runs beyond 3 sigma in the mean and the stopping rule (default: the study file's, normally drop)."),
    retry_abandoned: bool = typer.Option(False, "--retry-abandoned",
                                         help="Give scenarios abandoned after repeated failures another chance."),
    replicate: int = typer.Option(
        1, "--replicate", min=1, max=50, metavar="K",
        help="Run the study K times (fresh study ids, same configuration) and print how often each replicate's means "
             "lie in the others' 95% intervals and whether each comparison's verdict agrees across replicates."),
    cluster: Optional[str] = typer.Option(
        None, "--cluster", metavar="ADDRESS",
        help="Run on the e2ebench hosts of a Ray cluster (one run per host at a time; results in this host's store): "
             "auto (the cluster this host belongs to), HOST:PORT, or ray://HOST:10001 with ray[client]. Needs "
             "e2ebench[fleet]; "
             "see docs/fleet.md."),
) -> None:
    """Run a study: a matrix of scenarios, each repeated until its mean E2E time is known to the target precision.

    Runs are interleaved across scenarios in a seeded random order and stored one by one; running the same command again after an interruption resumes where it stopped.
    """
    from e2ebench.store import Store, StoreError
    from e2ebench.study import StudyError, load_study, resolve_study_path

    try:
        path = resolve_study_path(study_file)
        spec = load_study(path)
    except StudyError as exc:
        raise fail_usage(str(exc))
    fleet = None
    if cluster is not None:
        fleet = _fleet_plan(spec, cluster, quiet or as_json)
        plan = fleet.plan
    elif not plan_only and not quiet and not as_json and err_console.is_terminal:
        with err_console.status("checking which platforms this host can run"):
            plan = spec.plan()
    else:
        plan = spec.plan()
    if plan_only:
        if as_json:
            emit_json(fleet.as_dict() if fleet is not None else plan.as_dict())
        elif fleet is not None:
            _print_fleet_plan(fleet)
        else:
            _print_plan(plan)
        raise typer.Exit(EXIT_OK)

    store_file = store_path or spec.store
    for p in plan.infeasible:
        if not quiet and not as_json:
            err_console.print(f"[dim]not run: {escape(p.key)} — {escape(p.reason or '')}[/]")
    if not plan.feasible:
        err_console.print(f"[bold red]study {spec.name}: no scenario is feasible on "
                          f"{'any host of the cluster' if fleet is not None else 'this host'}[/] "
                          f"(see `e2ebench study {escape(str(path))} --plan`)")
        raise typer.Exit(EXIT_FAILED)
    try:
        store = Store(store_file)
    except StoreError as exc:
        raise fail_store(exc)
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops cleanly, like Ctrl-C
    try:
        with store:
            finished: list[str] = []
            for index in range(replicate):
                if replicate > 1 and not quiet and not as_json:
                    err_console.print(f"[bold]replicate {index + 1} of {replicate}[/]")
                study_id, outcome = _run_study(store, store_file, spec, plan, fresh=fresh or replicate > 1,
                                               quiet=quiet, as_json=as_json, keep_outliers=keep_outliers,
                                               retry_abandoned=retry_abandoned, fleet=fleet)
                finished.append(study_id)
                if replicate == 1:
                    raise typer.Exit(outcome.exit_code)
                if outcome.exit_code != EXIT_OK:
                    err_console.print(f"[red]replicate {index + 1} did not complete ({outcome.status}); the "
                                      "replicates stop here[/]")
                    raise typer.Exit(outcome.exit_code)
            _print_replicates(store, finished, as_json)
            raise typer.Exit(EXIT_OK)
    except KeyboardInterrupt:       # a second Ctrl-C while cleaning up
        err_console.print(f"[yellow]interrupted[/]; resume with: [bold]{escape(_resume_command())}[/]")
        raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


def _fleet_plan(spec, cluster: str, quiet: bool):
    """Connect to the cluster and plan the study for each of its e2ebench hosts (exit 2 when that fails)."""
    try:
        from e2ebench import fleet
    except ModuleNotFoundError as exc:
        raise fail_usage(str(exc))
    try:
        fleet.connect(cluster)
        if not quiet and err_console.is_terminal:
            with err_console.status("gathering the facts of the cluster's hosts"):
                hosts = fleet.discover_hosts(sorted(spec.used_platforms()))
        else:
            hosts = fleet.discover_hosts(sorted(spec.used_platforms()))
        return fleet.fleet_plan(spec, hosts)
    except fleet.FleetError as exc:
        raise fail_usage(str(exc))


def _print_fleet_plan(fleet) -> None:
    """The plan over a cluster: which hosts can run each scenario, why the others cannot."""
    plan = fleet.plan
    study = plan.study
    table = Table(title=escape(f"study {study.name} on {len(fleet.hosts)} hosts: {len(plan.scenarios)} scenarios, "
                               f"{len(plan.feasible)} feasible on at least one host"), header_style="bold")
    for column in ("scenario", "hosts that can run it", "why not (per host) / note"):
        table.add_column(column)
    for p in plan.scenarios:
        where = fleet.where.get(p.key, ())
        if len({h.host_type for h in fleet.hosts}) > 1:     # measured per type: "ic@BM/1/VNL/CPU on TYPE" each
            where = [f"{', '.join(names)} (on {t})" for t, names in fleet.host_types(p.key).items()]
        why = "; ".join(f"{h}: {r}" for h, r in fleet.reasons.get(p.key, ()))
        table.add_row(escape(p.key), escape("; ".join(where)) if where else "[red]none[/]", escape(why or p.note or ""))
    console.print(table)
    for host in fleet.hosts:
        f = host.facts
        console.print(f"host {escape(host.name)} ({escape(host.host_type)}): {f['cores']} cores, {f['gpus']} GPU(s), "
                      f"KVM {'not probed' if f['kvm'] is None else 'yes' if f['kvm'] else 'no'}, platforms {', '.join(f['available_platforms'])}"
                      + (f" (emulated: {', '.join(f['emulated_platforms'])})" if f["emulated_platforms"] else ""))
    fewest, most = fleet.run_estimate()
    measured = sum(len(fleet.host_types(p.key)) for p in plan.feasible)
    console.print(f"estimated runs: {fewest} to {most} ({len(plan.feasible)} feasible scenarios, {measured} "
                  "scenario x host type, each to its own stopping decision)")
    console.print(f"study file: {study.source}  (config sha256 {study.config_sha256[:16]})")


def _run_study(store, store_file, spec, plan, *, fresh: bool, quiet: bool, as_json: bool,
               keep_outliers: bool | None, retry_abandoned: bool, fleet=None):
    """Open (or resume) the study in ``store`` and run it; ``(study id, outcome)``.  Exits 130 when interrupted."""
    from e2ebench.store import StoreError
    from e2ebench.study_runner import StudyLockedError, StudyRunner, open_study

    study_id, resumed = open_study(store, spec, plan, fresh=fresh)
    if not quiet and not as_json:
        fewest, most = (fleet or plan).run_estimate()
        verb = "resuming" if resumed else "starting"
        err_console.print(f"{verb} study [bold]{escape(study_id)}[/] ({len(plan.feasible)} scenarios, "
                          f"{fewest}..{most} runs) → {escape(str(store_file))}")
    if as_json or quiet:
        observer = JsonLines() if as_json else None
    else:       # a live display on a terminal; in a file or a pipe, one plain line per finished run
        observer = LiveProgress() if err_console.is_terminal else PlainProgress()
    try:
        if fleet is not None:
            from e2ebench.fleet import FleetStudyRunner

            runner = FleetStudyRunner(fleet, store, study_id, keep_outliers=keep_outliers, observer=observer,
                                      retry_abandoned=retry_abandoned, resumed=resumed)
        else:
            runner = StudyRunner(plan, store, study_id, keep_outliers=keep_outliers, observer=observer,
                                 retry_abandoned=retry_abandoned, resumed=resumed)
        outcome = runner.run()
    except StudyLockedError as exc:
        raise fail_usage(str(exc))
    except StoreError:          # the store failed under the study (full disk...): main() says what to do
        if observer is not None:
            observer.study_finished(None)       # a live display gives the terminal back first
        raise
    if outcome.status == "interrupted":
        stored = len(store.runs(study_id=study_id, phase=None, with_result=False))
        err_console.print(f"[yellow]interrupted[/]: the run in progress was discarded; {stored} runs of "
                          f"study {escape(study_id)} are stored in {escape(str(store_file))}.")
        err_console.print(f"resume with: [bold]{escape(_resume_command())}[/]")
        raise typer.Exit(EXIT_INTERRUPTED)
    if not quiet and not as_json:
        _print_summaries(store, study_id, keep_outliers)
        err_console.print(f"study {escape(study_id)}: {outcome.status}; {outcome.runs_this_session} runs in "
                          f"{_fmt_duration(outcome.wall_s)}")
    for key, reason in outcome.abandoned:
        err_console.print(f"[red]abandoned[/] {escape(key)}: {escape(reason or '')[:500]}")
    return study_id, outcome


def _print_replicates(store, study_ids: list[str], as_json: bool) -> None:
    """The coverage and verdict agreement of the replicates (:mod:`e2ebench.replicates`)."""
    from e2ebench.replicates import replicate_report, report_lines

    report = replicate_report(store, study_ids)
    if as_json:
        emit_json({"replicates": report.to_dict()})
        return
    for line in report_lines(report):
        console.print(escape(line), highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------
# show, studies


def _find_study(store, wanted: str | None) -> dict:
    from e2ebench.cli_report import adhoc_hint
    from e2ebench.store import StoreError

    try:
        record = store.resolve_study(wanted, fallback_adhoc=True)    # only ad-hoc runs: show those
    except StoreError as exc:
        raise fail_store(exc)
    if wanted is None:
        adhoc_hint(store, record)
    return record


def _print_summaries(store, study_id: str, keep_outliers: bool | None, runs=None) -> None:
    from e2ebench.cli_report import adhoc_workload_notes
    from e2ebench.store import ADHOC_STUDY
    from e2ebench.study_runner import summarize_study

    record = store.get_study(study_id)
    summaries = summarize_study(store, study_id, keep_outliers, runs=runs)
    by_app: dict[str, list] = defaultdict(list)
    for s in summaries:
        by_app[s.app].append(s)
    if study_id == ADHOC_STUDY:
        console.print("[bold]ad-hoc runs[/] (made with e2ebench run)")
        for note in adhoc_workload_notes(store.runs(study_id=study_id, phase=None), study_id):
            console.print(f"[yellow]{escape(note)}[/]")
    else:
        console.print(f"[bold]study {escape(study_id)}[/] ({escape(record['name'])}, {record['status']})")
    colour = {"target": "green", "drift": "green", "max-runs": "yellow", "abandoned": "red", "active": "cyan",
              "pending": "dim"}
    for app_name, rows in by_app.items():
        measured = [s for s in rows if s.status != "infeasible"]
        confidence = rows[0].confidence
        if measured:
            table = Table(title=f"{app_name}: mean E2E time per workload (s) ± {100 * confidence:g}% CI; phase means (s)",
                          header_style="bold", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False, collapse_padding=True)
            for column in ("deployment", "E2E", "±CI", "io", "pre", "infer", "post", "other", "n", "out", "fail",
                           "status"):
                table.add_column(column, justify="left" if column in ("deployment", "status") else "right",
                                 no_wrap=True)
            for s in measured:
                deployment = escape(s.scenario.split("@", 1)[1])     # the deployment and its #suffixes
                if s.host_type:
                    deployment += f" on {escape(s.host_type)}"
                if s.emulated:
                    deployment += " [yellow](emulated)[/]"
                ci = "—" if s.ci_halfwidth_pct is None else f"{s.ci_halfwidth_pct:.1f}%"
                status = f"[{colour.get(s.status, '')}]{s.status}[/]" if colour.get(s.status) else s.status
                table.add_row(deployment, _fmt_sig(s.mean_s), ci,
                              *(_fmt_sig(s.phases_s.get(p)) for p in ("io", "pre", "infer", "post", "other")),
                              str(s.n), str(s.outliers), str(s.failed), status)
            console.print(table)
            for s in measured:
                if s.reason:
                    console.print(f"  [red]{escape(s.scenario)}[/]: {escape(s.reason)[:300]}")
        infeasible = [s for s in rows if s.status == "infeasible"]
        if infeasible:
            grouped: dict[str, list[str]] = defaultdict(list)
            for s in infeasible:
                grouped[s.reason or "?"].append(s.scenario.split("@", 1)[1])
            console.print(f"[dim]{app_name}: {len(infeasible)} scenario(s) not run here:[/]")
            for reason, deployments in grouped.items():
                shown = ", ".join(deployments[:6]) + (f", … (+{len(deployments) - 6})" if len(deployments) > 6 else "")
                console.print(f"[dim]  {escape(reason)}: {escape(shown)}[/]")
    if any(s.emulated for s in summaries):
        console.print("[yellow](emulated)[/]: ran under QEMU TCG; not comparable with native results.")
    hosts = fleet_hosts(store, study_id)
    if hosts:
        table = Table(title="hosts of the fleet (e2ebench study --cluster)", header_style="bold")
        for column in ("host", "host type", "runs", "failed", "scenarios"):
            table.add_column(column)
        for h in hosts:
            table.add_row(escape(h["host"]), escape(h["host_type"] or "?"), str(h["runs"]), str(h["failed"]),
                          escape(", ".join(h["scenarios"])))
        console.print(table)
    if study_id != ADHOC_STUDY:
        _print_drift_and_comparisons(store, study_id, keep_outliers, runs)


def fleet_hosts(store, study_id: str) -> list[dict]:
    """Per host of a fleet study (runs with ``runs.host``): its type (of its first run), runs, failed runs,
    scenarios (in the order it first ran them); ``[]`` for a study run on one host.  Counted by SQLite."""
    by_host: dict[str, dict] = {}
    rows = store.db.execute(
        "SELECT host, scenario, MIN(id) AS first, COUNT(*) AS n, TOTAL(status != 'ok') AS failed FROM runs "
        "WHERE study_id = ? AND host IS NOT NULL AND host != '' GROUP BY host, scenario ORDER BY first",
        (study_id,)).fetchall()
    for row in rows:
        entry = by_host.setdefault(row["host"], {"host": row["host"], "host_type": None, "runs": 0, "failed": 0,
                                                 "scenarios": [], "first": row["first"]})
        entry["runs"] += int(row["n"])
        entry["failed"] += int(row["failed"])
        entry["scenarios"].append(row["scenario"])
    for entry in by_host.values():
        first = store.db.execute("SELECT host_type FROM runs WHERE id = ?", (entry.pop("first"),)).fetchone()
        entry["host_type"] = first["host_type"] if first else None
    return [by_host[h] for h in sorted(by_host)]


def drift_and_comparisons(store, study_id: str, keep_outliers: bool | None, runs=None) -> tuple[list, list[dict]]:
    """The study's host drift (:class:`e2ebench.drift.HostDrift` per host) and its PIN-vs-VNL and platform-vs-BM
    comparisons (paired by round where both scenarios ran in the same rounds), as ``show`` prints them.  ``runs``:
    the study as :func:`e2ebench.analysis.read_study_runs` read it."""
    from e2ebench.analysis import load_study, overhead_vs_bm, pinning_gains, primary_scenarios

    data = load_study(store, study_id, include_outliers=keep_outliers, detail=False, runs=runs)
    scenarios = primary_scenarios(data.select(None))
    out = []
    for pin in pinning_gains(scenarios):
        out.append({"kind": "pinning", "subject": pin.pinned.label, "baseline": pin.vanilla.label,
                    "verdict": pin.verdict, **pin.comparison.to_dict()})
    for over in overhead_vs_bm(scenarios, phases=False):
        out.append({"kind": "platform", "subject": over.subject.label, "baseline": over.baseline.label,
                    "verdict": ("slower" if (over.e2e.ratio or 1) > 1 else "faster") if over.e2e.significant
                    else "no significant difference", **over.e2e.to_dict()})
    return data.drifts, out


def _print_drift_and_comparisons(store, study_id: str, keep_outliers: bool | None, runs=None) -> None:
    from e2ebench.analysis import fmt_pct

    drifts, comparisons = drift_and_comparisons(store, study_id, keep_outliers, runs)
    for drift in drifts:
        style = "yellow" if drift.unstable else "dim"
        console.print(f"[{style}]{escape(drift.line())}[/]", highlight=False, soft_wrap=True)
    if drifts and max(d.drift_pct for d in drifts) > 0:
        console.print(f"[dim]±CI: the runs' own 95% interval and the host's drift "
                      f"({max(d.drift_pct for d in drifts):.1f}%, 1 sd) added in quadrature — what a re-run of the "
                      "study can be expected to land in (docs/measurement.md)[/]", highlight=False, soft_wrap=True)
    if comparisons:
        console.print("[bold]comparisons[/] (subject vs baseline, E2E; paired by study round where both ran in the "
                      "same rounds)")
    for c in comparisons:
        test = (f"paired over {c['pairs']} rounds" if c["method"] == "paired" else "Welch") + (
            f", p={c['p_value']:.3g}" if c["p_value"] is not None else ", not tested")
        console.print(f"  {escape(c['subject'])} vs {escape(c['baseline'].split('@', 1)[1])}: "
                      f"{fmt_pct(c['relative_pct'], c['relative_ci_pct'])} ({test}) — {escape(c['verdict'])}",
                      highlight=False, soft_wrap=True)


SUMMARY_CSV_COLUMNS = ("scenario", "app", "deployment", "mode", "cache", "status", "n", "runs_ok", "outliers", "failed",
                       "warmup_runs", "mean_s", "stdev_s", "ci_halfwidth_s", "ci_halfwidth_pct", "confidence",
                       "io_s", "pre_s", "infer_s", "post_s", "other_s", "cold_start_s", "throughput_sps", "emulated",
                       "reason", "thread_policy", "host_type")


def _summary_row(s) -> dict:
    d = s.as_dict()
    phases = d.pop("phases_s")
    d.update({f"{p}_s": phases.get(p) for p in ("io", "pre", "infer", "post", "other")})
    return {k: d.get(k) for k in SUMMARY_CSV_COLUMNS}


@app.command()
def show(
    study_id: Optional[str] = typer.Option(None, "--study", help="Study id, name or unique id prefix (default: the latest)."),
    store_path: Path = typer.Option(DEFAULT_STORE, "--store", help="SQLite results file."),
    keep_outliers: Optional[bool] = typer.Option(
        None, "--keep-outliers/--drop-outliers", help="Count runs beyond 3 sigma in the means (default: the study's)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print the table as CSV on stdout."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as one JSON object on stdout."),
    runs: bool = typer.Option(False, "--runs", help="With --csv/--json: export every run instead of the per-scenario table."),
) -> None:
    """Per application, every scenario of a study: mean E2E ± CI, phase means, runs, outliers, failures; the host's
    drift over the study and the PIN-vs-VNL and platform-vs-BM comparisons, paired by round."""
    from e2ebench.analysis import read_study_runs
    from e2ebench.store import ADHOC_STUDY, Store
    from e2ebench.study_runner import summarize_study

    if as_csv and as_json:
        raise fail_usage("--csv and --json are exclusive")
    if not store_path.exists():
        raise fail_usage(f"store {store_path} does not exist; run `e2ebench study` first (or pass --store)")
    with Store(store_path, read_only_ok=True) as store:
        record = _find_study(store, study_id)
        if runs and (as_csv or as_json):
            rows = store.export_rows(record["id"])
            if as_json:
                emit_json({"study": {k: record[k] for k in ("id", "name", "source", "status", "created_at")},
                           "runs": rows})
            else:
                _write_csv(rows, list(rows[0].keys()) if rows else ["id"])
            raise typer.Exit(EXIT_OK)
        runs_read = read_study_runs(store, record["id"], keep_outliers, detail=False)     # once, for all below
        if as_json:
            summaries = summarize_study(store, record["id"], keep_outliers, runs=runs_read)
            drifts, comparisons = ([], []) if record["id"] == ADHOC_STUDY else \
                drift_and_comparisons(store, record["id"], keep_outliers, runs_read)
            emit_json({"study": {k: record[k] for k in ("id", "name", "source", "status", "created_at")},
                       "scenarios": [s.as_dict() for s in summaries], "drift": [d.to_dict() for d in drifts],
                       "comparisons": comparisons, "hosts": fleet_hosts(store, record["id"])})
        elif as_csv:
            summaries = summarize_study(store, record["id"], keep_outliers, runs=runs_read)
            _write_csv([_summary_row(s) for s in summaries], list(SUMMARY_CSV_COLUMNS))
        else:
            _print_summaries(store, record["id"], keep_outliers, runs_read)


def _write_csv(rows: list[dict], columns: list[str]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    sys.stdout.flush()


@app.command()
def studies(
    store_path: Path = typer.Option(DEFAULT_STORE, "--store", help="SQLite results file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list on stdout."),
) -> None:
    """List the studies in a store: id, name, status, runs."""
    from e2ebench.store import Store

    if not store_path.exists():
        raise fail_usage(f"store {store_path} does not exist")
    with Store(store_path, read_only_ok=True) as store:
        rows = store.studies()
    out = []
    for r in rows:
        identity = r["config"].get("identity") or {}
        out.append({"id": r["id"], "name": r["name"], "status": r["status"], "source": r["source"],
                    "created_at": r["created_at"], "config_sha256": identity.get("config_sha256"),
                    "scenarios": r["scenarios"], "runs": r["runs"], "ok_runs": r["ok_runs"],
                    "failed_runs": r["failed_runs"]})
    if as_json:
        emit_json(out)
        return
    table = Table(title=f"studies in {escape(str(store_path))}", header_style="bold", box=box.SIMPLE_HEAD,
                  padding=(0, 0), pad_edge=False, collapse_padding=True)
    for column in ("id", "status", "scenarios", "ok runs", "failed", "study file"):
        table.add_column(column, no_wrap=column != "study file", overflow="fold")
    for r in out:
        table.add_row(escape(r["id"]), r["status"], str(r["scenarios"]), str(r["ok_runs"]), str(r["failed_runs"]),
                      escape(r["source"] or ""))
    console.print(table)
