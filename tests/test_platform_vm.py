"""The QEMU platforms: VM, MVM (micro-VM) and VMCN (runc inside a VM guest).

Fast tests build real command lines, a real initramfs from Debian's kernel package, real disk
images (mkfs.ext4, read back with debugfs) and check them.  The ``platform`` tests boot real guests:
under TCG (no usable KVM here) each tiny VM run takes about a minute, so there is ONE run per
platform — VM/1/VNL, VM/N/PIN, MVM/1/VNL, VMCN/1/VNL — plus a running guest whose vCPU threads are
pinned and read back from /proc, a run killed at a short timeout, and Ctrl-C of ``e2ebench run``.
After each: no QEMU process, no e2ebench cgroup, no job directory or QMP socket left behind.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import E2EBENCH, ROOT
from e2ebench.platforms import cgroups, get_platform
from e2ebench.platforms.base import PlatformError
from e2ebench.platforms.guest import template
from e2ebench.platforms.guest import disk as guest_disk
from e2ebench.platforms.guest.initramfs import (GUEST_MODULES, CpioEntry, build_initramfs, cpio_newc, find_busybox,
                                                 is_static_elf, read_cpio_newc, resolve_guest_modules)
from e2ebench.platforms.guest.kernel import (KernelError, ModuleIndex, bzimage_version, ensure_kernel,
                                             extract_vmlinux, generate_modules_dep, module_name, parse_modules_dep)
from e2ebench.platforms.microvm import MicroVM, firecracker_config, firecracker_kernel
from e2ebench.platforms.vm import (GUEST_DATA_MOUNT, MARK_PROBE, GuestLaunch, QemuGuest, VirtualMachine,
                                   VirtualMachineSession, VmOptions,
                                   bounded_memory_mib, cached_kvm_verdict, host_tsc_khz, is_pvm_host, kernel_cmdline,
                                   qemu_argv, shell_script, thread_affinity)
from e2ebench.runner import Workload, execute, run_single
from e2ebench.scenario import Deployment, Scenario
from e2ebench.spec import WorkerFailure

HOST_CPUS = sorted(os.sched_getaffinity(0))
QEMU_TOOLS_MISSING = [name for name, ok in (("qemu-system-x86_64", shutil.which("qemu-system-x86_64")),
                                            ("busybox-static", find_busybox()), ("mkfs.ext4", shutil.which("mkfs.ext4")))
                      if not ok]
needs_qemu = pytest.mark.skipif(bool(QEMU_TOOLS_MISSING), reason=f"missing: {', '.join(QEMU_TOOLS_MISSING)}")
CAN_WRITE, WHY = cgroups.writable()
needs_cgroups = pytest.mark.skipif(not CAN_WRITE, reason=f"cgroups not writable here: {WHY}")
RUN_TIMEOUT_S = 900.0
TINY = dict(requests=2, batch_size=1, variant="tiny")


# -- helpers -----------------------------------------------------------------------------------------------

def qemu_pids() -> list[int]:
    """QEMU processes started by e2ebench (their -name starts with e2ebench)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"qemu-system-x86_64") and any(a.startswith(b"e2ebench") for a in argv):
                pids.append(int(entry.name))
    return pids


def my_cgroups() -> list[Path]:
    return [d for d in cgroups.list_children() if cgroups.owner_pid(d.name) == os.getpid()]


def tmp_leftovers() -> set[str]:
    tmp = Path(tempfile.gettempdir())
    return {p.name for p in tmp.iterdir() if p.name.startswith(("e2ebench-probe-", "e2ebench-qmp-"))}


def assert_nothing_left(workdir: Path | None = None, before_tmp: set[str] | None = None) -> None:
    deadline = time.monotonic() + 10
    while qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert qemu_pids() == []
    assert my_cgroups() == []
    if workdir is not None:
        assert not list(workdir.glob("vm-job-*")), "job directories left behind"
        assert not list(workdir.glob("*.sock")), "QMP sockets left behind"
    if before_tmp is not None:
        assert tmp_leftovers() <= before_tmp


