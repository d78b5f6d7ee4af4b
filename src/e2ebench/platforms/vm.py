"""Virtual machine (VM): the worker inside a QEMU guest; the QEMU machinery MVM and VMCN share.

The guest
    Debian's kernel (or a configured one) with an initramfs e2ebench builds (busybox-static plus the
    virtio, 9p, virtio-blk and ext4 modules).  The host root is shared read-only over virtio-9p
    (``msize=524288,cache=loose``), so the guest runs the very same Python, PyTorch and e2ebench as
    the host, under the same absolute paths.  A writable job directory (9p, ``cache=none``) carries
    the worker spec in and the RunResult and LoadGen logs out.  The data set is an ext4 disk image
    on a virtio-blk disk mounted read-only at ``/run/e2ebench/data``: guest file I/O goes through the
    virtual disk, as in the paper.  cgroup2 is mounted in the guest.

One guest per run
    ``session()`` prepares what does not depend on the data (kernel, initramfs, accelerator verdict,
    host cgroup); every ``run_worker`` boots a fresh guest with that run's data disk, runs exactly one
    worker and powers off.  ``provision_s`` is the host time from starting QEMU to the guest printing
    ``@@E2EBENCH_GUEST_READY@@`` (modules loaded, file systems mounted, about to start the worker).

CPU modes (host side; the guest always gets one vCPU per deployment core)
    ``VNL``  the vCPU threads float over every host core; the whole QEMU process sits in a cgroup
             with a CFS quota of N cores.
    ``PIN``  vCPU i's host thread (QMP ``query-cpus-fast``) is bound to its own dedicated host core
             with ``sched_setaffinity``; QEMU sits in a cpuset cgroup of those cores.  The guest is
             started paused (``-S``) and resumed only once every vCPU is pinned.  Inside the guest the
             worker binds its compute threads to guest CPUs 0..N-1.
    The guest sees N vCPUs and no quota in both modes: ``expected_limits() == (0..N-1, None)``.  The
    host-side limits are verified from ``/proc/<qemu>/task/<tid>/status`` and the cgroup files when
    the guest is ready; a mismatch fails the run.  They are recorded in ``platform_info.host_limits``.

Acceleration
    KVM only where it really works: a probe guest is booted with ``-accel kvm`` and must print a
    marker within ``kvm_probe_timeout_s`` (the verdict is cached per QEMU version, guest kernel and
    host kernel in ``<cache>/guest/kvm-verdict.json``).  Otherwise TCG (``-accel tcg,thread=multi
    -cpu max``): ~100-230x slower than native, and every result is labelled ``emulated``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import platform as _platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import ClassVar, Iterator

from e2ebench import measure
from e2ebench.platforms import cgroups
from e2ebench.lifecycle import die_with_parent, owner_env
from e2ebench.platforms.base import Availability, Platform, PlatformError, Session, worker_env
from e2ebench.platforms.guest import guest_cache_dir, template
from e2ebench.platforms.guest import disk as guest_disk
from e2ebench.platforms import vfio
from e2ebench.platforms.guest.initramfs import GUEST_MODULES, InitramfsError, build_initramfs, find_busybox
from e2ebench.platforms.guest.kernel import META_PACKAGE, GuestKernel, KernelError, ensure_kernel, find_kernel
from e2ebench.platforms.guest.qmp import QmpClient, QmpError
from e2ebench.platforms.rootfs import python_environment_dirs
# the pure builders, re-exported here where callers have always found them
from e2ebench.platforms.vm_config import (ACCEL_ENV, GUEST_DATA_MOUNT, GUEST_ENV_KEYS, GUEST_ENV_PREFIXES,
                                          GUEST_JOB_DIR, GUEST_PRIVATE_DIRS, GUEST_TMPFS_DIRS, HOST_ONLY_ENV, MARK_ERROR,
                                          MARK_GUEST_EXIT, MARK_PROBE, MARK_READY, MARK_WORKER_EXIT, MARKERS, MEMORY_ENV,
                                          QEMU_BINARY, GuestLaunch, VmOptions, _marker_fields, accel_args,
                                          bounded_memory_mib, host_memory_mib, host_tsc_khz, kernel_cmdline,
                                          marker_fields, paths_hidden_by_guest_tmpfs, qemu_argv, shell_assignments,
                                          shell_script, vfio_args)
from e2ebench.scenario import Deployment, HostFacts
from e2ebench.spec import WorkerFailure, WorkerSpec, extract_result

TCG_REASON = "no usable KVM (/dev/kvm is PVM / missing); TCG emulation ~100-200x slower"
PACKAGES_FIX = "apt-get install qemu-system-x86 busybox-static e2fsprogs"
# the guest kernel's modules a GPU deployment loads: the NVIDIA driver built for that kernel
GPU_GUEST_MODULES = ("nvidia", "nvidia_uvm")
GPU_KERNEL_FIX = ("a GPU guest loads the NVIDIA driver's modules built for the guest kernel: point E2EBENCH_GUEST_KERNEL "
                  "and E2EBENCH_GUEST_MODULES at a kernel whose modules include nvidia.ko and nvidia-uvm.ko (for "
                  "example the host's own kernel with its DKMS-built driver, whose user-space libraries the guest "
                  "then sees through the shared root)")


@functools.lru_cache(maxsize=8)
def qemu_version(binary: str = QEMU_BINARY) -> str | None:
    path = shutil.which(binary)
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version\s+(\S+)", out)
    return match.group(1) if match else out.strip().splitlines()[0] if out.strip() else None


@functools.lru_cache(maxsize=8)
def qemu_machines(binary: str = QEMU_BINARY) -> frozenset[str]:
    path = shutil.which(binary)
    if not path:
        return frozenset()
    try:
        out = subprocess.run([path, "-machine", "help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(line.split()[0] for line in out.splitlines()[1:] if line.strip())


# ---------------------------------------------------------------------------
# A running QEMU process


def thread_affinity(pid: int, tid: int) -> list[int]:
    """``Cpus_allowed_list`` of one thread, from ``/proc/<pid>/task/<tid>/status``."""
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return measure.parse_cpu_list(line.split(":", 1)[1])
    return []




class Console:
    """Reads QEMU's stdout (the guest's serial console, plus QEMU's own messages) in a thread."""

    def __init__(self, stream, log_path: Path):
        self.lines: list[str] = []
        self.markers: dict[str, tuple[float, str]] = {}
        self.closed = False
        self._cond = threading.Condition()
        self._stream = stream
        self._log_path = log_path
        self._thread = threading.Thread(target=self._pump, name="e2ebench-console", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            with open(self._log_path, "w", errors="replace") as log:
                for raw in iter(self._stream.readline, b""):
                    now = time.perf_counter()
                    line = raw.decode("utf-8", "replace").replace("\r", "").rstrip("\n")
                    log.write(line + "\n")
                    log.flush()
                    with self._cond:
                        self.lines.append(line)
                        for marker in MARKERS:
                            if marker in line and marker not in self.markers:
                                self.markers[marker] = (now, line)
                        self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait_for(self, markers: tuple[str, ...], deadline: float) -> str | None:
        """The first of ``markers`` seen, or None when the console closed or ``deadline`` (perf_counter) passed."""
        with self._cond:
            while True:
                seen = [m for m in markers if m in self.markers]
                if seen:
                    return min(seen, key=lambda m: self.markers[m][0])
                remaining = deadline - time.perf_counter()
                if self.closed or remaining <= 0:
                    return None
                self._cond.wait(timeout=min(remaining, 1.0))

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def tail(self, chars: int = 4000) -> str:
        return self.text()[-chars:]

    def join(self, timeout_s: float = 5.0) -> None:
        self._thread.join(timeout_s)


@dataclasses.dataclass
class VcpuThread:
    vcpu: int
    tid: int
    host_cpus: list[int] = dataclasses.field(default_factory=list)


def start_vmm(argv: list[str], cgroup_procs_files: list[str]) -> subprocess.Popen:
    """Start a VMM (QEMU, Firecracker) in its own process group, inside the session's cgroups from its first
    instruction, with ``PR_SET_PDEATHSIG=SIGKILL`` so it cannot outlive e2ebench, and the owner mark in its
    environment (see :mod:`e2ebench.lifecycle`); stdout+stderr piped."""
    procs_files = list(cgroup_procs_files)

    def enter_cgroups() -> None:  # between fork and exec
        pid = str(os.getpid())
        for f in procs_files:
            with open(f, "w") as fh:
                fh.write(pid)

    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **owner_env()}, start_new_session=True,
                            preexec_fn=die_with_parent(enter_cgroups))


