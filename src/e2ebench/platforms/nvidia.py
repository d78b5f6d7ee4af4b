"""The host's NVIDIA driver as a container needs it: device nodes, user-space libraries, CDI spec, docker runtime.

The readers here look at the host (``/dev``, ``ldconfig -p``, ``/etc/cdi``, ``docker info``); the parsers
they use are pure functions of text, and what is built from their answers (the runc bundle's devices and
binds, podman's and docker's GPU options) is :mod:`e2ebench.platforms.container_config`.  On a host
without an NVIDIA GPU every reader returns nothing and :func:`container_gpu_problem` says what is missing.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import re
import shutil
import stat
import subprocess
from pathlib import Path

from e2ebench.platforms.container_config import (CDI_GPU_KIND, DeviceNode, GpuPassthrough, select_gpu_nodes)

NVIDIA_NODE_NAME = re.compile(r"^nvidia(\d+|ctl|-uvm|-uvm-tools|-modeset)$")
# the driver's user-space libraries CUDA programs load (sonames without version), as the NVIDIA
# container toolkit passes them for the compute and utility capabilities
DRIVER_LIBRARY_NAMES = ("libcuda.so", "libcudadebugger.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so",
                        "libnvidia-nvvm.so", "libnvidia-gpucomp.so", "libnvidia-allocator.so", "libnvidia-cfg.so")
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$")
# ldconfig's ABI tag of this machine's native libraries
NATIVE_ABI_TAGS = {"x86_64": "x86-64", "aarch64": "AArch64", "ppc64le": "64bit"}


# ---------------------------------------------------------------------------
# device nodes


def device_nodes(dev_dir: str | Path = "/dev") -> list[DeviceNode]:
    """The NVIDIA character devices in ``dev_dir`` (``nvidia0``.., ``nvidiactl``, ``nvidia-uvm``,
    ``nvidia-uvm-tools``, ``nvidia-modeset``) with their device numbers; [] where there are none."""
    out = []
    try:
        names = sorted(os.listdir(dev_dir))
    except OSError:
        return []
    for name in names:
        if not NVIDIA_NODE_NAME.match(name):
            continue
        path = os.path.join(dev_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode):
            # the node keeps its path under /dev inside the container whatever dev_dir was read
            out.append(DeviceNode(f"/dev/{name}", os.major(st.st_rdev), os.minor(st.st_rdev)))
    return out


# ---------------------------------------------------------------------------
# driver libraries


def parse_ldconfig(text: str) -> list[tuple[str, str, str]]:
    """``ldconfig -p`` as [(soname, ABI tag, path)], e.g. ``("libcuda.so.1", "libc6,x86-64", "/usr/lib/.../libcuda.so.1")``."""
    out = []
    for line in text.splitlines():
        match = LDCONFIG_LINE.match(line)
        if match:
            out.append((match.group(1), match.group(2), match.group(3)))
    return out


def driver_libraries(entries: list[tuple[str, str, str]], abi_tag: str | None = None,
                     names: tuple[str, ...] = DRIVER_LIBRARY_NAMES) -> tuple[str, ...]:
    """The paths of the NVIDIA driver's libraries among ``entries`` (:func:`parse_ldconfig`): each soname in
    ``names``, bare or versioned (``libcuda.so``, ``libcuda.so.1``), of the native ABI only (``abi_tag``, e.g.
    ``x86-64``; a 32-bit copy cannot be loaded by the worker)."""
    wanted = []
    for soname, tags, path in entries:
        if abi_tag is not None and abi_tag not in tags.split(","):
            continue
        if any(soname == n or (soname.startswith(n + ".") and soname[len(n) + 1:].replace(".", "").isdigit())
               for n in names):
            wanted.append(path)
    return tuple(sorted(set(wanted)))


def ldconfig_text() -> str:
    """``ldconfig -p`` of this host ('' when it cannot run)."""
    binary = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if binary is None:
        return ""
    try:
        return subprocess.run([binary, "-p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def host_driver_libraries() -> tuple[str, ...]:
    return driver_libraries(parse_ldconfig(ldconfig_text()), NATIVE_ABI_TAGS.get(_platform.machine()))


def host_gpu_passthrough(selection: tuple[int, ...] | None = None) -> GpuPassthrough:
    """What a runc container of this host gets for a GPU deployment (see :meth:`GpuPassthrough.problem`)."""
    return GpuPassthrough(select_gpu_nodes(device_nodes(), selection), host_driver_libraries())


# ---------------------------------------------------------------------------
# podman (CDI) and docker (nvidia runtime)


def parse_cdi_kind(text: str) -> str | None:
    """The device kind a CDI spec declares (``kind: nvidia.com/gpu``, YAML or JSON), or None."""
    if text.lstrip().startswith("{"):
        try:
            kind = json.loads(text).get("kind")
        except (ValueError, AttributeError):
            return None
        return kind if isinstance(kind, str) else None
    match = re.search(r"""^kind:\s*["']?([A-Za-z0-9.\-]+/[A-Za-z0-9.\-_]+)["']?\s*$""", text, re.M)
    return match.group(1) if match else None


def cdi_spec(kind: str = CDI_GPU_KIND, dirs: tuple[str, ...] = CDI_DIRS) -> Path | None:
    """The CDI spec file (``*.yaml``/``*.json`` in ``dirs``) that declares ``kind``, or None."""
    for d in dirs:
        try:
            files = sorted(Path(d).iterdir())
        except OSError:
            continue
        for f in files:
            if f.suffix not in (".yaml", ".yml", ".json") or not f.is_file():
                continue
            try:
                if parse_cdi_kind(f.read_text(errors="replace")) == kind:
                    return f
            except OSError:
                continue
    return None


def parse_docker_runtimes(text: str) -> set[str]:
    """The runtime names in ``docker info --format '{{json .Runtimes}}'``."""
    try:
        runtimes = json.loads(text)
    except ValueError:
        return set()
    return set(runtimes) if isinstance(runtimes, dict) else set()


def container_gpu_problem(engine: str, passthrough: GpuPassthrough, cdi: Path | None = None,
                          docker_runtimes: set[str] | None = None, docker_hook: bool = False) -> str | None:
    """Why a CN GPU deployment with ``engine`` cannot run here (one sentence), or None.

    Every engine needs the host's device nodes and driver (``passthrough``); podman also the CDI spec
    (``nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml``), docker either the NVIDIA runtime in its daemon
    (``nvidia-ctk runtime configure --runtime=docker``) or the toolkit's ``nvidia-container-runtime-hook``, which
    dockerd itself adds for ``--gpus`` (``docker_hook``)."""
    problem = passthrough.problem()
    if problem:
        return f"no usable NVIDIA GPU on the host: {problem}"
    if engine == "podman" and cdi is None:
        return (f"podman needs a CDI spec for {CDI_GPU_KIND} in {' or '.join(CDI_DIRS)} "
                "(nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml)")
    if engine == "docker" and "nvidia" not in (docker_runtimes or set()) and not docker_hook:
        return ("docker's daemon has no nvidia runtime for --gpus (install the NVIDIA container toolkit and run "
                "nvidia-ctk runtime configure --runtime=docker)")
    return None


__all__ = ["DRIVER_LIBRARY_NAMES", "cdi_spec", "container_gpu_problem", "device_nodes", "driver_libraries",
           "host_driver_libraries", "host_gpu_passthrough", "ldconfig_text", "parse_cdi_kind", "parse_docker_runtimes",
           "parse_ldconfig"]
