"""The Platform interface and what every platform shares.

A platform provisions a deployment (a cgroup, a container, a VM...), runs the worker inside it
and always tears it down.  Platforms know nothing about applications: they receive a
:class:`~e2ebench.spec.WorkerSpec` and return the worker's RunResult dict.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Sequence

from e2ebench.lifecycle import die_with_parent, owner_env
from e2ebench.scenario import Deployment, HostFacts
from e2ebench.spec import WorkerFailure, WorkerSpec, extract_result


class PlatformError(RuntimeError):
    """Provisioning failed: the deployment could not be created."""


@dataclasses.dataclass(frozen=True)
class Availability:
    """Whether a platform can run here, and why (not)."""

    usable: bool
    reason: str = ""
    emulated: bool = False
    fix: str = ""
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def status(self) -> str:
        if not self.usable:
            return "unavailable"
        return "emulated" if self.emulated else "usable"

    def as_dict(self) -> dict:
        return {"status": self.status, "usable": self.usable, "emulated": self.emulated, "reason": self.reason,
                "fix": self.fix, "details": self.details}


class Session(abc.ABC):
    """A provisioned deployment.  Created by :meth:`Platform.session`, released when it exits."""

    # True where the worker runs on the host's kernel and sees the run's log folder (BM, CN): it then watches the
    # runner's lifeline there (e2ebench.lifecycle); a guest dies with its VMM instead.
    shares_host_kernel: bool = False

    def __init__(self, deployment: Deployment, workdir: Path):
        self.deployment = deployment
        self.workdir = workdir
        self.provision_s = 0.0   # time to create the deployment (cgroup, container bundle, VM boot)
        self.emulated = False
        self.info: dict = {}

    @property
    def cold_start_s(self) -> float:
        return self.provision_s

    @abc.abstractmethod
    def run_worker(self, spec: WorkerSpec, timeout: float) -> dict:
        """Run one worker and return its RunResult (raises WorkerFailure when there is none)."""

    @abc.abstractmethod
    def expected_limits(self) -> tuple[list[int] | None, float | None]:
        """(effective CPUs, CFS quota in cores) that the worker must report; None = not checked."""

    def host_path(self, path: Path) -> str:
        """The path under which the worker sees a host path (identity unless the platform remaps)."""
        return str(path)


PLATFORM_NAME = re.compile(r"^[A-Z][A-Z0-9]{0,15}$")   # what a platform may be called in PLATFORM/CORES/CPUMODE/DEVICE


class Platform(abc.ABC):
    """A way to provision a deployment, and the one place that says which deployments it can run.

    A platform is a plugin: a subclass registered under the entry-point group ``e2ebench.platforms`` (the built-ins
    are listed in :data:`e2ebench.platforms.PLATFORM_CLASSES`).  Its class attributes are all that the notation, the
    study plan, ``doctor``, the analysis and the report need to know about it; :meth:`supports` is its feasibility
    rule.  Nothing outside the platform's own module names it.
    """

    name: ClassVar[str]                           # "BM": the notation's PLATFORM, upper case, [A-Z][A-Z0-9]*
    title: ClassVar[str]                          # "bare metal": what tables, legends and messages call it
    colour: ClassVar[str] = "#888888"             # its colour in every figure
    order: ClassVar[int] = 100                    # its place in tables and figures (BM 0, CN 10, VM 20, MVM 30, VMCN 40)
    cpu_modes: ClassVar[tuple[str, ...]] = ("VNL", "PIN")   # CPU modes it can provide at all
    devices: ClassVar[tuple[str, ...]] = ("CPU",)           # devices it can provide at all (GPU platforms add "GPU")
    design_limit: ClassVar[str] = ""              # why cpu_modes/devices are what they are, where that is a restriction
    guest: ClassVar[bool] = False                 # the worker runs on a guest kernel (VM, MVM, VMCN): memory = guest's
    shares_host_kernel: ClassVar[bool] = False    # the worker runs on the host's kernel and sees its files (BM, CN)
    container: ClassVar[bool] = False             # the worker runs in a container (CN, VMCN): the CHR finding applies

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # NAME is the older spelling of `name`; both stay readable (existing code and plugins use either)
        if "name" in cls.__dict__:
            cls.NAME = cls.name
        elif "NAME" in cls.__dict__:
            cls.name = cls.NAME

    @classmethod
    def design_problem(cls, deployment: Deployment) -> str | None:
        """Why the platform can never run ``deployment``'s CPU mode or device (whatever the host), or None."""
        if deployment.cpu_mode in cls.cpu_modes and deployment.device in cls.devices:
            return None

        def one_or_set(values: tuple[str, ...]) -> str:
            return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"

        why = cls.design_limit or "a design limit of the platform, not of this host"
        return f"{cls.name} supports only {one_or_set(cls.cpu_modes)}/{one_or_set(cls.devices)} deployments ({why})"

    @classmethod
    def supports(cls, deployment: Deployment, host: HostFacts) -> str | None:
        """Why this platform cannot run ``deployment`` on ``host`` (one sentence), or None when it can.

        The base rule: the CPU mode and device must be ones the platform provides at all (:meth:`design_problem`),
        the host must have the cores, and the platform must be available there (``host.available_platforms``, with
        the probe's reason from ``host.platform_reasons``).  For a deployment on another device than CPU that asks
        for more cores than the host has, the platform's device path is asked first (at the host's size), so that a
        GPU scenario says why no GPU can be used here before it says that the host is too small.  A platform with a device path overrides this, calls
        ``super().supports`` first and then checks that path on ``host`` (e.g. ``host.gpus``), returning its own
        reason.
        """
        problem = cls.design_problem(deployment)
        if problem:
            return problem
        if deployment.cores > host.cores:
            shortfall = f"{deployment.cores} cores requested but the host has {host.cores}"
            if deployment.device != "CPU" and host.cores >= 1:
                # The device path speaks first: a GPU deployment on a host whose GPU path is missing is infeasible
                # for that reason at any size, so ask the platform's own rule (the subclass's) at a size that fits.
                device_problem = cls.supports(dataclasses.replace(deployment, cores=host.cores), host)
                if device_problem:
                    return f"{device_problem}; also {shortfall}"
            return shortfall
        if deployment.platform not in host.available_platforms:
            reason = dict(host.platform_reasons).get(deployment.platform, "not available on this host")
            return f"platform {deployment.platform} unavailable: {reason}"
        return None

    @classmethod
    def describe(cls) -> dict:
        """What the platform is and supports in principle (``doctor``, ``study --plan``)."""
        return {"name": cls.name, "title": cls.title, "order": cls.order, "cpu_modes": list(cls.cpu_modes),
                "devices": list(cls.devices), "guest": cls.guest, "container": cls.container, "design_limit": cls.design_limit,
                "class": f"{cls.__module__}:{cls.__qualname__}"}

    @abc.abstractmethod
    def probe(self) -> Availability:
        ...

    @abc.abstractmethod
    def session(self, deployment: Deployment, workdir: Path) -> contextlib.AbstractContextManager[Session]:
        ...