class VmmProcess:
    """What every VMM process wrapper shares: ``start()`` on enter, an idempotent ``stop()`` on exit (also
    when ``start()`` fails or on Ctrl-C), and ``alive()``.  Subclasses set ``self.proc`` in ``start()``."""

    proc: subprocess.Popen | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class QemuGuest(VmmProcess):
    """One QEMU process, started paused; vCPUs optionally pinned through QMP before it resumes.

    ``start()`` and ``stop()`` bracket its life; ``stop()`` (QMP ``quit``, then SIGKILL to QEMU's
    process group) is idempotent and runs from ``__exit__``, also on errors and Ctrl-C.  QEMU gets
    ``PR_SET_PDEATHSIG=SIGKILL`` so that it dies with the e2ebench process even on SIGKILL.
    """

    def __init__(self, argv: list[str], qmp_socket: Path, console_log: Path,
                 cgroup_procs_files: list[str] | None = None, pin_cpus: tuple[int, ...] | None = None):
        self.argv = argv
        self.qmp_socket = qmp_socket
        self.console_log = console_log
        self.cgroup_procs_files = list(cgroup_procs_files or [])
        self.pin_cpus = pin_cpus
        self.proc: subprocess.Popen | None = None
        self.console: Console | None = None
        self.qmp: QmpClient | None = None
        self.started_at = 0.0          # perf_counter when QEMU was started
        self.vcpus: list[VcpuThread] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.qmp_socket.unlink(missing_ok=True)
        self.started_at = time.perf_counter()
        self.proc = start_vmm(self.argv, self.cgroup_procs_files)
        self.console = Console(self.proc.stdout, self.console_log)
        try:
            self.qmp = QmpClient(self.qmp_socket).connect(deadline_s=60.0, alive=self.alive)
        except QmpError as exc:
            time.sleep(0.2)
            raise PlatformError(f"QEMU did not start: {exc}: {self.console.tail(1500)}") from None
        self.vcpus = [VcpuThread(int(c["cpu-index"]), int(c["thread-id"]))
                      for c in sorted(self.qmp.execute("query-cpus-fast"), key=lambda c: c["cpu-index"])]
        if self.pin_cpus is not None:
            self.pin(self.pin_cpus)
        self.refresh_affinities()
        self.qmp.execute("cont")

    def pin(self, host_cpus: tuple[int, ...]) -> None:
        """Bind vCPU i's host thread to ``host_cpus[i]`` (one dedicated host core per vCPU)."""
        if len(host_cpus) != len(self.vcpus):
            raise PlatformError(f"{len(self.vcpus)} vCPUs but {len(host_cpus)} host CPUs to pin them to")
        if len({v.tid for v in self.vcpus}) != len(self.vcpus):
            raise PlatformError("the vCPUs share one host thread (single-threaded TCG?): they cannot be pinned 1:1")
        for vcpu, cpu in zip(self.vcpus, host_cpus):
            os.sched_setaffinity(vcpu.tid, {cpu})

    def refresh_affinities(self) -> list[VcpuThread]:
        assert self.proc is not None
        for vcpu in self.vcpus:
            vcpu.host_cpus = thread_affinity(self.proc.pid, vcpu.tid)
        return self.vcpus

    def wait_exit(self, deadline: float) -> bool:
        """Wait (until ``deadline``, perf_counter) for QEMU to exit by itself (the guest powered off)."""
        assert self.proc is not None
        remaining = deadline - time.perf_counter()
        try:
            self.proc.wait(timeout=max(0.0, remaining))
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, grace_s: float = 5.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None and self.qmp is not None:
            try:
                self.qmp.execute("quit")
            except (QmpError, OSError, ValueError):
                pass
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if self.console is not None:
            self.console.join()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        self.qmp_socket.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# KVM or TCG


