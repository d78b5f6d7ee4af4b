"""Run one study over the hosts of a Ray cluster: one measurement per host at a time, results in the head's store.

The study runner (:class:`e2ebench.study_runner.StudyRunner`) keeps deciding *what* runs next, applies the stopping
and outlier rules and owns the store; Ray only decides *where* a run executes.  :class:`FleetStudyRunner` replaces
the one-after-the-other round of the local runner: a round dispatches every active scenario's run to a free host on
which the scenario is feasible, up to one run per host in flight, and stores each result as soon as it comes back
(``ray.wait``), with the host's name and type.

One measurement per host: every e2ebench node offers one unit of the custom resource :data:`HOST_RESOURCE`
(``e2ebench fleet join`` starts the node so) and every run asks for that unit, so Ray itself never places two runs on
one node, whatever its core count and whoever else submits runs to the cluster.

Feasibility per host: the facts of each host (:class:`e2ebench.scenario.HostFacts`, what the platforms' ``supports``
rule reads) are gathered *on* that host by a small task; :func:`fleet_plan` plans the study for every host and a
scenario is feasible when at least one host can run it.

Machine types: a host's type (:func:`host_type_of` its facts, or the name given with ``fleet join --host-type``, a
node label) is part of a scenario's identity.  The runner keeps one state per (scenario, host type)
(:class:`HostTypeState`): each is measured on hosts of its type only, to its own stopping decision, with its own
outlier flags; the states of one scenario share its seq counters (the store's seq is unique per scenario and phase).

Faults: a run whose task fails (its node died or left, its worker was killed) is dispatched again, to another host
that can run it or to the same one when it is back, up to :data:`RUN_ATTEMPTS` times; after that it is stored as a
failed run naming the host and the reason.  Nothing is stored twice: a (phase, seq) is stored once, when its result
arrives, and the store's unique index on (study, scenario, phase, seq) refuses a second one.  Ctrl-C cancels every
run in flight (``ray.cancel(force=True)`` kills the task's worker; the processes it started die with it through
:func:`e2ebench.lifecycle.die_with_parent`); when the study process itself is killed, Ray kills the tasks of the dead
driver.

Data: each host makes the default data set itself from the study's seed (or reads the path the study names); the run
fails, naming the host, when the path is missing there or the data's SHA-256 differs from the head's.

Importing this module imports Ray; nothing else in e2ebench does (``e2ebench study`` imports it only with
``--cluster``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform as _platform
import re
import socket
import time
from pathlib import Path
from typing import Any

try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ModuleNotFoundError as _exc:         # pragma: no cover - the message is the point
    raise ModuleNotFoundError(
        "e2ebench's fleet needs Ray: pip install 'e2ebench[fleet]' (ray==2.60.0)", name="ray") from _exc

from e2ebench.result import RunResult
from e2ebench.runner import Workload, cache_dir, default_data
from e2ebench.scenario import HostFacts
from e2ebench.store import StoreError
from e2ebench.study import Plan, PlannedScenario, Study
from e2ebench.study_runner import (PHASE_WARMUP, ScenarioState, StudyRunner, run_in_platform, run_slug,
                                   say_on_stderr)

HOST_RESOURCE = "e2ebench_host"          # one unit per e2ebench node; every run asks for it
HOST_LABEL = "e2ebench-host"             # node label: the host's name (e2ebench fleet join --name)
HOST_TYPE_LABEL = "e2ebench-host-type"   # node label: its machine type when given (e2ebench fleet join --host-type)
NAMESPACE = "e2ebench"
RUN_ATTEMPTS = 2                         # dispatches of one (phase, seq) before it is stored as failed
FACTS_TIMEOUT_S = 300.0
PROBE_WAIT_S = 120.0                     # a round's calibration probes (issue 11), all hosts in parallel
_KV_RUNNING = "e2ebench/running/"        # Ray's internal KV: what each host runs now (fleet status)
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


class FleetError(RuntimeError):
    """The cluster cannot be reached or has no e2ebench host."""


def valid_host_name(name: str) -> str:
    """A host name as a Ray label value allows it (letters, digits, ``.-_``, at most 63), or ValueError."""
    if not _NAME_RE.match(name or ""):
        raise ValueError(f"host name {name!r}: use 1-63 letters, digits, '.', '-' or '_' (starting and ending with a "
                         "letter or digit)")
    return name


def valid_host_type(name: str) -> str:
    """A machine type given at join (e.g. a cloud instance name, ``m7i.2xlarge``), or ValueError: the characters of a
    Ray label value (it travels as one), which also keeps it safe in a command line, a file name and the reports."""
    if not _NAME_RE.match(name or ""):
        raise ValueError(f"host type {name!r}: use 1-63 letters, digits, '.', '-' or '_' (starting and ending with a "
                         "letter or digit)")
    return name


def node_labels(name: str, host_type: str | None = None) -> dict[str, str]:
    """The Ray node labels of an e2ebench host: its name and, when given, its machine type (validated)."""
    labels = {HOST_LABEL: valid_host_name(name)}
    if host_type is not None:
        labels[HOST_TYPE_LABEL] = valid_host_type(host_type)
    return labels


# ---------------------------------------------------------------------------
# Connecting and starting nodes


CLIENT_CONNECT_ATTEMPTS = 3


def connect(address: str) -> None:
    """Join the cluster at ``address`` (``auto``: the cluster this host belongs to; ``ray://host:10001`` through Ray
    Client; ``host:6379`` the GCS) as a driver, quietly."""
    if ray.is_initialized():
        return
    # Ray Client starts a server process for each driver that connects, which can fail to come up in time on a busy
    # head ("Starting Ray client server failed"): a client address is tried again, a few seconds apart
    attempts = CLIENT_CONNECT_ATTEMPTS if address.startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR",
                     configure_logging=True)
            return
        except (ConnectionError, RuntimeError, ValueError) as exc:
            with contextlib.suppress(Exception):
                ray.shutdown()
            if attempt == attempts:
                raise FleetError(f"cannot reach the Ray cluster at {address}"
                                 + (f" ({attempts} attempts)" if attempts > 1 else "") + f": {exc}") from exc
            time.sleep(3.0 * attempt)


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def join_command(address: str | None, name: str, num_cpus: int | None = None, port: int | None = None,
                 temp_dir: str | None = None, ray_executable: str = "ray", block: bool = False,
                 host_type: str | None = None, client_port: int | None = None) -> list[str]:
    """The ``ray start`` argument list of ``e2ebench fleet join``: the node offers one :data:`HOST_RESOURCE` unit and
    carries its host name (and ``host_type`` when given) as labels; ``address`` None starts a head (a host too)."""
    labels = node_labels(name, host_type)
    command = [ray_executable, "start"]
    if address is None:
        command += ["--head", "--include-dashboard=false"]
        if port is not None:
            command += ["--port", str(int(port))]
        if client_port is not None:          # Ray Client (ray://), for drivers outside the cluster
            command += ["--ray-client-server-port", str(int(client_port))]
    else:
        command += ["--address", address]
    command += ["--resources", json.dumps({HOST_RESOURCE: 1}),
                "--labels", ",".join(f"{key}={value}" for key, value in labels.items())]
    if num_cpus is not None:
        command += ["--num-cpus", str(int(num_cpus))]
    if temp_dir is not None:
        command += ["--temp-dir", str(temp_dir)]
    if block:
        command.append("--block")
    return command


# ---------------------------------------------------------------------------
# Hosts and their facts


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def host_type_of(facts: dict) -> str:
    """A short identity of the machine kind: CPU model, usable cores, memory (GiB) and GPU model, slugged, e.g.
    ``amd-epyc-2c-24g-cpu``.  Runs of different host types are never pooled in the analysis."""
    gpu = slug(facts["gpu_names"][0]) + f"x{len(facts['gpu_names'])}" if facts.get("gpu_names") else "cpu"
    return f"{slug(facts.get('cpu_model') or 'unknown')[:40]}-{facts.get('cores')}c-" \
           f"{round(float(facts.get('memory_gib') or 0))}g-{gpu}"


def local_facts(platforms: list[str] | None = None) -> dict:
    """This host's facts for the fleet (runs on each node): doctor's CPU/memory/kernel facts, the platforms usable
    here (probed as ``study --plan`` probes them), the GPU, KVM."""
    from e2ebench import doctor, measure
    from e2ebench.platforms import cgroups
    from e2ebench.study import detect_host

    host, emulated = detect_host(platforms)
    kvm_device = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    # KVM counts when guests run natively: a device under which the VM platforms still run emulated (TCG) does not;
    # unknown (None) when no guest platform was probed (a study without VMs probes none)
    guests = {"VM", "MVM", "VMCN"}
    probed = platforms is None or bool(guests & set(platforms))
    kvm = (kvm_device and not (set(emulated) & guests)) if probed else None
    facts = {
        "hostname": socket.gethostname(), "cpu_model": measure.cpu_model(), "cores": host.cores,
        "sockets": doctor._sockets(), "numa_nodes": len(cgroups.numa_nodes()), "memory_gib": doctor._memory_gib(),
        "kernel": _platform.release(), "kvm": kvm, "kvm_device": kvm_device, "gpus": host.gpus, "gpu_names": list(host.gpu_names),
        "gpu_reason": host.gpu_reason, "available_platforms": sorted(host.available_platforms),
        "platform_reasons": [list(r) for r in host.platform_reasons], "emulated_platforms": sorted(emulated),
        "python": _platform.python_version(), "e2ebench_cache": str(cache_dir()),
    }
    facts["host_type"] = host_type_of(facts)
    return facts


@dataclasses.dataclass(frozen=True)
class FleetHost:
    """One e2ebench node of the cluster."""

    name: str                     # the label given at join (default: the machine's hostname)
    node_id: str
    node_ip: str
    facts: dict

    @property
    def host_type(self) -> str:
        return self.facts["host_type"]

    @property
    def host_facts(self) -> HostFacts:
        f = self.facts
        return HostFacts(cores=int(f["cores"]), gpus=int(f["gpus"]), available_platforms=frozenset(f["available_platforms"]),
                         platform_reasons=tuple(tuple(r) for r in f["platform_reasons"]), gpu_reason=f["gpu_reason"],
                         gpu_names=tuple(f["gpu_names"]))

    @property
    def emulated_platforms(self) -> frozenset[str]:
        return frozenset(self.facts.get("emulated_platforms") or ())

    def as_dict(self) -> dict:
        return {"name": self.name, "node_id": self.node_id, "node_ip": self.node_ip, "host_type": self.host_type,
                **{k: v for k, v in self.facts.items() if k != "host_type"}}


def host_nodes() -> list[dict]:
    """The alive nodes that offer :data:`HOST_RESOURCE` (``ray.nodes()`` entries), in a stable order."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and (n.get("Resources") or {}).get(HOST_RESOURCE)]
    return sorted(nodes, key=lambda n: (_node_name(n), n["NodeID"]))


