"""Studies: a matrix of scenarios plus a repetition policy, read from a TOML file (``tomllib``).

A study file looks like this (every key is optional except ``apps``; see ``docs/studies.md``)::

    name = "quick"                  # default: the file's stem
    description = "..."
    seed = 0                        # interleaving order and synthetic data
    store = "results/e2ebench.sqlite"   # relative to the current directory, like `--store`
    timeout_s = 900                 # per run
    memory_mib = 2048               # memory limit of every scenario (BM/CN: memory cgroup; VM: guest memory)

    apps = ["ic", "rs"]
    platforms = ["BM"]
    cores = [2]                     # or "all": every core of this host
    cpu_modes = ["VNL", "PIN"]
    devices = ["CPU"]
    thread_policies = ["sized"]     # or "framework-default", or a number N (every pool N threads), or a list
    scenarios = ["ic@BM/1/PIN/CPU#inference-only"]   # explicit extra scenarios

    [repetition]
    warmup_runs = 1
    min_runs = 3
    max_runs = 10
    target_ci_halfwidth_pct = 2.0
    confidence = 0.95

    [workload.ic]
    requests = 16
    mode = "e2e"                    # or "inference-only", or a list of both
    cache = "warm"                  # or "cold" (page cache dropped before timing), or a list of both

    [[exclude]]                     # matrix points not to run, with the reason shown in the plan
    apps = ["sr"]
    devices = ["GPU"]
    reason = "SR was measured on CPUs only"

Loading validates everything and raises :class:`StudyError` with a message that names the key and
the bad value (and, for a mistyped key, the accepted keys and the closest one).  :meth:`Study.plan`
expands the matrix for a host: every scenario is listed, infeasible ones with the reason.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from e2ebench.runner import DEFAULT_TIMEOUT_S, Workload
from e2ebench.scenario import (CACHES, COLD_INFERENCE_ONLY, CPU_MODES, DEVICES, MODES, PLATFORMS, THREAD_POLICY_HINT,
                               THREADS_SIZED, Deployment, HostFacts, NotationError, Scenario, check_thread_policy,
                               infeasibility)
from e2ebench.stats import DEFAULT_CONFIDENCE, DEFAULT_OUTLIER_SIGMAS, DEFAULT_TARGET_HALFWIDTH_PCT
from e2ebench.store import DEFAULT_STORE

PRESETS = ("quick", "paper", "edge", "threads")
DEFAULT_PRESET = "quick"

TOP_KEYS = ("name", "description", "seed", "store", "timeout_s", "apps", "platforms", "cores", "cpu_modes", "devices",
            "scenarios", "repetition", "workload", "exclude", "memory_mib", "thread_policies")
REPETITION_KEYS = ("warmup_runs", "min_runs", "max_runs", "target_ci_halfwidth_pct", "confidence",
                   "max_consecutive_failures", "outlier_sigmas", "keep_outliers", "calibrate")
WORKLOAD_KEYS = ("requests", "loadgen_scenario", "batch_size", "backend", "mode", "cache", "data", "weights",
                 "variant", "options", "max_error_fraction")
ALL_HINT = ' or "all" (every core of this host)'
EXCLUDE_KEYS = ("apps", "platforms", "cores", "cpu_modes", "devices", "modes", "caches", "thread_policies", "reason")


class StudyError(ValueError):
    """A study file that cannot be used; the message names the file, the key and the bad value."""


# ---------------------------------------------------------------------------
# Configuration objects


@dataclasses.dataclass(frozen=True)
class RepetitionPolicy:
    """How often each scenario runs.

    ``warmup_runs`` runs are made first and stored with phase ``warmup`` (never in the mean).  Then
    measured runs continue until the Student-t confidence interval of the mean E2E time, at
    ``confidence``, has a half-width of at most ``target_ci_halfwidth_pct`` percent of the mean —
    but never fewer than ``min_runs`` and never more than ``max_runs`` successful measured runs.
    A scenario that fails ``max_consecutive_failures`` runs in a row is abandoned.  Runs farther
    than ``outlier_sigmas`` standard deviations from the others' mean are flagged as outliers and,
    unless ``keep_outliers``, left out of the mean (they still count against ``max_runs``).
    With ``calibrate`` (the default) every round starts with the calibration probe
    (:mod:`e2ebench.calibration`), whose times measure the host's drift; the interval the stopping rule uses
    then includes it (docs/measurement.md, "Intervals that survive a re-run").
    """

    warmup_runs: int = 1
    min_runs: int = 5
    max_runs: int = 50
    target_ci_halfwidth_pct: float = DEFAULT_TARGET_HALFWIDTH_PCT
    confidence: float = DEFAULT_CONFIDENCE
    max_consecutive_failures: int = 3
    outlier_sigmas: float = DEFAULT_OUTLIER_SIGMAS
    keep_outliers: bool = False
    calibrate: bool = True


@dataclasses.dataclass(frozen=True)
class AppWorkload:
    """The ``[workload.APP]`` table: what one run of the app is fed, and in which mode(s) and page-cache state(s)
    it is measured.  ``caches`` expands the matrix like ``modes``; a cold cache is not combined with
    inference-only (no io is timed there), so that combination is left out of the matrix."""

    requests: int | None = None
    loadgen_scenario: str = "offline"
    batch_size: int | None = None
    backend: str = "torch"
    modes: tuple[str, ...] = ("e2e",)
    data: str | None = None          # resolved against the study file's folder
    weights: str | None = None       # resolved against the study file's folder
    variant: str = "full"
    options: dict = dataclasses.field(default_factory=dict)
    max_error_fraction: float = 0.01
    caches: tuple[str, ...] = ("warm",)

    def mode_caches(self) -> list[tuple[str, str]]:
        """The (mode, cache) pairs this workload is measured in (cold with inference-only left out)."""
        return [(mode, cache) for mode in self.modes for cache in self.caches
                if not (cache == "cold" and mode == "inference-only")]

    def to_workload(self, timeout_s: float, seed: int) -> Workload:
        return Workload(
            requests=self.requests, batch_size=self.batch_size, loadgen_scenario=self.loadgen_scenario,
            backend=self.backend, variant=self.variant, data=self.data, weights=self.weights,
            app_options=dict(self.options), max_error_fraction=self.max_error_fraction, timeout_s=timeout_s, seed=seed,
        )


@dataclasses.dataclass(frozen=True)
class ExclusionRule:
    """Matrix points that match every listed field are not run (``None`` = any value)."""

    reason: str
    apps: tuple[str, ...] | None = None
    platforms: tuple[str, ...] | None = None
    cores: tuple[int, ...] | None = None
    cpu_modes: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    modes: tuple[str, ...] | None = None
    caches: tuple[str, ...] | None = None
    thread_policies: tuple[str, ...] | None = None

    def matches(self, scenario: Scenario) -> bool:
        d = scenario.deployment
        checks = ((self.apps, scenario.app), (self.platforms, d.platform), (self.cores, d.cores),
                  (self.cpu_modes, d.cpu_mode), (self.devices, d.device), (self.modes, scenario.mode),
                  (self.caches, scenario.cache), (self.thread_policies, scenario.threads))
        return all(allowed is None or value in allowed for allowed, value in checks)


@dataclasses.dataclass(frozen=True)
class PlannedScenario:
    """One scenario of the expanded matrix: feasible (with its workload) or not (with the reason)."""

    scenario: Scenario
    workload: Workload | None
    feasible: bool
    reason: str | None = None        # why not feasible
    origin: str = "matrix"           # matrix | explicit
    note: str | None = None          # e.g. "emulated (QEMU TCG)"

    @property
    def key(self) -> str:
        return str(self.scenario)

    def as_dict(self) -> dict:
        w = self.workload
        return {
            "scenario": self.key, "app": self.scenario.app, "deployment": self.scenario.deployment.as_dict(),
            "mode": self.scenario.mode, "cache": self.scenario.cache, "thread_policy": self.scenario.threads,
            "feasible": self.feasible, "reason": self.reason, "origin": self.origin,
            "note": self.note,
            "workload": None if w is None else {
                "requests": w.requests, "batch_size": w.batch_size, "loadgen_scenario": w.loadgen_scenario,
                "backend": w.backend, "variant": w.variant, "data": w.data, "options": w.app_options,
                "timeout_s": w.timeout_s,
            },
        }


@dataclasses.dataclass(frozen=True)
class Plan:
    """The expanded study for one host."""

    study: "Study"
    host: HostFacts
    scenarios: tuple[PlannedScenario, ...]

    @property
    def feasible(self) -> list[PlannedScenario]:
        return [p for p in self.scenarios if p.feasible]

    @property
    def infeasible(self) -> list[PlannedScenario]:
        return [p for p in self.scenarios if not p.feasible]

    def run_estimate(self) -> tuple[int, int]:
        """(fewest, most) runs the study can take: warm-ups + min_runs .. warm-ups + max_runs per feasible scenario."""
        r = self.study.repetition
        n = len(self.feasible)
        return n * (r.warmup_runs + r.min_runs), n * (r.warmup_runs + r.max_runs)

    def as_dict(self) -> dict:
        fewest, most = self.run_estimate()
        return {
            "study": self.study.name, "path": str(self.study.path) if self.study.path else None,
            "config_sha256": self.study.config_sha256,
            "host": {"cores": self.host.cores, "gpus": self.host.gpus,
                     "available_platforms": sorted(self.host.available_platforms),
                     "gpu_reason": self.host.gpu_reason, "gpu_names": list(self.host.gpu_names)},
            "platform_support": platform_support(),
            "repetition": dataclasses.asdict(self.study.repetition),
            "scenarios": [p.as_dict() for p in self.scenarios],
            "feasible": len(self.feasible), "infeasible": len(self.infeasible),
            "estimated_runs": {"min": fewest, "max": most},
        }


def _repetition_config(policy: RepetitionPolicy) -> dict:
    """The ``[repetition]`` table as the identity hash sees it: ``calibrate`` only when switched off, so studies
    written before the calibration probe existed keep their identity (and their stored runs)."""
    config = dataclasses.asdict(policy)
    if policy.calibrate:
        config.pop("calibrate")
    return config


@dataclasses.dataclass(frozen=True)
class Study:
    """A validated study file."""

    name: str
    path: Path | None
    config: dict                     # normalised configuration (what the identity hash covers, plus store)
    description: str = ""
    seed: int = 0
    store: Path = DEFAULT_STORE
    timeout_s: float = DEFAULT_TIMEOUT_S
    apps: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ("BM",)
    cores: tuple[int | str, ...] = (1,)
    cpu_modes: tuple[str, ...] = CPU_MODES
    devices: tuple[str, ...] = ("CPU",)
    extra_scenarios: tuple[Scenario, ...] = ()
    repetition: RepetitionPolicy = RepetitionPolicy()
    workloads: dict = dataclasses.field(default_factory=dict)      # app -> AppWorkload
    exclusions: tuple[ExclusionRule, ...] = ()
    memory_mib: int | None = None    # memory limit of every scenario; None: none (VM guests: their default memory)
    thread_policies: tuple[str, ...] = (THREADS_SIZED,)   # each scenario of the matrix is measured with each

    # -- identity --------------------------------------------------------------------
    @property
    def config_sha256(self) -> str:
        """SHA-256 of the normalised configuration without ``store`` and ``description``.

        Comments, key order and formatting do not change it; any setting that changes what is measured
        or how often (matrix, workloads, repetition policy, seed, timeout) does, which makes the edited
        file a new study.
        """
        ident = {k: v for k, v in self.config.items() if k not in ("store", "description")}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    @property
    def source(self) -> str:
        """The resolved path of the study file (``<inline>`` for a study not read from a file)."""
        return str(self.path.resolve()) if self.path else "<inline>"

    def identity(self) -> dict:
        return {"name": self.name, "source": self.source, "config_sha256": self.config_sha256}

    # -- expansion -------------------------------------------------------------------
    def workload_for(self, app: str) -> AppWorkload:
        return self.workloads.get(app, AppWorkload())

    def matrix_scenarios(self, host_cores: int) -> list[Scenario]:
        out = []
        cores = sorted({host_cores if c == "all" else int(c) for c in self.cores})
        for app in self.apps:
            for mode, cache in self.workload_for(app).mode_caches():
                for platform in self.platforms:
                    for n in cores:
                        for cpu_mode in self.cpu_modes:
                            for device in self.devices:
                                for policy in self.thread_policies:
                                    out.append(Scenario(app, Deployment(platform, n, cpu_mode, device), mode, cache,
                                                        policy))
        return out

    def plan(self, host: HostFacts | None = None, emulated_platforms: Iterable[str] = ()) -> Plan:
        """Expand the matrix (plus the explicit scenarios) for ``host`` (default: this host, probed).

        ``emulated_platforms`` are usable only under emulation (QEMU TCG); their scenarios are feasible
        and carry a note.
        """
        if host is None:
            host, emulated_platforms = detect_host(self.used_platforms())
        emulated_platforms = frozenset(emulated_platforms)
        planned: list[PlannedScenario] = []
        seen: set[str] = set()
        app_problems: dict[str, str | None] = {}
        memory_problems: dict[str, str | None] = {}
        candidates = [(s, "matrix") for s in self.matrix_scenarios(host.cores)]
        candidates += [(s, "explicit") for s in self.extra_scenarios]
        for scenario, origin in candidates:
            if str(scenario) in seen:
                continue
            seen.add(str(scenario))
            reason = None
            if origin == "matrix":
                for rule in self.exclusions:
                    if rule.matches(scenario):
                        reason = f"excluded by the study: {rule.reason}"
                        break
            if reason is None:
                if scenario.app not in app_problems:
                    app_problems[scenario.app] = _app_problem(scenario.app)
                reason = app_problems[scenario.app]
            if reason is None:
                reason = infeasibility(scenario.deployment, host)
            if reason is None and self.memory_mib is not None:
                platform = scenario.deployment.platform
                if platform not in memory_problems:
                    from e2ebench.platforms.memory import memory_limit_problem

                    memory_problems[platform] = memory_limit_problem(platform)
                reason = memory_problems[platform]
            if reason is not None:
                planned.append(PlannedScenario(scenario, None, False, reason, origin))
                continue
            workload = self.workload_for(scenario.app).to_workload(self.timeout_s, self.seed).resolved(scenario.app)
            note = None
            if scenario.deployment.platform in emulated_platforms:
                note = "emulated (QEMU TCG): labelled, never compared with native results"
            planned.append(PlannedScenario(scenario, workload, True, None, origin, note))
        return Plan(self, host, tuple(planned))

    def platform_options(self, platform: str) -> dict:
        """Options for ``get_platform(platform, **options)`` that the study sets: ``memory_mib`` (BM/CN: a memory
        cgroup; VM, MVM, VMCN: the guest's memory)."""
        return {} if self.memory_mib is None else {"memory_mib": self.memory_mib}

    def used_platforms(self) -> set[str]:
        return set(self.platforms) | {s.deployment.platform for s in self.extra_scenarios}


def platform_support() -> list[dict]:
    """What each registered platform supports in principle (CPU modes, devices, the design limit that restricts
    them), whatever this host has: the plan lists it next to the host's own reasons."""
    from e2ebench.platforms import platform_classes

    return [cls.describe() for cls in platform_classes().values()]


def detect_host(platforms: Iterable[str] | None = None) -> tuple[HostFacts, frozenset[str]]:
    """:meth:`HostFacts.detect` with ``probe_platforms=True``, restricted to ``platforms`` (default: all).

    Probing a VM platform may boot a guest; probing only what the study uses keeps ``--plan`` quick.
    Returns the host facts and the platforms that are usable only under emulation.
    """
    from e2ebench.platforms import PlatformError, get_platform

    base = HostFacts.detect(probe_platforms=False)
    wanted = sorted(set(platforms) if platforms is not None else set(PLATFORMS))
    available = {"BM"}
    reasons: list[tuple[str, str]] = []
    emulated = set()
    for name in wanted:
        try:
            availability = get_platform(name).probe()
        except PlatformError as exc:
            reasons.append((name, str(exc)))
            continue
        except Exception as exc:  # a broken probe makes the platform unavailable, not the study
            reasons.append((name, f"probe failed: {type(exc).__name__}: {exc}"))
            continue
        if availability.usable:
            available.add(name)
            if availability.emulated:
                emulated.add(name)
        else:
            reasons.append((name, availability.reason))
    if "BM" in dict(reasons):
        available.discard("BM")
    host = dataclasses.replace(base, available_platforms=frozenset(available), platform_reasons=tuple(reasons))
    return host, frozenset(emulated)


def _app_problem(app: str) -> str | None:
    """Why an app cannot run here (its module does not load), or None.  Settings were validated at load."""
    from e2ebench.apps import get_app_class

    try:
        get_app_class(app)
    except Exception as exc:
        return f"application {app} cannot be loaded here: {type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------
# Loading and validation


def preset_path(name: str = DEFAULT_PRESET) -> Path:
    """The path of a preset study (``quick``, ``paper``, ``edge``).

    Looks in the repository's ``studies/`` folder (``src/e2ebench/../../studies``) and then in the
    installed package's data (``e2ebench/studies/*.toml``, when packaged).
    """
    if name not in PRESETS:
        raise StudyError(f"unknown preset {name!r}; accepted: {', '.join(PRESETS)}")
    filename = f"{name}.toml"
    candidate = Path(__file__).resolve().parents[2] / "studies" / filename
    if candidate.is_file():
        return candidate
    try:
        packaged = resources.files("e2ebench").joinpath("studies").joinpath(filename)
        if packaged.is_file():
            with resources.as_file(packaged) as p:
                return Path(p)
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    raise StudyError(f"preset {name!r} not found: looked for {candidate} and the package data e2ebench/studies/{filename}")


def resolve_study_path(arg: str | Path | None) -> Path:
    """A study file argument: a path, a preset name (``quick``/``paper``/``edge``), or None (quick)."""
    if arg is None:
        return preset_path(DEFAULT_PRESET)
    path = Path(arg)
    if path.is_file():
        return path
    if str(arg) in PRESETS:
        return preset_path(str(arg))
    if path.exists():
        raise StudyError(f"study file {path} is not a regular file")
    raise StudyError(f"study file {path} does not exist (presets: {', '.join(PRESETS)})")


def load_study(path: str | Path) -> Study:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudyError(f"cannot read study file {path}: {exc.strerror or exc}") from None
    return parse_study(text, path=path)


def parse_study(text: str, path: Path | None = None) -> Study:
    where = str(path) if path else "<study>"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{where}: not valid TOML: {exc}") from None
    return _Validator(where, path).study(raw)


def _did_you_mean(key: str, accepted: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


class _Validator:
    def __init__(self, where: str, path: Path | None):
        self.where = where
        self.base = path.resolve().parent if path else Path.cwd()
        self.path = path

    def error(self, message: str) -> StudyError:
        return StudyError(f"{self.where}: {message}")

    def check_keys(self, table: dict, accepted: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if key not in accepted:
                raise self.error(f"unknown key {prefix + key!r}; {_did_you_mean(key, accepted)}"
                                 f"accepted keys{' in [' + prefix.rstrip('.') + ']' if prefix else ''}: "
                                 f"{', '.join(accepted)}")

    # -- scalar helpers --------------------------------------------------------------
    def integer(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(f"{key} = {value!r} is invalid: expected a whole number >= {minimum}")
        return value

    def number(self, key: str, value: Any, low: float, high: float | None = None, low_inclusive: bool = False,
               high_inclusive: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value >= low if low_inclusive else value > low)
            if high is not None:
                ok = ok and (value <= high if high_inclusive else value < high)
        if not ok:
            bounds = f"{'>=' if low_inclusive else '>'} {low:g}"
            if high is not None:
                bounds += f" and {'<=' if high_inclusive else '<'} {high:g}"
            raise self.error(f"{key} = {value!r} is invalid: expected a number {bounds}")
        return float(value)

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"{key} = {value!r} is invalid: expected a non-empty string")
        return value.strip()

    def choice(self, key: str, value: Any, accepted: tuple[str, ...], upper: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(f"{key} = {value!r} is invalid: expected one of {', '.join(accepted)}")
        normalised = value.strip().upper() if upper else value.strip().lower()
        if normalised not in accepted:
            raise self.error(f"{key} has the bad value {value!r}; {_did_you_mean(normalised, accepted)}"
                             f"accepted: {', '.join(accepted)}")
        return normalised

    def string_list(self, key: str, value: Any) -> list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.error(f"{key} = {value!r} is invalid: expected a list")
        return value

    def choices(self, key: str, value: Any, accepted: tuple[str, ...], upper: bool = False) -> tuple[str, ...]:
        items = self.string_list(key, value)
        if not items:
            raise self.error(f"{key} is empty; accepted values: {', '.join(accepted)}")
        out: list[str] = []
        for item in items:
            c = self.choice(key, item, accepted, upper)
            if c not in out:
                out.append(c)
        return tuple(out)

    def core_list(self, key: str, value: Any, allow_all: bool = True) -> tuple[int | str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.error(f"{key} is empty; expected whole numbers >= 1{ALL_HINT if allow_all else ''}")
        out: list[int | str] = []
        for item in items:
            if allow_all and isinstance(item, str) and item.strip().lower() == "all":
                item = "all"
            elif isinstance(item, bool) or not isinstance(item, int) or item < 1:
                raise self.error(f"{key} has the bad value {item!r}; expected whole numbers >= 1"
                                 f"{ALL_HINT if allow_all else ''}")
            if item not in out:
                out.append(item)
        return tuple(out)

    # -- sections ---------------------------------------------------------------------
    def study(self, raw: dict) -> Study:
        from e2ebench.apps import app_names

        self.check_keys(raw, TOP_KEYS, "")
        known_apps = tuple(app_names())
        default_name = self.path.stem if self.path else "study"
        name = self.string("name", raw.get("name", default_name))
        if not all(c.isalnum() or c in "-_." for c in name):
            raise self.error(f"name = {name!r} is invalid: use letters, digits, '-', '_' or '.'")
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise self.error(f"description = {description!r} is invalid: expected a string")
        seed = self.integer("seed", raw.get("seed", 0), 0)
        store = Path(self.string("store", raw.get("store", str(DEFAULT_STORE))))
        timeout_s = self.number("timeout_s", raw.get("timeout_s", DEFAULT_TIMEOUT_S), 0)
        memory_mib = self.memory_mib(raw.get("memory_mib"), raw)
        if "apps" not in raw and "scenarios" not in raw:
            raise self.error("the study lists no 'apps' (and no explicit 'scenarios'): nothing to run")
        apps = self.choices("apps", raw["apps"], known_apps) if raw.get("apps") else ()
        platforms = self.choices("platforms", raw.get("platforms", ["BM"]), PLATFORMS, upper=True)
        cores = self.core_list("cores", raw.get("cores", [1]))
        cpu_modes = self.choices("cpu_modes", raw.get("cpu_modes", list(CPU_MODES)), CPU_MODES, upper=True)
        devices = self.choices("devices", raw.get("devices", ["CPU"]), DEVICES, upper=True)
        thread_policies = self.thread_policies("thread_policies", raw.get("thread_policies", [THREADS_SIZED]))
        extra: list[Scenario] = []
        for item in self.string_list("scenarios", raw.get("scenarios", [])):
            if not isinstance(item, str):
                raise self.error(f"scenarios has the bad value {item!r}; expected strings like 'ic@BM/2/PIN/CPU'")
            try:
                scenario = Scenario.parse(item)
            except NotationError as exc:
                raise self.error(f"scenarios has the bad value {item!r}: {exc}") from None
            if scenario.app not in known_apps:
                raise self.error(f"scenarios has the bad value {item!r}: unknown application {scenario.app!r}; "
                                 f"{_did_you_mean(scenario.app, known_apps)}accepted: {', '.join(known_apps)}")
            extra.append(scenario)
        repetition = self.repetition(raw.get("repetition", {}))
        workloads = self.workloads(raw.get("workload", {}), known_apps)
        exclusions = self.exclusions(raw.get("exclude", []), known_apps)
        if not apps and not extra:
            raise self.error("apps is empty and there are no explicit scenarios: nothing to run")

        config = {
            "name": name, "description": description, "seed": seed, "store": str(store), "timeout_s": timeout_s,
            "apps": list(apps), "platforms": list(platforms), "cores": list(cores), "cpu_modes": list(cpu_modes),
            "devices": list(devices), "scenarios": [str(s) for s in extra],
            "repetition": _repetition_config(repetition),
            "workload": {app: _workload_config(w) for app, w in sorted(workloads.items())},
            "exclude": [_rule_config(r) for r in exclusions],
        }
        if memory_mib is not None:   # only when set: studies without it keep their identity hash
            config["memory_mib"] = memory_mib
        if thread_policies != (THREADS_SIZED,):   # likewise: sized only is what every study measured before the key
            config["thread_policies"] = list(thread_policies)
        return Study(
            name=name, path=self.path, config=config, description=description, seed=seed, store=store,
            timeout_s=timeout_s, apps=apps, platforms=platforms, cores=cores, cpu_modes=cpu_modes, devices=devices,
            extra_scenarios=tuple(extra), repetition=repetition, workloads=workloads, exclusions=tuple(exclusions),
            memory_mib=memory_mib, thread_policies=thread_policies,
        )

    def thread_policies(self, key: str, value: Any) -> tuple[str, ...]:
        """``thread_policies``: ``sized``, ``framework-default`` or a whole number N (a string or a TOML integer), or
        a list of them; canonical (lower-case, ``"4"``) and without repeats."""
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.error(f"{key} is empty; accepted values: {THREAD_POLICY_HINT}")
        out: list[str] = []
        for item in items:
            try:
                policy = check_thread_policy(item)
            except NotationError:
                normalised = item.strip().lower() if isinstance(item, str) else ""
                raise self.error(f"{key} has the bad value {item!r}; "
                                 f"{_did_you_mean(normalised, ('sized', 'framework-default'))}"
                                 f"accepted: {THREAD_POLICY_HINT}") from None
            if policy not in out:
                out.append(policy)
        return tuple(out)

    def memory_mib(self, value: Any, raw: dict) -> int | None:
        """``memory_mib``: a whole number of MiB, at least 64 (256 when the study uses VM, MVM or VMCN, whose
        limit is the guest's memory)."""
        from e2ebench.platforms.memory import MAX_MEMORY_MIB, MIN_MEMORY_MIB

        if value is None:
            return None
        platforms = raw.get("platforms", [])
        platforms = [platforms] if isinstance(platforms, str) else platforms if isinstance(platforms, list) else []
        scenarios = raw.get("scenarios", [])
        scenarios = [scenarios] if isinstance(scenarios, str) else scenarios if isinstance(scenarios, list) else []
        used = {str(p).strip().upper() for p in platforms}
        used |= {str(s).split("@", 1)[-1].split("/", 1)[0].strip().upper() for s in scenarios}
        from e2ebench.platforms import is_guest

        guests = sorted(p for p in used if is_guest(p))   # their memory limit is the guest's memory
        minimum = 256 if guests else MIN_MEMORY_MIB
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"memory_mib = {value!r} is invalid: expected a whole number of MiB (e.g. 2048), "
                             f"at least {minimum}")
        if value < minimum:
            why = f" (the guest's memory of {', '.join(guests)})" if guests else ""
            raise self.error(f"memory_mib = {value} is invalid: at least {minimum} MiB{why}")
        if value > MAX_MEMORY_MIB:
            raise self.error(f"memory_mib = {value} is invalid: at most {MAX_MEMORY_MIB} MiB")
        return value

    def repetition(self, table: Any) -> RepetitionPolicy:
        if not isinstance(table, dict):
            raise self.error(f"repetition = {table!r} is invalid: expected a table [repetition]")
        self.check_keys(table, REPETITION_KEYS, "repetition.")
        d = RepetitionPolicy()
        warmup = self.integer("repetition.warmup_runs", table.get("warmup_runs", d.warmup_runs), 0)
        min_runs = self.integer("repetition.min_runs", table.get("min_runs", d.min_runs), 1)
        max_runs = self.integer("repetition.max_runs", table.get("max_runs", max(d.max_runs, min_runs)), 1)
        if max_runs < min_runs:
            raise self.error(f"repetition.max_runs = {max_runs} is invalid: smaller than repetition.min_runs = {min_runs}")
        target = self.number("repetition.target_ci_halfwidth_pct",
                             table.get("target_ci_halfwidth_pct", d.target_ci_halfwidth_pct), 0, 100, high_inclusive=True)
        confidence = self.number("repetition.confidence", table.get("confidence", d.confidence), 0, 1)
        failures = self.integer("repetition.max_consecutive_failures",
                                table.get("max_consecutive_failures", d.max_consecutive_failures), 1)
        sigmas = self.number("repetition.outlier_sigmas", table.get("outlier_sigmas", d.outlier_sigmas), 0)
        keep = table.get("keep_outliers", d.keep_outliers)
        if not isinstance(keep, bool):
            raise self.error(f"repetition.keep_outliers = {keep!r} is invalid: expected true or false")
        calibrate = table.get("calibrate", d.calibrate)
        if not isinstance(calibrate, bool):
            raise self.error(f"repetition.calibrate = {calibrate!r} is invalid: expected true or false")
        return RepetitionPolicy(warmup, min_runs, max_runs, target, confidence, failures, sigmas, keep, calibrate)

    def workloads(self, table: Any, known_apps: tuple[str, ...]) -> dict[str, AppWorkload]:
        if not isinstance(table, dict):
            raise self.error(f"workload = {table!r} is invalid: expected tables [workload.APP]")
        out = {}
        for app, section in table.items():
            if app not in known_apps:
                raise self.error(f"unknown application {app!r} in [workload.{app}]; "
                                 f"{_did_you_mean(app, known_apps)}accepted: {', '.join(known_apps)}")
            out[app] = self.workload(app, section)
        return out

    def workload(self, app: str, section: Any) -> AppWorkload:
        from e2ebench.spec import LOADGEN_SCENARIOS

        prefix = f"workload.{app}."
        if not isinstance(section, dict):
            raise self.error(f"workload.{app} = {section!r} is invalid: expected a table [workload.{app}]")
        self.check_keys(section, WORKLOAD_KEYS, prefix)
        d = AppWorkload()
        requests = section.get("requests")
        if requests is not None:
            requests = self.integer(prefix + "requests", requests, 1)
        batch_size = section.get("batch_size")
        if batch_size is not None:
            batch_size = self.integer(prefix + "batch_size", batch_size, 1)
        loadgen = self.choice(prefix + "loadgen_scenario", section.get("loadgen_scenario", d.loadgen_scenario),
                              LOADGEN_SCENARIOS)
        modes = self.choices(prefix + "mode", section.get("mode", list(d.modes)), MODES)
        caches = self.choices(prefix + "cache", section.get("cache", list(d.caches)), CACHES)
        if "cold" in caches and "e2e" not in modes:
            raise self.error(f"{prefix}cache = {section['cache']!r} is invalid with {prefix}mode = "
                             f"{section['mode']!r}: {COLD_INFERENCE_ONLY}; measure mode \"e2e\" too, or drop \"cold\"")
        backend = self.string(prefix + "backend", section.get("backend", d.backend))
        variant = self.string(prefix + "variant", section.get("variant", d.variant))
        data = section.get("data")
        if data is not None:
            data_path = self.base / Path(self.string(prefix + "data", data)).expanduser()
            if not data_path.exists():
                raise self.error(f"{prefix}data = {data!r} is invalid: {data_path} does not exist")
            data = str(data_path)
        weights = section.get("weights")
        if weights is not None:
            weights_path = self.base / Path(self.string(prefix + "weights", weights)).expanduser()
            if not weights_path.exists():
                raise self.error(f"{prefix}weights = {weights!r} is invalid: {weights_path} does not exist")
            weights = str(weights_path)
        options = section.get("options", {})
        if not isinstance(options, dict):
            raise self.error(f"{prefix}options = {options!r} is invalid: expected a table of option = value")
        max_error_fraction = self.number(prefix + "max_error_fraction",
                                         section.get("max_error_fraction", d.max_error_fraction), 0, 1,
                                         low_inclusive=True, high_inclusive=True)
        # What the application itself accepts (only when its module loads; otherwise the plan says why)
        try:
            from e2ebench.apps import get_app_class

            cls = get_app_class(app)
        except Exception:
            cls = None
        if cls is not None:
            if backend not in cls.backends:
                raise self.error(f"{prefix}backend has the bad value {backend!r}; "
                                 f"{_did_you_mean(backend, cls.backends)}accepted: {', '.join(cls.backends)}")
            if variant not in cls.variants:
                raise self.error(f"{prefix}variant has the bad value {variant!r}; "
                                 f"{_did_you_mean(variant, cls.variants)}accepted: {', '.join(cls.variants)}")
            known = tuple(o.name for o in cls.options)
            for key in options:
                if key not in known:
                    raise self.error(f"unknown key {prefix + 'options.' + key!r}; {_did_you_mean(key, known)}"
                                     f"accepted options of {app}: {', '.join(known) or 'none'}")
        return AppWorkload(requests, loadgen, batch_size, backend, modes, data, weights, variant, dict(options),
                           max_error_fraction, caches)

    def exclusions(self, items: Any, known_apps: tuple[str, ...]) -> list[ExclusionRule]:
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise self.error(f"exclude = {items!r} is invalid: expected [[exclude]] tables")
        rules = []
        for i, item in enumerate(items):
            prefix = f"exclude[{i}]."
            if not isinstance(item, dict):
                raise self.error(f"exclude[{i}] = {item!r} is invalid: expected a table")
            self.check_keys(item, EXCLUDE_KEYS, "exclude.")
            if "reason" not in item:
                raise self.error(f"{prefix}reason is missing: every exclusion says why (it is shown in the plan)")
            reason = self.string(prefix + "reason", item["reason"])
            fields: dict[str, Any] = {}
            for key, accepted, upper in (("apps", known_apps, False), ("platforms", PLATFORMS, True),
                                         ("cpu_modes", CPU_MODES, True), ("devices", DEVICES, True),
                                         ("modes", MODES, False), ("caches", CACHES, False)):
                if key in item:
                    fields[key] = self.choices(prefix + key, item[key], accepted, upper)
            if "cores" in item:
                fields["cores"] = tuple(int(c) for c in self.core_list(prefix + "cores", item["cores"], allow_all=False))
            if "thread_policies" in item:
                fields["thread_policies"] = self.thread_policies(prefix + "thread_policies", item["thread_policies"])
            if len(fields) == 0:
                raise self.error(f"exclude[{i}] matches every scenario: list at least one of "
                                 f"{', '.join(k for k in EXCLUDE_KEYS if k != 'reason')}")
            rules.append(ExclusionRule(reason=reason, **fields))
        return rules


def _workload_config(w: AppWorkload) -> dict:
    d = dataclasses.asdict(w)
    d["modes"] = list(w.modes)
    # A warm cache only (the default, and all there was before the key existed) is left out, so that the
    # identity hash of a study that does not use `cache` stays what it was.
    if w.caches == AppWorkload().caches:
        del d["caches"]
    else:
        d["caches"] = list(w.caches)
    return d


def _rule_config(rule: ExclusionRule) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(rule).items() if v is not None}
