"""Container (CN): the worker as a container's process, run by runc, podman or docker.

Engines (constructor option ``engine`` or ``E2EBENCH_CN_ENGINE``):

* ``runc`` (default) — e2ebench writes an OCI bundle (``config.json`` + root directory) and runs
  ``runc run --bundle B ID``; no daemon, no image, nothing but the OCI runtime.
* ``podman`` — ``podman run --rootfs DIR`` (or an image), rootful, cgroupfs manager, file events.
* ``docker`` — the ``docker`` CLI (argument lists) against a daemon that answers
  (``docker_host`` option, ``E2EBENCH_DOCKER_HOST`` or ``DOCKER_HOST``); the empty root becomes a
  tiny imported image ``e2ebench/hostroot:<tag>``.

CPU limits, the same for every engine:

* ``VNL`` — a CFS quota of N cores (OCI ``linux.resources.cpu.quota/period``; ``--cpus=N``); the
  container may run on every host core.
* ``PIN`` — a cpuset of N dedicated host cores chosen by :func:`cgroups.choose_pinned_cpus`
  (OCI ``linux.resources.cpu.cpus``; ``--cpuset-cpus``); the worker binds its compute threads one
  per listed CPU (host CPU ids are what a container sees).

Memory limit (option ``memory_mib``), swap included: OCI ``linux.resources.memory.limit`` and ``swap``
(runc), ``--memory``/``--memory-swap`` (podman, docker).  runc then runs with ``--keep`` so that the
container's cgroup — and its ``oom_kill`` counter and peak — outlives the worker until e2ebench has read
it; podman and docker keep the stopped container for its ``OOMKilled`` state.  A worker the OOM killer
killed is a failed run ``out of memory (limit N MiB)`` (:mod:`e2ebench.platforms.memory`).

Every container's cgroup lives under the ``e2ebench`` parent and is named
``cn-<owner pid>-<random>`` (for podman and docker that name is the per-session
``--cgroup-parent``), so :func:`cgroups.list_children` and :func:`remove_stale_containers` find
what a killed run left.  There is no network inside (a new network namespace with only loopback;
``--network none``) unless ``network=True``.

The root filesystem (see :mod:`e2ebench.platforms.rootfs`) is by default an empty read-only
directory with the host's system directories, the Python environment, the project's ``src``, the
data set and the cache bind-mounted read-only under their own paths, a tmpfs ``/tmp``, and the
LoadGen log directory read-write: the same interpreter and libraries as on bare metal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

from e2ebench.lifecycle import die_with_parent, owner_env
from e2ebench.measure import CGROUP_ROOT, cgroup_version, own_cgroups
from e2ebench.platforms import cgroups
from e2ebench.platforms import memory as memory_lib
from e2ebench.platforms import rootfs as rootfs_lib
from e2ebench.platforms import nvidia
from e2ebench.platforms.base import (Availability, CommandResult, Platform, PlatformError, Session,
                                     kill_process_group, result_from_command)
# the pure builders, re-exported here where callers have always found them
from e2ebench.platforms.container_config import (DEFAULT_CAPABILITIES, DROPPED_ENV_NAMES, GPU_ENV_PREFIXES, HOSTNAME,
                                                 MASKED_PATHS, OCI_VERSION, PASSED_ENV_NAMES, PASSED_ENV_PREFIXES,
                                                 PODMAN_NPROC_CAP, READONLY_PATHS, Bind, GpuPassthrough, cap_rlimits,
                                                 docker_base_argv, docker_gpu_args, docker_run_argv, engine_limit_args,
                                                 engine_run_args, oci_config, parse_gpu_selection, plan_binds,
                                                 podman_base_argv, podman_gpu_args, podman_run_argv)
from e2ebench.scenario import Deployment, HostFacts
from e2ebench.spec import WorkerFailure, WorkerSpec

ENGINES: tuple[str, ...] = ("runc", "podman", "docker")
DEFAULT_ENGINE = "runc"
ENGINE_ENV = "E2EBENCH_CN_ENGINE"
ROOTFS_ENV = "E2EBENCH_CN_ROOTFS"
NETWORK_ENV = "E2EBENCH_CN_NETWORK"
DOCKER_HOST_ENV = "E2EBENCH_DOCKER_HOST"
GPUS_ENV = "E2EBENCH_CN_GPUS"            # GPU deployments: "all" (default) or indices "0" / "0,1"
CONTAINER_PREFIX = "e2ebench-"          # container ids/names: e2ebench-cn-<owner pid>-<random>
CGROUP_KIND = "cn"
DEFAULT_PERIOD_US = cgroups.DEFAULT_PERIOD_US
ENGINE_CALL_TIMEOUT_S = 60.0

# ---------------------------------------------------------------------------
# OCI runtime bundle on disk (the config itself is container_config.oci_config; shared with VMCN)


def make_oci_bundle(bundle_dir: Path, argv: list[str], env: dict[str, str], *, root: Path,
                    readonly_binds: list[str], writable_binds: list[str], quota_cores: float | None,
                    cpuset: list[int] | None, cgroups_path: str | None, network: bool = False, cwd: str = "/",
                    symlinks: dict[str, str] | None = None, hostname: str = HOSTNAME,
                    rlimits: dict[str, tuple[int, int]] | None = None, create_mount_targets: bool = True,
                    memory_mib: int | None = None, memory_swap: bool = True, gpu: GpuPassthrough | None = None) -> Path:
    """Write an OCI bundle for ``runc run --bundle bundle_dir ID`` and return ``bundle_dir``.

    ``root`` is the root filesystem directory (relative paths are inside the bundle).  A root
    inside the bundle is created when missing, with ``symlinks`` (``{"/lib": "usr/lib"}``) and —
    because a read-only root cannot grow mount points at run time and runc cannot create them
    inside a read-only bind — an empty directory (or file, for a file source) for every mount
    destination.  Bind strings are identity paths (``"/data"``) or ``"SRC:DEST"``.  Nothing else
    about the calling host is assumed: the same bundle is used by runc inside a VM guest.
    """
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    root = Path(root)
    root_abs = root if root.is_absolute() else bundle_dir / root
    inside_bundle = rootfs_lib.is_within(os.path.abspath(root_abs), os.path.abspath(bundle_dir))
    if inside_bundle:
        rootfs_lib.make_empty_root(root_abs, symlinks or {})
        root_text = os.path.relpath(root_abs, bundle_dir)
    else:
        root_text = str(root_abs)
        if symlinks and root_abs.is_dir() and os.access(root_abs, os.W_OK):
            rootfs_lib.make_empty_root(root_abs, symlinks)
    config = oci_config(argv, env, root=root_text, readonly_binds=readonly_binds, writable_binds=writable_binds,
                        quota_cores=quota_cores, cpuset=cpuset, cgroups_path=cgroups_path, network=network,
                        cwd=cwd, hostname=hostname, rlimits=rlimits, memory_mib=memory_mib, memory_swap=memory_swap,
                        gpu=gpu)
    if create_mount_targets:
        prepare_mount_targets(root_abs, config["mounts"], extra_dirs=[cwd])
    (bundle_dir / "config.json").write_text(json.dumps(config, indent=1))
    return bundle_dir


def prepare_mount_targets(root: Path, mounts: list[dict], extra_dirs: list[str] = ()) -> list[Path]:
    """Create the mount points that a read-only root cannot grow at run time; return what was made.

    Each destination is backed by the deepest earlier mount that contains it: inside the root
    itself the empty directory (or file, for a file bind) is created there; inside a tmpfs, proc
    or sysfs nothing is needed (the runtime creates it in the fresh file system); inside a
    non-identity bind (a directory of a cached image) it is created in that bind's source; inside
    an identity bind of a host directory nothing is created on the host.  Never follows a
    symlink out of the root.
    """
    made: list[Path] = []
    root = Path(root)
    if not root.is_dir() or not os.access(root, os.W_OK):
        return made
    entries = [(m["destination"], m.get("type"), m.get("source", "")) for m in mounts]
    entries += [(d, "dir", "") for d in extra_dirs]
    for index, (destination, kind, source) in enumerate(entries):
        outer = None
        for earlier in entries[:index]:
            if earlier[1] == "dir":
                continue
            if earlier[0] != destination and rootfs_lib.is_within(destination, earlier[0]):
                if outer is None or len(earlier[0]) > len(outer[0]):
                    outer = earlier
        is_file = kind == "bind" and os.path.isfile(source)
        if outer is None:
            base, relative = root, destination.lstrip("/")
        elif outer[1] == "bind" and os.path.normpath(outer[2]) != os.path.normpath(outer[0]):
            base, relative = Path(outer[2]), os.path.relpath(destination, outer[0])
        else:
            continue
        target = _make_mount_target(base, relative, is_file)
        if target is not None:
            made.append(target)
    return made


def _make_mount_target(base: Path, relative: str, is_file: bool) -> Path | None:
    """Create ``base/relative`` (a directory, or an empty file) unless it exists; stay inside ``base``."""
    target = base / relative
    if relative in ("", ".") or os.path.lexists(target):
        return None
    real_base = os.path.realpath(base)
    parent = target.parent
    existing = parent
    while not os.path.lexists(existing) and existing != base:
        existing = existing.parent
    if not rootfs_lib.is_within(os.path.realpath(existing), real_base):
        return None   # a symlink inside the root points elsewhere: leave it to the runtime
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if is_file:
            target.touch()
        else:
            target.mkdir()
    except OSError:
        return None   # e.g. read-only: the runtime reports it if it matters
    return target


# ---------------------------------------------------------------------------
# cgroups of containers (v1: one directory per hierarchy)


def cgroup_hierarchies(root: Path = CGROUP_ROOT) -> list[tuple[Path, str]]:
    """(mount directory, this process's cgroup path in it) for every mounted hierarchy.

    v2: just ``root``.  v1/hybrid: every directory under ``root`` that is a mount point
    (``cpu``, ``cpuset``, ``memory``, ``systemd``, ``unified``...), co-mounted ones once.
    """
    own = own_cgroups()
    if cgroup_version(root) == 2:
        return [(root, own.get("", "/"))]
    out = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return []
    for name in entries:
        d = root / name
        if d.is_symlink() or not d.is_dir() or not os.path.ismount(d):
            continue
        if name == "unified":
            path = own.get("", "/")
        else:
            keys = [("name=" + name) if name == "systemd" else c for c in name.split(",")]
            path = next((own[k] for k in keys if k in own), "/")
        out.append((d, path))
    return out


def runc_cgroups_path(name: str, root: Path = CGROUP_ROOT) -> str:
    """The ``linux.cgroupsPath`` for a runc container named ``name``.

    On v1, when this process sits in the root cpu and cpuset cgroups, a *relative* path
    ``e2ebench/<name>`` puts the container's cpu/cpuset cgroups at ``/e2ebench/<name>`` (where
    :func:`cgroups.list_children` looks) while the other hierarchies (memory, pids...) nest under
    the caller's own cgroups, so that an outer memory accounting keeps covering the worker.
    Otherwise (v2, or a caller in a nested cpu cgroup) the path is absolute ``/e2ebench/<name>``.
    """
    if cgroup_version(root) == 1:
        own = own_cgroups()
        if own.get("cpu", "/") == "/" and own.get("cpuset", "/") == "/":
            return f"{cgroups.PARENT}/{name}"
    return f"/{cgroups.PARENT}/{name}"


def cgroup_dirs_of(cgroups_path: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """Every directory a runtime creates for ``cgroups_path`` (runc's rule for relative paths)."""
    out = []
    for mount, own in cgroup_hierarchies(root):
        if cgroups_path.startswith("/"):
            out.append(mount / cgroups_path.lstrip("/"))
        else:
            out.append(mount / own.lstrip("/") / cgroups_path)
    return out


remove_cgroup_tree = cgroups.remove_cgroup_tree


def remove_cgroup_dirs(dirs: list[Path], timeout_s: float = 10.0) -> list[str]:
    """Remove each tree; return the errors (one line each) instead of stopping at the first."""
    errors = []
    for d in dirs:
        try:
            remove_cgroup_tree(d, timeout_s)
        except (cgroups.CgroupError, OSError) as exc:
            errors.append(str(exc))
    return errors


def memory_cgroup_dir(dirs: list[Path], root: Path = CGROUP_ROOT) -> Path | None:
    """The memory controller's directory among a container's cgroup directories (v2: the one directory)."""
    for d in dirs:
        if cgroup_version(root) == 2:
            return d
        try:
            hierarchy = d.relative_to(root).parts[0]
        except (ValueError, IndexError):
            continue
        if "memory" in hierarchy.split(","):
            return d
    return None


def swap_accounting(root: Path = CGROUP_ROOT) -> bool:
    """Can a runtime limit memory + swap here?  (v1 needs ``memory.memsw.*``; v2 runtimes skip a missing
    ``memory.swap.max`` when asked for no swap.)"""
    if cgroup_version(root) == 1:
        return (root / "memory" / "memory.memsw.limit_in_bytes").exists()
    return True


def container_cgroup_leftovers(root: Path = CGROUP_ROOT, only_dead_owners: bool = True) -> list[Path]:
    """``cn-<pid>-*`` cgroup directories in every hierarchy (at ``/e2ebench`` and under this process's
    own cgroup), optionally only those whose owner process is gone."""
    out: set[Path] = set()
    for mount, own in cgroup_hierarchies(root):
        for parent in {mount / cgroups.PARENT, mount / own.lstrip("/") / cgroups.PARENT}:
            try:
                children = [parent / c for c in os.listdir(parent)]
            except OSError:
                continue
            for child in children:
                if not child.name.startswith(CGROUP_KIND + "-") or not child.is_dir():
                    continue
                owner = cgroups.owner_pid(child.name)
                if only_dead_owners and (owner is None or Path(f"/proc/{owner}").exists()):
                    continue
                out.add(child)
    return sorted(out)


# ---------------------------------------------------------------------------
# Engines


def _quiet(argv: list[str], timeout: float = ENGINE_CALL_TIMEOUT_S, env: dict | None = None) -> subprocess.CompletedProcess:
    """A short engine call (argument list) that must not raise: rc 127 when the tool is missing."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(argv, 127, "", str(exc))
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:.0f} s: {' '.join(argv[:4])}")


def _owner_of(container_name: str) -> int | None:
    """Owner pid in ``e2ebench-cn-<pid>-<random>``."""
    if not container_name.startswith(CONTAINER_PREFIX):
        return None
    return cgroups.owner_pid(container_name[len(CONTAINER_PREFIX):])


def _owner_dead(container_name: str) -> bool:
    owner = _owner_of(container_name)
    return owner is not None and not Path(f"/proc/{owner}").exists()


def runc_containers() -> list[dict]:
    """``runc list`` as dicts (id, pid, status, bundle...); [] when runc is missing."""
    proc = _quiet(["runc", "list", "--format", "json"], timeout=20)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    try:
        return json.loads(proc.stdout) or []
    except json.JSONDecodeError:
        return []


def engine_rlimits(engine: str) -> dict[str, tuple[int, int]]:
    """The caller's own open-files and process limits (podman: nproc capped at 32768).

    Given explicitly to podman and docker, whose defaults (1048576 open files) fail here without
    CAP_SYS_RESOURCE; runc bundles carry none, so the worker keeps the runtime's limits.
    """
    limits = {"nofile": resource.getrlimit(resource.RLIMIT_NOFILE), "nproc": resource.getrlimit(resource.RLIMIT_NPROC)}
    return cap_rlimits(engine, limits, resource.RLIM_INFINITY)


@dataclasses.dataclass
class EngineCheck:
    """What :meth:`Container.probe` found about one engine."""

    installed: bool
    works: bool
    version: str = ""
    reason: str = ""
    path: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _version_line(argv: list[str]) -> str:
    proc = _quiet(argv, timeout=20)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr).strip() else ""


def check_runc(workdir: Path | None = None) -> EngineCheck:
    """Installed, and does a real container start (``/bin/true`` in an empty root with ``/usr``)?"""
    path = shutil.which("runc")
    if not path:
        return EngineCheck(False, False, reason="runc is not installed (apt-get install runc)")
    version = _version_line(["runc", "--version"])
    if os.geteuid() != 0:
        return EngineCheck(True, False, version, "e2ebench drives runc as root (rootless runc is not supported)", path)
    ok, why = cgroups.writable()
    if not ok:
        return EngineCheck(True, False, version, f"cgroups not writable: {why}", path)
    with tempfile.TemporaryDirectory(prefix="e2ebench-runc-probe-", dir=workdir) as tmp:
        name = cgroups.cgroup_name(CGROUP_KIND)
        cid = CONTAINER_PREFIX + name
        binds, links = rootfs_lib.host_layout()
        cg_path = runc_cgroups_path(name)
        bundle = make_oci_bundle(Path(tmp) / "bundle", ["/bin/sh", "-c", "exit 0"], {"PATH": "/usr/bin:/bin"},
                                 root=Path("rootfs"), readonly_binds=binds, writable_binds=[], quota_cores=None,
                                 cpuset=None, cgroups_path=cg_path, symlinks=links)
        try:
            proc = _quiet(["runc", "run", "--bundle", str(bundle), cid], timeout=60)
        finally:
            _quiet(["runc", "delete", "--force", cid], timeout=20)
            remove_cgroup_dirs(cgroup_dirs_of(cg_path))
    if proc.returncode != 0:
        return EngineCheck(True, False, version, f"runc run failed: {(proc.stderr or proc.stdout).strip()[-300:]}", path)
    return EngineCheck(True, True, version, "a test container ran", path)


def check_podman(storage_root: str | None = None, run_root: str | None = None, workdir: Path | None = None) -> EngineCheck:
    path = shutil.which("podman")
    if not path:
        return EngineCheck(False, False, reason="podman is not installed (apt-get install podman)")
    version = _version_line(["podman", "--version"])
    if os.geteuid() != 0:
        return EngineCheck(True, False, version, "e2ebench drives podman as root (rootless is not supported)", path)
    if not shutil.which("runc"):
        return EngineCheck(True, False, version, "podman needs runc here (crun refuses hybrid cgroups)", path)
    with tempfile.TemporaryDirectory(prefix="e2ebench-podman-probe-", dir=workdir) as tmp:
        name = cgroups.cgroup_name(CGROUP_KIND)
        binds, links = rootfs_lib.host_layout()
        root = rootfs_lib.make_empty_root(Path(tmp) / "rootfs", links)
        argv = podman_base_argv(storage_root, run_root) + [
            "run", "--rm", "--name", CONTAINER_PREFIX + name, "--read-only", "--network", "none",
            "--cgroup-parent", f"/{cgroups.PARENT}/{name}"]
        for key, (soft, hard) in engine_rlimits("podman").items():
            argv += ["--ulimit", f"{key}={soft}:{hard}"]
        for b in binds:
            argv += ["-v", f"{b}:{b}:ro"]
        argv += ["--rootfs", str(root), "/bin/sh", "-c", "exit 0"]
        try:
            proc = _quiet(argv, timeout=90)
        finally:
            _quiet(podman_base_argv(storage_root, run_root) + ["rm", "--force", "--time", "0", CONTAINER_PREFIX + name], timeout=30)
            remove_cgroup_dirs([m / cgroups.PARENT / name for m, _ in cgroup_hierarchies()])
    if proc.returncode != 0:
        return EngineCheck(True, False, version, f"podman run failed: {(proc.stderr or proc.stdout).strip()[-300:]}", path)
    return EngineCheck(True, True, version, "a test container ran", path)


def check_docker(host: str | None) -> EngineCheck:
    path = shutil.which("docker")
    if not path:
        return EngineCheck(False, False, reason="the docker CLI is not installed (apt-get install docker.io)")
    proc = _quiet(docker_base_argv(host) + ["version", "--format", "{{.Server.Version}}"], timeout=15)
    if proc.returncode != 0 or not proc.stdout.strip():
        err = (proc.stderr or proc.stdout).strip().splitlines()
        return EngineCheck(True, False, _version_line(["docker", "--version"]),
                           f"no docker daemon answers at {host or 'the default socket'}: {err[-1] if err else 'no answer'}",
                           path)
    return EngineCheck(True, True, f"daemon {proc.stdout.strip()}", f"daemon at {host or 'the default socket'} answers",
                       path)


# ---------------------------------------------------------------------------
# Session


def run_container_command(argv: list[str], timeout: float, stop_container) -> CommandResult:
    """Run an engine's foreground command (``runc run``, ``podman run``...) in its own process group.

    On timeout or Ctrl-C the container is killed first (``stop_container``), then the engine's
    process group; a timeout raises :class:`WorkerFailure`, anything else is re-raised.  The engine's
    process dies with the caller (``PR_SET_PDEATHSIG``); the container's worker follows through its
    lifeline (:mod:`e2ebench.lifecycle`).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env={**os.environ, **owner_env()}, text=True, start_new_session=True,
                            preexec_fn=die_with_parent())
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_container()
        kill_process_group(proc)
        out, err = proc.communicate()
        raise WorkerFailure(f"timed out after {timeout:g} s; the container was killed",
                            output_tail=((out or "") + (err or ""))[-4000:]) from None
    except BaseException:
        stop_container()
        kill_process_group(proc)
        raise
    return CommandResult(proc.returncode, out or "", err or "", time.perf_counter() - t0)



