"""Deployments and scenarios in the paper's notation.

A *deployment* is ``PLATFORM/CORES/CPUMODE/DEVICE`` (``VM/32/PIN/GPU``, ``BM/2/VNL/CPU``).
A *scenario* is ``APP@DEPLOYMENT`` (``ic@CN/4/PIN/CPU``), optionally with the measurement
mode appended as ``APP@DEPLOYMENT#inference-only``, or the page-cache state as
``APP@DEPLOYMENT#cold-cache`` (the data files are dropped from the page cache before the timed
window, so ``io`` measures the platform's storage path).  A warm cache is the default and is not
written (``#warm-cache`` is accepted and means the default); a cold cache with inference-only is
invalid, since no ``io`` is timed in that mode.  A *thread policy* other than the default ``sized`` (every
library's pool sized to the deployment's cores) is written last: ``#threads=framework-default`` (e2ebench sets no
thread count: each library chooses as in the user's own program) or ``#threads=N`` (every pool sized to N).

Parsing is case-insensitive; formatting is canonical (upper-case platform, mode and
device; lower-case app).  Malformed input raises :class:`NotationError` with one line
that names the bad part and the accepted values.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import ClassVar

from e2ebench.spec import CACHE_STATES

CPU_MODES: tuple[str, ...] = ("VNL", "PIN")
DEVICES: tuple[str, ...] = ("CPU", "GPU")
MODES: tuple[str, ...] = ("e2e", "inference-only")
CACHES: tuple[str, ...] = CACHE_STATES             # ("warm", "cold"); warm is the default
CACHE_SUFFIXES = {"warm-cache": "warm", "cold-cache": "cold"}
COLD_INFERENCE_ONLY = "cold cache has no effect in inference-only mode: no io is timed"
THREADS_SIZED = "sized"                           # every library's pool = the deployment's cores (the default)
THREADS_FRAMEWORK_DEFAULT = "framework-default"   # no thread count set: each library chooses on its own
THREAD_POLICIES: tuple[str, ...] = (THREADS_SIZED, THREADS_FRAMEWORK_DEFAULT)   # ... or a whole number N >= 1
THREAD_POLICY_HINT = "sized, framework-default or a whole number of threads >= 1 (e.g. 4)"
MAX_POLICY_THREADS = 4096
THREADS_SUFFIX = "threads="

CPU_MODE_TITLES = {"VNL": "vanilla (CFS quota, any host core)", "PIN": "pinned (dedicated host cores)"}

_APP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class NotationError(ValueError):
    """A deployment or scenario string that does not parse."""


def __getattr__(name: str):
    """``PLATFORMS`` (names in the registry's order) and ``PLATFORM_TITLES`` (name -> title), derived from the
    platform registry (:mod:`e2ebench.platforms`) when first read, for the modules that import them from here."""
    if name == "PLATFORMS":
        from e2ebench.platforms import platform_classes

        return tuple(platform_classes())
    if name == "PLATFORM_TITLES":
        from e2ebench.platforms import platform_classes

        return {key: cls.title for key, cls in platform_classes().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def platform_names() -> tuple[str, ...]:
    """The registered platform names that the notation accepts (built-ins first; no platform module imported)."""
    from e2ebench.platforms import platform_names as registered

    return registered()


@dataclasses.dataclass(frozen=True, order=True)
class Deployment:
    """Where and how an application runs: platform, cores, CPU mode, device."""

    platform: str
    cores: int
    cpu_mode: str
    device: str

    SEPARATOR: ClassVar[str] = "/"

    def __post_init__(self) -> None:
        if self.platform not in platform_names():
            raise NotationError(f"unknown platform {self.platform!r}; accepted: {', '.join(platform_names())}")
        if not isinstance(self.cores, int) or isinstance(self.cores, bool) or self.cores < 1:
            raise NotationError(f"cores must be a whole number >= 1, got {self.cores!r}")
        if self.cpu_mode not in CPU_MODES:
            raise NotationError(f"unknown CPU mode {self.cpu_mode!r}; accepted: {', '.join(CPU_MODES)}")
        if self.device not in DEVICES:
            raise NotationError(f"unknown device {self.device!r}; accepted: {', '.join(DEVICES)}")

    @classmethod
    def parse(cls, text: str) -> "Deployment":
        if not isinstance(text, str) or not text.strip():
            raise NotationError("empty deployment; expected PLATFORM/CORES/CPUMODE/DEVICE, e.g. BM/4/PIN/CPU")
        parts = [p.strip() for p in text.strip().split(cls.SEPARATOR)]
        if len(parts) != 4:
            raise NotationError(
                f"deployment {text!r} has {len(parts)} part(s); expected 4: PLATFORM/CORES/CPUMODE/DEVICE, e.g. BM/4/PIN/CPU"
            )
        platform, cores_text, cpu_mode, device = parts
        platform, cpu_mode, device = platform.upper(), cpu_mode.upper(), device.upper()
        if platform not in platform_names():
            raise NotationError(f"unknown platform {parts[0]!r} in {text!r}; accepted: {', '.join(platform_names())}")
        if not re.fullmatch(r"[0-9]{1,4}", cores_text) or int(cores_text) < 1:
            raise NotationError(f"bad core count {cores_text!r} in {text!r}; accepted: a whole number from 1 to 9999")
        if cpu_mode not in CPU_MODES:
            raise NotationError(f"unknown CPU mode {parts[2]!r} in {text!r}; accepted: {', '.join(CPU_MODES)}")
        if device not in DEVICES:
            raise NotationError(f"unknown device {parts[3]!r} in {text!r}; accepted: {', '.join(DEVICES)}")
        return cls(platform, int(cores_text), cpu_mode, device)

    def __str__(self) -> str:
        return f"{self.platform}/{self.cores}/{self.cpu_mode}/{self.device}"

    def as_dict(self) -> dict:
        return {"platform": self.platform, "cores": self.cores, "cpu_mode": self.cpu_mode, "device": self.device}

    @classmethod
    def from_dict(cls, d: dict) -> "Deployment":
        return cls(d["platform"], int(d["cores"]), d["cpu_mode"], d["device"])


def validate_app_name(name: str) -> str:
    name = name.strip().lower()
    if not _APP_NAME.match(name):
        raise NotationError(f"bad application name {name!r}; expected lower-case letters, digits, '-' or '_'")
    return name


@dataclasses.dataclass(frozen=True, order=True)
class Scenario:
    """One application under one deployment, measured in one mode with a warm or cold page cache."""

    app: str
    deployment: Deployment
    mode: str = "e2e"
    cache: str = "warm"
    threads: str = THREADS_SIZED     # the thread policy: sized | framework-default | N

    def __post_init__(self) -> None:
        validate_app_name(self.app)
        if self.mode not in MODES:
            raise NotationError(f"unknown mode {self.mode!r}; accepted: {', '.join(MODES)}")
        check_cache(self.cache, self.mode)
        object.__setattr__(self, "threads", check_thread_policy(self.threads))

    @classmethod
    def parse(cls, text: str) -> "Scenario":
        if "@" not in text:
            raise NotationError(f"scenario {text!r} lacks '@'; expected APP@PLATFORM/CORES/CPUMODE/DEVICE, e.g. ic@BM/4/PIN/CPU")
        app, rest = text.split("@", 1)
        rest, *suffixes = rest.split("#")
        mode, cache, threads = None, None, None
        for raw in suffixes:
            suffix = raw.strip().lower()
            if suffix.startswith(THREADS_SUFFIX):
                if threads is not None:
                    raise NotationError(f"scenario {text!r} gives the thread policy twice")
                try:
                    threads = check_thread_policy(suffix[len(THREADS_SUFFIX):])
                except NotationError as exc:
                    raise NotationError(f"bad suffix {'#' + raw.strip()!r} in scenario {text!r}: {exc}") from None
            elif suffix in MODES and mode is None:
                mode = suffix
            elif suffix in CACHE_SUFFIXES and cache is None:
                cache = CACHE_SUFFIXES[suffix]
            elif suffix in MODES or suffix in CACHE_SUFFIXES:
                raise NotationError(f"scenario {text!r} gives the {'mode' if suffix in MODES else 'cache state'} twice")
            else:
                raise NotationError(f"unknown suffix {'#' + raw.strip()!r} in scenario {text!r}; accepted: "
                                    f"{', '.join('#' + m for m in MODES)}, {', '.join('#' + c for c in CACHE_SUFFIXES)}, "
                                    "#threads=sized|framework-default|N")
        return cls(validate_app_name(app), Deployment.parse(rest), mode or "e2e", cache or "warm",
                   threads or THREADS_SIZED)

    def __str__(self) -> str:
        return scenario_string(self.app, str(self.deployment), self.mode, self.cache, self.threads)

    @property
    def key(self) -> str:
        return str(self)


def check_cache(cache: str, mode: str = "e2e") -> str:
    """``cache`` if it is a known cache state that ``mode`` can use; NotationError otherwise."""
    if cache not in CACHES:
        raise NotationError(f"unknown cache state {cache!r}; accepted: {', '.join(CACHES)}")
    if cache == "cold" and mode == "inference-only":
        raise NotationError(COLD_INFERENCE_ONLY)
    return cache


def check_thread_policy(text: object) -> str:
    """The canonical form of a thread policy: ``sized``, ``framework-default`` or a whole number ``N`` >= 1 written
    as a string (``"4"``; ``" 04 "`` gives ``"4"``); NotationError for anything else."""
    value = text.strip().lower() if isinstance(text, str) else text
    if value in THREAD_POLICIES:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value) and 1 <= int(value) <= MAX_POLICY_THREADS:
        return str(int(value))
    raise NotationError(f"bad thread policy {text!r}; accepted: {THREAD_POLICY_HINT}, at most {MAX_POLICY_THREADS}")


def policy_threads(policy: str) -> int | None:
    """The thread count a policy fixes: N for ``"N"``, None for ``sized`` (the deployment's cores) and
    ``framework-default`` (none: each library chooses)."""
    policy = check_thread_policy(policy)
    return int(policy) if policy.isdigit() else None


def scenario_string(app: str, deployment: str, mode: str = "e2e", cache: str = "warm",
                    threads: str = THREADS_SIZED) -> str:
    """The canonical scenario text: ``APP@DEPLOYMENT``, ``#inference-only``, ``#cold-cache`` and
    ``#threads=POLICY`` appended when they apply (the defaults, e2e, a warm cache and sized thread pools, are
    not written)."""
    text = f"{app}@{deployment}"
    if mode != "e2e":
        text += f"#{mode}"
    if cache != "warm":
        text += f"#{cache}-cache"
    if threads != THREADS_SIZED:
        text += f"#{THREADS_SUFFIX}{threads}"
    return text


def cache_title(cache: str) -> str:
    """``""`` for the default warm cache, ``"cold cache"`` otherwise: what labels append."""
    return "" if cache == "warm" else f"{cache} cache"


# ---------------------------------------------------------------------------
# Feasibility


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """What the platforms' feasibility rules (``Platform.supports``) need to know about the host."""

    cores: int
    gpus: int = 0                                   # GPUs usable from this environment (torch.cuda sees them)
    available_platforms: frozenset[str] = frozenset({"BM"})
    platform_reasons: tuple[tuple[str, str], ...] = ()
    gpu_reason: str = ""                            # why gpus == 0: no device node / no driver / CPU build of torch
    gpu_names: tuple[str, ...] = ()

    @classmethod
    def detect(cls, probe_platforms: bool = False) -> "HostFacts":
        from e2ebench.gpu import gpu_facts

        cores = len(os.sched_getaffinity(0))
        gpu = gpu_facts()
        available = {"BM"}
        reasons: list[tuple[str, str]] = []
        if probe_platforms:
            from e2ebench.platforms import probe_all

            for name, availability in probe_all().items():
                if availability.usable:
                    available.add(name)
                else:
                    reasons.append((name, availability.reason))
        else:
            available = set(platform_names())
        return cls(cores=cores, gpus=gpu.count if gpu.usable else 0, available_platforms=frozenset(available),
                   platform_reasons=tuple(reasons), gpu_reason="" if gpu.usable else gpu.reason,
                   gpu_names=tuple(gpu.names) if gpu.usable else ())


def count_gpus() -> int:
    """GPUs this environment can use (:func:`e2ebench.gpu.gpu_facts`: torch.cuda must see them)."""
    from e2ebench.gpu import gpu_facts

    facts = gpu_facts()
    return facts.count if facts.usable else 0


def infeasibility(deployment: Deployment, host: HostFacts) -> str | None:
    """Why a deployment cannot run on this host, or ``None`` when it can: the platform's own rule,
    :meth:`e2ebench.platforms.base.Platform.supports`."""
    from e2ebench.platforms import PlatformError, get_platform_class

    try:
        platform = get_platform_class(deployment.platform)
    except PlatformError as exc:
        return str(exc)
    return platform.supports(deployment, host)
