"""``e2ebench store check`` and ``e2ebench store import`` (registered on :data:`e2ebench.cli.app` when imported).

Exit codes of ``store check``: 0 the store is sound, 3 it is damaged or not a store (also with ``--repair``: the
copy's counts are printed), 2 usage error (no such file, the repair target exists).  ``store import``: 0 every file
imported (or stored already), 2 some file is not a spill file or RunResult, 3 the store cannot take runs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from e2ebench.cli import EXIT_OK, EXIT_STORE, EXIT_USAGE, app, console, emit_json, err_console, fail_usage
from e2ebench.store import DEFAULT_STORE

store_app = typer.Typer(help="Check or repair a results store; import runs kept in spill files.",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")


def say(text: str, **kw) -> None:
    console.print(text, soft_wrap=True, **kw)     # long paths and SQLite's messages stay on one line


def _kib(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024:,.0f} KiB"


def _ids(items: list[int]) -> str:
    shown = ", ".join(map(str, items[:12]))
    return shown + (f", … (+{len(items) - 12})" if len(items) > 12 else "")


@store_app.command("check")
def check(
    store_path: Path = typer.Option(DEFAULT_STORE, "--store", help="SQLite results file."),
    repair: bool = typer.Option(False, "--repair",
                                help="Copy every readable study and run into a new file (the store is only read)."),
    to: Optional[Path] = typer.Option(None, "--to",
                                      help="With --repair: the new file (default <store>.repaired-<time>.sqlite)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Run SQLite's integrity check and read back every run's result; say whether the store is sound.

    Exit 0 when it is, 3 when it is damaged or not a store.  The store is opened read-only and never changed.
    """
    from e2ebench.store_check import RepairError, check_store, default_repair_target, repair_store

    if not store_path.exists():
        raise fail_usage(f"store {store_path} does not exist")
    if store_path.is_dir():
        raise fail_usage(f"{store_path} is a folder, not a store file")
    if to is not None and not repair:
        raise fail_usage("--to goes with --repair")
    facts = check_store(store_path)
    code = EXIT_OK if facts["ok"] else EXIT_STORE
    if not as_json:
        _print_facts(store_path, facts)
    outcome = None
    if repair:
        target = to or default_repair_target(store_path)
        try:
            outcome = repair_store(store_path, target)
        except RepairError as exc:
            if target.exists():
                raise fail_usage(str(exc))
            outcome = {"error": str(exc)}
        except (OSError, sqlite3.Error) as exc:          # the copy cannot be written (a StoreFault goes to main)
            outcome = {"error": f"cannot write {target}: {exc}"}
        if "error" in outcome:
            code = EXIT_STORE
    if as_json:
        emit_json({**facts, "repair": outcome})
    elif outcome is not None and "error" in outcome:
        err_console.print(f"[bold red]error:[/] cannot repair {escape(str(store_path))}: {escape(outcome['error'])}",
                          soft_wrap=True)
    elif outcome is not None:
        _print_repair(store_path, outcome)
    elif facts["kind"] == "damaged":
        say(f"copy its readable runs into a new file: e2ebench store check --store {escape(str(store_path))} --repair",
            highlight=False)
    raise typer.Exit(code)


def _print_facts(store_path: Path, facts: dict) -> None:
    colour = "green" if facts["ok"] else "red"
    say(f"store {escape(str(store_path))}: [bold {colour}]{escape(facts['verdict'])}[/]")
    if facts["kind"] not in ("not-sqlite", "empty"):
        say(f"  {_kib(facts['size_bytes'])}, {facts['page_count'] or '?'} pages of {facts['page_size'] or '?'} bytes, "
            f"schema version {facts['schema_version'] or '?'}")
        runs = "?" if facts["runs"] is None else f"{facts['runs']} ({facts['runs_ok']} ok, {facts['runs_failed']} failed)"
        say(f"  studies {'?' if facts['studies'] is None else facts['studies']}, runs {runs}")
    for line in facts["problems"][:8]:
        say(f"  [red]•[/] {escape(line)}", highlight=False)
    if len(facts["problems"]) > 8:
        say(f"  [red]•[/] … {len(facts['problems']) - 8} more (--json lists {len(facts['problems'])})")
    pending = facts["pending"]
    say(f"  spill files waiting to be imported: {len(pending) or 'none'}")
    for p in pending:
        say(f"    {escape(p)}", highlight=False)


def _print_repair(store_path: Path, outcome: dict) -> None:
    lost, studies = outcome["runs_lost"], outcome["studies_recovered"]
    say(f"repair: {outcome['runs_recovered']} run(s) recovered, {lost} lost (run ids up to {outcome['highest_id']} "
        f"looked for), {studies} stud{'y' if studies == 1 else 'ies'} copied into [bold]{escape(outcome['target'])}[/]; "
        f"{escape(str(store_path))} is unchanged")
    if lost:
        say(f"  lost run ids: {_ids([x['id'] for x in outcome['lost']])} "
            f"({escape(outcome['lost'][0]['why'])[:160]}{' …' if lost > 1 else ''})")
    if outcome["studies_placeholder"]:
        say(f"  studies known only from their runs (placeholder records): "
            f"{escape(', '.join(outcome['studies_placeholder']))}")
    say(f"  to use it: move {escape(str(store_path))} aside and rename the copy to its name")


@store_app.command("import")
def import_files(
    files: List[Path] = typer.Argument(..., metavar="FILE...",
                                       help="Spill files (a run that could not be stored) or RunResult JSON files."),
    store_path: Path = typer.Option(DEFAULT_STORE, "--store", help="SQLite results file."),
    keep: bool = typer.Option(False, "--keep", help="Keep the spill files after importing them."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list on stdout."),
) -> None:
    """Store runs kept in spill files (written when the store could not take them) or RunResult JSON files.

    Each run is stored once, whatever happens: a file imported twice, or a run stored already, is skipped.  A spill
    file is deleted once its run is committed (unless --keep); a RunResult file (an ad-hoc run) is never deleted.
    """
    from e2ebench.store import Store

    outcomes, bad = [], 0
    with Store(store_path) as store:            # imports the spill files beside the store first
        for path in files:
            try:
                outcomes.append(store.import_file(path, delete=not keep))
            except (OSError, ValueError, KeyError, TypeError, sqlite3.IntegrityError) as exc:
                bad += 1
                outcomes.append({"file": str(path), "uuid": None, "run_id": None,
                                 "outcome": f"not imported: {type(exc).__name__}: {exc}"})
    if as_json:
        emit_json(outcomes)
    else:
        for o in outcomes:
            where = f"run {o['run_id']}" if o["run_id"] is not None else "—"
            say(f"{escape(o['file'])}: {escape(o['outcome'])} ({where})", highlight=False)
    raise typer.Exit(EXIT_USAGE if bad else EXIT_OK)
