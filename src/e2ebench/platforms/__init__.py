"""Execution platforms: BM, CN, VM, MVM, VMCN.  ``get_platform(name)`` returns an instance."""

from __future__ import annotations

import importlib

from e2ebench.platforms.base import Availability, Platform, PlatformError, Session

PLATFORM_CLASSES: dict[str, str] = {
    "BM": "e2ebench.platforms.baremetal:BareMetal",
    "CN": "e2ebench.platforms.container:Container",
    "VM": "e2ebench.platforms.vm:VirtualMachine",
    "MVM": "e2ebench.platforms.microvm:MicroVM",
    "VMCN": "e2ebench.platforms.vm_container:ContainerInVM",
}


def get_platform(name: str, **options) -> Platform:
    key = name.upper()
    if key not in PLATFORM_CLASSES:
        raise PlatformError(f"unknown platform {name!r}; accepted: {', '.join(PLATFORM_CLASSES)}")
    module_name, _, attr = PLATFORM_CLASSES[key].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise PlatformError(f"platform {key} is not implemented in this version of e2ebench") from None
        raise
    return getattr(module, attr)(**options)


def probe_all() -> dict[str, Availability]:
    out = {}
    for name in PLATFORM_CLASSES:
        try:
            out[name] = get_platform(name).probe()
        except PlatformError as exc:
            out[name] = Availability(False, str(exc))
        except Exception as exc:  # a broken probe must not break doctor
            out[name] = Availability(False, f"probe failed: {type(exc).__name__}: {exc}")
    return out


__all__ = ["Availability", "Platform", "PlatformError", "Session", "get_platform", "probe_all", "PLATFORM_CLASSES"]