def container_env(extra: dict[str, str] | None = None, source: dict[str, str] | None = None,
                  gpu: bool = False) -> dict[str, str]:
    """The worker's environment inside a container: a clean one, not the caller's whole environment.

    PATH (the venv first), HOME, PYTHONPATH (the project's src), PYTHONUNBUFFERED,
    E2EBENCH_IN_CONTAINER=1, E2EBENCH_CACHE, plus the caller's locale, timezone, allocator and
    library tuning variables (``E2EBENCH_*``, ``LC_*``, ``MALLOC_*``, ``KMP_*``, ``TORCH_*`` ...);
    thread-count variables are left to the worker.  A GPU deployment (``gpu``) also gets ``CUDA_*`` and
    ``NVIDIA_*`` (which GPUs CUDA sees, its caches).
    """
    source = dict(os.environ if source is None else source)
    from e2ebench.runner import cache_dir

    env: dict[str, str] = {}
    prefixes = PASSED_ENV_PREFIXES + (GPU_ENV_PREFIXES if gpu else ())
    for key, value in source.items():
        if key in DROPPED_ENV_NAMES:
            continue
        if key in PASSED_ENV_NAMES or key.startswith(prefixes):
            env[key] = value
    venv_bin = str(Path(sys.prefix) / "bin")
    env.update({
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": source.get("HOME", "/root"),
        "TMPDIR": "/tmp",
        "PYTHONPATH": str(rootfs_lib.project_src_dir()),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "E2EBENCH_IN_CONTAINER": "1",
        "E2EBENCH_CACHE": str(cache_dir()),
        **owner_env(),
    })
    if extra:
        env.update(extra)
    return env


