"""``e2ebench fleet join`` and ``e2ebench fleet status`` (registered on :data:`e2ebench.cli.app` when imported).

``join`` starts a Ray node (``ray start``, an argument list) that offers one unit of the ``e2ebench_host`` resource,
so that the cluster runs at most one e2ebench run on it at a time, and carries its host name (and, with
``--host-type``, the machine type it reports instead of the one derived from its facts) as node labels.
``status`` gathers every host's facts on the host itself and says what each runs now.  Ray is imported only when one
of these commands runs (see docs/fleet.md).

Exit codes: 0 done, 1 ``ray start`` failed, 2 usage error or the cluster cannot be reached, or Ray is not installed.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from e2ebench.cli import EXIT_FAILED, EXIT_OK, app, console, emit_json, err_console, fail_usage

fleet_app = typer.Typer(help="Run studies over many hosts (a Ray cluster): join a host, list the hosts.",
                        no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")


def _fleet_module():
    try:
        from e2ebench import fleet
    except ModuleNotFoundError as exc:
        raise fail_usage(str(exc))
    return fleet


def _ray_executable() -> str:
    """The ``ray`` of this environment (next to its Python), else the one on PATH."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


@fleet_app.command("join")
def join(
    address: Optional[str] = typer.Argument(None, metavar="ADDRESS",
                                            help="The head's address, HOST:PORT (default port 6379); omit with --head."),
    head: bool = typer.Option(False, "--head", help="Start the cluster's head here (it is an e2ebench host too)."),
    name: Optional[str] = typer.Option(None, "--name", help="This host's name in the fleet (default: the hostname)."),
    host_type: Optional[str] = typer.Option(
        None, "--host-type", metavar="NAME",
        help="The machine type this host reports (e.g. a cloud instance name), instead of the one derived from its "
             "facts (CPU model, cores, memory, GPU). A study measures each scenario per type, to its own stopping "
             "decision."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="--head: the GCS port (Ray's default 6379)."),
    client_port: Optional[int] = typer.Option(
        None, "--client-port", min=1, max=65535,
        help="--head: the Ray Client port, for `study --cluster ray://HEAD:PORT` from a machine outside the cluster "
             "(Ray's default 10001)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=0,
                                           help="CPUs Ray may schedule its own tasks on (e2ebench's runs ask for none)."),
    temp_dir: Optional[Path] = typer.Option(None, "--temp-dir", help="Ray's session folder (default /tmp/ray)."),
    block: bool = typer.Option(False, "--block", help="Stay in the foreground until the node stops."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the ray start command; run nothing."),
) -> None:
    """Make this host an e2ebench host of a Ray cluster (wraps ray start; leave with: ray stop)."""
    fleet = _fleet_module()
    if head == (address is not None):
        raise fail_usage("give the head's ADDRESS, or --head to start a new cluster here")
    if client_port is not None and not head:
        raise fail_usage("--client-port is the head's: give it with --head")
    host_name = name or socket.gethostname().split(".")[0]
    try:
        labels = fleet.node_labels(host_name, host_type)
    except ValueError as exc:
        raise fail_usage(str(exc))
    command = fleet.join_command(None if head else address, host_name, num_cpus=num_cpus, port=port,
                                 temp_dir=str(temp_dir) if temp_dir else None, ray_executable=_ray_executable(),
                                 block=block, host_type=host_type, client_port=client_port)
    if dry_run:
        console.print(shlex.join(command), markup=False, highlight=False)
        raise typer.Exit(EXIT_OK)
    shown = ", ".join(f"{key}={value}" for key, value in labels.items())
    err_console.print(f"starting a Ray node for host [bold]{escape(host_name)}[/] ({fleet.HOST_RESOURCE}=1, labels "
                      f"{escape(shown)})")
    code = subprocess.call(command)
    raise typer.Exit(EXIT_OK if code == 0 else EXIT_FAILED)


@fleet_app.command("status")
def status(
    cluster: str = typer.Option("auto", "--cluster", metavar="ADDRESS", help="The cluster (auto: this host's)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: {hosts: [...]}."),
) -> None:
    """The cluster's e2ebench hosts: their facts (CPU, cores, sockets, NUMA, memory, kernel, KVM, GPU, usable
    platforms) and what each runs now."""
    fleet = _fleet_module()
    try:
        fleet.connect(cluster)
        rows = fleet.fleet_status()
    except fleet.FleetError as exc:
        raise fail_usage(str(exc))
    if as_json:
        emit_json({"cluster": cluster, "hosts": rows})
        raise typer.Exit(EXIT_OK)
    table = Table(title=f"{len(rows)} e2ebench host(s)", header_style="bold")
    for column in ("host", "CPU", "memory", "kernel", "KVM", "GPU", "platforms", "running now"):
        table.add_column(column)
    for r in rows:
        running = r["running"]
        now = f"{running['scenario']} {running['phase']} #{running['seq']}" if running else "idle"
        platforms = ", ".join(p + ("*" if p in r["emulated_platforms"] else "") for p in r["available_platforms"])
        cpu = (f"{r['cpu_model']}, {r['cores']} cores, {r['sockets']} socket(s), {r['numa_nodes']} NUMA node(s)")
        kind = r["host_type"] + (f" (given; from its facts: {r['derived_host_type']})" if r.get("derived_host_type")
                                 else "")
        table.add_row(f"{escape(r['name'])}\n[dim]{escape(kind)}[/]", escape(cpu), f"{r['memory_gib']:.1f} GiB",
                      escape(r["kernel"]), "yes" if r["kvm"] else ("device, guests emulated" if r.get("kvm_device") else "no"),
                      escape(", ".join(r["gpu_names"])) if r["gpus"] else "none", escape(platforms), escape(now))
    console.print(table)
    if any(r["emulated_platforms"] for r in rows):
        console.print("* emulated (QEMU TCG, no usable KVM): labelled, never compared with native results")
    raise typer.Exit(EXIT_OK)
