"""``e2ebench report`` and ``e2ebench recommend`` (registered on :data:`e2ebench.cli.app` when imported).

Exit codes: 0 success, 2 usage error (no store, no such study, bad price table), 3 the store cannot be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from e2ebench.cli import EXIT_OK, app, console, emit_json, err_console, fail_store, fail_usage
from e2ebench.store import DEFAULT_STORE

DEFAULT_REPORT_DIR = Path("results") / "report"
VERDICT_STYLES = {
    "supported": "bold green", "contradicted": "bold red", "no effect shown": "bold yellow",
    "evidence": "bold blue", "not enough data": "dim",
}


def resolve_study(store, wanted: str | None) -> dict:
    """``--study`` (default: the latest study; with no study, the ad-hoc runs of ``e2ebench run``)."""
    from e2ebench.store import StoreError

    try:
        record = store.resolve_study(wanted, fallback_adhoc=True)
        if wanted is None:
            adhoc_hint(store, record)
        return record
    except StoreError as exc:
        raise fail_store(exc)


def adhoc_hint(store, record: dict) -> None:
    """When the default chose a study and the store also holds ad-hoc runs, say how to see those."""
    from e2ebench.store import ADHOC_STUDY

    if record["id"] == ADHOC_STUDY:
        return
    n = len(store.runs(study_id=ADHOC_STUDY, status="ok", with_result=False))
    if n:
        err_console.print(f"[dim]showing study {escape(record['id'])}; the store also holds {n} ad-hoc run(s) of "
                          f"`e2ebench run`: add --study {ADHOC_STUDY}[/]")


def study_title(record: dict) -> str:
    """``study NAME (ID)``, or ``ad-hoc runs (e2ebench run)`` for the runs of ``e2ebench run``."""
    from e2ebench.store import ADHOC_STUDY

    if record["id"] == ADHOC_STUDY:
        return "ad-hoc runs (e2ebench run)"
    return f"study {record['name']} ({record['id']})"


def adhoc_workload_notes(data_runs: list[dict], study_id: str) -> list[str]:
    """One line per app whose ad-hoc runs were made with more than one workload (only its latest one counts)."""
    from e2ebench.analysis import adhoc_other_workloads
    from e2ebench.store import ADHOC_STUDY

    if study_id != ADHOC_STUDY:
        return []
    _, notes = adhoc_other_workloads(data_runs)
    return [f"{app}: counted the runs with the workload of its latest run ({workload}); {n} run(s) with another "
            "workload left out" for app, (workload, n) in sorted(notes.items())]


def _open_store(store_path: Path):
    from e2ebench.store import Store, StoreError

    if not store_path.exists():
        raise fail_usage(f"store {store_path} does not exist; run `e2ebench study` first (or pass --store)")
    try:
        return Store(store_path, read_only_ok=True)
    except StoreError as exc:
        raise fail_store(exc)


def _load_prices(path: Path | None):
    if path is None:
        return None
    from e2ebench.cost import PriceError, PriceTable

    try:
        return PriceTable.load(path)
    except PriceError as exc:
        raise fail_usage(str(exc))


@app.command()
def report(
    study_id: Optional[str] = typer.Option(None, "--study", help="Study id, name or unique id prefix (default: the latest)."),
    store_path: Path = typer.Option(DEFAULT_STORE, "--store", help="SQLite results file."),
    out: Path = typer.Option(DEFAULT_REPORT_DIR, "--out", help="Folder for report.html and figures/ (created)."),
    prices: Optional[Path] = typer.Option(None, "--prices", help="Price table (TOML) for cost per 1,000 inferences."),
    include_emulated: bool = typer.Option(False, "--include-emulated",
                                          help="Add emulated (QEMU TCG) results in sections of their own."),
    keep_outliers: Optional[bool] = typer.Option(
        None, "--keep-outliers/--drop-outliers", help="Count runs flagged as outliers (default: the study's, else no)."),
    knee_tolerance: float = typer.Option(5.0, "--knee-tolerance", min=0.0, max=100.0,
                                         help="Scale-up knee: fewest cores within this % of the best E2E."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (paths, findings, advice) on stdout."),
) -> None:
    """Write one self-contained HTML report of a study (figures, findings, advice, provenance) and print its path."""
    from e2ebench.report import build_report

    price_table = _load_prices(prices)
    with _open_store(store_path) as store:
        record = resolve_study(store, study_id)
        if as_json:
            result = build_report(store, record["id"], out, price_table, include_emulated, keep_outliers, knee_tolerance)
        else:
            with err_console.status(f"analysing {escape(record['id'])} and drawing figures"):
                result = build_report(store, record["id"], out, price_table, include_emulated, keep_outliers,
                                      knee_tolerance)
    if as_json:
        emit_json(result.summary)
    else:
        console.print(f"{len(result.figures)} figure(s) in {escape(str(out / 'figures'))}")
        console.print(str(result.html_path), markup=False, highlight=False)
    raise typer.Exit(EXIT_OK)


@app.command()
def recommend(
    study_id: Optional[str] = typer.Option(None, "--study", help="Study id, name or unique id prefix (default: the latest)."),
    store_path: Path = typer.Option(DEFAULT_STORE, "--store", help="SQLite results file."),
    prices: Optional[Path] = typer.Option(None, "--prices", help="Price table (TOML): adds cost to the GPU advice."),
    include_emulated: bool = typer.Option(False, "--include-emulated",
                                          help="Also advise from emulated (QEMU TCG) results, kept apart."),
    keep_outliers: Optional[bool] = typer.Option(
        None, "--keep-outliers/--drop-outliers", help="Count runs flagged as outliers (default: the study's, else no)."),
    knee_tolerance: float = typer.Option(5.0, "--knee-tolerance", min=0.0, max=100.0,
                                         help="Scale-up knee: fewest cores within this % of the best E2E."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Which platform, how many cores, pinned or not, GPU or not — and the paper's seven best practices plus thread-pool sizing, on your data."""
    from e2ebench import analysis
    from e2ebench import recommend as advice
    from e2ebench.cost import cost_notes, cost_rows
    from e2ebench.store import ADHOC_STUDY

    price_table = _load_prices(prices)
    with _open_store(store_path) as store:
        record = resolve_study(store, study_id)
        data = analysis.load_study(store, record["id"], include_outliers=keep_outliers)
        notes_adhoc = adhoc_workload_notes(store.runs(study_id=record["id"], phase=None)
                                           if record["id"] == ADHOC_STUDY else [], record["id"])
    from e2ebench.machine_types import machine_type_section

    sets = []
    machines = None
    for emulated in (False, True):
        if emulated and not (include_emulated and data.has_emulated):
            continue
        findings = analysis.analyse(data, emulated=emulated, knee_tolerance_pct=knee_tolerance)
        rows = cost_rows(findings.scenarios, price_table) if price_table else None
        notes = cost_notes(rows, price_table) if price_table else None
        sets.append(advice.recommend(findings, notes))
        if not emulated:
            machines = machine_type_section(findings.scenarios, rows, price_table)
    if as_json:
        emit_json({"study": {k: record[k] for k in ("id", "name", "source", "status", "created_at")},
                   "native": sets[0].to_dict(), "emulated": sets[1].to_dict() if len(sets) > 1 else None,
                   "emulated_scenarios_kept_apart": sum(1 for k in data.scenarios if k.emulated),
                   "machine_types": machines})
        raise typer.Exit(EXIT_OK)
    console.print(f"[bold]{escape(study_title(record))}[/]: {len(data.used_run_ids)} runs in {len(data.scenarios)} "
                  "scenarios")
    for note in notes_adhoc:
        console.print(f"[yellow]{escape(note)}[/]")
    n_emulated = sum(1 for k in data.scenarios if k.emulated)
    if n_emulated and not include_emulated:
        console.print(f"[yellow]{n_emulated} emulated (QEMU TCG) scenario(s) left out; add --include-emulated to "
                      "see advice from them, kept apart.[/]")
    for rec_set in sets:
        _print_set(rec_set)
    if machines:
        print_machine_types(machines)
    raise typer.Exit(EXIT_OK)


