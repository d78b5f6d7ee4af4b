"""Virtual machine (VM) configuration, pure: the QEMU command line, the guest kernel command line, the guest's
job scripts, and the options that decide them.

Nothing here starts QEMU: each function turns explicit inputs (a :class:`GuestLaunch`, an environment, a
marker line) into what QEMU or the guest receives, so that it is tested on its output alone.  The life
cycle that boots guests and supervises them is :mod:`e2ebench.platforms.vm`; MVM and VMCN reuse both.

GPU deployments (VM and VMCN) pass whole PCI devices to the guest with VFIO: ``GuestLaunch.vfio_devices``
lists their PCI addresses (bound to ``vfio-pci`` by :mod:`e2ebench.platforms.vfio`), each becomes
``-device vfio-pci,host=ADDRESS``, the 64-bit PCI window grows to :data:`VFIO_PCI_HOLE64` (a data-centre
GPU's memory BAR is 64-256 GiB), and ``e2ebench.gpu=1`` on the kernel command line makes the guest's init
create the NVIDIA device nodes once the ``nvidia`` module (built for the guest kernel) is loaded.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from pathlib import Path

from e2ebench.platforms.vfio import PCI_ADDRESS

QEMU_BINARY = "qemu-system-x86_64"
MARK_READY = "@@E2EBENCH_GUEST_READY@@"
MARK_ERROR = "@@E2EBENCH_GUEST_ERROR@@"
MARK_GUEST_EXIT = "@@E2EBENCH_GUEST_EXIT@@"
MARK_WORKER_EXIT = "@@E2EBENCH_WORKER_EXIT@@"
MARK_PROBE = "@@E2EBENCH_PROBE_OK@@"
MARKERS = (MARK_READY, MARK_ERROR, MARK_GUEST_EXIT, MARK_WORKER_EXIT, MARK_PROBE)
GUEST_DATA_MOUNT = "/run/e2ebench/data"
GUEST_JOB_DIR = "/run/e2ebench/job"   # where the guest mounts the job directory (a tmpfs under /run)
# directories the guest mounts its own file systems on: host paths below them are hidden in the guest
GUEST_PRIVATE_DIRS = ("/tmp", "/run", "/dev", "/proc", "/sys")
ACCEL_ENV = "E2EBENCH_VM_ACCEL"
MEMORY_ENV = "E2EBENCH_VM_MEMORY_MIB"
GPU_ENV = "E2EBENCH_VM_GPU"             # GPU deployments: the PCI address of the GPU to pass (default: the first usable)
# the 64-bit PCI hole of a guest with a passed-through GPU: room for a large memory BAR (H100/H200: 128-256 GiB)
# below the 40 physical address bits QEMU gives a guest by default
VFIO_PCI_HOLE64 = "512G"

GUEST_ENV_PREFIXES = ("E2EBENCH_", "HF_", "TRANSFORMERS_", "TORCH_", "PYTHON", "LC_", "KMP_", "ONNX")
GUEST_ENV_KEYS = ("LANG", "TZ", "VIRTUAL_ENV", "PATH")
HOST_ONLY_ENV = ("E2EBENCH_GUEST_KERNEL", "E2EBENCH_GUEST_MODULES", ACCEL_ENV, MEMORY_ENV, GPU_ENV)


# ---------------------------------------------------------------------------
# Options


@dataclasses.dataclass
class VmOptions:
    """Settings of the QEMU platforms (``get_platform("VM", memory_mib=2048, ...)``)."""

    memory_mib: int = 4096              # guest RAM; capped at 75% of the host's memory
    kernel: str | None = None           # bzImage to boot; default $E2EBENCH_GUEST_KERNEL, the cache, or Debian's
    modules_dir: str | None = None      # its lib/modules/<version>; default $E2EBENCH_GUEST_MODULES or a guess
    accel: str = "auto"                 # auto | kvm | tcg ($E2EBENCH_VM_ACCEL)
    machine: str = "q35"                # q35 | pc (MVM always uses microvm)
    p9_msize: int = 524288              # 9p message size of both shares
    p9_cache: str = "loose"             # 9p cache mode of the read-only host root (loose: ~2x faster imports)
    boot_timeout_s: float = 600.0       # QEMU start -> guest ready, at most
    kvm_probe_timeout_s: float = 20.0   # a KVM probe guest must print its marker within this
    cache_disk_images: bool = True      # keep data-set disk images in <cache>/guest/disks
    fetch_kernel: bool = True           # apt-get download Debian's kernel when none is configured or cached
    qemu_binary: str = QEMU_BINARY
    gpu_address: str | None = None      # GPU deployments: PCI address of the GPU to pass through ($E2EBENCH_VM_GPU)

    def __post_init__(self) -> None:
        if self.accel == "auto" and os.environ.get(ACCEL_ENV):
            self.accel = os.environ[ACCEL_ENV].strip().lower()
        if os.environ.get(MEMORY_ENV) and self.memory_mib == 4096:
            self.memory_mib = int(os.environ[MEMORY_ENV])
        if self.accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"accel must be auto, kvm or tcg, not {self.accel!r}")
        if self.machine not in ("q35", "pc", "microvm"):
            raise ValueError(f"machine must be q35, pc or microvm, not {self.machine!r}")
        if int(self.memory_mib) < 256:
            raise ValueError(f"memory_mib must be at least 256, not {self.memory_mib}")
        if self.p9_cache not in ("none", "loose", "fscache", "mmap"):
            raise ValueError(f"p9_cache must be none, loose, fscache or mmap, not {self.p9_cache!r}")
        self.memory_mib = int(self.memory_mib)
        if self.gpu_address is None and os.environ.get(GPU_ENV):
            self.gpu_address = os.environ[GPU_ENV].strip().lower()
        if self.gpu_address is not None and not PCI_ADDRESS.match(self.gpu_address):
            raise ValueError(f"gpu_address must be a PCI address like 0000:65:00.0, not {self.gpu_address!r}")


def host_memory_mib(meminfo: str | None = None) -> int:
    """``MemTotal`` in MiB, from ``meminfo`` (the text of /proc/meminfo; read when None); 0 when unknown."""
    try:
        text = meminfo if meminfo is not None else Path("/proc/meminfo").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def bounded_memory_mib(requested_mib: int, host_mib: int | None = None) -> int:
    """Guest RAM: the request, at most 75% of the host's memory (never below 256 MiB)."""
    host_mib = host_memory_mib() if host_mib is None else host_mib
    if host_mib <= 0:
        return requested_mib
    return max(256, min(requested_mib, int(host_mib * 0.75)))