def _is_mount_free(path: Path) -> bool:
    """True when nothing is mounted at or below ``path`` (safe to delete)."""
    prefix = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mount_point = line.split()[4].replace("\\040", " ")
                if rootfs_lib.is_within(mount_point, prefix):
                    return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def _deferred_interrupts() -> Iterator[None]:
    """Hold back Ctrl-C while tearing down (main thread only), then deliver it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def remember(signum, frame):  # noqa: ARG001
        pending.append(signum)

    old = signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if pending and callable(old):
            old(signal.SIGINT, None)


class ContainerSession(Session):
    """One provisioned container deployment; one container per :meth:`run_worker` call."""

    def __init__(self, platform: "Container", deployment: Deployment, workdir: Path, plan: cgroups.CpuLimitPlan):
        super().__init__(deployment, workdir)
        self.platform = platform
        self.engine = platform.engine
        self.plan = plan
        self.name = cgroups.cgroup_name(CGROUP_KIND)               # cn-<pid>-<random>
        self.container_id = CONTAINER_PREFIX + self.name            # e2ebench-cn-<pid>-<random>
        self.bundle_dir = workdir / f"bundle-{self.name}"
        self.spec_dir = workdir / f"specs-{self.name}"
        self.root_dir: Path | None = None
        self.rootfs_source: str | None = None
        self.image: str | None = None
        self.symlinks: dict[str, str] = {}
        self.system_binds: list[str] = []
        self.cgroups_path: str | None = None          # runc
        self.cgroup_parent: str | None = None         # podman, docker
        self.runs = 0
        self.teardown_errors: list[str] = []
        self.uses_gpu = deployment.device == "GPU"
        self.gpu: GpuPassthrough | None = None       # runc: the device nodes and libraries passed in
        host = platform.docker_host or ""
        self.shares_host_kernel = self.engine != "docker" or not host or host.startswith("unix://")

    # -- provisioning -------------------------------------------------------------------------

    def provision(self) -> None:
        """Prepare the root filesystem, the cgroup location and (docker) the image; no container yet.

        The container's root is always this session's own empty directory (runc, podman) or a tiny
        empty image (docker); system directories come in as read-only binds from the host or from
        the chosen image directory, so a cached image is shared without being written to.
        """
        choice = self.platform.rootfs
        self.spec_dir.mkdir(parents=True, exist_ok=True)
        source: Path | None = None
        if choice.kind == "host":
            source = Path("/")
        elif choice.kind == "debootstrap":
            from e2ebench.runner import cache_dir

            try:
                source = rootfs_lib.build_debootstrap_root(cache_dir())
            except rootfs_lib.RootfsError as exc:
                raise PlatformError(f"debootstrap root filesystem: {exc}") from None
        elif choice.kind == "directory":
            source = Path(choice.value)
            if not source.is_dir():
                raise PlatformError(f"container root filesystem {choice.value} is not a directory")
        else:
            if self.engine == "runc":
                raise PlatformError("runc needs a root filesystem directory, not an image name; "
                                    "use rootfs=host, debootstrap or a directory")
            self.image = choice.value
        if source is not None:
            self.system_binds, self.symlinks = rootfs_lib.system_layout(source)
        self.rootfs_source = str(source) if source is not None else None
        if self.engine in ("runc", "podman") and self.image is None:
            self.root_dir = rootfs_lib.make_empty_root(self.bundle_dir / "rootfs", self.symlinks)
        if self.engine == "runc":
            self.cgroups_path = runc_cgroups_path(self.name)
        else:
            self.cgroup_parent = f"/{cgroups.PARENT}/{self.name}"
        if self.engine == "docker" and self.image is None:
            self.image = self._docker_empty_image()
        self.info = {
            "platform": "CN",
            "engine": self.engine,
            "engine_version": self.platform.engine_version(),
            "container_id": self.container_id,
            "rootfs": str(choice),
            "rootfs_source": self.rootfs_source,
            "image": self.image,
            "cgroups_path": self.cgroups_path or self.cgroup_parent,
            "cgroup_version": cgroup_version(),
            "pinned_cpus": list(self.plan.cpus) if self.plan.cpus else None,
            "quota_cores": self.plan.quota_cores,
            "network": self.platform.network,
            "limit_mechanism": "cgroup (container runtime)",
            "memory_limit_mib": self.platform.memory_mib,
        }
        if self.uses_gpu:
            self.info["gpu_passthrough"] = self._gpu_info()

    def _gpu_info(self) -> dict:
        """How this session's containers get the GPU (recorded in platform_info)."""
        selection = self.platform.gpu_selection
        if self.engine == "runc":
            self.gpu = nvidia.host_gpu_passthrough(selection)
            return {"mechanism": "OCI linux.devices + device cgroup rules + read-only driver library binds",
                    "devices": [d.path for d in self.gpu.devices], "libraries": list(self.gpu.libraries)}
        if self.engine == "podman":
            return {"mechanism": "CDI", "args": podman_gpu_args(selection)}
        return {"mechanism": "docker --gpus", "args": docker_gpu_args(selection)}

    def _docker_empty_image(self) -> str:
        """``e2ebench/hostroot:<tag>``: an empty root with the layout's symlinks, imported once per daemon."""
        base = docker_base_argv(self.platform.docker_host)
        tag = "e2ebench/hostroot:" + rootfs_lib.layout_tag(self.symlinks)
        if _quiet(base + ["image", "inspect", tag], timeout=30).returncode == 0:
            return tag
        self.bundle_dir.mkdir(parents=True, exist_ok=True)
        tar = rootfs_lib.empty_root_tar(self.bundle_dir / "root.tar", self.symlinks)
        proc = _quiet(base + ["import", str(tar), tag], timeout=120)
        tar.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise PlatformError(f"docker import failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
        return tag

    # -- limits -------------------------------------------------------------------------------

    def expected_limits(self) -> tuple[list[int] | None, float | None]:
        if self.plan.cpus is not None:
            return list(self.plan.cpus), None
        return sorted(os.sched_getaffinity(0)), self.plan.quota_cores

    # -- running ------------------------------------------------------------------------------

    def _binds_for(self, spec: WorkerSpec) -> tuple[list[str], list[str]]:
        """(read-only, writable) identity binds for one run: system directories (host root),
        the Python environment, the project's src, the spec directory, the cache, the data set
        and weights; the LoadGen log directory writable."""
        from e2ebench.runner import cache_dir

        readonly = list(self.system_binds) + rootfs_lib.python_environment_dirs() + [str(self.spec_dir)]
        cache = cache_dir()
        if cache.is_dir():
            readonly.append(os.path.abspath(cache))
        for path in (spec.data, spec.weights):
            if path and os.path.exists(path):
                readonly.append(os.path.abspath(path))
        writable = []
        if spec.output_dir:
            Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
            writable.append(os.path.abspath(spec.output_dir))
        return readonly, writable

    def run_worker(self, spec: WorkerSpec, timeout: float) -> dict:
        spec.size_threads(self.deployment.cores)
        spec.bind_cpus = list(self.plan.cpus) if self.plan.cpus else None
        spec.die_with_parent = self.engine == "runc"      # the container's init is a child of `runc run`
        self.runs += 1
        spec.platform_info = {**self.info, "run": self.runs}
        spec_path = self.spec_dir / f"spec-{self.runs}.json"
        readonly, writable = self._binds_for(spec)
        env = container_env(gpu=self.uses_gpu)
        argv = [sys.executable, "-m", "e2ebench.worker", "--spec", str(spec_path)]
        if self.engine == "runc":
            make_oci_bundle(self.bundle_dir, argv, env, root=self.root_dir, readonly_binds=readonly,
                            writable_binds=writable, quota_cores=self.plan.quota_cores,
                            cpuset=list(self.plan.cpus) if self.plan.cpus else None,
                            cgroups_path=self.cgroups_path, network=self.platform.network, symlinks=self.symlinks,
                            memory_mib=self.platform.memory_mib, memory_swap=swap_accounting(), gpu=self.gpu)
            # --keep: the stopped container keeps its cgroup (OOM counter, peak) until _remove_container
            keep = ["--keep"] if self.platform.memory_mib is not None else []
            command = ["runc", "run", *keep, "--bundle", str(self.bundle_dir), self.container_id]
        elif self.engine == "podman":
            command = self._podman_run_argv(argv, env, readonly, writable)
        else:
            command = self._docker_run_argv(argv, env, readonly, writable)
        spec.platform_info["launched_at"] = time.time()
        spec.write(spec_path)
        limit_mib = self.platform.memory_mib
        before = self._memory_stats() if limit_mib is not None else None
        after, engine_oom = None, None
        try:
            cmd = run_container_command(command, timeout, stop_container=self._kill_container)
            if limit_mib is not None:     # before the container (and runc's cgroup) is removed
                after, engine_oom = self._memory_stats(), self._engine_oom_killed()
        finally:
            self._remove_container()
        if limit_mib is not None:
            evidence = memory_lib.oom_kill_seen(before, after, cmd.returncode,
                                                counts_descendants=self.engine == "runc", limit_bytes=limit_mib << 20)
            if engine_oom and not evidence:
                evidence = f"{self.engine} inspect: State.OOMKilled = true"
            if evidence and cmd.returncode != 0:
                tail = (cmd.stdout[-2000:] + "\n" + cmd.stderr[-3000:]).strip()
                return memory_lib.oom_result(spec, limit_mib, f"{evidence} (exit status {cmd.returncode})",
                                             after.peak_mib if after else None, tail, self.info)
        result = result_from_command(cmd)
        result.setdefault("platform_info", {}).update(self.info)
        result["worker_wall_s"] = cmd.wall_s
        return memory_lib.annotate(result, limit_mib, after)

    def _memory_stats(self) -> memory_lib.MemoryStats | None:
        """The memory counters of this run's container: runc's own cgroup (kept by ``--keep``); for podman and
        docker the session's ``--cgroup-parent``, which holds the container's cgroup."""
        if self.cgroups_path:
            d = memory_cgroup_dir(cgroup_dirs_of(self.cgroups_path))
        else:
            d = memory_cgroup_dir([m / cgroups.PARENT / self.name for m, _ in cgroup_hierarchies()])
        return memory_lib.read_memory_stats(d) if d is not None else None

    def _engine_oom_killed(self) -> bool:
        """podman/docker: the stopped container's ``State.OOMKilled`` (runc has no such state)."""
        if self.engine == "podman":
            base = podman_base_argv(self.platform.podman_root, self.platform.podman_runroot)
        elif self.engine == "docker":
            base = docker_base_argv(self.platform.docker_host)
        else:
            return False
        proc = _quiet(base + ["inspect", "--format", "{{.State.OOMKilled}}", self.container_id], timeout=30)
        return proc.returncode == 0 and proc.stdout.strip().lower() == "true"

    def _common_run_args(self, env: dict[str, str], readonly: list[str], writable: list[str]) -> list[str]:
        # with a memory limit the stopped container stays for its OOMKilled state; _remove_container removes it
        limits = engine_limit_args(self.plan.cpus, self.plan.quota_cores if self.plan.cpus is None else None,
                                   self.platform.memory_mib)
        return engine_run_args(name=self.container_id, cgroup_parent=self.cgroup_parent or "", network=self.platform.network,
                               limit_args=limits, rlimits=engine_rlimits(self.engine), readonly_binds=readonly,
                               writable_binds=writable, env=env, keep=self.platform.memory_mib is not None)

    def _podman_run_argv(self, argv: list[str], env: dict[str, str], readonly: list[str], writable: list[str]) -> list[str]:
        base = podman_base_argv(self.platform.podman_root, self.platform.podman_runroot)
        run_args = self._common_run_args(env, readonly, writable)
        gpu_args = podman_gpu_args(self.platform.gpu_selection) if self.uses_gpu else []
        if self.image is not None:
            return podman_run_argv(base, run_args, argv, image=self.image, gpu_args=gpu_args)
        mounts = [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}]
        mounts += [{"destination": b.destination, "type": "bind", "source": b.source} for b in plan_binds(readonly, writable)]
        prepare_mount_targets(self.root_dir, mounts)
        return podman_run_argv(base, run_args, argv, rootfs=str(self.root_dir), gpu_args=gpu_args)

    def _docker_run_argv(self, argv: list[str], env: dict[str, str], readonly: list[str], writable: list[str]) -> list[str]:
        gpu_args = docker_gpu_args(self.platform.gpu_selection) if self.uses_gpu else []
        return docker_run_argv(docker_base_argv(self.platform.docker_host), self._common_run_args(env, readonly, writable),
                               argv, image=self.image, gpu_args=gpu_args)

    def _kill_container(self) -> None:
        """SIGKILL the container's processes now (the worker is PID 1 in its namespace and would
        ignore the SIGTERM that the engine forwards)."""
        if self.engine == "runc":
            _quiet(["runc", "kill", self.container_id, "KILL"], timeout=20)
        elif self.engine == "podman":
            base = podman_base_argv(self.platform.podman_root, self.platform.podman_runroot)
            _quiet(base + ["kill", "--signal", "KILL", self.container_id], timeout=30)
        else:
            _quiet(docker_base_argv(self.platform.docker_host) + ["kill", self.container_id], timeout=30)

    def _remove_container(self) -> None:
        """Force-remove this session's container if it still exists (timeout, Ctrl-C, crash)."""
        if self.engine == "runc":
            # `runc run` removes the container when its process exits; after a kill it may remain
            state = _quiet(["runc", "state", self.container_id], timeout=20)
            if state.returncode == 0:
                _quiet(["runc", "kill", self.container_id, "KILL"], timeout=20)
                proc = _quiet(["runc", "delete", "--force", self.container_id], timeout=30)
                if proc.returncode != 0 and _quiet(["runc", "state", self.container_id], timeout=20).returncode == 0:
                    self.teardown_errors.append(f"runc delete {self.container_id}: {proc.stderr.strip()[-200:]}")
        elif self.engine == "podman":
            base = podman_base_argv(self.platform.podman_root, self.platform.podman_runroot)
            _quiet(base + ["rm", "--force", "--time", "0", "--ignore", self.container_id], timeout=60)
        else:
            _quiet(docker_base_argv(self.platform.docker_host) + ["rm", "--force", self.container_id], timeout=60)

    # -- teardown -----------------------------------------------------------------------------

    def teardown(self) -> None:
        """Remove the container, its cgroups (every hierarchy) and the bundle; idempotent."""
        self._remove_container()
        if self.cgroups_path:
            dirs = cgroup_dirs_of(self.cgroups_path)
        else:
            dirs = [m / cgroups.PARENT / self.name for m, _ in cgroup_hierarchies()]
        self.teardown_errors += remove_cgroup_dirs(dirs)
        for d in (self.bundle_dir, self.spec_dir):
            if d.exists():
                if _is_mount_free(d):
                    shutil.rmtree(d, ignore_errors=True)
                else:
                    self.teardown_errors.append(f"{d} still has mounts; left in place")
        if self.teardown_errors:
            warnings.warn("container teardown incomplete: " + "; ".join(self.teardown_errors), RuntimeWarning,
                          stacklevel=2)