def kvm_verdict_path() -> Path:
    return guest_cache_dir() / "kvm-verdict.json"


def _verdict_key(kernel_version: str, binary: str) -> str:
    return f"qemu {qemu_version(binary)} | guest {kernel_version} | host {_platform.release()}"


def cached_kvm_verdict(kernel_version: str, binary: str = QEMU_BINARY) -> dict | None:
    try:
        verdicts = json.loads(kvm_verdict_path().read_text())
    except (OSError, ValueError):
        return None
    return verdicts.get(_verdict_key(kernel_version, binary))


def _store_kvm_verdict(kernel_version: str, binary: str, verdict: dict) -> None:
    path = kvm_verdict_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        verdicts = json.loads(path.read_text())
    except (OSError, ValueError):
        verdicts = {}
    verdicts[_verdict_key(kernel_version, binary)] = verdict
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(verdicts, indent=1, sort_keys=True))
    tmp.replace(path)


def kvm_device_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def is_pvm_host() -> bool:
    """/dev/kvm provided by kvm_pvm (software nested virtualisation): stock guest kernels hang under it."""
    return Path("/sys/module/kvm_pvm").exists()


def boot_probe(kernel: GuestKernel, initramfs: Path, accel: str, timeout_s: float, workdir: Path,
               binary: str = QEMU_BINARY) -> tuple[bool, float, str]:
    """Boot a 1-vCPU guest that prints a marker from its initramfs and powers off.

    Returns (marker seen, seconds to the marker or to giving up, console tail)."""
    scratch = Path(tempfile.mkdtemp(prefix="e2ebench-probe-", dir=_short_dir(workdir)))
    try:
        launch = GuestLaunch(kernel.image, initramfs, 1, 256, accel, "q35", scratch / "qmp.sock", mode="probe",
                             name="e2ebench-probe", tsc_khz=host_tsc_khz() if accel == "tcg" else None)
        with QemuGuest(qemu_argv(launch, binary), launch.qmp_socket, scratch / "console.log") as guest:
            assert guest.console is not None
            seen = guest.console.wait_for((MARK_PROBE, MARK_ERROR), guest.started_at + timeout_s) == MARK_PROBE
            elapsed = time.perf_counter() - guest.started_at
            return seen, elapsed, guest.console.tail(1000)
    except PlatformError as exc:
        return False, 0.0, str(exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def choose_accel(options: VmOptions, kernel: GuestKernel, initramfs: Path, workdir: Path) -> tuple[str, str]:
    """(accelerator, why): KVM only when a probe guest really boots under it (verdict cached)."""
    if options.accel in ("kvm", "tcg"):
        return options.accel, f"accelerator forced to {options.accel} (option accel / ${ACCEL_ENV})"
    if not kvm_device_usable():
        return "tcg", TCG_REASON
    verdict = cached_kvm_verdict(kernel.version, options.qemu_binary)
    if verdict is None:
        ok, elapsed, tail = boot_probe(kernel, initramfs, "kvm", options.kvm_probe_timeout_s, workdir, options.qemu_binary)
        verdict = {"kvm_usable": ok, "probe_s": round(elapsed, 3), "pvm": is_pvm_host(), "checked_at": time.time(),
                   "console_tail": tail[-400:]}
        _store_kvm_verdict(kernel.version, options.qemu_binary, verdict)
    if verdict.get("kvm_usable"):
        return "kvm", f"KVM verified by a probe boot ({verdict.get('probe_s')} s)"
    return "tcg", TCG_REASON + f" (a KVM probe guest gave no marker within {options.kvm_probe_timeout_s:.0f} s)"


def _short_dir(preferred: Path) -> Path:
    """A directory whose paths fit a unix socket address (108 bytes)."""
    return preferred if len(str(preferred)) < 60 else Path(tempfile.gettempdir())


# ---------------------------------------------------------------------------
# The session


def guest_worker_env() -> dict[str, str]:
    """The worker's environment in the guest: the host worker's, restricted to what matters in there."""
    host = worker_env()
    env = {k: v for k, v in host.items()
           if (k.startswith(GUEST_ENV_PREFIXES) or k in GUEST_ENV_KEYS) and k not in HOST_ONLY_ENV}
    env["HOME"] = "/tmp"
    env["TMPDIR"] = "/tmp"
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["E2EBENCH_CACHE"] = str(Path(os.environ.get("E2EBENCH_CACHE", Path.home() / ".cache" / "e2ebench")).resolve())
    return env


def guest_sees(host_path: str) -> bool:
    """True when the guest sees this host path through the 9p root: not hidden under /tmp, /run..., or inside
    one of the Python-environment paths that init.sh binds back over the guest's tmpfs (``e2ebench.keep``)."""
    if not any(host_path == d or host_path.startswith(d + "/") for d in GUEST_PRIVATE_DIRS):
        return True
    kept = paths_hidden_by_guest_tmpfs(python_environment_dirs())
    return any(host_path == k or host_path.startswith(k + "/") for k in kept)


class VirtualMachineSession(Session):
    """A prepared QEMU deployment; ``run_worker`` boots one guest per run."""

    guest_mode: ClassVar[str] = "vm"

    def __init__(self, platform: "VirtualMachine", deployment: Deployment, workdir: Path, kernel: GuestKernel,
                 initramfs: Path, accel: str, accel_reason: str, plan: cgroups.CpuLimitPlan,
                 group: cgroups.CpuCgroup | None, memory_mib: int):
        super().__init__(deployment, workdir)
        self.platform = platform
        self.options = platform.options
        self.kernel = kernel
        self.initramfs = initramfs
        self.accel = accel
        self.plan = plan
        self.group = group
        self.memory_mib = memory_mib
        self.emulated = accel != "kvm"
        self.runs = 0
        self.job_dirs: list[Path] = []
        self._data_host: Path | None = None
        self.guest: QemuGuest | None = None      # the running guest, while a run is in progress
        self.vfio_devices: tuple[str, ...] = ()   # GPU deployments: PCI addresses passed through (bound to vfio-pci)
        self.passed_gpus = 0                       # how many of them are GPUs (the rest: their audio/USB functions)
        self.info = {
            "platform": platform.NAME,
            "engine": "qemu",
            "qemu_version": qemu_version(self.options.qemu_binary),
            "machine": platform.machine_type(),
            "accel": accel,
            "accel_reason": accel_reason,
            "emulated": self.emulated,
            "vcpus": deployment.cores,
            "memory_mib": memory_mib,
            "memory_requested_mib": self.options.memory_mib,
            "memory_limit_mib": memory_mib,          # a guest's memory limit is its memory
            "guest_kernel": kernel.as_dict(),
            "initramfs": str(initramfs),
            "root_share": {"transport": "virtio-9p", "msize": self.options.p9_msize, "cache": self.options.p9_cache,
                           "readonly": True},
            "data_transport": "virtio-blk (ext4 image, read-only)",
            "host_cpu_mode": self.describe_host_cpu_mode(),
            "pinned_host_cpus": list(plan.cpus) if plan.cpus else None,
            "quota_cores": plan.quota_cores,
            "cgroup_version": group.version if group else None,
            "cgroup_dirs": [str(d) for d in group.dirs] if group else [],
        }

    # -- what the worker must see ---------------------------------------------------------
    def gpu_count(self) -> int:
        """GPUs passed through to the guest (0: a CPU deployment)."""
        return self.passed_gpus

    def guest_cpus(self) -> list[int]:
        return list(range(self.deployment.cores))

    def expected_limits(self) -> tuple[list[int] | None, float | None]:
        return self.guest_cpus(), None

    def bind_cpus(self) -> list[int] | None:
        return self.guest_cpus() if self.deployment.cpu_mode == "PIN" else None

    def describe_host_cpu_mode(self) -> str:
        n = self.deployment.cores
        if self.deployment.cpu_mode == "PIN":
            return f"{n} vCPU thread(s) each pinned to a dedicated host core; QEMU in a cpuset cgroup of those cores"
        return f"{n} vCPU thread(s) unpinned; QEMU in a cgroup with a CFS quota of {n} core(s)"

    # -- paths -----------------------------------------------------------------------------
    def host_path(self, path: Path) -> str:
        """The data set (an existing file or non-empty folder) maps to the data disk's mount point;
        anything else keeps its path (the host root is visible read-only; the LoadGen log directory
        is made writable by a bind mount from the job directory)."""
        p = Path(path).resolve()
        is_input = p.is_file() or (p.is_dir() and any(p.iterdir()))
        if is_input and (self._data_host is None or self._data_host == p):
            self._data_host = p
            return self._guest_data_path(p)
        return str(p)

    def _guest_data_path(self, host: Path) -> str:
        return GUEST_DATA_MOUNT if host.is_dir() else f"{GUEST_DATA_MOUNT}/{host.name}"

    def _data_for(self, guest_or_host: str | None) -> Path | None:
        if not guest_or_host:
            return None
        if guest_or_host == GUEST_DATA_MOUNT or guest_or_host.startswith(GUEST_DATA_MOUNT + "/"):
            if self._data_host is None:
                raise PlatformError(f"{guest_or_host} is not a data set this session mapped")
            return self._data_host
        host = Path(guest_or_host)
        if host.exists():
            self.host_path(host)
            if self._data_host != host.resolve():
                raise PlatformError(f"this session already serves {self._data_host} as its data disk")
            return self._data_host
        raise PlatformError(f"data set {guest_or_host} does not exist on the host")

    def _guest_visible(self, host: Path, job: Path) -> str:
        """A host path as the guest sees it: the same path, unless the guest mounts its own file
        system over it (/tmp, /run, /dev...): then it is copied into the job directory."""
        host = host.resolve()
        if guest_sees(str(host)):
            return str(host)
        target = job / "inputs" / host.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            shutil.copytree(host, target, dirs_exist_ok=True)
        else:
            shutil.copy2(host, target)
        return f"{GUEST_JOB_DIR}/inputs/{host.name}"

    # -- the guest-side command --------------------------------------------------------------
    def job_settings(self, job: Path, spec: WorkerSpec) -> dict[str, str]:
        return {"E2EBENCH_GUEST_MODE": self.guest_mode, "E2EBENCH_OUTPUT_DIR": spec.output_dir or "",
                "E2EBENCH_CGROUP_SUBTREE": "", "E2EBENCH_DATA_MOUNT": GUEST_DATA_MOUNT if self._data_host else ""}

    def worker_script(self, job: Path, spec: WorkerSpec) -> str:
        argv = [sys.executable, "-m", "e2ebench.worker", "--spec", f"{GUEST_JOB_DIR}/spec/spec.json",
                "--out", f"{GUEST_JOB_DIR}/result/result.json"]
        return shell_script(argv, guest_worker_env())

    def prepare_job(self, job: Path, spec: WorkerSpec) -> None:
        """Write spec.json, job.sh, job.env and worker.sh into the job directory (subclasses add more)."""
        spec.write(job / "spec" / "spec.json")
        (job / "job.sh").write_text(template("job.sh"))
        (job / "job.env").write_text(shell_assignments(self.job_settings(job, spec)))
        (job / "worker.sh").write_text(self.worker_script(job, spec))

    # -- one run ---------------------------------------------------------------------------
    def run_worker(self, spec: WorkerSpec, timeout: float) -> dict:
        self.runs += 1
        job = (self.workdir / f"vm-job-{self.runs}").resolve()
        self.job_dirs.append(job)
        for sub in ("spec", "output", "result"):
            (job / sub).mkdir(parents=True, exist_ok=True)
        spec = dataclasses.replace(spec)
        spec.size_threads(self.deployment.cores)
        spec.bind_cpus = self.bind_cpus()
        spec.emulated = self.emulated
        data_host = self._data_for(spec.data)
        image: guest_disk.DataImage | None = None
        output_host = Path(spec.output_dir).resolve() if spec.output_dir else None
        if output_host is not None:
            output_host.mkdir(parents=True, exist_ok=True)   # the bind mount's target must exist in the shared root
            spec.output_dir = str(output_host)
        if spec.weights:
            spec.weights = self._guest_visible(Path(spec.weights), job)
        try:
            if data_host is not None:
                t0 = time.perf_counter()
                image = guest_disk.data_image(data_host, job / "disk", use_cache=self.options.cache_disk_images)
                self.info["data_disk"] = {"image": str(image.image), "size_bytes": image.size_bytes, "cached": image.cached,
                                          "source": str(image.source), "guest_path": self._guest_data_path(data_host),
                                          "prepare_s": round(time.perf_counter() - t0, 3)}
                spec.data = self._guest_data_path(data_host)
                if spec.cache == "cold":   # the guest evicts its own page cache; this evicts the host's copy of the disk
                    self.info["data_disk"]["host_page_cache"] = measure.drop_page_cache([image.image])
            spec.platform_info = {**self.info}
            self.prepare_job(job, spec)
            try:
                result = self._boot_and_run(job, spec, image, timeout)
            except WorkerFailure as exc:
                result = self.guest_oom_result(exc, spec, job / "console.log")
        finally:
            if image is not None and not image.cached:
                image.image.unlink(missing_ok=True)
        if output_host is not None:
            _copy_tree(job / "output", output_host)
        result.setdefault("platform_info", {}).update(self.info)
        if result.get("memory_limit_mib") is None:    # the worker's RunResult has the key, null
            result["memory_limit_mib"] = self.memory_mib
        if result.get("oom_killed") is None:
            result["oom_killed"] = False
        return result

    def guest_oom_result(self, failure: WorkerFailure, spec: WorkerSpec, console_log: Path) -> dict:
        """A failed run ``out of memory (limit <guest memory> MiB)`` when the guest kernel's OOM killer shows in
        the console (the kernel's line, or the one job.sh copies from dmesg); otherwise ``failure`` is re-raised."""
        from e2ebench.platforms import memory

        try:
            console = console_log.read_text(errors="replace")
        except OSError:
            console = ""
        line = memory.guest_oom_line(console + "\n" + (failure.output_tail or ""))
        if line is None:
            raise failure
        return memory.oom_result(spec, self.memory_mib, f"guest kernel: {line} ({failure})", None,
                                 failure.output_tail or console[-4000:], self.info, self.emulated)

    def _boot_and_run(self, job: Path, spec: WorkerSpec, image: guest_disk.DataImage | None, timeout: float) -> dict:
        qmp_dir = _short_dir(self.workdir)
        qmp_socket = qmp_dir / f"e2ebench-qmp-{os.getpid()}-{self.runs}-{uuid.uuid4().hex[:6]}.sock"
        launch = GuestLaunch(
            kernel_image=self.kernel.image, initramfs=self.initramfs, vcpus=self.deployment.cores,
            memory_mib=self.memory_mib, accel=self.accel, machine=self.platform.machine_type(), qmp_socket=qmp_socket,
            job_dir=job, data_image=image.image if image else None, data_mount=GUEST_DATA_MOUNT if image else None,
            p9_msize=self.options.p9_msize, p9_cache=self.options.p9_cache, name=f"e2ebench-{self.platform.NAME.lower()}",
            tsc_khz=host_tsc_khz() if self.accel == "tcg" else None,
            keep_paths=paths_hidden_by_guest_tmpfs(python_environment_dirs()), vfio_devices=self.vfio_devices,
        )
        argv = qemu_argv(launch, self.options.qemu_binary)
        self.info["qemu_argv"] = argv
        guest = QemuGuest(argv, qmp_socket, job / "console.log",
                          cgroup_procs_files=self.group.procs_files if self.group else [],
                          pin_cpus=self.plan.cpus if self.deployment.cpu_mode == "PIN" else None)
        with guest:
            self.guest = guest
            try:
                return self._supervise(guest, job, timeout)
            finally:
                self.guest = None

    def _supervise(self, guest: QemuGuest, job: Path, timeout: float) -> dict:
        assert guest.console is not None and guest.proc is not None
        console = guest.console
        deadline = guest.started_at + timeout
        boot_deadline = min(deadline, guest.started_at + self.options.boot_timeout_s)
        self.info["host_limits"] = self.verify_host_limits(guest, "at start")
        seen = console.wait_for((MARK_READY, MARK_ERROR), boot_deadline)
        if seen != MARK_READY:
            if seen == MARK_ERROR:
                raise WorkerFailure(f"guest failed to boot: {console.markers[MARK_ERROR][1]}", output_tail=console.tail())
            if not guest.alive() or console.closed:
                raise WorkerFailure(f"QEMU exited (status {guest.proc.poll()}) before the guest was ready",
                                    output_tail=console.tail())
            limit = "run timeout" if boot_deadline >= deadline else "boot timeout"
            raise WorkerFailure(f"timed out after {boot_deadline - guest.started_at:.0f} s ({limit}) waiting for the "
                                "guest to become ready; QEMU was killed", output_tail=console.tail())
        ready_at, ready_line = console.markers[MARK_READY]
        self.provision_s = ready_at - guest.started_at
        self.info["boot"] = {"provision_s": round(self.provision_s, 3), "ready_line": ready_line.strip(),
                             **_marker_fields(ready_line)}
        self.info["host_limits"] = self.verify_host_limits(guest, "when the guest was ready")
        if not guest.wait_exit(deadline):
            raise WorkerFailure(f"timed out after {timeout:.0f} s (boot {self.provision_s:.1f} s + worker); QEMU was killed",
                                output_tail=console.tail())
        console.join()
        wall_s = time.perf_counter() - ready_at
        tail = console.tail()
        if MARK_ERROR in console.markers:
            raise WorkerFailure(f"guest error: {console.markers[MARK_ERROR][1]}", output_tail=tail)
        result = self._read_result(job, console)
        result["worker_wall_s"] = wall_s
        exit_line = console.markers.get(MARK_WORKER_EXIT, (0.0, ""))[1]
        self.info["boot"]["worker_exit"] = exit_line.strip()
        return result

    def _read_result(self, job: Path, console: Console) -> dict:
        result_file = job / "result" / "result.json"
        if result_file.exists() and result_file.stat().st_size > 0:
            try:
                return json.loads(result_file.read_text())
            except ValueError:
                pass
        try:
            return extract_result(console.text())
        except WorkerFailure as exc:
            exit_line = console.markers.get(MARK_WORKER_EXIT, (0.0, "no worker exit marker"))[1].strip()
            raise WorkerFailure(f"{exc} ({exit_line})", output_tail=console.tail()) from None

    def teardown(self) -> None:
        """Stop a guest that still runs (Ctrl-C, errors) and remove the job directories."""
        if self.guest is not None:
            self.guest.stop()
            self.guest = None
        for job in self.job_dirs:
            shutil.rmtree(job, ignore_errors=True)
        self.job_dirs.clear()

    # -- host-side checks -------------------------------------------------------------------
    def verify_host_limits(self, guest: QemuGuest, when: str) -> dict:
        """Read back the host-side limits of the running QEMU; raise WorkerFailure when they are not as planned."""
        assert guest.proc is not None
        pid = guest.proc.pid
        vcpus = guest.refresh_affinities()
        try:
            limits = measure.cpu_limits(pid)
        except OSError as exc:
            raise WorkerFailure(f"cannot read QEMU's cgroup limits {when}: {exc}") from None
        record = {
            "checked": when,
            "qemu_pid": pid,
            "vcpu_threads": [dataclasses.asdict(v) for v in vcpus],
            "qemu_effective_cpus": limits.effective_cpus,
            "qemu_quota_cores": limits.cpu_quota_cores,
            "qemu_cgroup": {"cpu": limits.cpu_cgroup, "cpuset": limits.cpuset_cgroup},
        }
        problems = []
        if len(vcpus) != self.deployment.cores:
            problems.append(f"{len(vcpus)} vCPUs instead of {self.deployment.cores}")
        if self.group is not None:
            members = set(self.group.pids())
            if pid not in members:
                problems.append(f"QEMU (pid {pid}) is not in cgroup {self.group.name}")
        if self.deployment.cpu_mode == "PIN":
            planned = list(self.plan.cpus or ())
            for vcpu, cpu in zip(vcpus, planned):
                if vcpu.host_cpus != [cpu]:
                    problems.append(f"vCPU {vcpu.vcpu} (thread {vcpu.tid}) may run on {vcpu.host_cpus}, not only on {cpu}")
            if self.group is not None and sorted(limits.effective_cpus) != sorted(planned):
                problems.append(f"QEMU may run on host CPUs {limits.effective_cpus}, not {planned}")
        elif self.plan.quota_cores is not None:
            if limits.cpu_quota_cores is None or abs(limits.cpu_quota_cores - self.plan.quota_cores) > 1e-6:
                problems.append(f"QEMU's CFS quota is {limits.cpu_quota_cores} cores, not {self.plan.quota_cores}")
        record["as_planned"] = not problems
        if problems:
            raise WorkerFailure(f"host-side CPU limits not as planned {when}: " + "; ".join(problems))
        return record


def _copy_tree(source: Path, target: Path) -> None:
    for item in source.rglob("*"):
        dest = target / item.relative_to(source)
        if item.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        elif item.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, dest)


