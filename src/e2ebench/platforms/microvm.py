"""Micro-VM (MVM): a minimal guest machine — no PCI, no firmware, virtio over MMIO.

Engines
    ``qemu`` (default here) — QEMU's ``microvm`` machine (``-M microvm,x-option-roms=off,rtc=off``):
        no PCI bus, no option ROMs, no RTC, the kernel booted directly; the host root and the job
        directory are ``virtio-9p-device`` shares and the data disk a ``virtio-blk-device``, all on
        virtio-mmio (the guest's ``virtio_mmio`` module gets the devices from the kernel command line
        that QEMU writes).  Same kernel, initramfs, job protocol and measurements as :mod:`.vm`.
    ``firecracker`` — used when a ``firecracker`` binary is on PATH (option ``engine``).  e2ebench
        writes its ``--config-file`` (same kernel, decompressed to the ELF ``vmlinux`` Firecracker
        boots, same initramfs).  Firecracker has no 9p, so the host root must come as a block device
        image: :func:`firecracker_config` takes its path; building that image and running it are not
        implemented in this version (there is no Firecracker binary in Debian or PyPI to test with),
        so a session with ``engine="firecracker"`` fails with that reason.

Only ``VNL`` on CPU (the scenario feasibility rule says so, as in the paper): the QEMU process sits in
a CFS-quota cgroup of N cores and the guest has N vCPUs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import ClassVar

from e2ebench.platforms.base import Availability, PlatformError
from e2ebench.platforms.guest import guest_cache_dir
from e2ebench.platforms.guest.kernel import GuestKernel, extract_vmlinux
from e2ebench.platforms.vm import GUEST_DATA_MOUNT, GUEST_JOB_DIR, VirtualMachine, VirtualMachineSession, qemu_machines
from e2ebench.scenario import Deployment

ENGINE_ENV = "E2EBENCH_MVM_ENGINE"
FIRECRACKER = "firecracker"


def firecracker_config(kernel_elf: Path, initramfs: Path, vcpus: int, memory_mib: int, root_image: Path,
                       job_image: Path, data_image: Path | None, log_path: Path | None = None) -> dict:
    """A Firecracker ``--config-file`` document for one e2ebench guest.

    Drives, in guest order: ``vda`` the read-only root image (the host's system and Python
    environment), ``vdb`` the writable job image, ``vdc`` the read-only data set.  The boot
    arguments point init.sh at them (``e2ebench.root=/dev/vda``, ``e2ebench.datadev=/dev/vdc``).
    """
    args = ["console=ttyS0", "reboot=k", "panic=-1", "quiet", "loglevel=3", "rdinit=/init", "pci=off",
            "e2ebench.mode=run", "e2ebench.root=/dev/vda", f"e2ebench.job={GUEST_JOB_DIR}", "e2ebench.jobdev=/dev/vdb"]
    drives = [
        {"drive_id": "rootfs", "path_on_host": str(root_image), "is_root_device": False, "is_read_only": True},
        {"drive_id": "job", "path_on_host": str(job_image), "is_root_device": False, "is_read_only": False},
    ]
    if data_image is not None:
        args += [f"e2ebench.data={GUEST_DATA_MOUNT}", "e2ebench.datadev=/dev/vdc"]
        drives.append({"drive_id": "data", "path_on_host": str(data_image), "is_root_device": False,
                       "is_read_only": True})
    config: dict = {
        "boot-source": {"kernel_image_path": str(kernel_elf), "initrd_path": str(initramfs), "boot_args": " ".join(args)},
        "drives": drives,
        "machine-config": {"vcpu_count": int(vcpus), "mem_size_mib": int(memory_mib), "smt": False},
    }
    if log_path is not None:
        config["logger"] = {"log_path": str(log_path), "level": "Warning"}
    return config


def firecracker_kernel(kernel: GuestKernel) -> Path:
    """The ELF ``vmlinux`` of ``kernel`` (Firecracker does not boot bzImages), cached."""
    target = guest_cache_dir() / "vmlinux" / f"vmlinux-{kernel.version}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        extract_vmlinux(kernel.image, tmp)
        tmp.replace(target)
    return target


class MicroVMSession(VirtualMachineSession):
    guest_mode: ClassVar[str] = "vm"


class MicroVM(VirtualMachine):
    NAME: ClassVar[str] = "MVM"
    TITLE: ClassVar[str] = "micro-VM (QEMU microvm)"
    session_class = MicroVMSession

    def __init__(self, engine: str | None = None, **options) -> None:
        options.setdefault("machine", "microvm")
        super().__init__(**options)
        self.options.machine = "microvm"
        self.engine = (engine or os.environ.get(ENGINE_ENV) or "qemu").strip().lower()
        if self.engine not in ("qemu", FIRECRACKER):
            raise PlatformError(f"unknown micro-VM engine {self.engine!r}; accepted: qemu, firecracker")

    def machine_type(self) -> str:
        return "microvm"

    def probe(self) -> Availability:
        base = super().probe()
        if not base.usable:
            return base
        details = dict(base.details)
        details["firecracker"] = shutil.which(FIRECRACKER) or "not on PATH (no Debian or PyPI package)"
        details["engine"] = self.engine
        if self.engine == FIRECRACKER:
            return Availability(False, "the Firecracker engine is not implemented in this version (it needs the host "
                                "root as a block image: Firecracker has no 9p)", fix="use the default engine (qemu)",
                                details=details)
        if "microvm" not in qemu_machines(self.options.qemu_binary):
            return Availability(False, f"{self.options.qemu_binary} has no microvm machine type",
                                fix="apt-get install qemu-system-x86 (QEMU >= 4.2)", details=details)
        return Availability(base.usable, base.reason, emulated=base.emulated, fix=base.fix, details=details)

    def check_deployment(self, deployment: Deployment) -> None:
        if deployment.cpu_mode != "VNL" or deployment.device != "CPU":
            raise PlatformError("MVM supports only VNL/CPU (no CPU pinning or GPU passthrough on micro-VMs, as in the paper)")
        if self.engine == FIRECRACKER:
            raise PlatformError("the Firecracker engine is not implemented in this version: it needs the host root as a "
                                "block image (Firecracker has no 9p); use engine=qemu (QEMU microvm)")


__all__ = ["MicroVM", "MicroVMSession", "firecracker_config", "firecracker_kernel"]


if __name__ == "__main__":  # pragma: no cover - prints a sample Firecracker configuration
    print(json.dumps(firecracker_config(Path("vmlinux"), Path("initramfs.img.gz"), 2, 2048, Path("root.ext4"),
                                        Path("job.ext4"), Path("data.ext4")), indent=1))