# ---------------------------------------------------------------------------
# Helpers shared by platforms


def kill_process_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM the process's group, then SIGKILL after ``grace_s``; reap it."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


@dataclasses.dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float


def run_command(argv: Sequence[str], timeout: float, env: dict | None = None,
                preexec_fn: Callable[[], None] | None = None, cwd: str | None = None,
                input_text: str | None = None) -> CommandResult:
    """Run an argument list in its own process group; kill the whole group on timeout or Ctrl-C.

    The child gets ``PR_SET_PDEATHSIG=SIGKILL`` (:func:`e2ebench.lifecycle.die_with_parent`): it dies
    with the caller even when the caller is SIGKILLed.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE if input_text else subprocess.DEVNULL,
        env=env, cwd=cwd, text=True, start_new_session=True, preexec_fn=die_with_parent(preexec_fn),
    )
    try:
        out, err = proc.communicate(input=input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_process_group(proc)
        out, err = proc.communicate()
        raise WorkerFailure(f"timed out after {timeout:.0f} s; the process group was killed",
                            output_tail=((out or "") + (err or ""))[-4000:])
    except BaseException:
        kill_process_group(proc)
        raise
    return CommandResult(proc.returncode, out or "", err or "", time.perf_counter() - t0)


def result_from_command(cmd: CommandResult) -> dict:
    """Parse the worker's RunResult out of a finished command, with a useful error when missing."""
    try:
        return extract_result(cmd.stdout)
    except WorkerFailure as exc:
        tail = (cmd.stdout[-2000:] + "\n" + cmd.stderr[-3000:]).strip()
        raise WorkerFailure(f"{exc} ({exit_status(cmd.returncode)})", output_tail=tail) from None


def exit_status(returncode: int) -> str:
    """``exit status 3``, or ``killed by SIGKILL (signal 9; exit status -9)`` for a negative return code
    (also a shell's or an engine's 128+N)."""
    if returncode < 0 or 128 < returncode <= 128 + 64:
        number = -returncode if returncode < 0 else returncode - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name} (signal {number}; exit status {returncode})"
    return f"exit status {returncode}"


def worker_env(extra: dict | None = None) -> dict:
    """The environment a worker gets: the caller's, minus thread settings the worker sets itself, plus the
    owner mark (:data:`e2ebench.lifecycle.OWNER_ENV`) that names this process as the worker's owner."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_CPU_AFFINITY", "OMP_PROC_BIND", "OMP_PLACES")}
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(owner_env())
    if extra:
        env.update(extra)
    return env


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    box = [0.0]
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - t0
