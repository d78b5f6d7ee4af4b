"""Container (CN) configuration, pure: the runc bundle's ``config.json`` and the podman/docker argument lists.

Nothing here runs a command or reads the host: every function turns explicit inputs (the command, its
environment, bind mounts, CPU and memory limits, GPU device nodes and driver libraries) into the
configuration an engine receives, so that each one is tested on its output alone.  The life cycle that
writes the bundle and runs the engines is :mod:`e2ebench.platforms.container`.

GPU deployments (device ``GPU``) pass the NVIDIA GPU in the way each engine expects:

* ``runc`` — the device nodes (``/dev/nvidia0..``, ``/dev/nvidiactl``, ``/dev/nvidia-uvm``,
  ``/dev/nvidia-uvm-tools``, ``/dev/nvidia-modeset``) as OCI ``linux.devices`` (runc creates them in the
  container's ``/dev``), one device-cgroup allow rule each (after the default deny-all), and the driver's
  user-space libraries (``libcuda.so.1``, ``libnvidia-ml.so.1``...) bind-mounted read-only at their host
  paths (a bind already visible through the host's ``/usr`` is dropped by :func:`plan_binds`);
* ``podman`` — the CDI device ``--device nvidia.com/gpu=all`` (or ``=N``), described by the CDI spec that
  ``nvidia-ctk cdi generate`` writes to ``/etc/cdi``;
* ``docker`` — ``--gpus all`` (or ``device=N``), served by the NVIDIA container toolkit's runtime.
"""

from __future__ import annotations

import dataclasses
import os
import re

from e2ebench.measure import format_cpu_list
from e2ebench.platforms import memory as memory_lib
from e2ebench.platforms import rootfs as rootfs_lib
from e2ebench.platforms.cgroups import DEFAULT_PERIOD_US

OCI_VERSION = "1.0.2-dev"
HOSTNAME = "e2ebench"
# podman refuses RLIMIT_NPROC above this without CAP_SYS_RESOURCE (measured with podman 4.3)
PODMAN_NPROC_CAP = 32768

DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# environment variables passed from the caller into the container (besides the ones set here)
PASSED_ENV_PREFIXES = ("E2EBENCH_", "LC_", "MALLOC_", "KMP_", "ONEDNN_", "DNNL_", "TORCH_", "HF_", "TRANSFORMERS_")
PASSED_ENV_NAMES = ("LANG", "LANGUAGE", "TZ")
# passed as well in a GPU deployment (which GPUs CUDA uses, its caches)
GPU_ENV_PREFIXES = ("CUDA_", "NVIDIA_")
DROPPED_ENV_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_CPU_AFFINITY", "OMP_PROC_BIND", "OMP_PLACES",
                     "E2EBENCH_CN_ENGINE", "E2EBENCH_CN_ROOTFS", "E2EBENCH_CN_NETWORK", "E2EBENCH_DOCKER_HOST")

# ---------------------------------------------------------------------------
# GPU: what a container needs to use an NVIDIA GPU

# the per-GPU node is /dev/nvidia<N>; these control nodes are shared by all GPUs
NVIDIA_CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
NVIDIA_GPU_NODE = re.compile(r"^/dev/nvidia(\d+)$")
CDI_GPU_KIND = "nvidia.com/gpu"
NVIDIA_MAJOR = 195          # the driver's fixed character major: nvidia0.., nvidiactl (minor 255), nvidia-modeset (254)


@dataclasses.dataclass(frozen=True)
class DeviceNode:
    """A character device node of the host, by path and device numbers, to recreate inside a container."""

    path: str
    major: int
    minor: int
    file_mode: int = 0o666

    def __post_init__(self) -> None:
        if not self.path.startswith("/dev/") or ".." in self.path.split("/"):
            raise ValueError(f"a device node lives under /dev: {self.path!r}")
        if self.major < 0 or self.minor < 0:
            raise ValueError(f"negative device number for {self.path}: {self.major}:{self.minor}")

    @property
    def gpu_index(self) -> int | None:
        """N for ``/dev/nvidiaN``; None for a control node."""
        match = NVIDIA_GPU_NODE.match(self.path)
        return int(match.group(1)) if match else None