def run_tiny(deployment: str, ic_data: Path, workdir: Path, **options) -> tuple[dict, float]:
    scenario = Scenario.parse(f"ic@{deployment}")
    workload = Workload(timeout_s=RUN_TIMEOUT_S, **TINY).resolved("ic")
    platform = get_platform(scenario.deployment.platform, **options)
    t0 = time.perf_counter()
    with platform.session(scenario.deployment, workdir) as session:
        result = execute(session, scenario, workload, ic_data, workdir / "logs").as_dict()
    wall_s = time.perf_counter() - t0
    info = result.get("platform_info") or {}
    print(f"\n{deployment}: session {wall_s:.1f} s (setup {info.get('setup_s')} s: kernel, initramfs, KVM verdict), "
          f"provision_s {(result.get('cold_start') or {}).get('provision_s') or 0:.2f}, "
          f"worker {result.get('worker_wall_s') or 0:.1f} s, cold start {result.get('cold_start')}, "
          f"error {result.get('error')}")
    return result, wall_s


def check_common(result: dict, deployment: str, workdir: Path) -> dict:
    assert result["error"] is None, (result["error"], (result.get("output_tail") or "")[-3000:])
    assert result["scenario"] == f"ic@{deployment}"
    assert result["emulated"] is True or cached_kvm_verdict_is_usable()
    assert result["completed"] == TINY["requests"] and result["errors"]["count"] == 0
    info = result["platform_info"]
    boot = info["boot"]
    assert result["cold_start"]["provision_s"] > 0
    assert boot["provision_s"] == pytest.approx(result["cold_start"]["provision_s"], abs=1e-3)
    assert boot["guest_data_source"] == "/dev/vda:ext4"          # the data set came through the virtual disk
    assert boot["guest_cpus"] == Deployment.parse(deployment).cores
    assert "@@E2EBENCH_WORKER_EXIT@@ rc=0" in boot["worker_exit"]
    assert info["host_limits"]["as_planned"] is True
    logs = workdir / "logs"
    assert (logs / "mlperf_log_summary.txt").is_file() and (logs / "mlperf_log_detail.txt").is_file()
    assert result["loadgen"]["result_valid"] is True
    assert result["environment"]["cgroup_version"] == 2             # cgroup2 mounted in the guest
    return info


def cached_kvm_verdict_is_usable() -> bool:
    kernel = ensure_kernel()
    verdict = cached_kvm_verdict(kernel.version)
    return bool(verdict and verdict.get("kvm_usable"))


@pytest.fixture(scope="module")
def guest_kernel():
    """Debian's kernel, fetched once per test session into the (test) cache."""
    if QEMU_TOOLS_MISSING:
        pytest.skip(f"missing: {', '.join(QEMU_TOOLS_MISSING)}")
    try:
        return ensure_kernel()
    except KernelError as exc:
        pytest.skip(f"no guest kernel can be found or fetched here: {exc}")


@pytest.fixture(scope="module")
def initramfs(guest_kernel) -> Path:
    return build_initramfs(guest_kernel)


# -- command lines (pure) ----------------------------------------------------------------------------------

def test_qemu_argv_for_a_q35_guest_under_tcg(tmp_path):
    launch = GuestLaunch(Path("/k/vmlinuz"), Path("/k/initrd.gz"), 3, 2048, "tcg", "q35", tmp_path / "q.sock",
                         job_dir=tmp_path / "job", data_image=tmp_path / "d.ext4", data_mount=GUEST_DATA_MOUNT,
                         tsc_khz=2600000)
    argv = qemu_argv(launch)
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-machine") + 1] == "q35"
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi" and argv[argv.index("-cpu") + 1] == "max"
    assert argv[argv.index("-smp") + 1] == "cpus=3,sockets=1,cores=3,threads=1"
    assert argv[argv.index("-m") + 1] == "2048"
    assert "-S" in argv and f"unix:{tmp_path / 'q.sock'},server=on,wait=off" in argv
    assert "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap" in argv
    assert "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot" in argv
    assert f"local,id=job,path={tmp_path / 'job'},security_model=none" in argv
    assert f"file={tmp_path / 'd.ext4'},if=none,id=data,format=raw,readonly=on" in argv
    assert "virtio-blk-pci,drive=data,serial=e2ebench-data" in argv
    append = argv[argv.index("-append") + 1]
    assert append == kernel_cmdline(launch)
    for word in ("console=ttyS0", "rdinit=/init", "e2ebench.mode=run", "e2ebench.job=/run/e2ebench/job",
                 "e2ebench.msize=524288", "e2ebench.cache=loose", f"e2ebench.data={GUEST_DATA_MOUNT}",
                 "tsc_early_khz=2600000"):
        assert word in append.split()
    assert "kvm" not in joined


