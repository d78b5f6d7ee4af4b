"""``e2ebench doctor``: what this host offers and which deployments can run here, with reasons."""

from __future__ import annotations

import os
import platform as _platform
import shutil
from pathlib import Path

from e2ebench import measure
from e2ebench.platforms import cgroups, known_platform_class, probe_all


def _sockets() -> int:
    ids = set()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        if line.startswith("physical id"):
            ids.add(line.split(":", 1)[1].strip())
    return max(1, len(ids))


# Vector extensions that decide how fast the DNN's kernels run on a CPU (oneDNN/MKL pick their code path by them):
# x86 AVX2/FMA, AVX-512 (with its VNNI and BF16 parts), AMX; Arm NEON (asimd) and SVE.
DL_VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
                        "asimd", "sve")


def cpu_facts() -> dict:
    """The CPU as py-cpuinfo reads it (``/proc/cpuinfo`` plus the CPUID instruction, on every architecture): brand,
    architecture and the vector extensions of :data:`DL_VECTOR_EXTENSIONS` it has.  In a VM these are what the
    hypervisor lets the guest see.  ``{}`` when py-cpuinfo cannot read them."""
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
    except Exception:           # informative only: doctor must answer without it
        return {}
    flags = set(info.get("flags") or ())
    return {"brand": info.get("brand_raw") or "unknown", "arch": info.get("arch") or "unknown",
            "vector_extensions": [name for name in DL_VECTOR_EXTENSIONS if name in flags]}


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


PINNED_TORCH = "2.13.0"


def gpu_status(facts=None) -> dict:
    """The GPU row of ``doctor``: usable only when ``torch.cuda.is_available()`` in this (the project's) environment.

    Usable: names the GPUs, the driver and CUDA versions and torch's (a torch other than the pinned one is said, not
    refused). Not usable: ``reason`` lists every missing part (device node, driver, CUDA build of torch) and ``fix``
    says what to do about the first one.  The entry also carries :class:`~e2ebench.gpu.GpuFacts` as ``facts``."""
    from e2ebench.gpu import gpu_facts

    if facts is None:
        facts = gpu_facts(import_torch=True)      # doctor always asks torch, device node or not
    torch_note = ""
    if facts.torch_version and not facts.torch_version.split("+")[0] == PINNED_TORCH:
        torch_note = f" (not the pinned torch=={PINNED_TORCH}: results say which torch measured them)"
    if facts.usable:
        names = ", ".join(sorted(set(facts.names)))
        return {"status": "usable", "usable": True, "emulated": False,
                "reason": f"{facts.count} GPU(s) usable by torch.cuda: {names}; driver {facts.driver_version or 'unknown'}, "
                          f"CUDA {facts.cuda_version}, torch {facts.torch_version}{torch_note}",
                "fix": "", "facts": facts.as_dict()}
    if not facts.device_nodes:
        fix = "run on a host with an NVIDIA GPU and its driver, then scripts/setup --gpu (CUDA build of torch)"
    elif "driver" in facts.reason:
        fix = "install the NVIDIA driver (nvidia-smi must work), then scripts/setup --gpu"
    elif "CPU build" in facts.reason:
        fix = f"scripts/setup --gpu installs the CUDA build of torch=={PINNED_TORCH} and onnxruntime-gpu"
    else:
        fix = "check that the driver and torch's CUDA version agree (nvidia-smi, python -c 'import torch; torch.cuda.init()')"
    return {"status": "unavailable", "usable": False, "emulated": False,
            "reason": f"{facts.reason}; GPU deployments are infeasible here", "fix": fix, "facts": facts.as_dict()}


