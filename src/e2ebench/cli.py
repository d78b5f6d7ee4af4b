"""The ``e2ebench`` command line.

Exit codes: 0 success, 1 a run (or study) failed, 2 usage or validation error, 3 the store cannot be used (not a
store, damaged, read-only, full, locked; one sentence says what to do, and names the file that keeps a run that could
not be stored).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from e2ebench.store import DEFAULT_STORE

app = typer.Typer(
    name="e2ebench",
    help=(
        "Measure the end-to-end (pre-processing + inference + post-processing) inference time of deep-learning "
        "applications on bare metal (BM), containers (CN), VMs (VM), micro-VMs (MVM) and containers in VMs (VMCN), "
        "with vanilla (VNL) or pinned (PIN) CPUs, and turn the results into figures and deployment advice.\n\n"
        "Deployments are written PLATFORM/CORES/CPUMODE/DEVICE, e.g. BM/4/PIN/CPU."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate or inspect data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

LOG_WIDTH = 160    # columns of tables written to a file or a pipe


def _console(stderr: bool = False, **options) -> Console:
    """A rich console; off a terminal (a log file, a pipe) rich would cut tables at 80 columns ("max-ru…"), so there
    it is 160 columns wide unless COLUMNS says otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    width = None if terminal or os.environ.get("COLUMNS") else LOG_WIDTH
    return Console(stderr=stderr, width=width, **options)


console = _console()
err_console = _console(stderr=True, soft_wrap=True)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_STORE = 3      # the store cannot be used: e2ebench.store.StoreFault


def fail_usage(message: str) -> "typer.Exit":
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(EXIT_USAGE)


def fail_store(exc: Exception) -> "typer.Exit":
    """``error: <sentence>`` for a StoreError: exit 3 when the file cannot be used (StoreFault), else 2."""
    from e2ebench.store import StoreFault

    err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(EXIT_STORE if isinstance(exc, StoreFault) else EXIT_USAGE)