def test_qemu_argv_for_a_microvm_has_no_pci_and_kvm_uses_the_host_cpu(tmp_path):
    launch = GuestLaunch(Path("/k/vmlinuz"), Path("/k/initrd.gz"), 1, 1024, "kvm", "microvm", tmp_path / "q.sock",
                         job_dir=tmp_path / "job", data_image=tmp_path / "d.ext4", data_mount=GUEST_DATA_MOUNT)
    argv = qemu_argv(launch)
    assert argv[argv.index("-machine") + 1] == "microvm,x-option-roms=off,rtc=off"
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host,-arch-capabilities"
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices and all("-pci" not in d for d in devices)
    assert "virtio-9p-device,fsdev=hostroot,mount_tag=hostroot" in devices
    assert "virtio-blk-device,drive=data,serial=e2ebench-data" in devices
    assert "tsc_early_khz" not in kernel_cmdline(launch)


def test_probe_guest_has_no_shares_and_bad_paths_are_refused(tmp_path):
    probe = GuestLaunch(Path("/k/vmlinuz"), Path("/k/i.gz"), 1, 256, "tcg", "q35", tmp_path / "q.sock", mode="probe")
    argv = qemu_argv(probe)
    assert "-fsdev" not in argv and "-drive" not in argv
    assert "e2ebench.mode=probe" in kernel_cmdline(probe)
    with pytest.raises(ValueError):
        qemu_argv(dataclasses.replace(probe, mode="run", job_dir=tmp_path / "a,b"))
    with pytest.raises(ValueError):
        kernel_cmdline(dataclasses.replace(probe, mode="run", job_dir=tmp_path, data_image=tmp_path / "x",
                                           data_mount="/a b"))


def test_host_tsc_khz_and_memory_bounds():
    cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2596.132\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n"
    assert host_tsc_khz(cpuinfo) == 2596132
    assert host_tsc_khz(cpuinfo.replace("constant_tsc ", "")) is None
    assert bounded_memory_mib(4096, host_mib=24000) == 4096
    assert bounded_memory_mib(4096, host_mib=4000) == 3000
    assert bounded_memory_mib(8192, host_mib=0) == 8192
    with pytest.raises(ValueError):
        VmOptions(accel="hvf")
    with pytest.raises(ValueError):
        VmOptions(memory_mib=64)


def test_shell_script_passes_every_word_unchanged(tmp_path):
    words = ["a b", "$HOME", "'quoted'", "semi;colon", "back\\slash", ""]
    script = tmp_path / "s.sh"
    script.write_text(shell_script(["printf", "%s|"] + words, {"ODD": "x y $z"}))
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True).stdout
    assert out == "|".join(words) + "|"
    script.write_text(shell_script(["sh", "-c", 'printf %s "$ODD"; env | wc -l'], {"ODD": "x y $z"}))
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True).stdout
    assert out.startswith("x y $z") and int(out[len("x y $z"):].strip()) <= 3   # env -i: nothing else leaks in


# -- initramfs, modules, kernel --------------------------------------------------------------------------

def test_cpio_archive_is_read_back_by_busybox(tmp_path):
    busybox = find_busybox()
    if busybox is None:
        pytest.skip("no static busybox")
    entries = [CpioEntry.directory("d"), CpioEntry.file("d/f.txt", b"hello\n" * 3, 0o640),
               CpioEntry(path="d/link", mode=stat.S_IFLNK | 0o777, data=b"f.txt"), CpioEntry.file("odd", b"x")]
    archive = cpio_newc(entries)
    assert [e.path for e in read_cpio_newc(archive)] == ["d", "d/f.txt", "d/link", "odd"]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([str(busybox), "cpio", "-i", "-d", "-m"], input=archive, cwd=out, check=True, capture_output=True)
    assert (out / "d" / "f.txt").read_bytes() == b"hello\n" * 3
    assert stat.S_IMODE((out / "d" / "f.txt").stat().st_mode) == 0o640
    assert os.readlink(out / "d" / "link") == "f.txt" and (out / "odd").read_bytes() == b"x"