# ---------------------------------------------------------------------------
# Platform


def remove_stale_containers(engine: str | None = None, docker_host: str | None = None,
                            podman_root: str | None = None, podman_runroot: str | None = None) -> list[str]:
    """Remove containers and cgroups that e2ebench runs which died (SIGKILL) left behind.

    Only names ``e2ebench-cn-<pid>-*`` / ``cn-<pid>-*`` whose owner process no longer exists are
    touched; a live run's container is never removed.  Returns what was removed.
    """
    removed = []
    if engine in (None, "runc") and shutil.which("runc"):
        for c in runc_containers():
            cid = c.get("id", "")
            if _owner_dead(cid):
                _quiet(["runc", "kill", cid, "KILL"], timeout=20)
                _quiet(["runc", "delete", "--force", cid], timeout=30)
                removed.append(f"runc:{cid}")
    if engine == "podman" and shutil.which("podman"):
        base = podman_base_argv(podman_root, podman_runroot)
        proc = _quiet(base + ["ps", "--all", "--format", "{{.Names}}", "--filter", f"name=^{CONTAINER_PREFIX}{CGROUP_KIND}-"],
                      timeout=60)
        for name in proc.stdout.split():
            if _owner_dead(name):
                _quiet(base + ["rm", "--force", "--time", "0", name], timeout=60)
                removed.append(f"podman:{name}")
    if engine == "docker" and shutil.which("docker"):
        base = docker_base_argv(docker_host)
        proc = _quiet(base + ["ps", "--all", "--format", "{{.Names}}", "--filter", f"name=^{CONTAINER_PREFIX}{CGROUP_KIND}-"],
                      timeout=30)
        for name in proc.stdout.split():
            if _owner_dead(name):
                _quiet(base + ["rm", "--force", name], timeout=60)
                removed.append(f"docker:{name}")
    for d in container_cgroup_leftovers():
        try:
            remove_cgroup_tree(d, 5.0)
            removed.append(str(d))
        except (cgroups.CgroupError, OSError):
            continue
    return removed