def _node_name(node: dict) -> str:
    return (node.get("Labels") or {}).get(HOST_LABEL) or f"{node.get('NodeManagerHostname', 'node')}-{node['NodeID'][:8]}"


def _on_node(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@ray.remote(num_cpus=0, max_retries=0)
def _facts_task(platforms: list[str] | None) -> dict:
    return local_facts(platforms)


def discover_hosts(platforms: list[str] | None = None, timeout_s: float = FACTS_TIMEOUT_S) -> list[FleetHost]:
    """Every e2ebench host of the cluster with its facts, gathered on the host itself (in parallel).  A host that
    does not answer within ``timeout_s`` is left out (and said on stderr)."""
    nodes = host_nodes()
    refs = {_facts_task.options(scheduling_strategy=_on_node(n["NodeID"])).remote(platforms): n for n in nodes}
    ready, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    hosts = []
    for ref in ready:
        node = refs[ref]
        try:
            facts = ray.get(ref)
        except ray.exceptions.RayError as exc:
            say_on_stderr(f"fleet: host {_node_name(node)} did not give its facts: {type(exc).__name__}")
            continue
        hosts.append(FleetHost(_node_name(node), node["NodeID"], node.get("NodeManagerAddress", ""),
                               with_given_type(facts, node, _node_name(node))))
    for ref in not_ready:
        ray.cancel(ref, force=True)
        say_on_stderr(f"fleet: host {_node_name(refs[ref])} did not give its facts within {timeout_s:.0f} s")
    names = [h.name for h in hosts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FleetError(f"two e2ebench nodes carry the same host name {', '.join(duplicates)}: give each its own "
                         "(e2ebench fleet join --name)")
    return sorted(hosts, key=lambda h: h.name)


def with_given_type(facts: dict, node: dict, name: str) -> dict:
    """The facts with the machine type given at join (the node's :data:`HOST_TYPE_LABEL`) as ``host_type``; the type
    derived from the facts stays as ``derived_host_type``.  A label that is not a valid type is said and ignored."""
    given = (node.get("Labels") or {}).get(HOST_TYPE_LABEL)
    if not given:
        return facts
    try:
        valid_host_type(given)
    except ValueError as exc:
        say_on_stderr(f"fleet: host {name}: {exc}; its type is taken from its facts")
        return facts
    return {**facts, "host_type": given, "derived_host_type": facts["host_type"]}


def running_now() -> dict[str, dict]:
    """{host name: what it runs now} from the entries every run task keeps in Ray's KV store while it runs."""
    from ray.experimental import internal_kv

    out = {}
    for key in internal_kv._internal_kv_list(_KV_RUNNING, namespace=NAMESPACE):
        value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        if value:
            entry = json.loads(value)
            out[entry["host"]] = entry
    return out


def _forget_running(host: str) -> None:
    """Drop a host's 'running now' entry (a task killed by force never reaches its own ``finally``)."""
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_del(f"{_KV_RUNNING}{host}", namespace=NAMESPACE)
    except Exception:           # the cluster is gone: nothing to keep tidy
        pass


def fleet_status(platforms: list[str] | None = None) -> list[dict]:
    """``e2ebench fleet status``: every host with its facts and what it runs now (None: idle).

    A host runs something when its ``e2ebench_host`` unit is taken; the entry the run task keeps says what (an entry
    left by a task killed with its driver is ignored once the unit is free)."""
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()
    running = running_now()
    rows = []
    for host in discover_hosts(platforms):
        busy = (free.get(host.node_id) or {}).get(HOST_RESOURCE, 0) < 1
        rows.append({**host.as_dict(), "running": running.get(host.name) if busy else None})
    return rows


# ---------------------------------------------------------------------------
# The plan over the fleet


@dataclasses.dataclass(frozen=True)
class FleetPlan:
    """The study planned for every host: ``plan`` holds each scenario once (feasible when a host can run it),
    ``where`` the hosts that can, ``reasons`` why each other host cannot."""

    plan: Plan
    hosts: tuple[FleetHost, ...]
    where: dict[str, tuple[str, ...]]
    reasons: dict[str, tuple[tuple[str, str], ...]]

    def host_types(self, key: str) -> dict[str, tuple[str, ...]]:
        """{host type: its hosts that can run scenario ``key``}, in host order: the scenario is measured once per
        type, each to its own stopping decision."""
        types = {h.name: h.host_type for h in self.hosts}
        out: dict[str, list[str]] = {}
        for name in self.where.get(key, ()):
            out.setdefault(types[name], []).append(name)
        return {t: tuple(names) for t, names in out.items()}

    def run_estimate(self) -> tuple[int, int]:
        """(fewest, most) runs: :meth:`Plan.run_estimate` per (scenario, host type) that the fleet measures."""
        r = self.plan.study.repetition
        n = sum(len(self.host_types(p.key)) for p in self.plan.feasible)
        return n * (r.warmup_runs + r.min_runs), n * (r.warmup_runs + r.max_runs)

    def as_dict(self) -> dict:
        out = self.plan.as_dict()
        out["hosts"] = [h.as_dict() for h in self.hosts]
        for entry in out["scenarios"]:
            entry["hosts"] = list(self.where.get(entry["scenario"], ()))
            entry["host_reasons"] = {h: r for h, r in self.reasons.get(entry["scenario"], ())}
            entry["host_types"] = {t: list(names) for t, names in self.host_types(entry["scenario"]).items()}
        fewest, most = self.run_estimate()
        out["estimated_runs"] = {"min": fewest, "max": most}      # one stopping decision per scenario and host type
        return out


def fleet_plan(study: Study, hosts: list[FleetHost]) -> FleetPlan:
    """Plan ``study`` for each host (its own facts, its own core counts); a scenario is feasible when at least one
    host can run it, and carries the reasons of the hosts that cannot."""
    if not hosts:
        raise FleetError("the cluster has no e2ebench host (start one with: e2ebench fleet join ADDRESS)")
    per_host = [(h, study.plan(host=h.host_facts, emulated_platforms=h.emulated_platforms)) for h in hosts]
    order: list[str] = []
    feasible: dict[str, PlannedScenario] = {}
    infeasible: dict[str, PlannedScenario] = {}
    where: dict[str, list[str]] = {}
    reasons: dict[str, list[tuple[str, str]]] = {}
    for host, plan in per_host:
        for p in plan.scenarios:
            if p.key not in where:
                order.append(p.key)
                where[p.key], reasons[p.key] = [], []
            if p.feasible:
                where[p.key].append(host.name)
                feasible.setdefault(p.key, p)
            else:
                reasons[p.key].append((host.name, p.reason or "infeasible"))
                infeasible.setdefault(p.key, p)
    # a matrix scenario a host does not expand (more cores than it has) is infeasible there for that reason
    for host, plan in per_host:
        planned = {p.key for p in plan.scenarios}
        for key in order:
            if key not in planned:
                reasons[key].append((host.name, f"not in this host's matrix ({host.facts['cores']} cores)"))
    scenarios = []
    for key in order:
        if key in feasible:
            scenarios.append(feasible[key])
        else:
            why = "; ".join(f"{h}: {r}" for h, r in reasons[key])
            scenarios.append(dataclasses.replace(infeasible[key], reason=f"no host of the cluster can run it ({why})"))
    biggest = max(hosts, key=lambda h: (h.facts["cores"], h.facts["gpus"]))
    merged = Plan(study, biggest.host_facts, tuple(scenarios))
    return FleetPlan(merged, tuple(hosts), {k: tuple(v) for k, v in where.items()},
                     {k: tuple(v) for k, v in reasons.items()})


# ---------------------------------------------------------------------------
# Data sets: the same bytes on every host


def data_sha256(path: Path) -> str:
    """SHA-256 over a data set's files (relative path and content, in sorted order; a file is hashed as itself)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".complete")
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


_sha_memo: dict[tuple, str] = {}


def _memo_sha256(path: Path) -> str:
    """:func:`data_sha256`, remembered per (path, mtime, size) in this process (a Ray worker serves many runs; a
    generated data set is written once, into a new folder, so its folder's mtime changes with it)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _sha_memo:
        _sha_memo[key] = data_sha256(path)
    return _sha_memo[key]


def prepare_data(app: str, workload: Workload) -> Path:
    """The data set of a run on this host: the study's path, or the default data set made here from the seed."""
    if workload.data:
        path = Path(workload.data).resolve()
        if not path.exists():
            raise FileNotFoundError(f"the study's data path {path} does not exist on this host")
        return path
    return default_data(app, int(workload.requests), variant=workload.variant, seed=workload.seed).resolve()


# ---------------------------------------------------------------------------
# One run on a host


@dataclasses.dataclass(frozen=True)
class RunOrder:
    """What a host needs to make one run: everything is plain data (pickled by Ray)."""

    study_id: str
    scenario: Any                 # e2ebench.scenario.Scenario
    workload: Workload
    phase: str
    seq: int
    platform_options: dict
    data_sha256: str              # the head's hash of the data set
    host: str
    host_type: str
    logs_root: str                # the runs' logs go under it, on the host


def _with_host(result: RunResult, host: str, host_type: str) -> RunResult:
    """The run's host and machine type (the store's runs.host and runs.host_type)."""
    result.host = host
    result.host_type = host_type
    return result


def execute_order(order: RunOrder) -> dict:
    """Runs on the host: check the data, provision, run, tear down; the RunResult as a dict.  Never raises for a
    failed run."""
    from ray.experimental import internal_kv

    from e2ebench.runner import housekeeping

    scenario, workload = order.scenario, order.workload
    started = time.time()
    key = f"{_KV_RUNNING}{order.host}"
    internal_kv._internal_kv_put(key, json.dumps({"host": order.host, "study": order.study_id, "scenario": str(scenario),
                                                  "phase": order.phase, "seq": order.seq, "started_at": started}),
                                 overwrite=True, namespace=NAMESPACE)
    try:
        housekeeping(lambda message: None)          # what dead runs on this host left behind
        try:
            data = prepare_data(scenario.app, workload)
            digest = _memo_sha256(data)
        except Exception as exc:
            result = RunResult.failure(scenario, workload, f"host {order.host}: preparing the data set failed: "
                                       f"{type(exc).__name__}: {exc}", started)
            return _with_host(result, order.host, order.host_type).as_dict()
        if digest != order.data_sha256:
            result = RunResult.failure(
                scenario, workload, f"host {order.host}: the data set {data} differs from the head's (sha256 "
                f"{digest[:16]}... here, {order.data_sha256[:16]}... on the head): the runs would not be comparable",
                started)
            return _with_host(result, order.host, order.host_type).as_dict()
        logs_dir = Path(order.logs_root) / order.study_id / run_slug(str(scenario), order.phase, order.seq)
        result = run_in_platform(scenario, workload, data, order.platform_options, logs_dir)
        return _with_host(result, order.host, order.host_type).as_dict()
    finally:
        internal_kv._internal_kv_del(key, namespace=NAMESPACE)


@ray.remote(num_cpus=0, max_retries=0, resources={HOST_RESOURCE: 1})
def _run_task(order: RunOrder) -> dict:
    return execute_order(order)


# ---------------------------------------------------------------------------
# The runner


def state_key(scenario: str, host_type: str) -> str:
    """The key of a (scenario, host type) state, as the progress shows it: ``ic@BM/1/VNL/CPU on TYPE``."""
    return f"{scenario} on {host_type}"


@dataclasses.dataclass
class SharedSeqs:
    """The next seq of each phase of one scenario, shared by its states of every host type: the store's seq is
    unique per (study, scenario, phase), and two types' runs of one scenario can be in flight at once."""

    warmup: int = 0
    measure: int = 0


@dataclasses.dataclass
class HostTypeState(ScenarioState):
    """A scenario's state on one machine type of the fleet: its own runs, outliers and stopping decision.

    ``warmup_next_seq``/``measure_next_seq`` count this type's stored runs of each phase (what the warm-up rule and the
    progress read); the seq a run is stored under comes from ``seqs``, shared by the scenario's states."""

    seqs: SharedSeqs = dataclasses.field(default_factory=SharedSeqs)

    @property
    def key(self) -> str:
        return state_key(self.planned.key, str(self.host_type))

    def begin_run(self, policy) -> tuple[str, int]:
        """The phase from this type's own counts, the seq taken from the scenario's shared counter (reserved now: the
        run keeps it when it is dispatched again, and a run never stored leaves a gap, not a duplicate)."""
        phase, _ = self.next_run(policy)
        if phase == PHASE_WARMUP:
            seq, self.seqs.warmup = self.seqs.warmup, self.seqs.warmup + 1
        else:
            seq, self.seqs.measure = self.seqs.measure, self.seqs.measure + 1
        return phase, seq

    def record_seq(self, phase: str, seq: int) -> None:
        if phase == PHASE_WARMUP:
            self.warmup_next_seq += 1
            self.seqs.warmup = max(self.seqs.warmup, seq + 1)
        else:
            self.measure_next_seq += 1
            self.seqs.measure = max(self.seqs.measure, seq + 1)


@dataclasses.dataclass
class _InFlight:
    state: ScenarioState
    phase: str
    seq: int
    host: FleetHost
    t0: float
    attempt: int


class FleetStudyRunner(StudyRunner):
    """:class:`StudyRunner` whose rounds run on the hosts of a Ray cluster, one run per host at a time.

    ``fleet`` is the :class:`FleetPlan` of ``plan`` (``fleet.plan is plan``).  A state per (scenario, host type)
    (:class:`HostTypeState`); a round runs each active one once.  The round's order is kept for dispatch: the next
    run in the round's order goes to the first free host of its type that can run it.  The round ends when all its
    runs are stored (the stopping rule decides the next round from them).
    """

    def __init__(self, fleet: FleetPlan, store, study_id: str, **options):
        self.fleet = fleet                                   # before the states are made and loaded
        super().__init__(fleet.plan, store, study_id, **options)
        self.hosts = {h.name: h for h in fleet.hosts}
        self.lost_hosts: dict[str, str] = {}                 # host -> why it was dropped
        self.logs_root = str((self.results_dir / "logs").resolve())
        self._sha: dict[str, str] = {}
        self.in_flight: dict[Any, _InFlight] = {}
        self.dispatches = 0                                  # tasks submitted (a re-dispatch counts again)
        self.notice = self.notice or say_on_stderr

    def _new_states(self) -> list[ScenarioState]:
        """One :class:`HostTypeState` per feasible scenario and host type that can run it; a scenario's share seqs."""
        states: list[ScenarioState] = []
        for planned in self.plan.feasible:
            seqs = SharedSeqs()
            states += [HostTypeState(planned, host_type=t, seqs=seqs) for t in self.fleet.host_types(planned.key)]
        return states

    def _state_key(self, row: dict) -> str:
        """A stored run goes back to the state of its host type (a run without one, e.g. made by a single-host runner
        of the same study, counts for no type; its seq is still taken, see :meth:`_load`)."""
        return state_key(row["scenario"], row["host_type"]) if row.get("host_type") else ""

    def _load(self) -> None:
        counts = self.store.run_counts(self.study_id)          # every stored seq, of every type and of none
        for state in self.states:
            assert isinstance(state, HostTypeState)
            state.seqs.warmup = max(state.seqs.warmup,
                                    counts.get((state.planned.key, "warmup"), {}).get("next_seq", 0))
            state.seqs.measure = max(state.seqs.measure,
                                     counts.get((state.planned.key, "measure"), {}).get("next_seq", 0))
        super()._load()

    def _calibrate(self) -> None:
        """The calibration probe on every host at the start of the round (issue 11: the host's drift, per host), each
        holding the host's ``e2ebench_host`` unit so it never overlaps a run; stored under the host's fleet name.  A
        host whose probe fails or does not answer within :data:`PROBE_WAIT_S` is said once and skipped this round."""
        if not self.policy.calibrate:
            return
        from e2ebench.calibration import ProbeError

        refs = {}
        for name, host in self.hosts.items():
            if name in self.lost_hosts:
                continue
            cores = max((s.planned.scenario.deployment.cores for s in self.states
                         if name in self.fleet.where.get(s.planned.key, ())), default=1)
            refs[_probe_task.options(scheduling_strategy=_on_node(host.node_id)).remote(cores)] = name
        if not refs:
            return
        ready, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_WAIT_S)
        for ref in not_ready:
            ray.cancel(ref, force=True)
        stored = False
        for ref in ready:
            name = refs[ref]
            try:
                probe = ray.get(ref)
            except (ray.exceptions.RayError, ProbeError) as exc:
                if self.probe_error is None:
                    self.notice(f"fleet: host {name}'s calibration probe failed ({type(exc).__name__}); the study goes "
                                "on without it")
                self.probe_error = str(exc)
                continue
            probe["host"] = name            # the fleet's name: nodes of one machine share a node name
            try:
                self.store.add_calibration(self.study_id, self._round, probe)
                stored = True
            except StoreError as exc:
                self.notice(f"round {self._round}'s calibration probe of {name} was not stored: {exc}")
        if stored:
            self._update_drift()

    def _expected_sha256(self, state: ScenarioState) -> str:
        key = state.planned.key
        if key not in self._sha:
            workload = state.planned.workload
            self._sha[key] = data_sha256(prepare_data(state.planned.scenario.app, workload))
        return self._sha[key]

    def _hosts_of(self, state: ScenarioState) -> tuple[str, ...]:
        """The hosts of the state's type that can run its scenario."""
        return self.fleet.host_types(state.planned.key).get(str(state.host_type), ())

    def _free_host_for(self, state: ScenarioState) -> FleetHost | None:
        busy = {f.host.name for f in self.in_flight.values()}
        for name in self._hosts_of(state):
            if name not in busy and name not in self.lost_hosts and name in self.hosts:
                return self.hosts[name]
        return None

    def _usable_hosts(self, state: ScenarioState) -> list[str]:
        return [n for n in self._hosts_of(state) if n not in self.lost_hosts]

    def _dispatch(self, state: ScenarioState, host: FleetHost, phase: str, seq: int, attempt: int) -> None:
        planned = state.planned
        order = RunOrder(self.study_id, planned.scenario, planned.workload, phase, seq,
                         self.plan.study.platform_options(planned.scenario.deployment.platform),
                         self._expected_sha256(state), host.name, host.host_type, self.logs_root)
        ref = _run_task.options(scheduling_strategy=_on_node(host.node_id),
                                name=f"e2ebench {state.key} {phase} {seq}").remote(order)
        self.in_flight[ref] = _InFlight(state, phase, seq, host, time.perf_counter(), attempt)
        self.dispatches += 1

    def _refresh_hosts(self) -> None:
        """Drop the hosts whose node is gone; take back the lost ones that are alive again (same name)."""
        alive = {_node_name(n): n for n in host_nodes()}
        for name in list(self.hosts):
            if name not in alive:
                self.lost_hosts.setdefault(name, "its node left the cluster")
        for name, node in alive.items():
            if name in self.lost_hosts or (name in self.hosts and self.hosts[name].node_id != node["NodeID"]):
                if name in self.hosts:          # back (restarted node: new node id, same host)
                    self.hosts[name] = dataclasses.replace(self.hosts[name], node_id=node["NodeID"])
                    self.lost_hosts.pop(name, None)

    def _run_round(self, states: list[ScenarioState]) -> None:
        queue: list[tuple[ScenarioState, str, int, int]] = []     # (state, phase, seq, attempt) waiting for a host
        for state in states:
            if state.needs_run:
                phase, seq = self._begin_run(state)
                queue.append((state, phase, seq, 1))
        try:
            while queue or self.in_flight:
                waiting = []
                for state, phase, seq, attempt in queue:
                    host = self._free_host_for(state)
                    if host is not None:
                        self._dispatch(state, host, phase, seq, attempt)
                    elif not self._usable_hosts(state):
                        self._store_lost(state, phase, seq, f"no host of type {state.host_type} that can run it "
                                         "is left in the cluster ("
                                         f"{'; '.join(f'{h}: {r}' for h, r in self.lost_hosts.items())})")
                    else:
                        waiting.append((state, phase, seq, attempt))
                queue = waiting
                if not self.in_flight:
                    if queue:                   # hosts that can run them are lost for now: look again shortly
                        time.sleep(1.0)
                        self._refresh_hosts()
                    continue
                done, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=5.0)
                for ref in done:
                    flight = self.in_flight.pop(ref)
                    retry = self._collect(ref, flight)
                    if retry is not None:
                        queue.append(retry)
        except KeyboardInterrupt:
            self.cancel_in_flight()
            raise

    def cancel_in_flight(self) -> None:
        """Kill every run in flight (its worker process and, with it, the processes the run started)."""
        for ref in list(self.in_flight):
            try:
                ray.cancel(ref, force=True)
            except Exception:           # already finished or its node is gone
                pass
        for flight in self.in_flight.values():
            _forget_running(flight.host.name)
        self.in_flight.clear()

    def _collect(self, ref, flight: _InFlight):
        """Store the run's result; a task that failed is dispatched again (returned) or stored failed."""
        wall_s = time.perf_counter() - flight.t0
        try:
            result = RunResult.from_dict(ray.get(ref))
        except ray.exceptions.RayError as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            _forget_running(flight.host.name)
            self._refresh_hosts()
            if flight.host.name in self.hosts and flight.host.name not in self.lost_hosts:
                # the node may still look alive (the cluster notices a dead node after a heartbeat timeout)
                self.lost_hosts[flight.host.name] = reason
                self._forget_later(flight.host.name)
            self.notice(f"fleet: the run {flight.state.key} {flight.phase} #{flight.seq} on host {flight.host.name} "
                        f"failed in the cluster ({reason})"
                        + ("; dispatched again" if flight.attempt < RUN_ATTEMPTS else "; stored as failed"))
            if flight.attempt < RUN_ATTEMPTS:
                return flight.state, flight.phase, flight.seq, flight.attempt + 1
            result = RunResult.failure(flight.state.planned.scenario, flight.state.planned.workload,
                                       f"host {flight.host.name}: the run's task failed {RUN_ATTEMPTS} times in the "
                                       f"cluster; last: {reason}", time.time() - wall_s)
            _with_host(result, flight.host.name, flight.host.host_type)
        self._finish_run(flight.state, flight.phase, flight.seq, result, wall_s)
        return None

    def _forget_later(self, name: str) -> None:
        """A host dropped after a failed task is taken back by :meth:`_refresh_hosts` when it is alive under a new
        node id; if its node id did not change (the node itself survived, only the worker died), it is taken back
        at once."""
        alive = {_node_name(n): n["NodeID"] for n in host_nodes()}
        if alive.get(name) == self.hosts[name].node_id and _node_alive_for_work(self.hosts[name].node_id):
            self.lost_hosts.pop(name, None)

    def _store_lost(self, state: ScenarioState, phase: str, seq: int, reason: str) -> None:
        result = RunResult.failure(state.planned.scenario, state.planned.workload, reason, time.time())
        result.host_type = state.host_type           # it counts for its type's state (also when resumed)
        self._finish_run(state, phase, seq, result, 0.0)


def _node_alive_for_work(node_id: str, timeout_s: float = 10.0) -> bool:
    """Whether a node runs a trivial task now (a node that died but is still listed alive does not)."""
    ref = _ping.options(scheduling_strategy=_on_node(node_id)).remote()
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        return False
    try:
        ray.get(ref)
        return True
    except ray.exceptions.RayError:
        return False


@ray.remote(num_cpus=0, max_retries=0, resources={HOST_RESOURCE: 1})
def _probe_task(max_cores: int) -> dict:
    from e2ebench.calibration import probe_cpus, run_probe

    return run_probe(probe_cpus(max_cores))


@ray.remote(num_cpus=0, max_retries=0)
def _ping() -> bool:
    return True


def run_fleet_study(fleet: FleetPlan, store, study_id: str, **options) -> tuple[FleetStudyRunner, Any]:
    """Run the study on the fleet; ``(runner, outcome)``."""
    runner = FleetStudyRunner(fleet, store, study_id, **options)
    return runner, runner.run()