def test_static_busybox_is_recognised():
    busybox = find_busybox()
    if busybox is None:
        pytest.skip("no static busybox (apt-get install busybox-static)")
    assert is_static_elf(busybox)
    assert not is_static_elf(Path(os.path.realpath(sys.executable)))


def test_module_dependencies_resolve_in_load_order(guest_kernel):
    index = ModuleIndex.load(guest_kernel.modules_dir)
    order = index.resolve(GUEST_MODULES)
    names = [name for name, _ in order]
    assert len(names) == len(set(names))
    for wanted in ("virtio", "virtio_ring", "virtio_pci", "virtio_mmio", "9pnet", "9pnet_virtio", "9p", "netfs",
                   "fscache", "virtio_blk", "ext4", "jbd2", "mbcache", "crc16", "crc32c_generic"):
        assert wanted in names or wanted in index.builtin
    for position, (name, path) in enumerate(order):
        assert path.is_file()
        for dep in index.dependencies[name][1]:
            assert names.index(module_name(dep)) < position, f"{dep} must be loaded before {name}"
    with pytest.raises(KernelError):
        index.resolve(["no_such_module_e2ebench"])


def test_generated_modules_dep_matches_depmod(guest_kernel):
    """The pure-Python fallback (no kmod) computes the same dependencies as depmod wrote."""
    written = parse_modules_dep((guest_kernel.modules_dir / "modules.dep").read_text())
    generated = parse_modules_dep(generate_modules_dep(guest_kernel.modules_dir))
    assert set(generated) == set(written)
    differing = [n for n in written if set(written[n][1]) != set(generated[n][1])]
    assert differing == []


def test_initramfs_holds_busybox_init_and_the_resolved_modules(guest_kernel, initramfs):
    entries = {e.path: e for e in read_cpio_newc(gzip.decompress(initramfs.read_bytes()))}
    assert entries["init"].data.decode() == template("init.sh")
    assert entries["init"].mode & 0o111
    assert entries["bin/busybox"].data == find_busybox().read_bytes()
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    modules = resolve_guest_modules(guest_kernel)
    assert entries["modules.load"].data.decode().split() == [name for name, _ in modules]
    for name, path in modules:
        assert entries[f"lib/modules/{name}.ko"].data == path.read_bytes()
    assert build_initramfs(guest_kernel) == initramfs          # cached: same inputs, same image
    for script in ("init.sh", "job.sh"):                   # both parse as POSIX shell
        subprocess.run(["sh", "-n", "-c", template(script)], check=True)


def test_kernel_version_header_and_vmlinux_for_firecracker(guest_kernel, tmp_path):
    assert bzimage_version(guest_kernel.image) == guest_kernel.version
    elf = extract_vmlinux(guest_kernel.image, tmp_path / "vmlinux")
    head = elf.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2          # 64-bit ELF
    assert elf.stat().st_size > guest_kernel.image.stat().st_size
    assert firecracker_kernel(guest_kernel).read_bytes()[:4] == b"\x7fELF"


