"""The VM builders (pure: QEMU and kernel command lines with VFIO passthrough), the VFIO checks (sysfs parsers on
trees laid out as sysfs is, and on this host's real /sys), the GPU feasibility of CN, VM, VMCN and MVM here, the
VMCN guest script, and the QMP adapter against a real QEMU."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from e2ebench.platforms import vfio
from e2ebench.platforms import vm_config as vc
from e2ebench.platforms.base import PlatformError
from e2ebench.platforms.container import Container
from e2ebench.platforms.microvm import MicroVM
from e2ebench.platforms.vm import VirtualMachine
from e2ebench.platforms.vm_container import ContainerInVM, gpu_worker_script
from e2ebench.scenario import Deployment, HostFacts

GPU = "0000:65:00.0"
GPU_AUDIO = "0000:65:00.1"


def launch(**kw) -> vc.GuestLaunch:
    base = dict(kernel_image=Path("/k/vmlinuz"), initramfs=Path("/k/initrd.gz"), vcpus=2, memory_mib=2048,
                accel="kvm", machine="q35", qmp_socket=Path("/tmp/q.sock"), job_dir=Path("/w/job"))
    return vc.GuestLaunch(**(base | kw))


# ---------------------------------------------------------------------------
# QEMU command line


def test_a_cpu_guest_has_no_passthrough():
    argv = vc.qemu_argv(launch())
    assert "vfio-pci" not in " ".join(argv) and "pci-hole64-size" not in " ".join(argv)
    assert "e2ebench.gpu" not in vc.kernel_cmdline(launch())


def test_a_gpu_guest_gets_each_function_and_a_large_pci_window():
    gpu = launch(vfio_devices=(GPU, GPU_AUDIO))
    argv = vc.qemu_argv(gpu)
    assert argv[-6:] == ["-global", "q35-pcihost.pci-hole64-size=512G", "-device", f"vfio-pci,host={GPU}",
                         "-device", f"vfio-pci,host={GPU_AUDIO}"]
    assert "e2ebench.gpu=1" in vc.kernel_cmdline(gpu).split()
    assert "i440FX-pcihost.pci-hole64-size=512G" in vc.qemu_argv(launch(machine="pc", vfio_devices=(GPU,)))
    with pytest.raises(ValueError, match="no PCI bus"):
        vc.qemu_argv(launch(machine="microvm", vfio_devices=(GPU,)))
    for bad in ("65:00.0", "0000:65:00.0,x-vga=on", "0000:65:00.8"):
        with pytest.raises(ValueError, match="PCI address"):
            vc.qemu_argv(launch(vfio_devices=(bad,)))


def test_options_check_the_gpu_address(monkeypatch):
    monkeypatch.delenv(vc.GPU_ENV, raising=False)
    assert vc.VmOptions(gpu_address=GPU).gpu_address == GPU
    with pytest.raises(ValueError, match="PCI address"):
        vc.VmOptions(gpu_address="0000:65:00.0;reboot")
    monkeypatch.setenv(vc.GPU_ENV, "0000:B3:00.0")
    assert vc.VmOptions().gpu_address == "0000:b3:00.0"


def test_readers_take_their_text():
    assert vc.host_memory_mib("MemTotal:       16384000 kB\nMemFree: 1 kB\n") == 16000
    assert vc.host_memory_mib("nothing\n") == 0
    assert vc.marker_fields("@@E2EBENCH_GUEST_READY@@ uptime=1.50 cpus=2 mode=vm data=/dev/vda:ext4") == {
        "guest_uptime_at_ready_s": 1.5, "guest_cpus": 2, "guest_data_source": "/dev/vda:ext4"}


# ---------------------------------------------------------------------------
# VFIO: sysfs parsers on a tree laid out as sysfs is


def make_sysfs(root: Path, devices: dict[str, tuple[str, str, int | None, str | None]], vfio_loaded: bool = True) -> Path:
    """``devices``: address -> (vendor, class, IOMMU group, driver), with the links sysfs has."""
    pci = root / "bus" / "pci"
    (root / "kernel" / "iommu_groups").mkdir(parents=True)
    for address, (vendor, pci_class, group, driver) in devices.items():
        d = pci / "devices" / address
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text("0x2335\n")
        (d / "class").write_text(pci_class + "\n")
        if driver:
            (pci / "drivers" / driver).mkdir(parents=True, exist_ok=True)
            (d / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")
        if group is not None:
            g = root / "kernel" / "iommu_groups" / str(group) / "devices"
            g.mkdir(parents=True, exist_ok=True)
            (g / address).symlink_to(f"../../../../bus/pci/devices/{address}")
            (d / "iommu_group").symlink_to(f"../../../kernel/iommu_groups/{group}")
    if vfio_loaded:
        (pci / "drivers" / "vfio-pci").mkdir(parents=True, exist_ok=True)
    return root


def make_proc(root: Path, holders: dict[int, tuple[str, list[str]]]) -> Path:
    for pid, (comm, targets) in holders.items():
        (root / str(pid) / "fd").mkdir(parents=True)
        (root / str(pid) / "comm").write_text(comm + "\n")
        for fd, target in enumerate(targets):
            (root / str(pid) / "fd" / str(fd)).symlink_to(target)
    root.mkdir(exist_ok=True)
    return root


NVIDIA_GPU = ("0x10de", "0x030200", 13, "nvidia")
NVIDIA_AUDIO = ("0x10de", "0x040300", 13, "snd_hda_intel")
BRIDGE = ("0x8086", "0x060400", 13, "pcieport")


def test_parsers_read_ids_driver_and_group(tmp_path):
    sys_root = make_sysfs(tmp_path / "sys", {GPU: NVIDIA_GPU, "0000:00:1f.2": ("0x8086", "0x010601", 4, "ahci")})
    gpu = vfio.read_pci_device(GPU, sys_root)
    assert gpu == vfio.PciDevice(GPU, "0x10de", "0x2335", "0x030200", "nvidia", 13)
    assert gpu.is_nvidia_gpu and not gpu.is_bridge and gpu.slot == "0000:65:00"
    assert [d.address for d in vfio.nvidia_gpus(sys_root)] == [GPU]
    assert vfio.iommu_enabled(sys_root) and vfio.vfio_driver_available(sys_root)
    assert [d.address for d in vfio.group_members(13, sys_root)] == [GPU]


def test_usable_gpu_takes_its_own_functions_and_leaves_the_bridge(tmp_path):
    sys_root = make_sysfs(tmp_path / "sys", {GPU: NVIDIA_GPU, GPU_AUDIO: NVIDIA_AUDIO, "0000:64:00.0": BRIDGE})
    proc = make_proc(tmp_path / "proc", {1: ("init", ["/dev/null"])})
    devices, reason = vfio.choose_gpu(sys_root, proc, tmp_path / "dev")
    assert [d.address for d in devices] == [GPU, GPU_AUDIO]
    assert reason.startswith(f"{GPU} (NVIDIA 0x2335) in IOMMU group 13 can be passed through (2 function(s)")
    assert vfio.vfio_status(sys_root, proc, tmp_path / "dev")[0] is True


@pytest.mark.parametrize("case, expected", [
    ("no device", "no NVIDIA PCI device"),
    ("iommu off", "the IOMMU is off"),
    ("shared group", "IOMMU group 13 is shared with 0000:00:1f.2 (vendor 0x8086, class 0x010601, driver ahci)"),
    ("no vfio-pci", "the vfio-pci driver is missing (modprobe vfio-pci)"),
    ("in use", f"{GPU} is bound to the nvidia driver and in use by processes: 4242 (nvidia-persistenced)"),
])
def test_vfio_status_names_what_is_missing(tmp_path, case, expected):
    devices = {GPU: NVIDIA_GPU}
    if case == "no device":
        devices = {"0000:00:1f.2": ("0x8086", "0x010601", 4, "ahci")}
    elif case == "iommu off":
        devices = {GPU: NVIDIA_GPU[:2] + (None, "nvidia")}
    elif case == "shared group":
        devices[GPU_AUDIO] = NVIDIA_AUDIO
        devices["0000:00:1f.2"] = ("0x8086", "0x010601", 13, "ahci")
    sys_root = make_sysfs(tmp_path / "sys", devices, vfio_loaded=case != "no vfio-pci")
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidia0").write_text("")     # only its name is read: which paths a holder's fd may point at
    holders = {4242: ("nvidia-persistenced", [str(dev / "nvidia0")])} if case == "in use" else {}
    proc = make_proc(tmp_path / "proc", holders)
    usable, reason = vfio.vfio_status(sys_root, proc, dev)
    assert not usable
    assert expected in reason, reason


def test_a_gpu_on_vfio_pci_already_needs_no_binding(tmp_path):
    sys_root = make_sysfs(tmp_path / "sys", {GPU: NVIDIA_GPU[:3] + ("vfio-pci",)})
    devices, _ = vfio.choose_gpu(sys_root, tmp_path / "proc", tmp_path / "dev")
    assert vfio.bind_plan(devices[0], sys_root) == [] and vfio.restore_plan(devices[0], sys_root) == []
    assert vfio.choose_gpu(sys_root, tmp_path / "proc", tmp_path / "dev", address="0000:01:00.0")[1] == \
        "no NVIDIA GPU at PCI address 0000:01:00.0"


def test_bind_and_restore_plans():
    gpu = vfio.PciDevice(GPU, "0x10de", "0x2335", "0x030200", "nvidia", 13)
    root = Path("/sys")
    assert vfio.bind_plan(gpu, root) == [
        (root / f"bus/pci/devices/{GPU}/driver_override", "vfio-pci"),
        (root / "bus/pci/drivers/nvidia/unbind", GPU),
        (root / "bus/pci/drivers_probe", GPU)]
    assert vfio.restore_plan(gpu, root) == [
        (root / "bus/pci/drivers/vfio-pci/unbind", GPU),
        (root / f"bus/pci/devices/{GPU}/driver_override", "\n"),
        (root / "bus/pci/drivers_probe", GPU)]
    unbound = vfio.PciDevice(GPU_AUDIO, "0x10de", "0x22bb", "0x040300", None, 13)
    assert [p.name for p, _ in vfio.bind_plan(unbound, root)] == ["driver_override", "drivers_probe"]


# ---------------------------------------------------------------------------
# this host: the real /sys, and what each platform says about GPU deployments

REAL_STATUS = vfio.vfio_status()
HOST = HostFacts(cores=max(2, os.cpu_count() or 2), available_platforms=frozenset({"BM", "CN", "VM", "MVM", "VMCN"}),
                 gpu_reason="no NVIDIA device node (/dev/nvidia0)")
HAS_NVIDIA_PCI = bool(vfio.nvidia_gpus())


def test_real_sysfs_status_on_this_host():
    usable, reason = REAL_STATUS
    assert isinstance(reason, str) and reason
    if not HAS_NVIDIA_PCI:
        assert (usable, reason) == (False, "no NVIDIA PCI device (vendor 0x10de, display class 0x03xx) in /sys/bus/pci/devices")
    assert all(vfio.PCI_ADDRESS.match(d.address) for d in vfio.pci_devices())


@pytest.mark.skipif(REAL_STATUS[0], reason="this host can pass a GPU through: the refusals are not what happens here")
def test_gpu_deployments_are_infeasible_here_with_each_platforms_reason(monkeypatch):
    monkeypatch.delenv("E2EBENCH_CN_ENGINE", raising=False)
    vm = VirtualMachine.supports(Deployment.parse("VM/1/PIN/GPU"), HOST)
    assert vm == f"VM cannot pass a GPU through to the guest: {REAL_STATUS[1]}"
    assert ContainerInVM.supports(Deployment.parse("VMCN/1/VNL/GPU"), HOST).startswith("VMCN cannot pass a GPU through")
    assert "no GPU passthrough" in MicroVM.supports(Deployment.parse("MVM/1/VNL/GPU"), HOST)
    if not os.path.exists("/dev/nvidiactl"):
        assert Container.supports(Deployment.parse("CN/1/PIN/GPU"), HOST).startswith(
            "CN (runc) cannot pass a GPU into the container: no usable NVIDIA GPU on the host")
    for cpu in ("VM/1/PIN/CPU", "VMCN/1/VNL/CPU", "CN/1/PIN/CPU"):
        platform = {"VM": VirtualMachine, "VMCN": ContainerInVM, "CN": Container}[cpu.split("/")[0]]
        assert platform.supports(Deployment.parse(cpu), HOST) is None


@pytest.mark.skipif(REAL_STATUS[0], reason="this host can pass a GPU through: the refusal is not what happens here")
def test_vm_gpu_session_is_refused_before_anything_is_provisioned(tmp_path):
    with pytest.raises(PlatformError, match="VM cannot pass a GPU through to the guest: "):
        with VirtualMachine().session(Deployment.parse("VM/1/PIN/GPU"), tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not REAL_STATUS[0], reason=f"no GPU VFIO can pass through here: {REAL_STATUS[1]}")
def test_gpu_is_bound_to_vfio_and_given_back():
    devices, _ = vfio.choose_gpu()
    before = {d.address: d.driver for d in devices}
    with vfio.bound_to_vfio(devices) as addresses:
        assert all(vfio.read_pci_device(a).driver == "vfio-pci" for a in addresses)
    assert {d.address: vfio.read_pci_device(d.address).driver for d in devices} == before


# ---------------------------------------------------------------------------
# VMCN: the guest-side script that fills in the nvidia-uvm major


def test_vmcn_gpu_script_puts_the_guest_uvm_major_into_the_bundle(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"linux": {"devices": [{"path": "/dev/nvidia-uvm", "major": 4095, "minor": 0}],
                                            "resources": {"devices": [{"major": 4095, "minor": 1}]}}}, indent=1))
    devices = tmp_path / "devices"
    devices.write_text("Character devices:\n  1 mem\n195 nvidia\n508 nvidia-uvm\n\nBlock devices:\n  8 sd\n")
    script = tmp_path / "worker.sh"
    script.write_text(gpu_worker_script(["cat", str(config)], str(config), devices_file=str(devices)))
    proc = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    patched = json.loads(proc.stdout)
    assert patched["linux"]["devices"][0]["major"] == 508
    assert patched["linux"]["resources"]["devices"][0]["major"] == 508
    # this host's /proc/devices has no nvidia-uvm: the script stops with the reason before runc
    script.write_text(gpu_worker_script(["true"], str(config)))
    proc = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, timeout=30)
    if "nvidia-uvm" not in Path("/proc/devices").read_text():
        assert proc.returncode == 70 and "no nvidia-uvm device major in the guest" in proc.stderr


# ---------------------------------------------------------------------------
# QMP through qemu.qmp, against a real QEMU


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
def test_qmp_client_talks_to_a_real_qemu(tmp_path):
    from e2ebench.platforms.guest.qmp import QmpClient, QmpError

    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-S", "-nodefaults", "-display", "none",
                             "-qmp", f"unix:{sock},server=on,wait=off"], stdin=subprocess.DEVNULL)
    try:
        qmp = QmpClient(sock).connect(deadline_s=60, alive=lambda: proc.poll() is None)
        assert "version" in qmp.greeting["QMP"]
        assert qmp.execute("query-status")["status"] == "prelaunch"
        with pytest.raises(QmpError, match="CommandNotFound"):
            qmp.execute("no-such-command")
        qmp.execute("quit")
        proc.wait(timeout=30)
        with pytest.raises(QmpError):
            qmp.execute("query-status")
        qmp.close()
        qmp.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    dead = subprocess.Popen(["true"])
    dead.wait()
    with pytest.raises(QmpError, match="QEMU exited"):
        QmpClient(tmp_path / "none.sock").connect(deadline_s=10, alive=lambda: dead.poll() is None)


def test_doctor_rows_say_what_is_missing_here():
    from e2ebench.doctor import gpu_passthrough_status

    rows = gpu_passthrough_status()
    assert set(rows) == {"GPU in CN", "GPU in VM, VMCN"}
    vm = rows["GPU in VM, VMCN"]
    assert vm["usable"] is REAL_STATUS[0] and vm["reason"].startswith(f"VFIO: {REAL_STATUS[1]}")
    if not REAL_STATUS[0]:
        assert vm["status"] == "unavailable" and vm["fix"]
    if not os.path.exists("/dev/nvidiactl"):
        assert rows["GPU in CN"]["status"] == "unavailable" and "no usable NVIDIA GPU" in rows["GPU in CN"]["reason"]