# ---------------------------------------------------------------------------
# The QEMU command line (pure)


@dataclasses.dataclass(frozen=True)
class GuestLaunch:
    """Everything that decides one QEMU command line."""

    kernel_image: Path
    initramfs: Path
    vcpus: int
    memory_mib: int
    accel: str                          # kvm | tcg
    machine: str                        # q35 | pc | microvm
    qmp_socket: Path
    job_dir: Path | None = None         # host directory shared writable over 9p; None in probe mode
    data_image: Path | None = None      # read-only virtio-blk disk
    data_mount: str | None = None       # where the guest mounts it
    p9_msize: int = 524288
    p9_cache: str = "loose"
    mode: str = "run"                   # run | probe | hold
    name: str = "e2ebench"
    tsc_khz: int | None = None          # TCG: the guest's TSC frequency (= the host's), skips calibration
    keep_paths: tuple[str, ...] = ()    # host paths under /tmp or /run that must stay visible over the guest's tmpfs
    vfio_devices: tuple[str, ...] = ()  # PCI addresses (0000:65:00.0) of host devices bound to vfio-pci, passed through

    @property
    def is_microvm(self) -> bool:
        return self.machine == "microvm"


def kernel_cmdline(launch: GuestLaunch) -> str:
    parts = ["console=ttyS0", "quiet", "loglevel=3", "panic=-1", "rdinit=/init", f"e2ebench.mode={launch.mode}"]
    if launch.tsc_khz:
        # Under TCG the guest's TSC ticks at the host's TSC rate; calibrating it against the emulated PIT
        # fails now and then on a busy host, and a microvm (no HPET, no PM timer) then hangs at boot.
        parts.append(f"tsc_early_khz={launch.tsc_khz}")
    if launch.mode == "run":
        if launch.job_dir is None:
            raise ValueError("a run needs a job directory")
        parts += [f"e2ebench.job={GUEST_JOB_DIR}", f"e2ebench.msize={launch.p9_msize}", f"e2ebench.cache={launch.p9_cache}"]
        if launch.data_image is not None and launch.data_mount:
            parts.append(f"e2ebench.data={launch.data_mount}")
        if launch.keep_paths:
            parts.append("e2ebench.keep=" + ",".join(launch.keep_paths))
        if launch.vfio_devices:
            parts.append("e2ebench.gpu=1")
    for part in parts:
        if any(c.isspace() for c in part):
            raise ValueError(f"kernel command line argument {part!r} contains whitespace")
    return " ".join(parts)


GUEST_TMPFS_DIRS = ("/tmp", "/run")


