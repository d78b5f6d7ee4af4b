"""Whether this environment can use a GPU, and if not, which part is missing.

A GPU counts only when ``torch.cuda.is_available()`` in the project's own Python environment: a device node without
a driver, or a driver with the CPU build of torch (the pinned ``torch==2.13.0`` from the CPU index), cannot run a
GPU deployment.  The three parts are checked separately so that the reason names each one that is missing:

- an NVIDIA device node (``/dev/nvidia0``, ...);
- the driver: ``nvidia-smi`` on PATH or the CUDA driver library ``libcuda.so.1`` loadable;
- a CUDA build of torch (``torch.version.cuda`` is not None) that sees the GPU.

torch is imported only here and only when asked (``import_torch``): by default only when a device node exists,
since without one CUDA cannot see a GPU and the import costs ~2 s on every CLI command that plans.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

_DEVICE_NODE = re.compile(r"^nvidia[0-9]+$")


@dataclasses.dataclass(frozen=True)
class GpuFacts:
    """What this environment has towards a usable GPU.  ``usable`` is True only when torch.cuda sees one."""

    usable: bool
    count: int = 0                          # GPUs torch.cuda sees (0 unless usable)
    names: tuple[str, ...] = ()             # their model names, from torch (else nvidia-smi)
    driver_version: str | None = None       # from nvidia-smi or /proc/driver/nvidia/version
    cuda_version: str | None = None         # the CUDA version torch was built with (None: a CPU build or not known)
    torch_version: str | None = None
    reason: str = ""                        # why not usable: every missing part, "; "-joined (empty when usable)
    device_nodes: tuple[str, ...] = ()      # /dev/nvidia0, ...

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"names": list(self.names), "device_nodes": list(self.device_nodes)}


def device_nodes(dev: Path = Path("/dev")) -> tuple[str, ...]:
    try:
        return tuple(sorted(str(dev / n) for n in os.listdir(dev) if _DEVICE_NODE.match(n)))
    except OSError:
        return ()


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version (/proc/driver/nvidia/version, else nvidia-smi), or None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        found = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+([0-9][0-9.]+)", text)
        if found:
            return found.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            proc = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        lines = proc.stdout.split()
        if proc.returncode == 0 and lines:
            return lines[0]
    return None


def libcuda_loadable() -> bool:
    """The CUDA driver library (user-space half of the driver) can be loaded by this process."""
    for name in ("libcuda.so.1", ctypes.util.find_library("cuda")):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def torch_build() -> tuple[str | None, str | None]:
    """(torch version, CUDA version it was built with) from the installed distribution, without importing torch:
    the ``+cpu`` local version of the CPU index's wheels says CPU build; anything else is unknown until imported."""
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None, None
    return version, None


def gpu_facts(import_torch: bool | None = None) -> GpuFacts:
    """What this environment has towards a usable GPU.  ``import_torch``: None = only when a device node exists."""
    nodes = device_nodes()
    driver = driver_version()
    has_driver = driver is not None or shutil.which("nvidia-smi") is not None or (bool(nodes) and libcuda_loadable())
    missing: list[str] = []
    if not nodes:
        missing.append("no NVIDIA device node (/dev/nvidia0, ...)")
    if not has_driver:
        missing.append("no NVIDIA driver (no nvidia-smi, no /proc/driver/nvidia, no loadable libcuda.so.1)")
    version, cuda = torch_build()
    count, names = 0, ()
    if version is None:
        missing.append("torch is not installed in this environment")
    elif import_torch or (import_torch is None and nodes):
        try:
            import torch

            version, cuda = torch.__version__, torch.version.cuda
            if cuda is not None and torch.cuda.is_available():
                count = torch.cuda.device_count()
                names = tuple(torch.cuda.get_device_name(i) for i in range(count))
        except Exception as exc:      # a broken CUDA install must not break planning: it is a reason
            missing.append(f"torch cannot query CUDA: {type(exc).__name__}: {exc}")
        if cuda is None:
            missing.append(f"torch {version} is a CPU build (torch.version.cuda is None)")
        elif count == 0 and nodes and has_driver:
            missing.append(f"torch {version} (CUDA {cuda}) sees no GPU (torch.cuda.is_available() is False)")
    elif version.endswith("+cpu"):
        missing.append(f"torch {version} is a CPU build (torch.version.cuda is None)")
    if count > 0:
        return GpuFacts(True, count, names, driver, cuda, version, "", nodes)
    reason = "; ".join(missing) or "no GPU visible to torch.cuda"
    return GpuFacts(False, 0, (), driver, cuda, version, reason, nodes)


__all__ = ["GpuFacts", "gpu_facts", "device_nodes", "driver_version", "libcuda_loadable"]
