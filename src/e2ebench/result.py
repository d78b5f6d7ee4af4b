"""``RunResult``: what one run produced, typed and versioned.

The worker prints it as JSON, the platform hands it back, the runner completes it (scenario, timing, limits,
contention), the study runner adds its bookkeeping and the store keeps it.  One dataclass holds every key so that
a failed run has the same keys as a measured one (``None`` where nothing was measured) and a key cannot drift in
one builder only: the two constructors :meth:`RunResult.success` and :meth:`RunResult.failure` are the only ways
the code makes one, and both reject a field name they do not know.

Versions (``result_schema`` in the JSON):

* 1 -- results written before this class: no ``result_schema`` key; failed runs carried only some keys.
* 2 -- every field below is present; ``result_schema`` is written.

``schema`` (the string ``e2ebench.run/1``) names the message on the wire and is kept for scripts that check it.
Keys a reader does not know (written by a newer version) are kept in :attr:`RunResult.extra` and written back by
:meth:`RunResult.as_dict`, so reading and writing a result loses nothing.  This module imports only the standard
library: the worker, inside any platform, and the store use it without importing torch.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from e2ebench.spec import RESULT_SCHEMA

SCHEMA_VERSION = 2
LEGACY_SCHEMA_VERSION = 1      # what a stored result without ``result_schema`` was written as


@dataclasses.dataclass
class RunResult:
    """One run's result.  Field names are the JSON keys (see docs/measurement.md for every unit and meaning)."""

    # -- the message ------------------------------------------------------------------------------------------
    schema: str = RESULT_SCHEMA
    result_schema: int = SCHEMA_VERSION
    # -- what was asked for (known before anything is measured) -----------------------------------------------
    scenario: str | None = None
    app: str | None = None
    mode: str = "e2e"
    cache: str = "warm"
    thread_policy: str = "sized"
    deployment: dict | None = None                 # Deployment.as_dict(): platform, cores, cpu_mode, device
    loadgen_scenario: str | None = None
    backend: str | None = None
    variant: str | None = None
    requests: int | None = None
    batch_size: int | None = None                  # the largest batch given to the DNN; the one asked for until measured
    emulated: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    # -- what the worker measured (None: not measured) ---------------------------------------------------------
    e2e_s: float | None = None
    phases_s: dict | None = None
    window_wall_s: float | None = None
    laps_coverage: float | None = None
    laps_cover_window: bool | None = None
    service_time_ms: dict | None = None
    latency_ms: dict | None = None                 # = service_time_ms (its name before issue 9)
    loadgen_latency_ms: dict | None = None
    completed: int | None = None
    throughput_sps: float | None = None
    batch_size_requested: int | None = None
    warmup_requests: int | None = None
    cold_start: dict | None = None
    cold_start_s: float | None = None
    parameters: int | None = None
    app_info: dict | None = None
    page_cache: dict | None = None
    effective_cpus: list | None = None
    cpu_quota_cores: float | None = None
    cgroup: dict | None = None
    effective_gpus: int = 0
    gpu_model: str | None = None
    counters: dict | None = None
    threads: dict | None = None
    thread_pools: dict | None = None
    compute_threads: dict | None = None
    thread_affinity: dict | None = None
    bind_cpus: list | None = None
    loadgen: dict | None = None
    environment: dict | None = None
    platform_info: dict | None = None
    quality: dict | None = None
    errors: dict | None = None
    warnings: list = dataclasses.field(default_factory=list)
    # -- what the platform and the runner add ------------------------------------------------------------------
    memory_limit_mib: int | None = None
    peak_memory_mib: float | None = None
    oom_killed: bool | None = None
    oom_evidence: str | None = None
    contended: bool | None = None
    contention: list | None = None
    worker_wall_s: float | None = None             # the worker process's wall time as the platform saw it
    output_tail: str | None = None
    logs_dir: str | None = None
    # -- what the study runner and the store add ---------------------------------------------------------------
    run_wall_s: float | None = None
    study_id: str | None = None
    round: int | None = None                 # the study round the run belongs to (issue 11); None for ad-hoc runs
    host: str | None = None                  # the host that ran it (a fleet's node); None: the store's own host
    host_type: str | None = None             # the host's machine type (a fleet's); None: unknown / the local host
    run_id: int | None = None
    # -- keys this version does not know (a newer writer's), written back unchanged -----------------------------
    extra: dict = dataclasses.field(default_factory=dict)

    # -- constructors -----------------------------------------------------------------------------------------
    @classmethod
    def success(cls, *, scenario: str, app: str, deployment: dict, started_at: float, e2e_s: float | None,
                phases_s: dict | None, **measured: Any) -> "RunResult":
        """A run the worker measured.  ``measured``: any other field by name (a name that is no field is a
        TypeError, so that a new key is declared here before it is written).  ``error`` may still be set: too many
        failed requests, or CPU limits not as asked (the runner's check)."""
        _check_names(measured)
        measured.setdefault("finished_at", time.time())
        return cls(scenario=scenario, app=app, deployment=deployment, started_at=started_at, e2e_s=e2e_s,
                   phases_s=phases_s, **measured)

    @classmethod
    def failure(cls, scenario: Any, workload: Any, message: str, started_at: float | None,
                **known: Any) -> "RunResult":
        """A run that measured nothing: ``error`` is ``message``, every measured field ``None``.

        ``scenario``: a :class:`~e2ebench.scenario.Scenario` (its string, app, mode, cache, thread policy and
        deployment are copied), or None when even that is unknown.  ``workload``: anything with the attributes
        ``requests``, ``batch_size``, ``loadgen_scenario``, ``backend`` and ``variant`` (the runner's ``Workload``,
        the worker's ``WorkerSpec``), or None.  ``known``: other fields by name (``output_tail``, ``platform_info``,
        ``emulated``, ``oom_killed``, ...), which win over what was copied."""
        _check_names(known)
        fields: dict[str, Any] = {"error": message, "started_at": started_at, "finished_at": time.time()}
        if scenario is not None:
            fields.update(scenario=str(scenario), app=scenario.app, mode=scenario.mode, cache=scenario.cache,
                          thread_policy=scenario.threads, deployment=scenario.deployment.as_dict())
        if workload is not None:
            for name in ("requests", "batch_size", "loadgen_scenario", "backend", "variant"):
                fields[name] = getattr(workload, name, None)
        fields.update(known)
        return cls(**fields)

    # -- JSON -------------------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """The JSON object: every field (``extra`` merged in at the top level, never over a field)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunResult":
        """Read a result of any version: missing keys take their defaults, unknown keys go to ``extra``.

        A result without ``result_schema`` (version 1) is read as the current version, since every field is
        filled in now; a newer one keeps its number."""
        if not isinstance(data, dict):
            raise TypeError(f"a RunResult is a JSON object, not {type(data).__name__}")
        names = field_names()
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        for name, default in _NONE_IS_DEFAULT.items():
            if known.get(name, 0) is None:
                known[name] = default()
        return cls(**known, extra=extra)

    @property
    def ok(self) -> bool:
        return not self.error


def field_names() -> frozenset[str]:
    """Every key a RunResult writes (``extra`` aside)."""
    return _FIELD_NAMES


def _check_names(given: dict[str, Any]) -> None:
    unknown = sorted(set(given) - _FIELD_NAMES)
    if unknown:
        raise TypeError(f"RunResult has no field {', '.join(unknown)}: declare it in e2ebench.result first")


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(RunResult) if f.name != "extra")
# fields whose ``null`` in an older result means "nothing" rather than "not measured"
_NONE_IS_DEFAULT = {"warnings": list, "emulated": lambda: False, "effective_gpus": lambda: 0,
                    "schema": lambda: RESULT_SCHEMA}
