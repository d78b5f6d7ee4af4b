"""VFIO PCI passthrough of a whole NVIDIA GPU to a QEMU guest (VM and VMCN GPU deployments).

What a host needs, and what :func:`vfio_status` checks in this order, naming what is missing:

1. an NVIDIA GPU on the PCI bus (vendor ``0x10de``, display class ``0x03xx``) in ``/sys/bus/pci/devices``;
2. the IOMMU on (``/sys/kernel/iommu_groups`` not empty: boot with ``intel_iommu=on`` or ``amd_iommu=on``);
3. the GPU's IOMMU group holding nothing else that must stay with the host: PCI bridges are fine, the
   GPU's own other functions (its audio or USB-C controller, same bus and slot) are passed along with it;
4. the ``vfio-pci`` driver available (``modprobe vfio-pci``);
5. the GPU free: a device still bound to ``nvidia`` must not be held open by a process (``nvidia-smi``,
   ``nvidia-persistenced``, a CUDA program), or unbinding it would wait for them.

:func:`bound_to_vfio` then binds the devices to ``vfio-pci`` (``driver_override``, unbind, ``drivers_probe``)
and gives each back to its original driver on exit, also after errors and Ctrl-C.

Every reader takes the sysfs root (``/sys``) and the procfs root (``/proc``) as an argument: the parsers are
tested on directory trees laid out as sysfs is, and on this host's real ones.  The bind and restore steps are
plans (lists of sysfs writes) built by pure functions; only :func:`bound_to_vfio` writes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
import warnings
from pathlib import Path
from typing import Iterator

SYSFS_ROOT = Path("/sys")
PROC_ROOT = Path("/proc")
VFIO_DRIVER = "vfio-pci"
NVIDIA_VENDOR = "0x10de"
PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
IOMMU_FIX = "enable the IOMMU: VT-d/AMD-Vi in the firmware and intel_iommu=on (or amd_iommu=on) iommu=pt on the kernel command line"
BIND_TIMEOUT_S = 10.0


class VfioError(RuntimeError):
    """A device could not be bound to vfio-pci (or given back)."""


@dataclasses.dataclass(frozen=True)
class PciDevice:
    """One PCI function as sysfs describes it."""

    address: str                 # 0000:65:00.0
    vendor: str                  # 0x10de
    device: str                  # 0x2335
    pci_class: str               # 0x030200
    driver: str | None = None    # nvidia, vfio-pci, ... or None (no driver bound)
    iommu_group: int | None = None

    @property
    def slot(self) -> str:
        """Domain, bus and device without the function: the functions of one card share it."""
        return self.address.rsplit(".", 1)[0]

    @property
    def is_bridge(self) -> bool:
        """PCI bridge (class 0x0604 or 0x0609): stays with the host; VFIO allows it in a group."""
        return self.pci_class[:6] in ("0x0604", "0x0609")

    @property
    def is_nvidia_gpu(self) -> bool:
        return self.vendor == NVIDIA_VENDOR and self.pci_class.startswith("0x03")

    def describe(self) -> str:
        return f"{self.address} (vendor {self.vendor}, class {self.pci_class}, driver {self.driver or 'none'})"


# ---------------------------------------------------------------------------
# reading sysfs


def _read(path: Path) -> str:
    try:
        return path.read_text().strip().lower()
    except OSError:
        return ""


def read_pci_device(address: str, root: Path = SYSFS_ROOT) -> PciDevice:
    """The device at ``root/bus/pci/devices/ADDRESS``: its ids and class, the driver its ``driver`` link names
    and the group its ``iommu_group`` link names."""
    base = Path(root) / "bus" / "pci" / "devices" / address
    driver = os.path.basename(os.readlink(base / "driver")) if os.path.islink(base / "driver") else None
    group = None
    if os.path.islink(base / "iommu_group"):
        name = os.path.basename(os.readlink(base / "iommu_group"))
        group = int(name) if name.isdigit() else None
    return PciDevice(address, _read(base / "vendor"), _read(base / "device"), _read(base / "class"), driver, group)


def pci_devices(root: Path = SYSFS_ROOT) -> list[PciDevice]:
    """Every PCI function under ``root/bus/pci/devices`` ([] where there is no PCI bus, as in some VMs)."""
    try:
        names = sorted(os.listdir(Path(root) / "bus" / "pci" / "devices"))
    except OSError:
        return []
    return [read_pci_device(n, root) for n in names if PCI_ADDRESS.match(n)]


def nvidia_gpus(root: Path = SYSFS_ROOT) -> list[PciDevice]:
    return [d for d in pci_devices(root) if d.is_nvidia_gpu]


def iommu_enabled(root: Path = SYSFS_ROOT) -> bool:
    """True when the kernel made IOMMU groups (the IOMMU is on and a driver for it is active)."""
    try:
        return any(os.scandir(Path(root) / "kernel" / "iommu_groups"))
    except OSError:
        return False


def group_members(group: int, root: Path = SYSFS_ROOT) -> list[PciDevice]:
    """The devices of IOMMU group ``group`` (``root/kernel/iommu_groups/N/devices``)."""
    try:
        names = sorted(os.listdir(Path(root) / "kernel" / "iommu_groups" / str(group) / "devices"))
    except OSError:
        return []
    return [read_pci_device(n, root) for n in names if PCI_ADDRESS.match(n)]


def vfio_driver_available(root: Path = SYSFS_ROOT) -> bool:
    """vfio-pci is loaded (its driver directory exists) or built in."""
    return (Path(root) / "bus" / "pci" / "drivers" / VFIO_DRIVER).is_dir() or (Path(root) / "module" / "vfio_pci").is_dir()


def processes_using(device_paths: list[str], proc: Path = PROC_ROOT) -> list[tuple[int, str]]:
    """(pid, command name) of every process with one of ``device_paths`` open (``/proc/PID/fd`` links)."""
    wanted = set(device_paths)
    users = []
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return []
    for pid in sorted(pids):
        fd_dir = Path(proc) / str(pid) / "fd"
        try:
            targets = {os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)}
        except OSError:
            continue          # gone, or not ours to read
        if targets & wanted:
            users.append((pid, _read(Path(proc) / str(pid) / "comm") or "?"))
    return users


# ---------------------------------------------------------------------------
# deciding (pure)


def passthrough_set(gpu: PciDevice, members: list[PciDevice]) -> tuple[list[PciDevice], list[PciDevice]]:
    """(devices to pass: the GPU and its own other functions, devices that block: anything else but bridges)."""
    passed = [gpu] + [m for m in members if m.address != gpu.address and m.slot == gpu.slot and not m.is_bridge]
    blocking = [m for m in members if m.address not in {p.address for p in passed} and not m.is_bridge]
    return sorted(passed, key=lambda d: d.address), blocking


def gpu_problem(gpu: PciDevice, members: list[PciDevice], vfio_available: bool,
                users: list[tuple[int, str]]) -> str | None:
    """Why ``gpu`` cannot be passed through (one sentence), or None; the facts come from the readers above."""
    if gpu.iommu_group is None:
        return f"{gpu.address} has no IOMMU group"
    _, blocking = passthrough_set(gpu, members)
    if blocking:
        return (f"{gpu.address}'s IOMMU group {gpu.iommu_group} is shared with "
                + ", ".join(d.describe() for d in blocking)
                + " (they would have to be passed too; try another slot or an ACS-capable bridge)")
    if gpu.driver != VFIO_DRIVER and not vfio_available:
        return "the vfio-pci driver is missing (modprobe vfio-pci)"
    if gpu.driver == "nvidia" and users:
        listed = ", ".join(f"{pid} ({comm})" for pid, comm in users[:5])
        return f"{gpu.address} is bound to the nvidia driver and in use by processes: {listed}"
    return None


def bind_plan(device: PciDevice, root: Path = SYSFS_ROOT) -> list[tuple[Path, str]]:
    """The sysfs writes that move ``device`` to vfio-pci: set ``driver_override``, unbind it from its driver
    (if any), ask the PCI core to probe it again.  [] when it is bound to vfio-pci already."""
    if device.driver == VFIO_DRIVER:
        return []
    pci = Path(root) / "bus" / "pci"
    steps = [(pci / "devices" / device.address / "driver_override", VFIO_DRIVER)]
    if device.driver:
        steps.append((pci / "drivers" / device.driver / "unbind", device.address))
    steps.append((pci / "drivers_probe", device.address))
    return steps


def restore_plan(device: PciDevice, root: Path = SYSFS_ROOT) -> list[tuple[Path, str]]:
    """The writes that give ``device`` (as it was before :func:`bind_plan`) back to its original driver: unbind
    from vfio-pci, clear ``driver_override``, probe again (the original driver claims it; none if it had none)."""
    if device.driver == VFIO_DRIVER:
        return []
    pci = Path(root) / "bus" / "pci"
    return [(pci / "drivers" / VFIO_DRIVER / "unbind", device.address),
            (pci / "devices" / device.address / "driver_override", "\n"),
            (pci / "drivers_probe", device.address)]


# ---------------------------------------------------------------------------
# the verdict


def nvidia_device_paths(dev: Path = Path("/dev")) -> list[str]:
    try:
        return sorted(str(Path(dev) / n) for n in os.listdir(dev) if n.startswith("nvidia"))
    except OSError:
        return []


def choose_gpu(root: Path = SYSFS_ROOT, proc: Path = PROC_ROOT, dev: Path = Path("/dev"),
               address: str | None = None) -> tuple[list[PciDevice], str]:
    """(the devices to pass for the first usable NVIDIA GPU — or the one at ``address`` — and a sentence saying
    which); ([], why not) when none can be passed."""
    gpus = nvidia_gpus(root)
    if address is not None:
        gpus = [g for g in gpus if g.address == address]
        if not gpus:
            return [], f"no NVIDIA GPU at PCI address {address}"
    if not gpus:
        return [], "no NVIDIA PCI device (vendor 0x10de, display class 0x03xx) in /sys/bus/pci/devices"
    if not iommu_enabled(root):
        return [], f"the IOMMU is off (/sys/kernel/iommu_groups is empty): {IOMMU_FIX}"
    available = vfio_driver_available(root)
    users = processes_using(nvidia_device_paths(dev), proc) if any(g.driver == "nvidia" for g in gpus) else []
    reasons = []
    for gpu in gpus:
        members = group_members(gpu.iommu_group, root) if gpu.iommu_group is not None else []
        problem = gpu_problem(gpu, members, available, users)
        if problem is None:
            passed, _ = passthrough_set(gpu, members)
            return passed, (f"{gpu.address} (NVIDIA {gpu.device}) in IOMMU group {gpu.iommu_group} can be passed "
                            f"through ({len(passed)} function(s), driver {gpu.driver or 'none'} -> {VFIO_DRIVER})")
        reasons.append(problem)
    return [], "; ".join(reasons)


def vfio_status(root: Path = SYSFS_ROOT, proc: Path = PROC_ROOT, dev: Path = Path("/dev")) -> tuple[bool, str]:
    """(usable, why): can a whole NVIDIA GPU of this host be passed through to a QEMU guest?  The reason names
    exactly what is missing (no NVIDIA PCI device, IOMMU off, group shared with X, vfio-pci missing, driver in
    use by processes)."""
    devices, reason = choose_gpu(root, proc, dev)
    return bool(devices), reason


# ---------------------------------------------------------------------------
# binding (writes sysfs; root only)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _wait_for_driver(address: str, wanted: str | None, root: Path, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while True:
        driver = read_pci_device(address, root).driver
        if driver == wanted or time.monotonic() > deadline:
            return driver
        time.sleep(0.05)


@contextlib.contextmanager
def bound_to_vfio(devices: list[PciDevice], root: Path = SYSFS_ROOT,
                  timeout_s: float = BIND_TIMEOUT_S) -> Iterator[list[str]]:
    """Bind ``devices`` to vfio-pci for the ``with`` block and yield their addresses; on exit (errors and Ctrl-C
    included) each one bound here goes back to the driver it had.  Raises :class:`VfioError` when a device does
    not end up on vfio-pci."""
    moved: list[PciDevice] = []
    try:
        for device in devices:
            steps = bind_plan(device, root)
            if not steps:
                continue
            moved.append(device)
            try:
                for path, value in steps:
                    _write(path, value)
            except OSError as exc:
                raise VfioError(f"binding {device.address} to {VFIO_DRIVER} failed: {exc}") from None
            driver = _wait_for_driver(device.address, VFIO_DRIVER, root, timeout_s)
            if driver != VFIO_DRIVER:
                raise VfioError(f"{device.address} is bound to {driver or 'no driver'} instead of {VFIO_DRIVER}")
        yield [d.address for d in devices]
    finally:
        problems = []
        for device in reversed(moved):
            try:
                for path, value in restore_plan(device, root):
                    _write(path, value)
            except OSError as exc:
                problems.append(f"{device.address}: {exc}")
                continue
            driver = _wait_for_driver(device.address, device.driver, root, timeout_s)
            if driver != device.driver:
                problems.append(f"{device.address} is on {driver or 'no driver'}, not back on {device.driver}")
        if problems:
            warnings.warn("VFIO devices not given back: " + "; ".join(problems), RuntimeWarning, stacklevel=3)


__all__ = ["PciDevice", "VfioError", "bind_plan", "bound_to_vfio", "choose_gpu", "gpu_problem", "group_members",
           "iommu_enabled", "nvidia_gpus", "passthrough_set", "pci_devices", "processes_using", "read_pci_device",
           "restore_plan", "vfio_driver_available", "vfio_status"]