@dataclasses.dataclass(frozen=True)
class GpuPassthrough:
    """The NVIDIA device nodes and driver libraries (host paths) a runc container gets for a GPU deployment."""

    devices: tuple[DeviceNode, ...]
    libraries: tuple[str, ...]

    def __post_init__(self) -> None:
        for path in self.libraries:
            if not os.path.isabs(path) or ":" in path or any(c.isspace() for c in path):
                raise ValueError(f"a driver library must be an absolute path without ':' or spaces: {path!r}")

    def problem(self) -> str | None:
        """Why a container given only this could not use a GPU (one sentence), or None."""
        paths = {d.path for d in self.devices}
        if not any(d.gpu_index is not None for d in self.devices):
            return "no /dev/nvidia<N> device node (is the NVIDIA driver loaded?)"
        missing = [p for p in ("/dev/nvidiactl", "/dev/nvidia-uvm") if p not in paths]
        if missing:
            return (f"missing {' and '.join(missing)} (load the nvidia and nvidia_uvm modules; "
                    "nvidia-modprobe -u -c=0 creates the nodes)")
        if not any(os.path.basename(p).startswith("libcuda.so") for p in self.libraries):
            return "no libcuda.so in the dynamic linker's cache (ldconfig -p): the NVIDIA driver's libraries are missing"
        return None


def parse_gpu_selection(text: str | None) -> tuple[int, ...] | None:
    """``"all"`` (or empty) -> None (every GPU); ``"0"`` or ``"0,2"`` -> (0, 2).  Anything else is refused,
    since the value reaches engine command lines."""
    value = (text or "all").strip().lower()
    if value == "all":
        return None
    parts = [p.strip() for p in value.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"GPU selection must be 'all' or GPU indices like 0 or 0,1; got {text!r}")
    return tuple(sorted({int(p) for p in parts}))


def select_gpu_nodes(nodes: list[DeviceNode] | tuple[DeviceNode, ...],
                     selection: tuple[int, ...] | None = None) -> tuple[DeviceNode, ...]:
    """The control nodes plus ``/dev/nvidiaN`` for each selected GPU (every GPU when ``selection`` is None);
    anything else under /dev is not an NVIDIA node and is left out."""
    kept = []
    for node in nodes:
        index = node.gpu_index
        if node.path in NVIDIA_CONTROL_NODES or (index is not None and (selection is None or index in selection)):
            kept.append(node)
    return tuple(sorted(kept, key=lambda d: d.path))


def nvidia_nodes(gpu_count: int, uvm_major: int) -> tuple[DeviceNode, ...]:
    """The nodes a machine with ``gpu_count`` NVIDIA GPUs has, built from the driver's fixed major and the
    ``nvidia-uvm`` major (dynamic: read from /proc/devices where the driver runs).  For a container in a guest,
    whose nodes exist only once the guest has booted."""
    if gpu_count < 1:
        raise ValueError(f"gpu_count must be at least 1, got {gpu_count}")
    nodes = [DeviceNode(f"/dev/nvidia{i}", NVIDIA_MAJOR, i) for i in range(gpu_count)]
    nodes += [DeviceNode("/dev/nvidiactl", NVIDIA_MAJOR, 255),
              DeviceNode("/dev/nvidia-uvm", uvm_major, 0), DeviceNode("/dev/nvidia-uvm-tools", uvm_major, 1)]
    return tuple(sorted(nodes, key=lambda d: d.path))


def oci_gpu_devices(nodes: tuple[DeviceNode, ...] | list[DeviceNode]) -> list[dict]:
    """OCI ``linux.devices``: the runtime creates each node (same numbers) in the container's ``/dev``."""
    return [{"path": d.path, "type": "c", "major": d.major, "minor": d.minor, "fileMode": d.file_mode,
             "uid": 0, "gid": 0} for d in nodes]