# ---------------------------------------------------------------------------
# The platform


class VirtualMachine(Platform):
    name: ClassVar[str] = "VM"
    title: ClassVar[str] = "virtual machine"
    colour: ClassVar[str] = "#d62728"
    order: ClassVar[int] = 20
    devices: ClassVar[tuple[str, ...]] = ("CPU", "GPU")
    guest: ClassVar[bool] = True
    session_class: ClassVar[type[VirtualMachineSession]] = VirtualMachineSession

    def __init__(self, **options) -> None:
        self.options = VmOptions(**options)

    @classmethod
    def supports(cls, deployment: Deployment, host: HostFacts) -> str | None:
        """The base rules; for GPU, a whole NVIDIA GPU that VFIO can pass through to the guest (:func:`vfio.vfio_status`:
        PCI device, IOMMU, group, vfio-pci, driver not in use).  HostFacts.gpus is not asked: a GPU bound to
        vfio-pci is invisible to the host's CUDA by design."""
        problem = super().supports(deployment, host)
        if problem or deployment.device != "GPU":
            return problem
        usable, reason = vfio.vfio_status()
        return None if usable else f"{cls.name} cannot pass a GPU through to the guest: {reason}"

    def machine_type(self) -> str:
        return self.options.machine

    # -- probe (cheap: never boots a guest) -----------------------------------------------------
    def missing_tools(self) -> list[tuple[str, str]]:
        """[(what is missing, Debian package)]."""
        missing = []
        if not shutil.which(self.options.qemu_binary):
            missing.append((self.options.qemu_binary, "qemu-system-x86"))
        if find_busybox() is None:
            missing.append(("a statically linked busybox", "busybox-static"))
        if not shutil.which("mkfs.ext4"):
            missing.append(("mkfs.ext4", "e2fsprogs"))
        return missing

    def probe(self) -> Availability:
        missing = self.missing_tools()
        if missing:
            packages = " ".join(dict.fromkeys(p for _, p in missing))
            return Availability(False, "missing: " + ", ".join(w for w, _ in missing),
                                fix=f"apt-get install {packages}")
        details: dict = {"qemu_version": qemu_version(self.options.qemu_binary), "machine": self.machine_type()}
        try:
            kernel = find_kernel(self.options.kernel, self.options.modules_dir)
        except KernelError as exc:
            return Availability(False, str(exc), fix="point $E2EBENCH_GUEST_KERNEL at a bzImage, or unset it")
        if kernel is not None:
            details["guest_kernel"] = kernel.as_dict()
        else:
            if not (self.options.fetch_kernel and shutil.which("apt-get") and shutil.which("dpkg-deb")):
                return Availability(False, "no guest kernel found and none can be fetched (apt-get/dpkg-deb missing)",
                                    fix="set E2EBENCH_GUEST_KERNEL=/path/to/vmlinuz and E2EBENCH_GUEST_MODULES=/lib/modules/<ver>")
            details["guest_kernel"] = f"fetched on first use: apt-get download the {META_PACKAGE} kernel (needs `apt-get update`)"
        accel, reason = self._probe_accel(kernel)
        details["accel"] = accel
        if accel == "kvm":
            return Availability(True, reason, emulated=False, details=details)
        if accel == "kvm?":
            return Availability(True, reason, emulated=False, details=details)
        return Availability(True, reason, emulated=True,
                            fix="use a host with hardware virtualisation (real /dev/kvm) for native-speed guests",
                            details=details)

    def _probe_accel(self, kernel: GuestKernel | None) -> tuple[str, str]:
        if self.options.accel in ("kvm", "tcg"):
            return self.options.accel, f"accelerator forced to {self.options.accel}"
        if not kvm_device_usable():
            return "tcg", TCG_REASON
        verdict = cached_kvm_verdict(kernel.version, self.options.qemu_binary) if kernel else None
        if verdict is not None:
            if verdict.get("kvm_usable"):
                return "kvm", "KVM verified by a probe boot"
            return "tcg", TCG_REASON
        if is_pvm_host():
            return "tcg", TCG_REASON + " (kvm_pvm loaded; verified by a probe boot at first use)"
        return "kvm?", "/dev/kvm present; KVM is verified by a probe boot at first use (TCG if it fails)"

    # -- session ------------------------------------------------------------------------------
    def check_deployment(self, deployment: Deployment) -> None:
        """What to refuse before anything is prepared (MVM refuses its design limits); a GPU deployment's path is
        checked by :meth:`gpu_devices` at the start of :meth:`session`."""

    def gpu_devices(self) -> list[vfio.PciDevice]:
        """The PCI functions to pass through for a GPU deployment (the GPU and its other functions); raises
        PlatformError with :func:`vfio.choose_gpu`'s reason when there are none."""
        devices, reason = vfio.choose_gpu(address=self.options.gpu_address)
        if not devices:
            raise PlatformError(f"{self.name} cannot pass a GPU through to the guest: {reason}")
        return devices

    def prepare_guest(self, workdir: Path, gpu: bool = False) -> tuple[GuestKernel, Path, str, str, float]:
        missing = self.missing_tools()
        if missing:
            raise PlatformError("missing: " + ", ".join(w for w, _ in missing) + "; "
                                + "apt-get install " + " ".join(dict.fromkeys(p for _, p in missing)))
        t0 = time.perf_counter()
        try:
            kernel = ensure_kernel(self.options.kernel, self.options.modules_dir, fetch=self.options.fetch_kernel)
        except KernelError as exc:
            raise PlatformError(str(exc)) from None
        try:
            initramfs = build_initramfs(kernel, wanted=GUEST_MODULES + (GPU_GUEST_MODULES if gpu else ()))
        except (KernelError, InitramfsError) as exc:
            raise PlatformError(f"{exc}; {GPU_KERNEL_FIX}" if gpu else str(exc)) from None
        accel, reason = choose_accel(self.options, kernel, initramfs, workdir)
        return kernel, initramfs, accel, reason, time.perf_counter() - t0

    @contextlib.contextmanager
    def session(self, deployment: Deployment, workdir: Path) -> Iterator[VirtualMachineSession]:
        self.check_deployment(deployment)
        gpu = deployment.device == "GPU"
        gpu_devices = self.gpu_devices() if gpu else []
        host_cpus = sorted(os.sched_getaffinity(0))
        plan = cgroups.plan_limits(deployment.cores, deployment.cpu_mode, host_cpus, cgroups.numa_nodes())
        kernel, initramfs, accel, reason, setup_s = self.prepare_guest(workdir, gpu=gpu)
        can_write, why = cgroups.writable()
        cgroups.remove_stale()
        if not can_write and plan.quota_us is not None:
            raise PlatformError(f"{deployment} needs a CFS quota on QEMU but cgroups are not writable: {why}")
        group = cgroups.CpuCgroup(plan, name=cgroups.cgroup_name("vm")) if can_write else None
        memory_mib = bounded_memory_mib(self.options.memory_mib)
        with contextlib.ExitStack() as stack:
            if group is not None:
                stack.enter_context(group)
            # the GPU goes to vfio-pci for the session and back to its driver afterwards (errors, Ctrl-C included)
            try:
                passed = stack.enter_context(vfio.bound_to_vfio(gpu_devices)) if gpu_devices else []
            except (vfio.VfioError, OSError) as exc:
                raise PlatformError(f"{self.name} cannot pass the GPU through: {exc}") from None
            session = self.session_class(self, deployment, workdir, kernel, initramfs, accel, reason, plan, group,
                                         memory_mib)
            session.info["setup_s"] = round(setup_s, 3)
            if passed:
                session.vfio_devices = tuple(passed)
                session.passed_gpus = sum(1 for d in gpu_devices if d.is_nvidia_gpu)
                session.info["gpu_passthrough"] = {
                    "mechanism": "VFIO PCI passthrough (vfio-pci)", "devices": list(passed),
                    "original_drivers": {d.address: d.driver for d in gpu_devices},
                    "guest_modules": list(GPU_GUEST_MODULES)}
            try:
                yield session
            finally:
                session.teardown()


