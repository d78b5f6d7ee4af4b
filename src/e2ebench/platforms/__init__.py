"""Execution platforms: the built-ins BM, CN, VM, MVM, VMCN plus third-party ones.

A platform is a :class:`~e2ebench.platforms.base.Platform` subclass.  Third-party platforms register it under the
entry-point group ``e2ebench.platforms``, as apps do under ``e2ebench.apps``::

    [project.entry-points."e2ebench.platforms"]
    XX = "mypackage.myplatform:MyPlatform"

:func:`platform_classes` is the registry (sorted by each class's ``order``), :func:`get_platform_class` one class,
:func:`get_platform` an instance.  The notation (:class:`~e2ebench.scenario.Deployment`) accepts every registered
name; :func:`platform_names` gives them without importing any platform module.
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata

from e2ebench.platforms.base import PLATFORM_NAME, Availability, Platform, PlatformError, Session

# The built-in platforms, also registered under ENTRY_POINT_GROUP in pyproject.toml (a test keeps both equal); this
# table is what counts where e2ebench runs from its source tree without installed metadata (a guest, PYTHONPATH=src).
PLATFORM_CLASSES: dict[str, str] = {
    "BM": "e2ebench.platforms.baremetal:BareMetal",
    "CN": "e2ebench.platforms.container:Container",
    "VM": "e2ebench.platforms.vm:VirtualMachine",
    "MVM": "e2ebench.platforms.microvm:MicroVM",
    "VMCN": "e2ebench.platforms.vm_container:ContainerInVM",
}

ENTRY_POINT_GROUP = "e2ebench.platforms"


@functools.cache
def _targets() -> dict[str, str]:
    """name -> "module:Class": the built-ins, then entry points (a third party cannot replace a built-in)."""
    targets = dict(PLATFORM_CLASSES)
    try:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            name = ep.name.strip().upper()
            if PLATFORM_NAME.match(name):
                targets.setdefault(name, ep.value)
    except Exception:  # pragma: no cover - broken third-party metadata must not break the built-ins
        pass
    return targets


def platform_names() -> tuple[str, ...]:
    """Every registered platform name, without importing a platform module (built-ins first)."""
    return tuple(_targets())


def _load(name: str, target: str) -> type[Platform]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise PlatformError(f"platform {name} is not implemented in this version of e2ebench ({target})") from None
        raise
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Platform)):
        raise PlatformError(f"platform {name}: {target} is not an e2ebench Platform subclass")
    if getattr(cls, "name", None) != name:
        raise PlatformError(f"platform {name}: {target} calls itself {getattr(cls, 'name', None)!r}, not {name!r}")
    return cls


@functools.cache
def _loaded() -> tuple[dict[str, type[Platform]], dict[str, str]]:
    classes: dict[str, type[Platform]] = {}
    broken: dict[str, str] = {}
    for name, target in _targets().items():
        try:
            classes[name] = _load(name, target)
        except Exception as exc:        # a broken plugin must not break the built-ins; doctor shows why
            if name in PLATFORM_CLASSES:
                raise
            broken[name] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PlatformError) else str(exc)
    ordered = dict(sorted(classes.items(), key=lambda item: (item[1].order, item[0])))
    return ordered, broken


def platform_classes() -> dict[str, type[Platform]]:
    """name -> Platform class for every registered platform that loads, sorted by ``order`` (then name)."""
    return dict(_loaded()[0])


def broken_platforms() -> dict[str, str]:
    """name -> why: registered third-party platforms whose class cannot be loaded."""
    return dict(_loaded()[1])


def get_platform_class(name: str) -> type[Platform]:
    """The class of a registered platform; PlatformError naming the accepted ones for anything else."""
    key = name.strip().upper() if isinstance(name, str) else name
    targets = _targets()
    if key not in targets:
        raise PlatformError(f"unknown platform {name!r}; accepted: {', '.join(platform_classes())}")
    classes, broken = _loaded()
    if key in broken:
        raise PlatformError(f"platform {key} cannot be loaded: {broken[key]}")
    return classes[key]


def get_platform(name: str, **options) -> Platform:
    return get_platform_class(name)(**options)


# Questions with an answer for every name: a store or a study file can name a platform whose plugin is not installed
# here (any more); tables and figures then still show it, after the registered ones, in grey.

UNKNOWN_COLOUR = "#888888"

# The reference every overhead is measured against (the paper's rule, not a property of any one platform class).
BASELINE_PLATFORM = "BM"


def known_platform_class(name: str) -> type[Platform] | None:
    """The registered class called ``name``, or None (unknown, or a plugin that does not load)."""
    return platform_classes().get(name.strip().upper() if isinstance(name, str) else name)


def platform_rank(name: str) -> tuple[int, str]:
    """Sort key of a platform in tables and figures: its ``order``, then its name; unknown names last."""
    cls = known_platform_class(name)
    return (cls.order if cls is not None else 10**6, str(name))


def platform_title(name: str) -> str:
    cls = known_platform_class(name)
    return cls.title if cls is not None else str(name)


def platform_colour(name: str) -> str:
    cls = known_platform_class(name)
    return cls.colour if cls is not None else UNKNOWN_COLOUR


def is_guest(name: str) -> bool:
    """The platform runs the worker on a guest kernel (its memory limit is the guest's memory)."""
    cls = known_platform_class(name)
    return bool(cls is not None and cls.guest)


def is_container(name: str) -> bool:
    """The platform runs the worker in a container (the container-to-host ratio finding applies)."""
    cls = known_platform_class(name)
    return bool(cls is not None and cls.container)


def shares_host_kernel(name: str) -> bool:
    """The worker runs on the host's kernel (what it reads from /proc is the host's)."""
    cls = known_platform_class(name)
    return bool(cls is not None and cls.shares_host_kernel)


def refresh_registry() -> None:
    """Forget the registry so that the next call reads the entry points again (after installing a plugin)."""
    _targets.cache_clear()
    _loaded.cache_clear()


def probe_all() -> dict[str, Availability]:
    out = {}
    for name in platform_names():
        try:
            out[name] = get_platform(name).probe()
        except PlatformError as exc:
            out[name] = Availability(False, str(exc))
        except Exception as exc:  # a broken probe must not break doctor
            out[name] = Availability(False, f"probe failed: {type(exc).__name__}: {exc}")
    order = {name: i for i, name in enumerate(platform_classes())}
    return dict(sorted(out.items(), key=lambda item: order.get(item[0], len(order))))


__all__ = ["Availability", "Platform", "PlatformError", "Session", "BASELINE_PLATFORM", "ENTRY_POINT_GROUP",
           "PLATFORM_CLASSES", "broken_platforms", "get_platform", "get_platform_class", "is_container", "is_guest",
           "known_platform_class", "platform_classes", "platform_colour", "platform_names", "platform_rank",
           "platform_title", "probe_all", "refresh_registry", "shares_host_kernel"]