def oci_gpu_device_rules(nodes: tuple[DeviceNode, ...] | list[DeviceNode]) -> list[dict]:
    """OCI ``linux.resources.devices`` allow rules (read, write, mknod) for exactly these nodes."""
    return [{"allow": True, "type": "c", "major": d.major, "minor": d.minor, "access": "rwm"} for d in nodes]


def podman_gpu_args(selection: tuple[int, ...] | None = None) -> list[str]:
    """podman's CDI device request: ``--device nvidia.com/gpu=all`` or one ``=N`` per selected GPU."""
    names = ["all"] if selection is None else [str(i) for i in selection]
    args: list[str] = []
    for name in names:
        args += ["--device", f"{CDI_GPU_KIND}={name}"]
    return args


def docker_gpu_args(selection: tuple[int, ...] | None = None) -> list[str]:
    """docker's ``--gpus all`` or ``--gpus device=0`` (several: ``"device=0,1"``, quoted for docker's CSV parser)."""
    if selection is None:
        return ["--gpus", "all"]
    devices = ",".join(str(i) for i in selection)
    return ["--gpus", f'"device={devices}"' if len(selection) > 1 else f"device={devices}"]


# ---------------------------------------------------------------------------
# OCI runtime bundle (shared with the container-in-VM platform)


@dataclasses.dataclass(frozen=True)
class Bind:
    """A bind mount: ``source`` on the host at ``destination`` inside the container."""

    source: str
    destination: str
    writable: bool = False

    @classmethod
    def parse(cls, text: str, writable: bool = False) -> "Bind":
        """``"/path"`` (identity) or ``"/host/path:/container/path"``."""
        source, sep, destination = text.partition(":")
        return cls(os.path.normpath(source), os.path.normpath(destination if sep else source), writable)


def _depth_order(binds: list[Bind]) -> list[Bind]:
    return sorted(binds, key=lambda b: (b.destination.rstrip("/").count("/"), b.destination))


def _covers(outer: Bind, inner: Bind) -> bool:
    """True when ``outer`` already shows ``inner``'s source at ``inner``'s destination."""
    if not rootfs_lib.is_within(inner.destination, outer.destination):
        return False
    relative = os.path.relpath(inner.destination, outer.destination)
    return os.path.normpath(os.path.join(outer.source, relative)) == inner.source


def plan_binds(readonly_binds: list[str], writable_binds: list[str]) -> list[Bind]:
    """Bind mounts in mount order: outermost destinations first, so that a bind inside another
    one (a writable log directory inside a read-only tree) is mounted on top of it.

    A read-only bind already visible through another read-only bind (the same source under the
    same destination) is dropped; at the same destination a writable bind wins.
    """
    kept: list[Bind] = []
    for b in _depth_order([Bind.parse(t) for t in readonly_binds]):
        if not any(_covers(k, b) for k in kept):
            kept.append(b)
    for b in _depth_order([Bind.parse(t, writable=True) for t in writable_binds]):
        if b not in kept:
            kept.append(b)
    # stable: at equal depth read-only binds stay before writable ones
    return sorted(kept, key=lambda b: b.destination.rstrip("/").count("/"))