def gpu_passthrough_status() -> dict:
    """The rows ``GPU in CN`` and ``GPU in VM, VMCN``: can the host's GPU be passed into a container (device nodes,
    driver libraries, and per engine a CDI spec or docker's NVIDIA runtime) or through to a QEMU guest (VFIO: PCI
    device, IOMMU, its group, vfio-pci, driver not in use)?  Each says exactly what is missing."""
    from e2ebench.platforms.base import PlatformError
    from e2ebench.platforms.container import Container
    from e2ebench.platforms.vfio import IOMMU_FIX, vfio_status

    rows = {}
    try:
        platform = Container()
        problem = platform.gpu_problem()
        engine = platform.engine
    except PlatformError as exc:
        problem, engine = str(exc), "?"
    fixes = {"runc": "install the NVIDIA driver (device nodes /dev/nvidia*, libcuda.so in ldconfig -p)",
             "podman": "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml (NVIDIA container toolkit)",
             "docker": "install the NVIDIA container toolkit, then nvidia-ctk runtime configure --runtime=docker"}
    rows["GPU in CN"] = {"status": "unavailable" if problem else "usable", "usable": problem is None, "emulated": False,
                         "reason": f"{engine}: {problem or 'the GPU device nodes and driver libraries can be passed in'}",
                         "fix": fixes.get(engine, "") if problem else ""}
    usable, reason = vfio_status()
    fix = ""
    if not usable:
        fix = (IOMMU_FIX if "IOMMU is off" in reason else "modprobe vfio-pci" if "vfio-pci" in reason
               else "stop the processes holding /dev/nvidia* (nvidia-persistenced, nvidia-smi, CUDA programs)"
               if "in use" in reason else "run on a host with an NVIDIA GPU" if "no NVIDIA PCI device" in reason
               else "move the GPU to a slot with its own IOMMU group" if "shared with" in reason else "")
    rows["GPU in VM, VMCN"] = {"status": "usable" if usable else "unavailable", "usable": usable, "emulated": False,
                               "reason": f"VFIO: {reason}; the guest also needs the NVIDIA driver for its kernel "
                                         "(docs/platforms.md)", "fix": fix}
    return rows


def platform_entry(name: str, availability) -> dict:
    """One row of ``platforms``: the probe's verdict plus what the registered class says it supports in principle
    (title, CPU modes, devices, design limit, class); a third-party platform that does not load has only the verdict."""
    cls = known_platform_class(name)
    return {**availability.as_dict(), **({} if cls is None else cls.describe())}


def collect() -> dict:
    ok, why = cgroups.writable()
    host = {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": measure.cpu_model(),
        "cpu": cpu_facts(),
        "sockets": _sockets(),
        "numa_nodes": len(cgroups.numa_nodes()),
        "memory_gib": _memory_gib(),
        "kernel": _platform.release(),
        "cgroup_version": measure.cgroup_version(),
        "cgroups_writable": ok,
        "cgroups": why,
        "python": _platform.python_version(),
    }
    platforms = {name: platform_entry(name, availability) for name, availability in probe_all().items()}
    devices = {"CPU": {"status": "usable", "usable": True, "emulated": False, "reason": f"{host['cpus']} CPUs", "fix": ""},
               "GPU": gpu_status(), **gpu_passthrough_status()}
    tools = {}
    for tool in ("runc", "podman", "docker", "qemu-system-x86_64", "busybox", "debootstrap", "espeak-ng", "firecracker"):
        path = shutil.which(tool)
        tools[tool] = path or "not installed"
    return {"host": host, "platforms": platforms, "devices": devices, "tools": tools}


THREAD_PROBE_DEPLOYMENTS = ("BM/1/VNL/CPU", "CN/1/VNL/CPU")


def collect_threads(progress=None) -> dict:
    """``e2ebench doctor --threads``: the thread probe (:mod:`e2ebench.thread_probe`) in BM/1/VNL/CPU and, when the
    CN platform is usable, CN/1/VNL/CPU.  ``deployments`` maps each to its probe, or to ``{"error"}`` / ``{"skipped"}``."""
    from e2ebench.platforms import get_platform
    from e2ebench.scenario import Deployment
    from e2ebench.thread_probe import probe_deployment

    out: dict = {}
    for text in THREAD_PROBE_DEPLOYMENTS:
        deployment = Deployment.parse(text)
        if deployment.platform != "BM":
            try:
                availability = get_platform(deployment.platform).probe()
            except Exception as exc:
                availability = None
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = availability.reason
            if availability is None or not availability.usable:
                out[text] = {"deployment": text, "skipped": f"platform {deployment.platform} unavailable: {reason}"}
                continue
        try:
            out[text] = probe_deployment(deployment, progress=progress)
        except Exception as exc:
            out[text] = {"deployment": text, "error": f"the thread probe in {text} failed: {str(exc) or type(exc).__name__}"}
    return {"host": {"cpu_count": os.cpu_count(), "cpus": len(os.sched_getaffinity(0))}, "deployments": out}