def paths_hidden_by_guest_tmpfs(paths: list[str]) -> tuple[str, ...]:
    """The paths the guest's own tmpfs on /tmp and /run would hide (the Python environment or the project
    living under /tmp, as in a CI checkout); init.sh binds them back from the host root.  Paths with
    whitespace or commas cannot travel on the kernel command line and are refused."""
    kept = []
    for path in paths:
        norm = os.path.normpath(path)
        if any(norm == d or norm.startswith(d + "/") for d in GUEST_TMPFS_DIRS):
            if any(c.isspace() or c == "," for c in norm):
                raise ValueError(f"{norm!r} is under /tmp or /run and contains whitespace or a comma: a VM guest "
                                 "cannot see it; move the Python environment or project elsewhere")
            kept.append(norm)
    return tuple(sorted(set(kept)))


def host_tsc_khz(cpuinfo: str | None = None) -> int | None:
    """The host's constant TSC frequency in kHz (``cpu MHz`` when the CPU has ``constant_tsc``), or None."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = re.search(r"^flags\s*:(.*)$", text, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.M)
    if not flags or not mhz or "constant_tsc" not in flags.group(1).split():
        return None
    return int(round(float(mhz.group(1)) * 1000))


def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    if accel == "tcg":
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    raise ValueError(f"unknown accelerator {accel!r}")


def qemu_argv(launch: GuestLaunch, binary: str = QEMU_BINARY) -> list[str]:
    """The QEMU argument list: paused at start (``-S``), QMP on a unix socket, console on stdio."""
    suffix = "device" if launch.is_microvm else "pci"
    machine = "microvm,x-option-roms=off,rtc=off" if launch.is_microvm else launch.machine
    argv = [
        binary, "-name", f"{launch.name},debug-threads=on", "-machine", machine, *accel_args(launch.accel),
        "-smp", f"cpus={launch.vcpus},sockets=1,cores={launch.vcpus},threads=1", "-m", str(launch.memory_mib),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio", "-monitor", "none",
        "-kernel", str(launch.kernel_image), "-initrd", str(launch.initramfs), "-append", kernel_cmdline(launch),
        "-qmp", f"unix:{launch.qmp_socket},server=on,wait=off", "-S",
    ]
    if launch.mode == "run":
        argv += [
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", f"virtio-9p-{suffix},fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=job,path={launch.job_dir},security_model=none",
            "-device", f"virtio-9p-{suffix},fsdev=job,mount_tag=job",
        ]
        if launch.data_image is not None:
            argv += [
                "-drive", f"file={launch.data_image},if=none,id=data,format=raw,readonly=on",
                "-device", f"virtio-blk-{suffix},drive=data,serial=e2ebench-data",
            ]
    argv += vfio_args(launch)
    for value in (str(launch.job_dir or ""), str(launch.data_image or "")):
        if "," in value:
            raise ValueError(f"QEMU option values cannot contain ',': {value}")
    return argv


def vfio_args(launch: GuestLaunch) -> list[str]:
    """``-device vfio-pci,host=ADDRESS`` for each passed-through device, and a 64-bit PCI hole large enough for
    its memory BARs.  The microvm machine has no PCI bus: passthrough there is refused."""
    if not launch.vfio_devices:
        return []
    if launch.is_microvm:
        raise ValueError("the microvm machine has no PCI bus: a GPU cannot be passed through to it")
    host_bridge = "q35-pcihost" if launch.machine == "q35" else "i440FX-pcihost"
    args = ["-global", f"{host_bridge}.pci-hole64-size={VFIO_PCI_HOLE64}"]
    for address in launch.vfio_devices:
        if not PCI_ADDRESS.match(address):
            raise ValueError(f"not a PCI address (DDDD:BB:DD.F): {address!r}")
        args += ["-device", f"vfio-pci,host={address}"]
    return args


def shell_script(argv: list[str], env: dict[str, str] | None = None) -> str:
    """``exec env -i K=V ... argv`` with every word quoted (shlex): the guest runs it with /bin/sh."""
    words = ["exec"]
    if env is not None:
        words += ["env", "-i"] + [f"{k}={v}" for k, v in sorted(env.items())]
    words += argv
    return "#!/bin/sh\n" + " ".join(shlex.quote(w) for w in words) + "\n"


def shell_assignments(values: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def marker_fields(line: str) -> dict:
    """The key=value fields of the guest's ready marker line, as platform_info.boot keys."""
    out: dict = {}
    for key, value in re.findall(r"(\w+)=(\S+)", line):
        if key == "uptime":
            out["guest_uptime_at_ready_s"] = float(value)
        elif key == "cpus":
            out["guest_cpus"] = int(value)
        elif key == "data":
            out["guest_data_source"] = value
    return out


_marker_fields = marker_fields   # the old private name, still imported by microvm


__all__ = ["GuestLaunch", "VmOptions", "accel_args", "bounded_memory_mib", "host_memory_mib", "host_tsc_khz",
           "kernel_cmdline", "marker_fields", "paths_hidden_by_guest_tmpfs", "qemu_argv", "shell_assignments",
           "shell_script", "vfio_args"]