def test_firecracker_config_points_init_at_its_drives(tmp_path):
    config = firecracker_config(tmp_path / "vmlinux", tmp_path / "i.gz", 2, 2048, tmp_path / "root.ext4",
                                tmp_path / "job.ext4", tmp_path / "data.ext4", log_path=tmp_path / "fc.log")
    json.dumps(config)
    boot = config["boot-source"]
    assert boot["kernel_image_path"] == str(tmp_path / "vmlinux") and boot["initrd_path"] == str(tmp_path / "i.gz")
    args = boot["boot_args"].split()
    for word in ("console=ttyS0", "rdinit=/init", "e2ebench.root=/dev/vda", "e2ebench.jobdev=/dev/vdb",
                 f"e2ebench.data={GUEST_DATA_MOUNT}", "e2ebench.datadev=/dev/vdc"):
        assert word in args
    assert [d["drive_id"] for d in config["drives"]] == ["rootfs", "job", "data"]
    assert [d["is_read_only"] for d in config["drives"]] == [True, False, True]
    assert config["machine-config"] == {"vcpu_count": 2, "mem_size_mib": 2048, "smt": False}
    no_data = firecracker_config(tmp_path / "v", tmp_path / "i", 1, 512, tmp_path / "r", tmp_path / "j", None)
    assert len(no_data["drives"]) == 2 and "e2ebench.data=" not in no_data["boot-source"]["boot_args"]
    if shutil.which("firecracker") is None:
        pytest.skip("running a Firecracker guest needs the firecracker binary (not in Debian or PyPI)")


# -- data disk --------------------------------------------------------------------------------------------

def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not shutil.which("debugfs"), reason="debugfs (e2fsprogs) missing")
def test_data_disk_image_holds_the_data_set(ic_data, tmp_path):
    loops_before = sorted(p.name for p in Path("/sys/block").glob("loop*") if (p / "loop").exists())
    source = tmp_path / "data"
    shutil.copytree(ic_data, source)
    image = guest_disk.data_image(source, tmp_path / "scratch", use_cache=False)
    assert image.image.is_file() and not image.cached and image.inner_path == ""
    listing = _debugfs(image.image, "ls -p /")
    files = sorted(p.name for p in source.rglob("*") if p.is_file() and p.parent == source)
    assert files and all(f"/{name}/" in listing for name in files)
    first = sorted(p for p in source.iterdir() if p.is_file())[0]
    dumped = tmp_path / "dumped"
    _debugfs(image.image, f"dump /{first.name} {dumped}")
    assert dumped.read_bytes() == first.read_bytes()
    # cached images are keyed by path + mtime: touching a file makes a new one
    cached = guest_disk.data_image(source, tmp_path / "scratch")
    assert cached.cached and guest_disk.data_image(source, tmp_path / "scratch").image == cached.image
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    assert guest_disk.data_image(source, tmp_path / "scratch").image != cached.image
    single = guest_disk.data_image(first, tmp_path / "scratch2", use_cache=False)
    assert single.inner_path == first.name and f"/{first.name}/" in _debugfs(single.image, "ls -p /")
    loops_after = sorted(p.name for p in Path("/sys/block").glob("loop*") if (p / "loop").exists())
    assert loops_after == loops_before                     # mkfs.ext4 -d needs no loop device


# -- probe and feasibility ----------------------------------------------------------------------------------

@needs_qemu
def test_probe_is_cheap_and_says_why_it_is_emulated():
    before = qemu_pids()
    for name in ("VM", "MVM", "VMCN"):
        availability = get_platform(name).probe()
        assert availability.usable, availability.reason
        if is_pvm_host() or not os.access("/dev/kvm", os.R_OK | os.W_OK):
            assert availability.emulated is True
            assert "no usable KVM" in availability.reason and "TCG" in availability.reason
    assert qemu_pids() == before                           # doctor never boots a guest
    missing = VirtualMachine(qemu_binary="qemu-system-e2ebench-missing").probe()
    assert not missing.usable and "apt-get install qemu-system-x86" in missing.fix
    broken = VirtualMachine(kernel="/nonexistent/vmlinuz").probe()
    assert not broken.usable and "E2EBENCH_GUEST_KERNEL" in broken.reason


def test_microvm_refuses_pinning_and_gpus(tmp_path):
    for deployment in ("MVM/1/PIN/CPU", "MVM/1/VNL/GPU"):
        with pytest.raises(PlatformError, match="VNL/CPU"):
            with MicroVM().session(Deployment.parse(deployment), tmp_path):
                pass
    assert not MicroVM(engine="firecracker").probe().usable
    with pytest.raises(PlatformError, match="Firecracker"):
        with MicroVM(engine="firecracker").session(Deployment.parse("MVM/1/VNL/CPU"), tmp_path):
            pass


# -- running guests ---------------------------------------------------------------------------------------