__all__ = [
    "Console", "GPU_GUEST_MODULES", "QemuGuest", "VcpuThread", "VirtualMachine", "VirtualMachineSession", "VmmProcess",
    "boot_probe", "cached_kvm_verdict", "choose_accel", "guest_sees", "guest_worker_env", "is_pvm_host",
    "kvm_device_usable", "qemu_machines", "qemu_version", "start_vmm", "thread_affinity",
    # the builders of vm_config, kept importable from here
    "ACCEL_ENV", "GUEST_DATA_MOUNT", "GUEST_ENV_KEYS", "GUEST_ENV_PREFIXES", "GUEST_JOB_DIR", "GUEST_PRIVATE_DIRS",
    "GUEST_TMPFS_DIRS", "HOST_ONLY_ENV", "MARKERS", "MARK_ERROR", "MARK_GUEST_EXIT", "MARK_PROBE", "MARK_READY",
    "MARK_WORKER_EXIT", "MEMORY_ENV", "QEMU_BINARY", "GuestLaunch", "VmOptions", "accel_args", "bounded_memory_mib",
    "host_memory_mib", "host_tsc_khz", "kernel_cmdline", "marker_fields", "paths_hidden_by_guest_tmpfs", "qemu_argv",
    "shell_assignments", "shell_script", "vfio_args",
]