def print_machine_types(section: dict) -> None:
    """E2E per deployment per host type side by side, and the cheapest host type + deployment with prices."""
    from e2ebench.analysis import fmt_number

    table = Table(title="E2E per deployment and machine type (mean ± 95% CI half-width, n)", header_style="bold")
    table.add_column("scenario")
    for host_type in section["host_types"]:
        table.add_column(escape(host_type), justify="right")
    for row in section["rows"]:
        cells = []
        for host_type in section["host_types"]:
            s = row["by_host_type"].get(host_type)
            if s is None or s["mean"] is None:
                cells.append("—")
            else:
                half = f" ± {fmt_number(s['half_width'], 2)}" if s["half_width"] is not None else ""
                cells.append(f"{fmt_number(s['mean'])} s{half} (n={s['n']})")
        table.add_row(escape(row["scenario"]), *cells)
    console.print(table)
    for choice in section["cheapest"]:
        console.print(f"[bold]{escape(choice['app'])}[/], cheapest machine type and deployment: {escape(choice['reason'])}")


def _print_set(rec_set) -> None:
    if rec_set.emulated:
        console.rule("[bold red]EMULATED (QEMU TCG) — not comparable with native results[/]")
    if not rec_set.answers:
        console.print("[dim]No successful measurement runs.[/]")
        return
    for answer in rec_set.answers:
        body = escape(answer.text)
        if answer.runs_to_add:
            body += "\n[dim]To firm this up, add: " + escape(", ".join(answer.runs_to_add)) + "[/]"
        console.print(Panel(body, title=f"[bold]{escape(answer.app)}[/]", title_align="left", border_style="blue"))
        table = Table(box=box.SIMPLE_HEAVY, show_lines=True, header_style="bold", expand=True)
        table.add_column("#", justify="right", width=2)
        table.add_column("best practice", ratio=2)
        table.add_column("verdict", no_wrap=True)
        table.add_column("what the data say", ratio=5)
        table.add_column("scenarios to add", ratio=2)
        for r in rec_set.for_app(answer.app):
            style = VERDICT_STYLES.get(r.verdict, "")
            table.add_row(str(r.practice), escape(r.title), f"[{style}]{escape(r.verdict)}[/]", escape(r.text),
                          escape(", ".join(r.runs_to_add)) or "—")
        console.print(table)