@pytest.mark.platform
def test_vcpu_threads_are_pinned_and_read_back_while_the_guest_runs(guest_kernel, initramfs, tmp_path):
    vcpus = min(2, len(HOST_CPUS))
    cores = tuple(HOST_CPUS[-vcpus:])
    launch = GuestLaunch(guest_kernel.image, initramfs, vcpus, 256, "tcg", "q35", tmp_path / "q.sock", mode="hold",
                         tsc_khz=host_tsc_khz())
    with QemuGuest(qemu_argv(launch), launch.qmp_socket, tmp_path / "console.log", pin_cpus=cores) as guest:
        assert guest.console.wait_for((MARK_PROBE,), time.perf_counter() + 300) == MARK_PROBE
        assert f"cpus={vcpus}" in guest.console.markers[MARK_PROBE][1]
        assert guest.qmp.execute("query-status")["status"] == "running"
        assert len({v.tid for v in guest.vcpus}) == vcpus
        for vcpu, core in zip(guest.vcpus, cores):
            status = Path(f"/proc/{guest.pid}/task/{vcpu.tid}/status").read_text()
            allowed = next(line for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))
            assert allowed.split(":", 1)[1].strip() == str(core)
            assert Path(f"/proc/{guest.pid}/task/{vcpu.tid}/comm").read_text().strip() == f"CPU {vcpu.vcpu}/TCG"
        pid = guest.pid
    assert not Path(f"/proc/{pid}").exists() and not launch.qmp_socket.exists()
    # unpinned: the vCPU threads may run on every host CPU, and a PIN session refuses such a guest
    deployment = Deployment("VM", vcpus, "PIN", "CPU")
    plan = cgroups.plan_limits(vcpus, "PIN", HOST_CPUS, cgroups.numa_nodes())
    session = VirtualMachineSession(VirtualMachine(), deployment, tmp_path, guest_kernel, initramfs, "tcg", "test",
                                    plan, None, 256)
    with QemuGuest(qemu_argv(launch), launch.qmp_socket, tmp_path / "console2.log") as guest:
        assert all(thread_affinity(guest.pid, v.tid) == HOST_CPUS for v in guest.vcpus)
        if len(HOST_CPUS) > 1:
            with pytest.raises(WorkerFailure, match="not as planned"):
                session.verify_host_limits(guest, "in the test")
    assert_nothing_left()


@pytest.mark.platform
@needs_cgroups
def test_vm_vanilla_run(guest_kernel, ic_data, tmp_path):
    before_tmp = tmp_leftovers()
    result, wall_s = run_tiny("VM/1/VNL/CPU", ic_data, tmp_path)
    info = check_common(result, "VM/1/VNL/CPU", tmp_path)
    assert result["effective_cpus"] == [0] and result["cpu_quota_cores"] is None       # the guest's view
    assert result["bind_cpus"] is None
    limits = info["host_limits"]                                                        # the host's view
    assert limits["qemu_quota_cores"] == 1.0 and limits["qemu_effective_cpus"] == HOST_CPUS
    assert [v["host_cpus"] for v in limits["vcpu_threads"]] == [HOST_CPUS]
    assert info["machine"] == "q35" and info["data_disk"]["guest_path"] == GUEST_DATA_MOUNT
    if is_pvm_host():
        assert info["accel"] == "tcg" and cached_kvm_verdict(guest_kernel.version)["kvm_usable"] is False
    assert_nothing_left(tmp_path, before_tmp)


@pytest.mark.platform
def test_vm_pinned_run(guest_kernel, ic_data, tmp_path):
    n = min(2, len(HOST_CPUS))
    deployment = f"VM/{n}/PIN/CPU"
    result, wall_s = run_tiny(deployment, ic_data, tmp_path, memory_mib=3072, cache_disk_images=False)
    info = check_common(result, deployment, tmp_path)
    assert info["data_disk"]["cached"] is False and not Path(info["data_disk"]["image"]).exists()
    assert result["effective_cpus"] == list(range(n)) and result["cpu_quota_cores"] is None
    assert result["bind_cpus"] == list(range(n)) and result["threads"]["torch_intra_op"] == n
    planned = list(cgroups.plan_limits(n, "PIN", HOST_CPUS, cgroups.numa_nodes()).cpus)
    assert info["pinned_host_cpus"] == planned
    assert [v["host_cpus"] for v in info["host_limits"]["vcpu_threads"]] == [[c] for c in planned]
    assert info["memory_mib"] == 3072
    assert_nothing_left(tmp_path)