def parse_options(pairs: list[str] | None) -> dict:
    """``["k=v", ...]`` -> dict with ints/floats/bools decoded."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise fail_usage(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        key = key.strip()
        if not key.replace("_", "").isalnum():
            raise fail_usage(f"bad option name {key!r}")
        out[key] = _decode_value(value.strip())
    return out


def _decode_value(value: str):
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return value


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# run


def public_result(result: dict) -> dict:
    """The documented ``--json`` object of ``e2ebench run`` (the full RunResult is in the store)."""
    keys = (
        "scenario", "app", "mode", "cache", "deployment", "requests", "completed", "batch_size", "loadgen_scenario", "backend",
        "e2e_s", "phases_s", "latency_ms", "throughput_sps", "effective_cpus", "cpu_quota_cores", "counters",
        "cold_start_s", "cold_start", "emulated", "errors", "error", "threads", "quality", "environment", "loadgen",
        "run_id", "parameters", "logs_dir", "started_at", "finished_at",
    )
    keys += (  # issue 9: what checks the numbers
        "window_wall_s", "laps_coverage", "laps_cover_window", "service_time_ms", "loadgen_latency_ms",
        "batch_size_requested", "warmup_requests", "compute_threads", "page_cache", "warnings",
    )
    keys += ("memory_limit_mib", "peak_memory_mib", "oom_killed")  # issue 10: memory limits
    keys += ("contended", "contention")  # issue 10: another e2ebench measurement ran on the run's cores
    keys += ("thread_policy", "thread_pools")  # issue 13: the thread policy and the pool sizes each library chose
    keys += ("result_schema",)  # issue 12: the version of the typed RunResult (e2ebench.result)
    keys += ("effective_gpus", "gpu_model")  # issue 12: the GPUs the worker saw (0 and null on a CPU run)
    out = {k: result.get(k) for k in keys}
    if out["errors"] is None:
        out["errors"] = {"count": 0, "fraction": 0.0, "samples": []}
    if out["phases_s"] is None:
        out["phases_s"] = {k: None for k in ("io", "pre", "infer", "post", "other")}
    if out["latency_ms"] is None:
        out["latency_ms"] = {"p50": None, "p90": None, "p99": None}
    return out


def _fmt_s(value) -> str:
    return "—" if value is None else f"{value:.3f} s"


def print_result(result: dict) -> None:
    ok = not result.get("error")
    title = f"{result.get('scenario')}  ({result.get('requests')} requests, {result.get('loadgen_scenario')}, " \
            f"{result.get('backend')})"
    if result.get("emulated"):
        title += "  [EMULATED — not comparable with native results]"
    table = Table(title=escape(title), show_header=True, header_style="bold")
    table.add_column("phase")
    table.add_column("time", justify="right")
    table.add_column("share of E2E", justify="right")
    e2e = result.get("e2e_s")
    phases = result.get("phases_s") or {}
    for phase in ("io", "pre", "infer", "post", "other"):
        value = phases.get(phase)
        share = f"{100 * value / e2e:.1f}%" if (value is not None and e2e) else "—"
        table.add_row(phase, _fmt_s(value), share)
    table.add_row("[bold]E2E[/]", f"[bold]{_fmt_s(e2e)}[/]", "100%" if e2e else "—")
    console.print(table)
    lat = result.get("latency_ms") or {}
    if lat.get("p50") is not None:
        console.print(f"latency per request: p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms; "
                      f"throughput {result.get('throughput_sps') or 0:.2f} samples/s")
    cpus = result.get("effective_cpus")
    if cpus is not None:
        quota = result.get("cpu_quota_cores")
        console.print(f"effective CPUs {cpus}; CFS quota {'none' if quota is None else f'{quota:g} cores'}; "
                      f"threads {result.get('threads')}")
    if result.get("gpu_model"):
        peak = (result.get("counters") or {}).get("gpu_memory_peak_bytes")
        console.print(f"GPU {escape(str(result['gpu_model']))} ({result.get('effective_gpus')} visible to the worker); "
                      f"peak GPU memory {'—' if peak is None else f'{peak / 2**20:.0f} MiB'}")
    pools = result.get("thread_pools") or {}
    if pools:
        shown = {k: "—" if v is None else v for k, v in pools.items()}
        console.print(f"thread policy {result.get('thread_policy') or 'sized'}: torch {shown.get('torch_intra_op')} "
                      f"intra-op / {shown.get('torch_inter_op')} inter-op, OpenCV {shown.get('opencv')}, ONNX "
                      f"Runtime {shown.get('onnxruntime_intra_op')}, {shown.get('process_threads')} process "
                      f"threads; os.cpu_count() {shown.get('os_cpu_count')}")
    counters = result.get("counters") or {}
    if counters:
        console.print("counters: " + ", ".join(f"{k}={v}" for k, v in counters.items()))
    if result.get("cold_start_s") is not None:
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in (result.get("cold_start") or {}).items() if isinstance(v, (int, float)))
        console.print(f"cold start {result['cold_start_s']:.2f} s ({parts})")
    errors = result.get("errors") or {}
    if errors.get("count"):
        console.print(f"[yellow]{errors['count']} request(s) failed[/]: " +
                      "; ".join(escape(f"{e['where']}: {e['message']}") for e in errors.get("samples", [])[:5]))
    if result.get("memory_limit_mib") is not None or result.get("peak_memory_mib") is not None:
        peak = result.get("peak_memory_mib")
        limit = result.get("memory_limit_mib")
        console.print(f"memory: limit {'none' if limit is None else f'{limit} MiB'}; peak "
                      f"{'—' if peak is None else f'{peak:g} MiB'}")
    if result.get("run_id") is not None:
        console.print(f"stored as run {result['run_id']}")
    if not ok:
        err_console.print(f"[bold red]run failed:[/] {escape(str(result.get('error')))}")
        if result.get("output_tail"):
            err_console.print(escape(str(result["output_tail"])[-1500:]))


def platform_problem(deployment, platform_options: dict | None = None) -> str | None:
    """Why the deployment's platform cannot run here (its probe), or None."""
    from e2ebench.platforms import PlatformError, get_platform

    try:
        availability = get_platform(deployment.platform, **(platform_options or {})).probe()
    except PlatformError as exc:
        return str(exc)
    return None if availability.usable else f"platform {deployment.platform} unavailable: {availability.reason}"


