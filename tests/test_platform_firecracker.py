"""The micro-VM platform's Firecracker engine: root and job images (real ext4, read with debugfs),
the Firecracker config and command line, the probe and engine choice, the run preparation, and a real
boot (skipped where no ``firecracker`` binary is on PATH: it is in neither Debian nor PyPI)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from e2ebench.platforms import cgroups
from e2ebench.platforms.base import PlatformError
from e2ebench.platforms.guest import rootimage
from e2ebench.platforms.guest.kernel import GuestKernel
from e2ebench.platforms.guest.rootimage import RootSource
from e2ebench.platforms.microvm import (FIRECRACKER_FIX, GUEST_CACHE_DIR, NO_FIRECRACKER_REASON, FirecrackerSession,
                                        MicroVM, firecracker_argv, firecracker_availability, firecracker_config,
                                        kernel_mmio_cmdline_devices, parse_firecracker_version, read_run_result,
                                        resolve_engine)
from e2ebench.platforms.vm import GUEST_DATA_MOUNT, GUEST_JOB_DIR
from e2ebench.scenario import Deployment, Scenario
from e2ebench.spec import WorkerSpec, format_result

pytestmark = pytest.mark.skipif(not (shutil.which("mkfs.ext4") and shutil.which("debugfs")),
                                reason="mkfs.ext4 / debugfs (e2fsprogs) missing")
FIRECRACKER_BINARY = shutil.which("firecracker")


def debugfs(image: Path, request: str, writable: bool = False) -> str:
    argv = ["debugfs", *(["-w"] if writable else []), "-R", request, str(image)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def inode_mode(image: Path, path: str) -> int:
    """The st_mode of ``path`` in the image (octal column of ``debugfs ls -l`` on its parent)."""
    parent, name = path.rsplit("/", 1)
    for line in debugfs(image, f"ls -l {parent or '/'}").splitlines():
        fields = line.split()
        if fields and fields[-1] == name:
            return int(fields[1], 8)
    raise AssertionError(f"{path} not in {image}")


def loop_devices() -> list[str]:
    return sorted(p.name for p in Path("/sys/block").glob("loop*") if (p / "loop").exists())


@pytest.fixture
def host_tree(tmp_path) -> dict[str, Path]:
    """A small 'host': a system dir, a top-level symlink to it, an interpreter and a project src."""
    base = tmp_path / "host"
    usr = base / "usr"
    (usr / "bin").mkdir(parents=True)
    (usr / "lib" / "pkg" / "__pycache__").mkdir(parents=True)
    tool = usr / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    secret = usr / "lib" / "secret.conf"
    secret.write_text("key=value\n")
    secret.chmod(0o640)
    (usr / "lib" / "pkg" / "mod.py").write_text("X = 1\n")
    (usr / "lib" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00pyc")   # kept: not in src
    (usr / "lib" / "libz.so.1").symlink_to("libz.so.1.2.13")
    (usr / "lib" / "libz.so.1.2.13").write_bytes(bytes(range(256)) * 64)
    (usr / "lib" / ".pytest_cache").mkdir()
    (usr / "lib" / ".pytest_cache" / "junk").write_text("x")
    (base / "bin").symlink_to("usr/bin")
    src = base / "project" / "src"
    (src / "app" / "__pycache__").mkdir(parents=True)
    (src / "app" / "__init__.py").write_text("VERSION = 1\n")
    (src / "app" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"stale")
    (base / "project").chmod(0o750)
    venv = base / "venv"
    (venv / "lib" / "python3.11" / "site-packages" / "torch-2.13.0.dist-info").mkdir(parents=True)
    sources = [RootSource(usr), RootSource(base / "bin"),
               RootSource(venv, packages_dir=venv / "lib" / "python3.11" / "site-packages"),
               RootSource(src, walk_all=True, exclude=("__pycache__",))]
    return {"base": base, "usr": usr, "src": src, "venv": venv, "sources": sources}


# -- root image ---------------------------------------------------------------------------------------------

def test_root_image_mirrors_the_sources_at_their_absolute_paths(host_tree, tmp_path):
    loops_before = loop_devices()
    image = tmp_path / "root.ext4"
    manifest = rootimage.build_root_image(host_tree["sources"], image)
    usr, src, base = host_tree["usr"], host_tree["src"], host_tree["base"]
    stats = manifest["stats"]
    assert stats["files"] == 6 and stats["skipped"] == 0
    assert stats["linked"] + stats["reflinked"] + stats["copied"] == 6
    assert image.stat().st_size == manifest["image_bytes"]
    # same absolute paths; contents byte-identical
    dumped = tmp_path / "libz"
    debugfs(image, f"dump {usr}/lib/libz.so.1.2.13 {dumped}")
    assert dumped.read_bytes() == (usr / "lib" / "libz.so.1.2.13").read_bytes()
    assert "VERSION = 1" in debugfs(image, f"cat {src}/app/__init__.py")
    # modes and owners are the host's; parents of the sources too
    for path in (usr / "bin" / "tool", usr / "lib" / "secret.conf", base / "project"):
        assert stat.S_IMODE(inode_mode(image, str(path))) == stat.S_IMODE(path.lstat().st_mode), path
    assert stat.S_ISLNK(inode_mode(image, str(base / "bin")))
    assert 'Fast link dest: "usr/bin"' in debugfs(image, f"stat {base}/bin")
    assert 'Fast link dest: "libz.so.1.2.13"' in debugfs(image, f"stat {usr}/lib/libz.so.1")
    # mtimes kept (so .pyc files stay valid)
    stat_text = debugfs(image, f"stat {usr}/lib/pkg/mod.py")
    mtime = int((usr / "lib" / "pkg" / "mod.py").stat().st_mtime)
    assert f"mtime: 0x{mtime:08x}" in stat_text
    # caches: __pycache__ left out of the project's src only; .pytest_cache everywhere
    assert "mod.cpython-311.pyc" in debugfs(image, f"ls {usr}/lib/pkg/__pycache__")
    assert "__pycache__" not in debugfs(image, f"ls {src}/app")
    assert ".pytest_cache" not in debugfs(image, f"ls {usr}/lib")
    # empty mount points for the guest's own file systems; /tmp is sticky
    listing = debugfs(image, "ls /")
    for name in rootimage.MOUNT_POINTS:
        assert name in listing.split()
    assert stat.S_IMODE(inode_mode(image, "/tmp")) == 0o1777
    assert not list(tmp_path.glob(".stage-*"))            # staging removed
    assert loop_devices() == loops_before                  # mkfs.ext4 -d: no loop device, no mount


def test_root_image_is_cached_by_fingerprint_and_rebuilt_on_change(host_tree, tmp_path):
    sources, cache = host_tree["sources"], tmp_path / "cache"
    # what a killed build leaves behind is removed by the next build
    (cache / "rootimages" / ".stage-killed" / "usr").mkdir(parents=True)
    (cache / "rootimages" / ".build-99999-abc.ext4").write_bytes(b"partial")
    first = rootimage.root_image(sources, cache=cache)
    assert sorted(p.name for p in (cache / "rootimages").iterdir()) == sorted(
        [".lock", first.image.name, first.image.with_suffix(".json").name])
    assert not first.cached and first.image.parent == cache / "rootimages"
    assert first.manifest["fingerprint"] == first.fingerprint
    again = rootimage.root_image(sources, cache=cache)
    assert again.cached and again.image == first.image and again.fingerprint == first.fingerprint
    # a new entry in a top-level source directory: new fingerprint, new image, old one removed
    (host_tree["usr"] / "share").mkdir()
    second = rootimage.root_image(sources, cache=cache)
    assert not second.cached and second.fingerprint != first.fingerprint
    assert not first.image.exists() and second.image.exists()
    assert "share" in debugfs(second.image, f"ls {host_tree['usr']}")
    # an edited file deep inside the project's src (walked in full)
    init = host_tree["src"] / "app" / "__init__.py"
    init.write_text("VERSION = 2\n")
    os.utime(init, ns=(init.stat().st_atime_ns, init.stat().st_mtime_ns + 10**9))
    third = rootimage.fingerprint(sources)
    assert third != second.fingerprint
    # a package installed into the venv
    before = rootimage.fingerprint(sources)
    (host_tree["venv"] / "lib" / "python3.11" / "site-packages" / "numpy-2.0.0.dist-info").mkdir()
    assert rootimage.fingerprint(sources) != before
    # a compiled-bytecode cache in the project's src does not count
    before = rootimage.fingerprint(sources)
    (host_tree["src"] / "app" / "__pycache__" / "x.pyc").write_bytes(b"x")
    assert rootimage.fingerprint(sources) == before
    # src as a mount point: an empty directory in the image; editing the code changes nothing
    as_mount = [s if s.path != host_tree["src"] else RootSource(s.path, content=False) for s in sources]
    before = rootimage.fingerprint(as_mount)
    init.write_text("VERSION = 3\n")
    (host_tree["src"] / "new_module.py").write_text("")
    assert rootimage.fingerprint(as_mount) == before
    image = tmp_path / "mount-point.ext4"
    rootimage.build_root_image(as_mount, image)
    assert stat.S_ISDIR(inode_mode(image, str(host_tree["src"])))
    names = [w for w in debugfs(image, f"ls {host_tree['src']}").split() if not w.startswith("(") and not w.isdigit()]
    assert names == [".", ".."]


def test_default_sources_cover_the_interpreter_the_venv_and_the_project():
    import sys

    sources = rootimage.default_root_sources()
    paths = [s.path for s in sources]
    assert Path("/usr") in paths and Path("/etc") in paths
    for needed in (Path(sys.executable), Path(sys.executable).resolve(), Path(sys.base_prefix).resolve() / "lib",
                   rootimage.project_src_dir() / "e2ebench" / "worker.py"):
        assert rootimage.covers(sources, needed), needed
    assert not rootimage.covers(sources, Path("/var/lib"))
    src = next(s for s in sources if s.path == rootimage.project_src_dir())
    assert not src.content                                 # a mount point: each job image brings the code


# -- job image ----------------------------------------------------------------------------------------------

def test_job_image_round_trip(tmp_path):
    job = tmp_path / "job"
    for sub in ("spec", "result", "output"):
        (job / sub).mkdir(parents=True)
    spec = WorkerSpec(app="ic", deployment=Deployment.parse("MVM/1/VNL/CPU").as_dict(), requests=2, variant="tiny")
    spec.write(job / "spec" / "spec.json")
    image = tmp_path / "job.ext4"
    size = rootimage.build_job_image(job, image)
    assert image.stat().st_size == size >= rootimage.JOB_IMAGE_ROOM_BYTES
    assert WorkerSpec.from_json(debugfs(image, "cat /spec/spec.json")) == spec
    # the guest's side: it writes the result and a LoadGen log into the mounted image
    result = {"schema": "e2ebench.run/1", "completed": 2, "error": None}
    result_src = tmp_path / "result.json"
    result_src.write_text(json.dumps(result))
    log_src = tmp_path / "summary.txt"
    log_src.write_text("Result is : VALID\n")
    debugfs(image, f"write {result_src} /result/result.json", writable=True)
    debugfs(image, f"write {log_src} /output/mlperf_log_summary.txt", writable=True)
    back = tmp_path / "back"
    found = rootimage.read_back(image, ["/result", "/output", "/missing"], back)
    assert found == [back / "result", back / "output"]
    assert json.loads((back / "result" / "result.json").read_text()) == result
    assert (back / "output" / "mlperf_log_summary.txt").read_text() == "Result is : VALID\n"
    # the serial console wins; the image is the fallback
    from_console = dict(result, completed=7)
    assert read_run_result("boot noise\n" + format_result(from_console), back / "result" / "result.json") == from_console
    assert read_run_result("no markers here", back / "result" / "result.json") == result
    assert read_run_result("", back / "nothing.json") is None


# -- config, command line, probe ------------------------------------------------------------------------------

def test_firecracker_config_has_three_drives_and_no_network(tmp_path):
    config = firecracker_config(tmp_path / "vmlinux", tmp_path / "initrd.gz", 2, 1024, tmp_path / "root.ext4",
                                tmp_path / "job.ext4", tmp_path / "data.ext4", log_path=tmp_path / "fc.log",
                                overlay="/work/main/src")
    assert json.loads(json.dumps(config)) == config
    boot = config["boot-source"]
    assert boot["kernel_image_path"] == str(tmp_path / "vmlinux") and boot["initrd_path"] == str(tmp_path / "initrd.gz")
    args = boot["boot_args"].split()
    for word in ("console=ttyS0", "reboot=k", "e2ebench.halt=reboot", "e2ebench.root=/dev/vda", "e2ebench.jobdev=/dev/vdb",
                 f"e2ebench.job={GUEST_JOB_DIR}", f"e2ebench.data={GUEST_DATA_MOUNT}", "e2ebench.datadev=/dev/vdc",
                 "e2ebench.overlay=/work/main/src"):
        assert word in args, word
    assert [(d["drive_id"], d["path_on_host"], d["is_read_only"], d["is_root_device"]) for d in config["drives"]] == [
        ("rootfs", str(tmp_path / "root.ext4"), True, False), ("job", str(tmp_path / "job.ext4"), False, False),
        ("data", str(tmp_path / "data.ext4"), True, False)]
    assert config["machine-config"] == {"vcpu_count": 2, "mem_size_mib": 1024, "smt": False}
    assert config["network-interfaces"] == []
    assert config["logger"]["log_path"] == str(tmp_path / "fc.log")
    # init.sh understands every e2ebench.* word
    init = (Path(rootimage.__file__).parent / "init.sh").read_text()
    for word in args:
        if word.startswith("e2ebench."):
            assert f"{word.split('=')[0]}=*)" in init, word


def test_firecracker_argv_and_probe_reasons(tmp_path):
    argv = firecracker_argv("/opt/fc/firecracker", tmp_path / "fc.json", "e2ebench-mvm-12-1")
    assert argv == ["/opt/fc/firecracker", "--no-api", "--config-file", str(tmp_path / "fc.json"), "--id", "e2ebench-mvm-12-1"]
    with pytest.raises(ValueError):
        firecracker_argv("firecracker", tmp_path / "fc.json", "bad id")
    none = firecracker_availability(None, True, False)
    assert not none.usable and none.reason == NO_FIRECRACKER_REASON and "no firecracker binary on PATH" in none.reason
    assert none.fix == FIRECRACKER_FIX and "release tarball" in none.fix and "KVM" in none.fix
    no_kvm = firecracker_availability("/usr/local/bin/firecracker", False, False)
    assert not no_kvm.usable and "KVM" in no_kvm.reason and "no TCG" in no_kvm.reason
    pvm = firecracker_availability("/usr/local/bin/firecracker", True, True)
    assert not pvm.usable and "kvm_pvm" in pvm.reason
    missing = firecracker_availability("/usr/local/bin/firecracker", True, False, [("debugfs", "e2fsprogs")])
    assert not missing.usable and "apt-get install e2fsprogs" in missing.fix
    ok = firecracker_availability("/usr/local/bin/firecracker", True, False, [])
    assert ok.usable and not ok.emulated and ok.status == "usable"
    # before 1.8 Firecracker names its drives only on the kernel command line; Debian's kernel ignores that
    assert parse_firecracker_version("Firecracker v1.10.1\n") == (1, 10) and parse_firecracker_version("") is None
    old = firecracker_availability("/usr/local/bin/firecracker", True, False, [], version=(1, 7),
                                   kernel_cmdline_devices=False)
    assert not old.usable and "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES" in old.reason and ">= 1.8" in old.fix
    assert firecracker_availability("/usr/local/bin/firecracker", True, False, [], version=(1, 7),
                                    kernel_cmdline_devices=True).usable
    assert firecracker_availability("/usr/local/bin/firecracker", True, False, [], version=(1, 10),
                                    kernel_cmdline_devices=False).usable
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "vmlinuz-6.1.0-x").write_bytes(b"")
    assert kernel_mmio_cmdline_devices(boot / "vmlinuz-6.1.0-x") is None
    (boot / "config-6.1.0-x").write_text("CONFIG_VIRTIO_MMIO=m\n# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\n")
    assert kernel_mmio_cmdline_devices(boot / "vmlinuz-6.1.0-x") is False
    (boot / "config-6.1.0-x").write_text("CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n")
    assert kernel_mmio_cmdline_devices(boot / "vmlinuz-6.1.0-x") is True
    # this host, as it is
    verdict = MicroVM(engine="firecracker").probe()
    if FIRECRACKER_BINARY is None:
        assert not verdict.usable and verdict.reason == NO_FIRECRACKER_REASON and verdict.fix == FIRECRACKER_FIX
        with pytest.raises(PlatformError, match="Firecracker engine cannot run here: no firecracker binary on PATH"):
            with MicroVM(engine="firecracker").session(Deployment.parse("MVM/1/VNL/CPU"), tmp_path):
                pass
    with pytest.raises(PlatformError, match="VNL/CPU"):
        with MicroVM(engine="firecracker").session(Deployment.parse("MVM/1/PIN/CPU"), tmp_path):
            pass


def test_engine_choice():
    assert resolve_engine(None, None) == "qemu"
    assert resolve_engine(None, "firecracker") == "firecracker"
    assert resolve_engine("qemu", "firecracker") == "qemu"                 # the option wins over the environment
    assert resolve_engine("auto", None, True) == "firecracker"
    assert resolve_engine(None, " Auto ", lambda: False) == "qemu"
    with pytest.raises(PlatformError, match="accepted: qemu, firecracker, auto"):
        resolve_engine("cloud-hypervisor", None)
    assert MicroVM(engine="auto").engine == ("firecracker" if MicroVM(engine="firecracker").probe().usable else "qemu")
    assert MicroVM(engine="qemu").engine == "qemu"


# -- one run, prepared (no boot) ----------------------------------------------------------------------------

def test_a_run_is_prepared_as_block_images_and_config(host_tree, ic_data, tmp_path):
    platform = MicroVM(engine="firecracker", firecracker_binary="firecracker")
    sources = [s if s.path != host_tree["src"] else RootSource(s.path, content=False) for s in host_tree["sources"]]
    root = rootimage.root_image(sources, cache=tmp_path / "cache")
    kernel = GuestKernel("6.1.0-test-amd64", tmp_path / "vmlinuz", None, "configured")
    deployment = Deployment.parse("MVM/1/VNL/CPU")
    plan = cgroups.plan_limits(1, "VNL", sorted(os.sched_getaffinity(0)))
    workdir = tmp_path / "work"
    workdir.mkdir()
    session = FirecrackerSession(platform, deployment, workdir, kernel, tmp_path / "initrd.gz", tmp_path / "vmlinux",
                                 root, sources, plan, None, 512, "firecracker")
    weights = tmp_path / "weights.pt"                       # outside the root image: copied into the job image
    weights.write_bytes(b"checkpoint")
    logs = tmp_path / "logs"
    spec = WorkerSpec(app="ic", deployment=deployment.as_dict(), requests=2, variant="tiny",
                      data=session.host_path(ic_data), output_dir=str(logs), weights=str(weights))
    try:
        run_dir, guest_spec, output_host, data_image = session.prepare_run(spec)
        assert output_host == logs.resolve()
        assert guest_spec.data == GUEST_DATA_MOUNT and guest_spec.output_dir == f"{GUEST_JOB_DIR}/output"
        assert guest_spec.weights == f"{GUEST_JOB_DIR}/inputs/weights.pt"
        job_image = run_dir / "job.ext4"
        in_image = WorkerSpec.from_json(debugfs(job_image, "cat /spec/spec.json"))
        assert in_image.data == GUEST_DATA_MOUNT and in_image.threads == 1 and in_image.bind_cpus is None
        assert debugfs(job_image, "cat /inputs/weights.pt") == "checkpoint"
        worker_sh = debugfs(job_image, "cat /worker.sh")
        assert f"E2EBENCH_CACHE={GUEST_CACHE_DIR}" in worker_sh and f"{GUEST_JOB_DIR}/result/result.json" in worker_sh
        assert "E2EBENCH_OUTPUT_DIR=''" in debugfs(job_image, "cat /job.env")
        assert "@@E2EBENCH_GUEST_READY@@" in debugfs(job_image, "cat /job.sh")
        config = json.loads((run_dir / "firecracker.json").read_text())
        assert [d["path_on_host"] for d in config["drives"]] == [str(root.image), str(job_image), str(data_image.image)]
        assert config["machine-config"]["vcpu_count"] == 1 and config["machine-config"]["mem_size_mib"] == 512
        assert (run_dir / "firecracker.log").exists()
        # the project's src comes in the job image, bind-mounted by init.sh at its own path
        assert f"e2ebench.overlay={host_tree['src']}" in config["boot-source"]["boot_args"].split()
        assert "VERSION = 1" in debugfs(job_image, "cat /overlay/app/__init__.py")
        assert "__pycache__" not in debugfs(job_image, "ls /overlay/app")
        assert session.info["engine"] == "firecracker" and session.info["root_share"]["transport"] == "virtio-blk"
    finally:
        session.teardown()
    assert not list(workdir.glob("fc-run-*"))               # run directories and job images removed


# -- a real boot ---------------------------------------------------------------------------------------------

@pytest.mark.platform
@pytest.mark.skipif(FIRECRACKER_BINARY is None, reason="no firecracker binary on PATH")
def test_firecracker_run(ic_data, tmp_path):
    from e2ebench.runner import Workload, execute

    platform = MicroVM(engine="firecracker")
    availability = platform.probe()
    if not availability.usable:
        pytest.skip(f"Firecracker present but unusable here: {availability.reason}")
    scenario = Scenario.parse("ic@MVM/1/VNL/CPU")
    workload = Workload(timeout_s=900.0, requests=2, batch_size=1, variant="tiny").resolved("ic")
    t0 = time.perf_counter()
    with platform.session(scenario.deployment, tmp_path) as session:
        result = execute(session, scenario, workload, ic_data, tmp_path / "logs").as_dict()
    print(f"\nfirecracker: {time.perf_counter() - t0:.1f} s, cold start {result.get('cold_start')}")
    assert result["error"] is None, (result["error"], (result.get("output_tail") or "")[-3000:])
    assert result["completed"] == 2 and result["emulated"] is False
    info = result["platform_info"]
    assert info["engine"] == "firecracker" and info["host_limits"]["as_planned"] is True
    assert info["boot"]["guest_data_source"] == "/dev/vdc:ext4" and info["boot"]["guest_cpus"] == 1
    assert result["cold_start"]["provision_s"] > 0
    assert (tmp_path / "logs" / "mlperf_log_summary.txt").is_file()
    assert not list(tmp_path.glob("fc-run-*"))
    assert [d for d in cgroups.list_children() if cgroups.owner_pid(d.name) == os.getpid()] == []