@pytest.mark.platform
@needs_cgroups
def test_microvm_run(guest_kernel, ic_data, tmp_path):
    result, wall_s = run_tiny("MVM/1/VNL/CPU", ic_data, tmp_path)
    info = check_common(result, "MVM/1/VNL/CPU", tmp_path)
    assert result["effective_cpus"] == [0] and result["cpu_quota_cores"] is None
    assert info["machine"] == "microvm" and info["host_limits"]["qemu_quota_cores"] == 1.0
    assert "virtio-blk-device,drive=data,serial=e2ebench-data" in info["qemu_argv"]
    assert_nothing_left(tmp_path)


@pytest.mark.platform
@needs_cgroups
@pytest.mark.skipif(not shutil.which("runc"), reason="runc missing (apt-get install runc)")
def test_container_in_vm_run(guest_kernel, ic_data, tmp_path):
    result, wall_s = run_tiny("VMCN/1/VNL/CPU", ic_data, tmp_path)
    info = check_common(result, "VMCN/1/VNL/CPU", tmp_path)
    assert result["effective_cpus"] == [0] and result["cpu_quota_cores"] == 1.0   # the container's quota
    assert result["environment"]["in_container"] is True
    assert info["container"]["quota_cores"] == 1.0 and info["container"]["cpuset"] is None
    assert info["host_limits"]["qemu_quota_cores"] == 1.0
    assert_nothing_left(tmp_path)


@pytest.mark.platform
@needs_cgroups
def test_a_guest_that_does_not_answer_is_killed_at_its_timeout(guest_kernel, ic_data, tmp_path):
    before_tmp = tmp_leftovers()
    scenario = Scenario.parse("ic@VM/1/VNL/CPU")
    workload = Workload(timeout_s=4.0, data=str(ic_data), **TINY)
    t0 = time.perf_counter()
    result = run_single(scenario, workload, store=None, results_dir=tmp_path / "results").as_dict()
    assert time.perf_counter() - t0 < 120
    assert "timed out" in result["error"] and result["emulated"] is True
    assert result.get("cold_start_s") is None
    assert_nothing_left(before_tmp=before_tmp)


@pytest.mark.platform
@needs_cgroups
def test_ctrl_c_of_e2ebench_run_tears_the_guest_down(guest_kernel, ic_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(E2EBENCH + ["run", "ic", "VM/1/VNL/CPU", "--requests", "2", "--batch-size", "1", "--variant",
                                        "tiny", "--data", str(ic_data), "--store", str(tmp_path / "r.sqlite"), "--json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not qemu_pids() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert qemu_pids(), "QEMU never started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    deadline = time.monotonic() + 15
    while qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert qemu_pids() == []
    assert [d for d in cgroups.list_children() if cgroups.owner_pid(d.name) == proc.pid] == []
    assert not list(Path(tempfile.gettempdir()).glob(f"e2ebench-qmp-{proc.pid}-*"))


def test_paths_under_the_guest_tmpfs_are_kept_visible():
    from e2ebench.platforms.vm import GuestLaunch, kernel_cmdline, paths_hidden_by_guest_tmpfs

    kept = paths_hidden_by_guest_tmpfs(["/usr", "/tmp/ci/.venv", "/tmp/ci/src", "/run/x", "/tmpfoo", "/root/.pyenv"])
    assert kept == ("/run/x", "/tmp/ci/.venv", "/tmp/ci/src")
    with pytest.raises(ValueError, match="whitespace or a comma"):
        paths_hidden_by_guest_tmpfs(["/tmp/a b/venv"])
    launch = GuestLaunch(Path("/k"), Path("/i"), 1, 256, "tcg", "q35", Path("/q.sock"), job_dir=Path("/j"),
                         keep_paths=kept)
    assert "e2ebench.keep=/run/x,/tmp/ci/.venv,/tmp/ci/src" in kernel_cmdline(launch).split()
