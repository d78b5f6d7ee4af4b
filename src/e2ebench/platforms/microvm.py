"""Micro-VM (MVM): a minimal guest machine — no PCI, no firmware, virtio over MMIO.

Engines (option ``engine`` or ``$E2EBENCH_MVM_ENGINE``: ``qemu`` (default) | ``firecracker`` | ``auto``)
    ``qemu`` — QEMU's ``microvm`` machine (``-M microvm,x-option-roms=off,rtc=off``): no PCI bus, no
        option ROMs, no RTC, the kernel booted directly; the host root and the job directory are
        ``virtio-9p-device`` shares and the data disk a ``virtio-blk-device``, all on virtio-mmio (the
        guest's ``virtio_mmio`` module gets the devices from the kernel command line that QEMU writes).
        Same kernel, initramfs, job protocol and measurements as :mod:`.vm`.
    ``firecracker`` — ``firecracker --no-api --config-file CFG`` (needs a ``firecracker`` binary on
        PATH and working KVM: Firecracker has no emulation fallback).  Firecracker has only block
        devices, no 9p, so the guest gets three virtio-blk drives: ``/dev/vda`` the host root as a
        read-only ext4 image (:mod:`.guest.rootimage`: /usr, /etc, the Python installation and the
        venv at their own paths; built once with ``mkfs.ext4 -d`` and cached), ``/dev/vdb`` a small
        writable ext4 job image (spec and the project's src in, bind-mounted at src's own path;
        RunResult and LoadGen logs out, read back with ``debugfs rdump`` after power-off) and ``/dev/vdc`` the data set's read-only image.
        The kernel is the same Debian kernel decompressed to the ELF ``vmlinux`` Firecracker boots, with
        the same initramfs; the guest stops with ``reboot -f`` (``reboot=k``), which ends Firecracker.
        The serial console is Firecracker's stdout: the RunResult is read from between the markers
        there first, from the job image otherwise.
    ``auto`` — Firecracker when its probe says usable, else QEMU.

Only ``VNL`` on CPU (the scenario feasibility rule says so, as in the paper): the VMM process sits in
a CFS-quota cgroup of N cores and the guest has N vCPUs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import ClassVar, Iterator

from e2ebench import measure
from e2ebench.platforms import cgroups
from e2ebench.platforms.base import Availability, PlatformError, kill_process_group
from e2ebench.platforms.guest import guest_cache_dir
from e2ebench.platforms.guest import disk as guest_disk
from e2ebench.platforms.guest import rootimage
from e2ebench.platforms.guest.initramfs import InitramfsError, build_initramfs, find_busybox
from e2ebench.platforms.guest.kernel import META_PACKAGE, GuestKernel, KernelError, ensure_kernel, extract_vmlinux, find_kernel
from e2ebench.platforms.vm import (GUEST_DATA_MOUNT, GUEST_JOB_DIR, MARK_ERROR, MARK_READY, MARK_WORKER_EXIT,
                                   Console, VirtualMachine, VirtualMachineSession, _copy_tree, _marker_fields,
                                   bounded_memory_mib, guest_sees, guest_worker_env, is_pvm_host, kvm_device_usable,
                                   qemu_machines, shell_script, start_vmm, VmmProcess)
from e2ebench.scenario import Deployment
from e2ebench.spec import WorkerFailure, WorkerSpec, extract_result

ENGINE_ENV = "E2EBENCH_MVM_ENGINE"
FIRECRACKER = "firecracker"
ENGINES = ("qemu", FIRECRACKER, "auto")
FIRECRACKER_FIX = "install Firecracker from its release tarball and put it on PATH; needs working KVM"
NO_FIRECRACKER_REASON = "no firecracker binary on PATH (it is in neither Debian nor PyPI)"
GUEST_CACHE_DIR = "/tmp/e2ebench-cache"     # the guest's E2EBENCH_CACHE: the host cache is not in the root image


def firecracker_config(kernel_elf: Path, initramfs: Path, vcpus: int, memory_mib: int, root_image: Path,
                       job_image: Path, data_image: Path | None, log_path: Path | None = None,
                       overlay: str | None = None) -> dict:
    """A Firecracker ``--config-file`` document for one e2ebench guest.

    Drives, in guest order: ``vda`` the read-only root image (the host's system and Python
    environment), ``vdb`` the writable job image, ``vdc`` the read-only data set.  The boot
    arguments point init.sh at them (``e2ebench.root=/dev/vda``, ``e2ebench.jobdev=/dev/vdb``,
    ``e2ebench.datadev=/dev/vdc``) and make it stop the guest with a reboot (``e2ebench.halt=reboot``,
    ``reboot=k``), on which Firecracker exits.  ``overlay``: a directory of the root image onto which
    the guest bind-mounts the job image's ``overlay/`` (the project's src).  No network interface.
    """
    args = ["console=ttyS0", "reboot=k", "panic=-1", "quiet", "loglevel=3", "rdinit=/init", "pci=off",
            "e2ebench.mode=run", "e2ebench.halt=reboot", "e2ebench.root=/dev/vda", f"e2ebench.job={GUEST_JOB_DIR}",
            "e2ebench.jobdev=/dev/vdb"]
    drives = [
        {"drive_id": "rootfs", "path_on_host": str(root_image), "is_root_device": False, "is_read_only": True},
        {"drive_id": "job", "path_on_host": str(job_image), "is_root_device": False, "is_read_only": False},
    ]
    if overlay:
        if any(c.isspace() for c in overlay):
            raise ValueError(f"the overlay path cannot contain whitespace: {overlay!r}")
        args.append(f"e2ebench.overlay={overlay}")
    if data_image is not None:
        args += [f"e2ebench.data={GUEST_DATA_MOUNT}", "e2ebench.datadev=/dev/vdc"]
        drives.append({"drive_id": "data", "path_on_host": str(data_image), "is_root_device": False,
                       "is_read_only": True})
    config: dict = {
        "boot-source": {"kernel_image_path": str(kernel_elf), "initrd_path": str(initramfs), "boot_args": " ".join(args)},
        "drives": drives,
        "machine-config": {"vcpu_count": int(vcpus), "mem_size_mib": int(memory_mib), "smt": False},
        "network-interfaces": [],
    }
    if log_path is not None:
        config["logger"] = {"log_path": str(log_path), "level": "Warning"}
    return config


def firecracker_argv(binary: str, config_file: Path, vm_id: str) -> list[str]:
    """``firecracker --no-api --config-file CFG --id ID``: no API socket, the guest starts at once,
    its serial console is the process's stdout."""
    if not vm_id.replace("-", "").isalnum() or len(vm_id) > 64:
        raise ValueError(f"a Firecracker id is 1-64 letters, digits and '-', not {vm_id!r}")
    return [binary, "--no-api", "--config-file", str(config_file), "--id", vm_id]