def guest_platform_list() -> str:
    """The registered platforms whose worker runs on a guest kernel, as text: "VM, MVM and VMCN"."""
    from e2ebench.platforms import platform_classes

    names = [name for name, cls in platform_classes().items() if cls.guest]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@app.command()
def run(
    app_name: str = typer.Argument(..., metavar="APP", help="Application: ic, sr, nlp, rs (see `e2ebench apps`)."),
    deployment: str = typer.Argument(..., metavar="DEPLOYMENT", help="PLATFORM/CORES/CPUMODE/DEVICE, e.g. BM/2/PIN/CPU."),
    requests: Optional[int] = typer.Option(None, "--requests", "-n", min=1, help="Requests in the workload (default: the app's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Requests per inference batch."),
    scenario: str = typer.Option("offline", "--scenario", help="LoadGen scenario: offline (the paper's) or single-stream."),
    backend: str = typer.Option("torch", "--backend", help="Inference backend: torch or onnxruntime (where the app has it)."),
    mode: str = typer.Option("e2e", "--mode", help="e2e (all phases) or inference-only (the DNN alone, DLBS-style)."),
    cache: str = typer.Option("warm", "--cache",
                              help="Page cache at the start of the timed window: warm (the data files stay cached, the "
                                   "default) or cold (the worker drops them from the page cache inside the platform "
                                   "first, so io measures the platform's storage path; not with inference-only)."),
    threads: str = typer.Option("sized", "--threads", metavar="sized|framework-default|N",
                                help="Thread policy: sized (every library's pool = the deployment's cores, the "
                                     "default), framework-default (e2ebench sets no thread count and no "
                                     "OMP_NUM_THREADS: each library chooses as in your own program) or N (every "
                                     "pool N threads)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data set folder/file; default: a generated set, cached."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Real model checkpoint to load instead of seeded random weights."),
    variant: str = typer.Option("full", "--variant", help="Model size: full (the real one) or tiny (for tests only)."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o", help="App option KEY=VALUE (repeatable)."),
    engine: Optional[str] = typer.Option(None, "--engine",
                                         help="Container engine for CN: runc (default), podman or docker."),
    vm_memory_mib: Optional[int] = typer.Option(None, "--vm-memory-mib", min=256,
                                                help="Guest memory for VM, MVM and VMCN (default 4096 MiB)."),
    memory_mib: Optional[int] = typer.Option(None, "--memory-mib",
                                             help="Memory limit in MiB, swap included: a memory cgroup for BM and CN "
                                                  "(at least 64), the guest's memory for VM, MVM and VMCN (at least "
                                                  "256, as --vm-memory-mib). A worker the OOM killer kills is a "
                                                  "failed run: out of memory (limit N MiB)."),
    store_path: Path = typer.Option(DEFAULT_STORE, "--store", help="SQLite results file."),
    timeout: float = typer.Option(1800.0, "--timeout", min=1, help="Seconds before the run is killed."),
    max_error_fraction: float = typer.Option(0.01, "--max-error-fraction", min=0, max=1,
                                             help="Fail the run when more than this fraction of requests fail."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Measure one scenario: APP on DEPLOYMENT, every request's io, pre, infer and post phases timed."""
    from e2ebench.apps import AppError, get_app_class
    from e2ebench.platforms import is_guest
    from e2ebench.runner import Workload, run_single
    from e2ebench.scenario import HostFacts, NotationError, Scenario, check_thread_policy, infeasibility
    from e2ebench.spec import LOADGEN_SCENARIOS
    from e2ebench.store import Store

    try:
        sc = Scenario.parse(f"{app_name}@{deployment}")
        sc = Scenario(sc.app, sc.deployment, mode.strip().lower(), cache.strip().lower())
        cls = get_app_class(sc.app)
    except (NotationError, AppError) as exc:
        raise fail_usage(str(exc))
    try:
        sc = Scenario(sc.app, sc.deployment, sc.mode, sc.cache, check_thread_policy(threads))
    except NotationError as exc:
        raise fail_usage(f"--threads: {exc}")
    scenario = scenario.strip().lower()
    if scenario not in LOADGEN_SCENARIOS:
        raise fail_usage(f"unknown LoadGen scenario {scenario!r}; accepted: {', '.join(LOADGEN_SCENARIOS)}")
    if backend not in cls.backends:
        raise fail_usage(f"{sc.app} has no backend {backend!r}; accepted: {', '.join(cls.backends)}")
    if variant not in cls.variants:
        raise fail_usage(f"unknown variant {variant!r}; accepted: {', '.join(cls.variants)}")
    options = parse_options(option)
    known = {o.name for o in cls.options}
    for key in options:
        if key not in known:
            raise fail_usage(f"{sc.app} has no option {key!r}; accepted: {', '.join(sorted(known)) or 'none'}")
    if data is not None and not data.exists():
        raise fail_usage(f"data path {data} does not exist")
    if weights is not None and not weights.exists():
        raise fail_usage(f"weights file {weights} does not exist")
    platform_options: dict = {}
    if engine is not None:
        engine = engine.strip().lower()
        if sc.deployment.platform != "CN":
            raise fail_usage(f"--engine applies to CN deployments only, not {sc.deployment.platform}")
        if engine not in ("runc", "podman", "docker"):
            raise fail_usage(f"unknown container engine {engine!r}; accepted: runc, podman, docker")
        platform_options["engine"] = engine
    if vm_memory_mib is not None:
        if not is_guest(sc.deployment.platform):
            raise fail_usage(f"--vm-memory-mib applies to {guest_platform_list()} deployments only, "
                             f"not {sc.deployment.platform}")
        platform_options["memory_mib"] = vm_memory_mib
    if memory_mib is not None:
        from e2ebench.platforms.memory import MemoryLimitError, memory_limit_problem, validate_memory_mib

        guest = is_guest(sc.deployment.platform)
        try:
            validate_memory_mib(memory_mib, minimum=256 if guest else 64,
                                what="--memory-mib (the guest's memory)" if guest else "--memory-mib")
        except MemoryLimitError as exc:
            raise fail_usage(str(exc))
        if vm_memory_mib is not None and vm_memory_mib != memory_mib:
            raise fail_usage(f"--memory-mib {memory_mib} and --vm-memory-mib {vm_memory_mib} disagree: both set the "
                             "guest's memory; give one of them")
        platform_options["memory_mib"] = memory_mib
    reason = infeasibility(sc.deployment, HostFacts.detect())
    if reason is None and memory_mib is not None:
        reason = memory_limit_problem(sc.deployment.platform)
    reason = reason or platform_problem(sc.deployment, platform_options)
    if reason:
        raise fail_usage(f"{sc} is not feasible here: {reason}")
    workload = Workload(
        requests=requests, batch_size=batch_size, loadgen_scenario=scenario, backend=backend, variant=variant,
        data=str(data) if data else None, weights=str(weights.resolve()) if weights else None, app_options=options,
        max_error_fraction=max_error_fraction, timeout_s=timeout,
    )
    progress = None
    if not as_json:
        progress = lambda message: err_console.print(f"[dim]… {escape(message)}[/]")  # noqa: E731
    with Store(store_path) as store:
        if as_json:
            result = run_single(sc, workload, store=store, platform_options=platform_options)
        elif err_console.is_terminal:
            with err_console.status(f"measuring {sc}"):
                result = run_single(sc, workload, store=store, progress=progress, platform_options=platform_options)
        else:       # in a file or a pipe a spinner shows nothing: plain progress lines only
            progress(f"measuring {sc}")
            result = run_single(sc, workload, store=store, progress=progress, platform_options=platform_options)
    if as_json:
        emit_json(public_result(result.as_dict()))
    else:
        print_result(result.as_dict())
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


# ---------------------------------------------------------------------------
# apps, data


@app.command()
def apps(
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]",
                                             help="Show this application's options: meaning, type and default."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the applications, their models, backends, defaults and options (with APP: each option in full)."""
    import textwrap

    from e2ebench.apps import AppError, app_names, get_app_class

    def describe(name: str, cls) -> dict:
        return {
            "name": name, "title": cls.title, "model": cls.model_name, "input": cls.input_kind,
            "backends": list(cls.backends), "variants": list(cls.variants), "default_requests": cls.default_requests,
            "default_batch_size": cls.default_batch_size,
            "options": [{"name": o.name, "default": o.default, "help": o.help, "type": o.type_name}
                        for o in cls.options],
        }

    def say(text: str, indent: int = 0, style: str | None = None, hang: int = 0) -> None:
        # wrapped here at spaces only, then printed unwrapped: a name is never cut, whatever the width
        lines = textwrap.wrap(text, width=max(40, console.width), initial_indent=" " * indent,
                              subsequent_indent=" " * (indent + hang), break_long_words=False, break_on_hyphens=False)
        for line in lines or [""]:
            console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)

    if app_name is not None:
        try:
            name = app_name.strip().lower()
            cls = get_app_class(name)
        except AppError as exc:
            raise fail_usage(str(exc))
        row = describe(name, cls)
        if as_json:
            emit_json(row)
            return
        say(f"{row['name']} — {row['title']}", style="bold")
        say(f"model {row['model']}; input {row['input']}; backends {', '.join(row['backends'])}; "
            f"variants {', '.join(row['variants'])}")
        say(f"defaults: {row['default_requests']} requests per run, batch size {row['default_batch_size']}")
        if not row["options"]:
            say("options: none")
            return
        say(f"options (e2ebench run --option KEY=VALUE, or options = {{ KEY = VALUE }} in a study's "
            f"[workload.{row['name']}]):")
        for o in row["options"]:
            console.print()
            say(o["name"], indent=2, style="bold")
            default = "none" if o["default"] is None else str(o["default"])
            say(f"type: {o['type']}; default: {default}", indent=4)
            say(o["help"], indent=4)
        return

    rows = []
    for name in app_names():
        try:
            rows.append(describe(name, get_app_class(name)))
        except Exception as exc:
            rows.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
    if as_json:
        emit_json(rows)
        return
    say("applications", style="bold")
    for r in rows:
        console.print()
        if "error" in r:
            say(f"{r['name']}: cannot load: {r['error']}", style="red")
            continue
        say(f"{r['name']} — {r['title']}", style="bold")
        say(f"input {r['input']}; backends {', '.join(r['backends'])}; defaults: {r['default_requests']} "
            f"requests, batch size {r['default_batch_size']}", indent=2)
        say("options: " + (", ".join(o["name"] for o in r["options"]) or "none"), indent=2, hang=9)
    console.print()
    say("Each option's meaning, type and default: e2ebench apps APP", style="dim")


@data_app.command("make")
def data_make(
    app_name: str = typer.Argument(..., metavar="APP", help="Application whose data set to generate."),
    out: Path = typer.Argument(..., metavar="DIR", help="Folder to write (created)."),
    count: int = typer.Option(64, "--count", "-n", min=1, max=1_000_000, help="Number of requests' inputs."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives byte-identical files."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o", help="Generator option KEY=VALUE, e.g. speech=espeak."),
) -> None:
    """Write a deterministic synthetic data set in the real data set's format."""
    from e2ebench.apps import AppError, get_app_class

    try:
        cls = get_app_class(app_name)
    except AppError as exc:
        raise fail_usage(str(exc))
    options = parse_options(option)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with err_console.status(f"generating {count} {app_name} inputs"):
            path = cls.make_data(out, count, seed=seed, **options)
    except (AppError, TypeError, ValueError) as exc:
        raise fail_usage(str(exc))
    console.print(f"wrote {count} {app_name} inputs: {path}")


# ---------------------------------------------------------------------------
# doctor


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
           threads: bool = typer.Option(False, "--threads",
                                        help="Instead: what torch, OpenCV, ONNX Runtime and OpenMP/BLAS would choose for "
                                             "their thread pools in BM/1/VNL/CPU and CN/1/VNL/CPU on this host, against "
                                             "the 1-core limit (as `e2ebench threads DEPLOYMENT`).")) -> None:
    """Check this host: cores, sockets, NUMA, cgroups, and which platforms/devices are usable and why."""
    from e2ebench.doctor import DL_VECTOR_EXTENSIONS, collect

    if threads:
        from e2ebench.cli_threads import doctor_threads

        doctor_threads(as_json)
        return
    report = collect()
    if as_json:
        emit_json(report)
        return
    host = report["host"]
    console.print(f"[bold]host[/]: {host['cpus']} CPUs ({escape(host['cpu_model'])}), {host['sockets']} socket(s), "
                  f"{host['numa_nodes']} NUMA node(s), {host['memory_gib']:.1f} GiB, kernel {host['kernel']}")
    cpu = host.get("cpu") or {}
    if cpu:
        console.print(f"[bold]cpu[/]: {escape(cpu['arch'])}, vector extensions "
                      f"{escape(', '.join(cpu['vector_extensions']) or 'none of ' + ', '.join(DL_VECTOR_EXTENSIONS))}")
    console.print(f"[bold]cgroups[/]: v{host['cgroup_version']} — {escape(host['cgroups'])}")
    table = Table(title="platforms and devices", header_style="bold")
    for column in ("name", "status", "why", "fix"):
        table.add_column(column)
    colour = {"usable": "green", "emulated": "yellow", "unavailable": "red"}
    for name, entry in report["platforms"].items():
        label = f"{name} ({entry['title']})" if entry.get("title") else name
        if entry.get("class") and not entry["class"].startswith("e2ebench."):
            label += f"\n{entry['class']}"       # a third-party platform: say where it comes from
        table.add_row(escape(label), f"[{colour[entry['status']]}]{entry['status']}[/]", escape(entry["reason"]),
                      escape(entry.get("fix") or ""))
    for name, entry in report["devices"].items():
        table.add_row(name, f"[{colour[entry['status']]}]{entry['status']}[/]", escape(entry["reason"]),
                      escape(entry.get("fix") or ""))
    console.print(table)
    for name, entry in report.get("tools", {}).items():
        console.print(f"  {name}: {escape(entry)}")


def _sigterm_like_ctrl_c(signum, frame) -> None:
    """SIGTERM (``kill``, a container stop, a CI timeout) stops like Ctrl-C: the run in progress is torn down
    and discarded, finished runs stay stored, the study is marked interrupted."""
    raise KeyboardInterrupt


def main() -> None:
    from e2ebench.store import StoreError

    register_subcommands()
    signal.signal(signal.SIGTERM, _sigterm_like_ctrl_c)
    try:
        app()
    except StoreError as exc:           # raised wherever the store is reached (SQLite finds some damage lazily)
        raise SystemExit(fail_store(exc).exit_code) from None


def register_subcommands() -> None:
    """Sub-command modules (studies, reports) register themselves on ``app`` when imported."""
    import importlib

    for module in ("e2ebench.cli_study", "e2ebench.cli_report", "e2ebench.cli_store", "e2ebench.cli_threads",
                   "e2ebench.cli_fleet"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


if __name__ == "__main__":
    # sub-command modules register on the importable module's `app`, not on this __main__ copy
    from e2ebench.cli import main as _main

    _main()