@functools.lru_cache(maxsize=16)
def _engine_gpu_problem(engine: str, docker_host: str | None, gpus: str | None) -> str | None:
    """:meth:`Container.gpu_problem` for ``supports()`` (asked once per engine and process: it may call docker)."""
    try:
        return Container(engine=engine, docker_host=docker_host, gpus=gpus).gpu_problem()
    except PlatformError as exc:
        return str(exc)


class Container(Platform):
    name = "CN"
    title = "container"
    colour = "#1f77b4"
    order = 10
    devices = ("CPU", "GPU")
    shares_host_kernel = True
    container = True

    @classmethod
    def supports(cls, deployment: Deployment, host: HostFacts) -> str | None:
        """The base rules; for GPU, what the engine (``$E2EBENCH_CN_ENGINE``, default runc) needs to pass the GPU
        in (device nodes and driver libraries; podman a CDI spec; docker the NVIDIA runtime), then a GPU that
        torch sees here (HostFacts.gpus: the container runs this environment's torch)."""
        problem = super().supports(deployment, host)
        if problem or deployment.device != "GPU":
            return problem
        engine = (os.environ.get(ENGINE_ENV) or DEFAULT_ENGINE).strip().lower()
        if engine in ENGINES:
            gpu = _engine_gpu_problem(engine, os.environ.get(DOCKER_HOST_ENV) or os.environ.get("DOCKER_HOST") or None,
                                      os.environ.get(GPUS_ENV))
            if gpu:
                return f"{cls.name} ({engine}) cannot pass a GPU into the container: {gpu}"
        if host.gpus > 0:
            return None
        return f"{cls.name} has no GPU to pass into the container: {host.gpu_reason or 'torch.cuda sees no GPU'}"

    def __init__(self, engine: str | None = None, rootfs: str | None = None, network: bool | None = None,
                 docker_host: str | None = None, podman_root: str | None = None, podman_runroot: str | None = None,
                 memory_mib: int | None = None, gpus: str | None = None):
        engine = (engine or os.environ.get(ENGINE_ENV) or DEFAULT_ENGINE).strip().lower()
        if engine not in ENGINES:
            raise PlatformError(f"unknown container engine {engine!r}; accepted: {', '.join(ENGINES)}")
        self.engine = engine
        self.rootfs = rootfs_choice = rootfs_lib.RootfsChoice.parse(rootfs or os.environ.get(ROOTFS_ENV))
        if rootfs_choice.kind == "image" and engine == "runc":
            raise PlatformError("runc needs a root filesystem directory, not an image name "
                                f"({rootfs_choice.value!r}); use host, debootstrap or a directory")
        if network is None:
            network = os.environ.get(NETWORK_ENV, "0").strip().lower() in ("1", "true", "yes")
        self.network = bool(network)
        self.docker_host = docker_host or os.environ.get(DOCKER_HOST_ENV) or os.environ.get("DOCKER_HOST") or None
        self.podman_root = podman_root
        self.podman_runroot = podman_runroot
        self.memory_mib = memory_lib.platform_memory_mib(memory_mib)
        try:
            self.gpu_selection = parse_gpu_selection(gpus or os.environ.get(GPUS_ENV))
        except ValueError as exc:
            raise PlatformError(str(exc)) from None
        self._version: str | None = None

    def engine_version(self) -> str:
        if self._version is None:
            if self.engine == "docker":
                proc = _quiet(docker_base_argv(self.docker_host) + ["version", "--format", "{{.Server.Version}}"], timeout=15)
                self._version = f"docker daemon {proc.stdout.strip()}" if proc.returncode == 0 else "docker (no daemon)"
            else:
                self._version = _version_line([self.engine, "--version"])
        return self._version

    def check_engines(self) -> dict[str, EngineCheck]:
        return {
            "runc": check_runc(),
            "podman": check_podman(self.podman_root, self.podman_runroot),
            "docker": check_docker(self.docker_host),
        }

    def probe(self) -> Availability:
        checks = self.check_engines()
        details = {"engine": self.engine, "rootfs": str(self.rootfs), "network": self.network,
                   "engines": {k: v.as_dict() for k, v in checks.items()}}
        chosen = checks[self.engine]
        if chosen.works:
            others = [k for k, v in checks.items() if v.works and k != self.engine]
            return Availability(True, f"{self.engine}: {chosen.reason}" + (f"; also usable: {', '.join(others)}" if others else ""),
                                details=details)
        fix = {
            "runc": "install runc and run as root with writable cpu/cpuset cgroups",
            "podman": "install podman and runc and run as root",
            "docker": "start dockerd (e.g. dockerd --iptables=false --bridge=none) or set E2EBENCH_DOCKER_HOST",
        }[self.engine]
        usable = [k for k, v in checks.items() if v.works]
        if usable:
            fix += f"; or choose a working engine with {ENGINE_ENV}={usable[0]}"
        return Availability(False, f"{self.engine}: {chosen.reason}", fix=fix, details=details)

    def gpu_problem(self) -> str | None:
        """Why this engine cannot give a container the host's GPU here (one sentence), or None."""
        passthrough = nvidia.host_gpu_passthrough(self.gpu_selection)
        if self.engine == "podman":
            return nvidia.container_gpu_problem("podman", passthrough, cdi=nvidia.cdi_spec())
        if self.engine == "docker":
            proc = _quiet(docker_base_argv(self.docker_host) + ["info", "--format", "{{json .Runtimes}}"], timeout=30)
            runtimes = nvidia.parse_docker_runtimes(proc.stdout) if proc.returncode == 0 else set()
            return nvidia.container_gpu_problem("docker", passthrough, docker_runtimes=runtimes,
                                                docker_hook=shutil.which("nvidia-container-runtime-hook") is not None)
        return nvidia.container_gpu_problem("runc", passthrough)

    @contextlib.contextmanager
    def session(self, deployment: Deployment, workdir: Path) -> Iterator[ContainerSession]:
        if deployment.device == "GPU":
            problem = self.gpu_problem()
            if problem:
                raise PlatformError(f"CN ({self.engine}) cannot pass a GPU into the container: {problem}")
        if self.engine in ("runc", "podman") and os.geteuid() != 0:
            raise PlatformError(f"the {self.engine} engine needs root here")
        host_cpus = sorted(os.sched_getaffinity(0))
        try:
            plan = cgroups.plan_limits(deployment.cores, deployment.cpu_mode, host_cpus, cgroups.numa_nodes())
        except ValueError as exc:
            raise PlatformError(str(exc)) from None
        if self.memory_mib is not None and self.engine in ("runc", "podman"):
            problem = memory_lib.memory_limit_problem("CN")
            if problem:
                raise PlatformError(problem)
        # housekeeping first (not part of provisioning): what SIGKILLed runs left behind
        remove_stale_containers(self.engine, self.docker_host, self.podman_root, self.podman_runroot)
        cgroups.remove_stale()
        self.engine_version()   # cached for session.info
        t0 = time.perf_counter()
        session = ContainerSession(self, deployment, Path(workdir), plan)
        try:
            session.provision()
            session.provision_s = time.perf_counter() - t0
            yield session
        finally:
            with _deferred_interrupts():
                session.teardown()


__all__ = [
    "Bind", "Container", "ContainerSession", "ENGINES", "EngineCheck", "cgroup_dirs_of", "cgroup_hierarchies",
    "container_cgroup_leftovers", "container_env", "docker_base_argv", "engine_rlimits", "make_oci_bundle",
    "oci_config", "plan_binds", "podman_base_argv", "remove_stale_containers", "runc_cgroups_path", "runc_containers",
    # constants of container_config, kept importable from here
    "DEFAULT_CAPABILITIES", "HOSTNAME", "MASKED_PATHS", "OCI_VERSION", "PODMAN_NPROC_CAP", "READONLY_PATHS",
]