def firecracker_kernel(kernel: GuestKernel) -> Path:
    """The ELF ``vmlinux`` of ``kernel`` (Firecracker does not boot bzImages), cached."""
    target = guest_cache_dir() / "vmlinux" / f"vmlinux-{kernel.version}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        extract_vmlinux(kernel.image, tmp)
        tmp.replace(target)
    return target


@functools.lru_cache(maxsize=4)
def firecracker_version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


FIRST_ACPI_VERSION = (1, 8)   # Firecracker describes its virtio-mmio devices in ACPI tables from v1.8 on (x86_64)


def parse_firecracker_version(text: str | None) -> tuple[int, int] | None:
    """``"Firecracker v1.10.1"`` -> (1, 10); None when unknown."""
    match = re.search(r"v?(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def kernel_mmio_cmdline_devices(kernel_image: Path) -> bool | None:
    """Whether the kernel finds virtio-mmio devices given on its command line
    (``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES``), read from the ``config-<version>`` file next to the
    image; None when there is no such file.  Debian's kernels do not (they find the devices in
    the ACPI tables that QEMU's microvm and Firecracker >= 1.8 provide)."""
    for config in sorted(Path(kernel_image).parent.glob("config-*")):
        text = config.read_text(errors="replace")
        return "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y" in text
    return None


def firecracker_availability(binary: str | None, kvm_usable: bool, pvm: bool,
                             missing: list[tuple[str, str]] | None = None, details: dict | None = None,
                             version: tuple[int, int] | None = None,
                             kernel_cmdline_devices: bool | None = None) -> Availability:
    """The verdict for the Firecracker engine from what was found (pure: ``probe`` gathers the facts).

    A Firecracker older than 1.8 announces its drives only on the kernel command line, which a
    kernel without ``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`` (Debian's) ignores: the guest would find
    no disks, so that combination is refused."""
    details = dict(details or {})
    details["firecracker"] = binary or "not on PATH"
    if binary is None:
        return Availability(False, NO_FIRECRACKER_REASON, fix=FIRECRACKER_FIX, details=details)
    if not kvm_usable:
        return Availability(False, "Firecracker needs KVM and /dev/kvm is missing or not read-writable (no TCG "
                            "fallback in Firecracker)", fix=FIRECRACKER_FIX, details=details)
    if pvm:
        return Availability(False, "/dev/kvm is kvm_pvm (nested software virtualisation): stock guest kernels hang "
                            "under it, and Firecracker has no TCG fallback", fix=FIRECRACKER_FIX + " (real hardware KVM)",
                            details=details)
    if missing:
        packages = " ".join(dict.fromkeys(p for _, p in missing))
        return Availability(False, "missing: " + ", ".join(w for w, _ in missing), fix=f"apt-get install {packages}",
                            details=details)
    if version is not None and version < FIRST_ACPI_VERSION and kernel_cmdline_devices is False:
        return Availability(False, f"Firecracker {version[0]}.{version[1]} passes its drives on the kernel command line "
                            "only, and the guest kernel lacks CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
                            fix="install Firecracker >= 1.8 (ACPI) from its release tarball, or set "
                                "E2EBENCH_GUEST_KERNEL to a kernel with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
                            details=details)
    return Availability(True, "Firecracker with KVM", emulated=False, details=details)


def resolve_engine(requested: str | None, env_value: str | None, firecracker_usable: "bool | None" = None) -> str:
    """``qemu`` or ``firecracker``: the option, else ``$E2EBENCH_MVM_ENGINE``, else qemu; ``auto``
    picks Firecracker only when ``firecracker_usable`` (a callable or bool) says so."""
    engine = (requested or env_value or "qemu").strip().lower()
    if engine not in ENGINES:
        raise PlatformError(f"unknown micro-VM engine {engine!r}; accepted: {', '.join(ENGINES)}")
    if engine == "auto":
        usable = firecracker_usable() if callable(firecracker_usable) else bool(firecracker_usable)
        return FIRECRACKER if usable else "qemu"
    return engine


# ---------------------------------------------------------------------------
# One Firecracker process


class FirecrackerGuest(VmmProcess):
    """One ``firecracker`` process in its own process group (and the session's cgroup from its first
    instruction), with ``PR_SET_PDEATHSIG=SIGKILL``; its stdout (the guest's serial console) is read by
    a :class:`~e2ebench.platforms.vm.Console`.  ``stop()`` is idempotent: SIGTERM then SIGKILL to the group."""

    def __init__(self, argv: list[str], console_log: Path, cgroup_procs_files: list[str] | None = None):
        self.argv = argv
        self.console_log = console_log
        self.cgroup_procs_files = list(cgroup_procs_files or [])
        self.proc: subprocess.Popen | None = None
        self.console: Console | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.perf_counter()
        self.proc = start_vmm(self.argv, self.cgroup_procs_files)
        self.console = Console(self.proc.stdout, self.console_log)

    def vcpu_threads(self) -> list[int]:
        """Thread ids of the vCPU threads (named ``fc_vcpu N``)."""
        assert self.proc is not None
        tids = []
        for task in sorted(Path(f"/proc/{self.proc.pid}/task").iterdir(), key=lambda p: int(p.name)):
            with contextlib.suppress(OSError):
                if (task / "comm").read_text().startswith("fc_vcpu"):
                    tids.append(int(task.name))
        return tids

    def wait_exit(self, deadline: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        proc = self.proc
        if proc is not None:
            kill_process_group(proc, grace_s=2.0)
        if self.console is not None:
            self.console.join()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()


# ---------------------------------------------------------------------------
# The Firecracker session


class MicroVMSession(VirtualMachineSession):
    guest_mode: ClassVar[str] = "vm"


class FirecrackerSession(VirtualMachineSession):
    """A prepared Firecracker deployment: kernel, initramfs, root image, cgroup; one guest per run."""

    guest_mode: ClassVar[str] = "vm"

    def __init__(self, platform: "MicroVM", deployment: Deployment, workdir: Path, kernel: GuestKernel, initramfs: Path,
                 vmlinux: Path, root: rootimage.RootImage, root_sources: list[rootimage.RootSource],
                 plan: cgroups.CpuLimitPlan, group: cgroups.CpuCgroup | None, memory_mib: int, binary: str):
        super().__init__(platform, deployment, workdir, kernel, initramfs, "kvm", "Firecracker with KVM", plan, group,
                         memory_mib)
        self.vmlinux = vmlinux
        self.root = root
        self.root_sources = root_sources
        self.binary = binary
        self.fc_guest: FirecrackerGuest | None = None
        self.info.pop("qemu_version", None)
        self.info.update({
            "engine": FIRECRACKER,
            "firecracker": binary,
            "firecracker_version": firecracker_version(binary),
            "machine": "firecracker",
            "vmlinux": str(vmlinux),
            "root_share": {"transport": "virtio-blk", "image": str(root.image), "size_bytes": root.size_bytes,
                           "fingerprint": root.fingerprint[:24], "cached": root.cached, "readonly": True,
                           "build_s": root.manifest.get("build_s"), "sources": root.manifest.get("sources")},
            "job_transport": "virtio-blk (writable ext4 image, read back with debugfs)",
            "host_cpu_mode": f"{deployment.cores} vCPU thread(s) unpinned; firecracker in a cgroup with a CFS quota "
                             f"of {deployment.cores} core(s)",
        })

    # -- what the guest sees --------------------------------------------------------------
    def _guest_visible(self, host: Path, job: Path) -> str:
        """Host paths inside the root image keep their path; others are copied into the job image."""
        host = host.resolve()
        if rootimage.covers(self.root_sources, host) and guest_sees(str(host)):
            return str(host)
        target = job / "inputs" / host.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            shutil.copytree(host, target, dirs_exist_ok=True)
        else:
            shutil.copy2(host, target)
        return f"{GUEST_JOB_DIR}/inputs/{host.name}"

    def job_settings(self, job: Path, spec: WorkerSpec) -> dict[str, str]:
        settings = super().job_settings(job, spec)
        settings["E2EBENCH_OUTPUT_DIR"] = ""      # LoadGen writes straight into the job image
        return settings

    def worker_script(self, job: Path, spec: WorkerSpec) -> str:
        import sys

        env = guest_worker_env()
        env["E2EBENCH_CACHE"] = GUEST_CACHE_DIR
        argv = [sys.executable, "-m", "e2ebench.worker", "--spec", f"{GUEST_JOB_DIR}/spec/spec.json",
                "--out", f"{GUEST_JOB_DIR}/result/result.json"]
        return shell_script(argv, env)

    # -- one run ---------------------------------------------------------------------------
    def prepare_run(self, spec: WorkerSpec) -> tuple[Path, WorkerSpec, Path | None, guest_disk.DataImage | None]:
        """Write the job directory and its image and the Firecracker config for one run.

        Returns (run directory, the spec as the guest gets it, host LoadGen log directory, data image).
        The run directory holds ``job/`` (the job image's content), ``job.ext4``, ``firecracker.json``,
        ``firecracker.log`` and, after the run, ``console.log`` and ``back/`` (what was read back)."""
        self.runs += 1
        run_dir = (self.workdir / f"fc-run-{self.runs}").resolve()
        self.job_dirs.append(run_dir)
        job = run_dir / "job"
        for sub in ("spec", "output", "result"):
            (job / sub).mkdir(parents=True, exist_ok=True)
        spec = dataclasses.replace(spec)
        spec.size_threads(self.deployment.cores)
        spec.bind_cpus = None
        spec.emulated = False
        data_host = self._data_for(spec.data)
        output_host = Path(spec.output_dir).resolve() if spec.output_dir else None
        spec.output_dir = f"{GUEST_JOB_DIR}/output" if output_host is not None else None
        if spec.weights:
            spec.weights = self._guest_visible(Path(spec.weights), job)
        image = None
        if data_host is not None:
            t0 = time.perf_counter()
            image = guest_disk.data_image(data_host, run_dir / "disk", use_cache=self.options.cache_disk_images)
            self.info["data_disk"] = {"image": str(image.image), "size_bytes": image.size_bytes, "cached": image.cached,
                                      "source": str(image.source), "guest_path": self._guest_data_path(data_host),
                                      "prepare_s": round(time.perf_counter() - t0, 3)}
            spec.data = self._guest_data_path(data_host)
            if spec.cache == "cold":   # the guest evicts its own page cache; this evicts the host's copy of the disk
                self.info["data_disk"]["host_page_cache"] = measure.drop_page_cache([image.image])
        spec.platform_info = {**self.info}
        self.prepare_job(job, spec)
        overlay = self.overlay_source()
        if overlay is not None:
            rootimage.copy_tree_for_job(overlay.path, job / "overlay")
        t0 = time.perf_counter()
        job_image = run_dir / "job.ext4"
        size = rootimage.build_job_image(job, job_image)
        self.info["job_image"] = {"image": str(job_image), "size_bytes": size, "build_s": round(time.perf_counter() - t0, 3)}
        log_path = run_dir / "firecracker.log"
        log_path.touch()                          # Firecracker opens its log file but does not create it
        config = firecracker_config(self.vmlinux, self.initramfs, self.deployment.cores, self.memory_mib,
                                    self.root.image, job_image, image.image if image else None, log_path=log_path,
                                    overlay=str(overlay.path) if overlay is not None else None)
        (run_dir / "firecracker.json").write_text(json.dumps(config, indent=1))
        return run_dir, spec, output_host, image

    def overlay_source(self) -> rootimage.RootSource | None:
        """The root image's mount-point source (the project's src) that each job image fills, if any."""
        return next((s for s in self.root_sources if not s.content), None)

    def run_worker(self, spec: WorkerSpec, timeout: float) -> dict:
        image = None
        try:
            run_dir, spec, output_host, image = self.prepare_run(spec)
            argv = firecracker_argv(self.binary, run_dir / "firecracker.json",
                                    f"e2ebench-mvm-{os.getpid()}-{self.runs}")
            self.info["firecracker_argv"] = argv
            with FirecrackerGuest(argv, run_dir / "console.log",
                                  self.group.procs_files if self.group else []) as guest:
                self.fc_guest = guest
                try:
                    result = self._supervise_firecracker(guest, run_dir, output_host, timeout)
                except WorkerFailure as exc:
                    result = self.guest_oom_result(exc, spec, run_dir / "console.log")
                finally:
                    self.fc_guest = None
        finally:
            if image is not None and not image.cached:
                image.image.unlink(missing_ok=True)
        result.setdefault("platform_info", {}).update(self.info)
        if result.get("memory_limit_mib") is None:    # the worker's RunResult has the key, null
            result["memory_limit_mib"] = self.memory_mib
        if result.get("oom_killed") is None:
            result["oom_killed"] = False
        return result

    def _supervise_firecracker(self, guest: FirecrackerGuest, run_dir: Path, output_host: Path | None,
                               timeout: float) -> dict:
        assert guest.console is not None and guest.proc is not None
        console = guest.console
        deadline = guest.started_at + timeout
        boot_deadline = min(deadline, guest.started_at + self.options.boot_timeout_s)
        seen = console.wait_for((MARK_READY, MARK_ERROR), boot_deadline)
        if seen != MARK_READY:
            log_tail = _tail(run_dir / "firecracker.log")
            if seen == MARK_ERROR:
                raise WorkerFailure(f"guest failed to boot: {console.markers[MARK_ERROR][1]}", output_tail=console.tail())
            if not guest.alive() or console.closed:
                raise WorkerFailure(f"firecracker exited (status {guest.proc.poll()}) before the guest was ready",
                                    output_tail=console.tail() + log_tail)
            limit = "run timeout" if boot_deadline >= deadline else "boot timeout"
            raise WorkerFailure(f"timed out after {boot_deadline - guest.started_at:.0f} s ({limit}) waiting for the "
                                "guest to become ready; firecracker was killed", output_tail=console.tail() + log_tail)
        ready_at, ready_line = console.markers[MARK_READY]
        self.provision_s = ready_at - guest.started_at
        self.info["boot"] = {"provision_s": round(self.provision_s, 3), "ready_line": ready_line.strip(),
                             **_marker_fields(ready_line)}
        self.info["host_limits"] = self.verify_firecracker_limits(guest)
        if not guest.wait_exit(deadline):
            raise WorkerFailure(f"timed out after {timeout:.0f} s (boot {self.provision_s:.1f} s + worker); firecracker "
                                "was killed", output_tail=console.tail())
        console.join()
        wall_s = time.perf_counter() - ready_at
        if MARK_ERROR in console.markers:
            raise WorkerFailure(f"guest error: {console.markers[MARK_ERROR][1]}", output_tail=console.tail())
        back = run_dir / "back"
        rootimage.read_back(Path(self.info["job_image"]["image"]), ["/result", "/output"], back)
        if output_host is not None and (back / "output").is_dir():
            _copy_tree(back / "output", output_host)
        result = read_run_result(console.text(), back / "result" / "result.json")
        if result is None:
            exit_line = console.markers.get(MARK_WORKER_EXIT, (0.0, "no worker exit marker"))[1].strip()
            raise WorkerFailure(f"no RunResult on the serial console nor in the job image ({exit_line})",
                                output_tail=console.tail())
        result["worker_wall_s"] = wall_s
        self.info["boot"]["worker_exit"] = console.markers.get(MARK_WORKER_EXIT, (0.0, ""))[1].strip()
        return result

    def verify_firecracker_limits(self, guest: FirecrackerGuest) -> dict:
        """Firecracker's host-side limits when the guest is ready: in the session's cgroup, under the
        planned CFS quota, one vCPU thread per deployment core."""
        assert guest.proc is not None
        pid = guest.proc.pid
        try:
            limits = measure.cpu_limits(pid)
            vcpus = guest.vcpu_threads()
        except OSError as exc:
            raise WorkerFailure(f"cannot read firecracker's limits: {exc}") from None
        record = {"checked": "when the guest was ready", "firecracker_pid": pid, "vcpu_threads": vcpus,
                  "vmm_effective_cpus": limits.effective_cpus, "vmm_quota_cores": limits.cpu_quota_cores,
                  "vmm_cgroup": {"cpu": limits.cpu_cgroup, "cpuset": limits.cpuset_cgroup}}
        problems = []
        if len(vcpus) != self.deployment.cores:
            problems.append(f"{len(vcpus)} vCPU threads instead of {self.deployment.cores}")
        if self.group is not None and pid not in self.group.pids():
            problems.append(f"firecracker (pid {pid}) is not in cgroup {self.group.name}")
        if self.plan.quota_cores is not None and (limits.cpu_quota_cores is None
                                                  or abs(limits.cpu_quota_cores - self.plan.quota_cores) > 1e-6):
            problems.append(f"firecracker's CFS quota is {limits.cpu_quota_cores} cores, not {self.plan.quota_cores}")
        record["as_planned"] = not problems
        if problems:
            raise WorkerFailure("host-side CPU limits not as planned: " + "; ".join(problems))
        return record

    def teardown(self) -> None:
        if self.fc_guest is not None:
            self.fc_guest.stop()
            self.fc_guest = None
        super().teardown()


def read_run_result(console_text: str, result_file: Path) -> dict | None:
    """The RunResult: from the serial console between the markers first, else from the job image's
    ``result/result.json`` (read back), else None."""
    try:
        return extract_result(console_text)
    except WorkerFailure:
        pass
    if result_file.is_file() and result_file.stat().st_size > 0:
        try:
            return json.loads(result_file.read_text())
        except ValueError:
            return None
    return None


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return "\n" + path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# ---------------------------------------------------------------------------
# The platform


class MicroVM(VirtualMachine):
    name: ClassVar[str] = "MVM"
    title: ClassVar[str] = "micro-VM"
    colour: ClassVar[str] = "#9467bd"
    order: ClassVar[int] = 30
    cpu_modes: ClassVar[tuple[str, ...]] = ("VNL",)
    devices: ClassVar[tuple[str, ...]] = ("CPU",)
    design_limit: ClassVar[str] = ("as in the paper: no CPU pinning or GPU passthrough on micro-VMs; Firecracker has "
                                   "no GPU passthrough and QEMU's microvm machine has no PCI bus to pass a GPU to")
    session_class = MicroVMSession

    def __init__(self, engine: str | None = None, firecracker_binary: str | None = None,
                 root_sources: list[rootimage.RootSource] | None = None, **options) -> None:
        options.setdefault("machine", "microvm")
        super().__init__(**options)
        self.options.machine = "microvm"
        self.firecracker_binary = firecracker_binary or FIRECRACKER
        self.root_sources = root_sources
        self.requested_engine = (engine or os.environ.get(ENGINE_ENV) or "qemu").strip().lower()
        self.engine = resolve_engine(engine, os.environ.get(ENGINE_ENV), lambda: self.firecracker_probe().usable)

    def machine_type(self) -> str:
        return "microvm"

    def firecracker_missing_tools(self) -> list[tuple[str, str]]:
        missing = []
        if find_busybox() is None:
            missing.append(("a statically linked busybox", "busybox-static"))
        for tool in ("mkfs.ext4", "debugfs"):
            if not shutil.which(tool):
                missing.append((tool, "e2fsprogs"))
        return missing

    def firecracker_probe(self) -> Availability:
        """Cheap: a binary on PATH, a read-writable /dev/kvm that is not kvm_pvm, the image tools, a kernel."""
        binary = shutil.which(self.firecracker_binary)
        details: dict = {"engine": FIRECRACKER, "requested_engine": self.requested_engine}
        version_text = firecracker_version(binary) if binary else None
        if binary:
            details["firecracker_version"] = version_text
        try:
            kernel = find_kernel(self.options.kernel, self.options.modules_dir)
        except KernelError as exc:
            kernel = None
            kernel_error: str | None = str(exc)
        else:
            kernel_error = None
        verdict = firecracker_availability(binary, kvm_device_usable(), is_pvm_host(), self.firecracker_missing_tools(),
                                           details, parse_firecracker_version(version_text),
                                           kernel_mmio_cmdline_devices(kernel.image) if kernel else None)
        if not verdict.usable:
            return verdict
        if kernel_error is not None:
            return Availability(False, kernel_error, fix="point $E2EBENCH_GUEST_KERNEL at a bzImage, or unset it",
                                details=verdict.details)
        if kernel is None and not (self.options.fetch_kernel and shutil.which("apt-get") and shutil.which("dpkg-deb")):
            return Availability(False, "no guest kernel found and none can be fetched (apt-get/dpkg-deb missing)",
                                fix="set E2EBENCH_GUEST_KERNEL=/path/to/vmlinuz and E2EBENCH_GUEST_MODULES=/lib/modules/<ver>",
                                details=verdict.details)
        verdict.details["guest_kernel"] = (kernel.as_dict() if kernel else
                                           f"fetched on first use: apt-get download the {META_PACKAGE} kernel")
        return verdict

    def probe(self) -> Availability:
        if self.engine == FIRECRACKER:
            return self.firecracker_probe()
        base = super().probe()
        if not base.usable:
            return base
        details = dict(base.details)
        details["firecracker"] = shutil.which(self.firecracker_binary) or "not on PATH (no Debian or PyPI package)"
        details["engine"] = self.engine
        details["requested_engine"] = self.requested_engine
        if "microvm" not in qemu_machines(self.options.qemu_binary):
            return Availability(False, f"{self.options.qemu_binary} has no microvm machine type",
                                fix="apt-get install qemu-system-x86 (QEMU >= 4.2)", details=details)
        return Availability(base.usable, base.reason, emulated=base.emulated, fix=base.fix, details=details)

    def check_deployment(self, deployment: Deployment) -> None:
        problem = self.design_problem(deployment)
        if problem:
            raise PlatformError(problem)

    @contextlib.contextmanager
    def session(self, deployment: Deployment, workdir: Path) -> Iterator[VirtualMachineSession]:
        if self.engine != FIRECRACKER:
            with super().session(deployment, workdir) as session:
                yield session
            return
        self.check_deployment(deployment)
        availability = self.firecracker_probe()
        if not availability.usable:
            raise PlatformError(f"the Firecracker engine cannot run here: {availability.reason}; {availability.fix}")
        binary = shutil.which(self.firecracker_binary)
        assert binary is not None
        host_cpus = sorted(os.sched_getaffinity(0))
        plan = cgroups.plan_limits(deployment.cores, deployment.cpu_mode, host_cpus, cgroups.numa_nodes())
        can_write, why = cgroups.writable()
        if not can_write:
            raise PlatformError(f"{deployment} needs a CFS quota on firecracker but cgroups are not writable: {why}")
        t0 = time.perf_counter()
        try:
            kernel = ensure_kernel(self.options.kernel, self.options.modules_dir, fetch=self.options.fetch_kernel)
            initramfs = build_initramfs(kernel)
            vmlinux = firecracker_kernel(kernel)
        except (KernelError, InitramfsError) as exc:
            raise PlatformError(str(exc)) from None
        recheck = firecracker_availability(binary, True, False, [], None,
                                           parse_firecracker_version(firecracker_version(binary)),
                                           kernel_mmio_cmdline_devices(kernel.image))
        if not recheck.usable:                     # the kernel may have been fetched just now
            raise PlatformError(f"the Firecracker engine cannot run here: {recheck.reason}; {recheck.fix}")
        sources = self.root_sources if self.root_sources is not None else rootimage.default_root_sources()
        try:
            root = rootimage.root_image(sources)
        except guest_disk.DiskImageError as exc:
            raise PlatformError(f"cannot build the Firecracker root image: {exc}") from None
        setup_s = time.perf_counter() - t0
        cgroups.remove_stale()
        memory_mib = bounded_memory_mib(self.options.memory_mib)
        with cgroups.CpuCgroup(plan, name=cgroups.cgroup_name("mvm")) as group:
            session = FirecrackerSession(self, deployment, workdir, kernel, initramfs, vmlinux, root, sources, plan,
                                         group, memory_mib, binary)
            session.info["setup_s"] = round(setup_s, 3)
            try:
                yield session
            finally:
                session.teardown()


__all__ = ["FirecrackerGuest", "FirecrackerSession", "MicroVM", "MicroVMSession", "firecracker_argv",
           "firecracker_availability", "firecracker_config", "firecracker_kernel", "kernel_mmio_cmdline_devices",
           "parse_firecracker_version", "read_run_result", "resolve_engine"]


if __name__ == "__main__":  # pragma: no cover - prints a sample Firecracker configuration
    print(json.dumps(firecracker_config(Path("vmlinux"), Path("initramfs.img.gz"), 2, 2048, Path("root.ext4"),
                                        Path("job.ext4"), Path("data.ext4")), indent=1))