def oci_config(argv: list[str], env: dict[str, str], *, root: str, readonly_binds: list[str],
               writable_binds: list[str], quota_cores: float | None, cpuset: list[int] | None,
               cgroups_path: str | None, network: bool = False, cwd: str = "/", hostname: str = HOSTNAME,
               period_us: int = DEFAULT_PERIOD_US, rlimits: dict[str, tuple[int, int]] | None = None,
               root_readonly: bool = True, memory_mib: int | None = None, memory_swap: bool = True,
               gpu: GpuPassthrough | None = None) -> dict:
    """An OCI runtime ``config.json`` (runtime-spec 1.0.2) for one worker process.

    Namespaces: pid, ipc, uts, mount, cgroup and — unless ``network`` — a new network namespace
    (only loopback).  Mounts: proc, a tmpfs ``/dev`` (runc adds the OCI default devices), devpts,
    ``/dev/shm``, mqueue, sysfs (a read-only rbind of ``/sys`` when the host network is shared,
    where a fresh sysfs may not be mounted), the cgroup filesystem (read-only), a tmpfs ``/tmp``,
    then the bind mounts.  ``quota_cores`` becomes ``cpu.quota = round(cores * period)``;
    ``cpuset`` becomes ``cpu.cpus``.  ``rlimits`` (``{"RLIMIT_NOFILE": (soft, hard)}``) is
    omitted by default: the process keeps the runtime's own limits, as a bare-metal process would.
    ``memory_mib`` becomes ``memory.limit`` in bytes and — unless ``memory_swap`` is false (a host without
    swap accounting) — ``memory.swap`` (memory + swap) of the same size: no swap on top of the limit.
    ``gpu`` adds its device nodes (``linux.devices`` and an allow rule each) and its driver libraries as
    read-only binds.
    """
    if quota_cores is not None and quota_cores <= 0:
        raise ValueError(f"quota_cores must be positive, got {quota_cores}")
    if cpuset is not None and not cpuset:
        raise ValueError("cpuset must list at least one CPU")
    mounts: list[dict] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=1g"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        ({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
         if not network else
         {"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}),
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
    ]
    if gpu is not None:
        readonly_binds = list(readonly_binds) + list(gpu.libraries)
    for b in plan_binds(readonly_binds, writable_binds):
        mounts.append({"destination": b.destination, "type": "bind", "source": b.source,
                       "options": ["rbind", "rw" if b.writable else "ro"]})
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    if not network:
        namespaces.append({"type": "network"})
    cpu: dict = {}
    if quota_cores is not None:
        cpu["quota"] = int(round(quota_cores * period_us))
        cpu["period"] = int(period_us)
    if cpuset is not None:
        cpu["cpus"] = format_cpu_list(cpuset)
    resources: dict = {"devices": [{"allow": False, "access": "rwm"}]
                       + (oci_gpu_device_rules(gpu.devices) if gpu is not None else [])}
    if cpu:
        resources["cpu"] = cpu
    if memory_mib is not None:
        limit = int(memory_lib.validate_memory_mib(memory_mib)) << 20
        resources["memory"] = {"limit": limit, **({"swap": limit} if memory_swap else {})}
    process: dict = {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": [str(a) for a in argv],
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": cwd,
        "capabilities": {k: list(DEFAULT_CAPABILITIES) for k in ("bounding", "effective", "permitted", "ambient")},
        "noNewPrivileges": True,
    }
    if rlimits:
        process["rlimits"] = [{"type": k, "soft": int(s), "hard": int(h)} for k, (s, h) in rlimits.items()]
    linux: dict = {
        "resources": resources,
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if gpu is not None and gpu.devices:
        linux["devices"] = oci_gpu_devices(gpu.devices)
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": root, "readonly": bool(root_readonly)},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    }


# ---------------------------------------------------------------------------
# podman and docker command lines


def podman_base_argv(storage_root: str | None = None, run_root: str | None = None) -> list[str]:
    """``podman`` with the global options this machine needs (no containers.conf required):
    cgroupfs manager, file event log, runc as the OCI runtime."""
    argv = ["podman", "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"]
    if storage_root:
        argv += ["--root", storage_root]
    if run_root:
        argv += ["--runroot", run_root]
    return argv


def docker_base_argv(host: str | None) -> list[str]:
    return ["docker"] + (["-H", host] if host else [])


def cap_rlimits(engine: str, limits: dict[str, tuple[int, int]], infinity: int) -> dict[str, tuple[int, int]]:
    """The caller's ``{"nofile": (soft, hard), "nproc": ...}`` as finite ``--ulimit`` values: unlimited becomes
    2**20, a soft limit never exceeds the hard one, and podman's nproc is capped at :data:`PODMAN_NPROC_CAP`."""
    out = {}
    for key, (soft, hard) in limits.items():
        if hard == infinity:
            hard = 1 << 20
        if soft == infinity or soft > hard:
            soft = hard
        if key == "nproc" and engine == "podman":
            soft, hard = min(soft, PODMAN_NPROC_CAP), min(hard, PODMAN_NPROC_CAP)
        out[key] = (soft, hard)
    return out


def engine_limit_args(cpus: list[int] | tuple[int, ...] | None, quota_cores: float | None,
                      memory_mib: int | None) -> list[str]:
    """``--cpuset-cpus`` (PIN) or ``--cpus`` (VNL), and ``--memory``/``--memory-swap`` of the same size
    (memory + swap = memory: no swap on top of the limit)."""
    if cpus is not None:
        args = ["--cpuset-cpus", format_cpu_list(list(cpus))]
    else:
        args = [] if quota_cores is None else ["--cpus", f"{quota_cores:g}"]
    if memory_mib is not None:
        limit = f"{int(memory_lib.validate_memory_mib(memory_mib))}m"
        args += ["--memory", limit, "--memory-swap", limit]
    return args


def engine_run_args(*, name: str, cgroup_parent: str, network: bool, limit_args: list[str],
                    rlimits: dict[str, tuple[int, int]], readonly_binds: list[str], writable_binds: list[str],
                    env: dict[str, str], keep: bool = False, hostname: str = HOSTNAME) -> list[str]:
    """The ``run`` options podman and docker share: name, read-only root, cgroup parent, network, limits,
    ``--ulimit``, binds (:func:`plan_binds` order) and environment.  ``keep`` leaves out ``--rm`` (the stopped
    container stays for its ``OOMKilled`` state)."""
    args = ["run", *([] if keep else ["--rm"]), "--name", name, "--hostname", hostname, "--read-only",
            "--cgroup-parent", cgroup_parent, "--workdir", "/"]
    args += ["--network", "host"] if network else ["--network", "none"]
    args += limit_args
    for key, (soft, hard) in rlimits.items():
        args += ["--ulimit", f"{key}={soft}:{hard}"]
    for b in plan_binds(readonly_binds, writable_binds):
        args += ["-v", f"{b.source}:{b.destination}:{'rw' if b.writable else 'ro'}"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return args


def podman_run_argv(base: list[str], run_args: list[str], argv: list[str], *, image: str | None = None,
                    rootfs: str | None = None, gpu_args: list[str] = ()) -> list[str]:
    """``podman … run …`` with a 1 GiB ``/dev/shm`` on an image or an exploded root directory.  ``--read-only``
    also gives a tmpfs /tmp, /var/tmp and /run (podman's ``--read-only-tmpfs`` default)."""
    if (image is None) == (rootfs is None):
        raise ValueError("podman runs either an image or a root directory")
    target = [image] if image is not None else ["--rootfs", str(rootfs)]
    return list(base) + list(run_args) + ["--shm-size", "1g", *gpu_args] + target + list(argv)


def docker_run_argv(base: list[str], run_args: list[str], argv: list[str], *, image: str,
                    gpu_args: list[str] = ()) -> list[str]:
    """``docker … run …`` with a tmpfs ``/tmp`` and a 1 GiB ``/dev/shm``."""
    return (list(base) + list(run_args) + ["--tmpfs", "/tmp:rw,nosuid,nodev,mode=1777", "--shm-size", "1g",
                                           *gpu_args, image] + list(argv))


__all__ = [
    "Bind", "DeviceNode", "GpuPassthrough", "HOSTNAME", "OCI_VERSION", "cap_rlimits", "docker_base_argv",
    "docker_gpu_args", "docker_run_argv", "engine_limit_args", "engine_run_args", "nvidia_nodes", "oci_config",
    "oci_gpu_device_rules",
    "oci_gpu_devices", "parse_gpu_selection", "plan_binds", "podman_base_argv", "podman_gpu_args", "podman_run_argv",
    "select_gpu_nodes",
]
