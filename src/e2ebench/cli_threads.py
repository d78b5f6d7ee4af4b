"""``e2ebench threads DEPLOYMENT``: what each library would choose for its thread pools inside a deployment on this
host, and whether that exceeds the deployment's CPU limit (registered on :data:`e2ebench.cli.app` when imported).

No workload runs: the deployment is provisioned and a short probe (:mod:`e2ebench.thread_probe`) imports torch,
OpenCV, ONNX Runtime and threadpoolctl inside it with no thread variable set.  ``e2ebench doctor --threads`` shows
the same for BM/1/VNL/CPU and, when the CN platform is usable, CN/1/VNL/CPU.

Exit codes: 0 the probe ran (whatever its verdicts), 1 the probe failed in the platform, 2 a bad or infeasible
deployment.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from e2ebench.cli import EXIT_FAILED, EXIT_OK, app, console, emit_json, err_console, fail_usage, platform_problem


def print_probe(probe: dict) -> None:
    """One table: library, pool, the threads it would choose, the limit, the verdict."""
    quota = probe.get("cpu_quota_cores")
    limit = probe.get("limit_cores")
    title = (f"thread pools in {probe.get('deployment', 'this process')} — host os.cpu_count() = {probe.get('cpu_count')}, "
             f"effective CPUs {probe.get('effective_cpus')}, CFS quota "
             f"{'none' if quota is None else f'{quota:g} cores'}")
    if probe.get("emulated"):
        title += "  [EMULATED]"
    table = Table(title=escape(title), header_style="bold")
    for column in ("library", "pool", "threads", "limit", "verdict"):
        table.add_column(column, justify="right" if column in ("threads", "limit") else "left")
    for pool in probe.get("pools") or []:
        text = pool.get("verdict") or ""
        colour = "red" if text.startswith("exceeds") else ("green" if text.startswith("within") else "yellow")
        threads = pool.get("threads")
        table.add_row(escape(str(pool.get("library"))), escape(str(pool.get("pool"))),
                      "?" if threads is None else str(threads), f"{limit:g} cores" if limit is not None else "?",
                      f"[{colour}]{escape(text)}[/]")
    console.print(table)
    console.print(f"limit = {escape(str(probe.get('limit_source')))}; "
                  f"{probe.get('exceeding', 0)} of {len(probe.get('pools') or [])} pools exceed it", soft_wrap=True)
    for library, error in (probe.get("errors") or {}).items():
        err_console.print(f"[yellow]{escape(library)}: not probed: {escape(error)}[/]")


def check_deployment(text: str, platform_options: dict | None = None):
    """Parse ``text`` and check it can run here; a usage error (exit 2) otherwise.  Returns the Deployment."""
    from e2ebench.scenario import Deployment, HostFacts, NotationError, infeasibility

    try:
        deployment = Deployment.parse(text)
    except NotationError as exc:
        raise fail_usage(str(exc))
    reason = infeasibility(deployment, HostFacts.detect()) or platform_problem(deployment, platform_options)
    if reason:
        raise fail_usage(f"{deployment} is not feasible here: {reason}")
    return deployment


def run_probe(deployment, platform_options: dict | None = None, quiet: bool = False) -> dict:
    """Probe one deployment; ``{"deployment", "error"}`` when it failed (provisioning or the probe itself)."""
    from e2ebench.thread_probe import probe_deployment

    progress = None if quiet else (lambda message: err_console.print(f"[dim]… {escape(message)}[/]"))  # noqa: E731
    try:
        return probe_deployment(deployment, platform_options=platform_options, progress=progress)
    except Exception as exc:
        message = str(exc) or type(exc).__name__
        tail = getattr(exc, "output_tail", "") or ""
        return {"deployment": str(deployment), "platform": deployment.platform,
                "error": f"the thread probe in {deployment} failed: {message}", "output_tail": tail[-2000:]}


@app.command("threads")
def threads(
    deployment: str = typer.Argument(..., metavar="DEPLOYMENT", help="PLATFORM/CORES/CPUMODE/DEVICE, e.g. CN/1/VNL/CPU."),
    engine: Optional[str] = typer.Option(None, "--engine", help="Container engine for CN: runc (default), podman or docker."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Say what torch, OpenCV, ONNX Runtime and OpenMP/BLAS would choose for their thread pools inside DEPLOYMENT on
    this host (no thread variable set, no workload run), and whether that exceeds the deployment's CPU limit."""
    platform_options: dict = {}
    if engine is not None:
        engine = engine.strip().lower()
        if not deployment.strip().upper().startswith("CN/"):
            raise fail_usage("--engine applies to CN deployments only")
        if engine not in ("runc", "podman", "docker"):
            raise fail_usage(f"unknown container engine {engine!r}; accepted: runc, podman, docker")
        platform_options["engine"] = engine
    dep = check_deployment(deployment, platform_options)
    probe = run_probe(dep, platform_options, quiet=as_json)
    if as_json:
        emit_json(probe)
    elif probe.get("error"):
        err_console.print(f"[bold red]error:[/] {escape(probe['error'])}")
        if probe.get("output_tail"):
            err_console.print(escape(probe["output_tail"][-1500:]))
    else:
        print_probe(probe)
    raise typer.Exit(EXIT_FAILED if probe.get("error") else EXIT_OK)


def doctor_threads(as_json: bool) -> None:
    """``e2ebench doctor --threads``: the probe in BM/1/VNL/CPU and (CN usable) CN/1/VNL/CPU."""
    from e2ebench.doctor import collect_threads

    progress = None if as_json else (lambda message: err_console.print(f"[dim]… {escape(message)}[/]"))  # noqa: E731
    report = collect_threads(progress=progress)
    if as_json:
        emit_json(report)
        return
    for text, probe in report["deployments"].items():
        if probe.get("skipped"):
            console.print(f"[yellow]{escape(text)}: not probed — {escape(probe['skipped'])}[/]", soft_wrap=True)
        elif probe.get("error"):
            err_console.print(f"[bold red]{escape(text)}:[/] {escape(probe['error'])}")
        else:
            print_probe(probe)
