"""Container overhead, measured twice: is e2ebench's CN/BM ratio what a plain program in a plain container sees?

Two container-vs-bare-metal ratios on the same images, the same host, the same cores, alternated:

* **plain ratio** — the plain IC program ``benchmarks/plain/ic.py`` (no LoadGen, no e2ebench worker) run
  (a) directly on the host, bound to the CPUs below with ``sched_setaffinity`` (what ``taskset`` does), and
  (b) as the only process of a *minimal* ``runc run`` container that this script builds itself — not with
  e2ebench's container platform code.  Its OCI bundle is an empty read-only root directory (with ``/bin``,
  ``/lib``, ``/lib64``, ``/sbin`` recreated as the host's symlinks where the host has a merged ``/usr``) into
  which the host's ``/usr``, ``/etc`` (and any of those four that are real directories), the Python
  installation the venv points to, the venv, the repository's ``benchmarks/`` and ``src/`` (``PYTHONPATH``),
  the data folder and the work-list folder are bind-mounted read-only at their own paths; ``proc``, a tmpfs
  ``/dev`` (runc adds its default device nodes), ``/dev/shm``, a read-only ``sysfs`` and a tmpfs ``/tmp``;
  new pid, ipc, uts, mount and network (loopback only) namespaces; runc's default capabilities;
  ``linux.resources.cpu.cpus`` = the CPUs that e2ebench's ``CN/N/PIN`` would get
  (``e2ebench.platforms.cgroups.plan_limits``, imported only to pick the same CPUs); a ``cgroupsPath`` of its
  own (``e2ebench-overhead-<pid>-<random>``, relative, so runc nests it like e2ebench's).  Both runs get the same
  argument list and the same clean environment; a tiny ``sh`` prologue prints the process's pid, pid
  namespace, allowed CPUs, cpuset cgroup and hostname to stderr before ``exec``-ing Python, so the report
  shows that the program really ran inside the container.  The program's one JSON line (``throughput_sps``,
  ``wall_s``: first read to last answer, after its warm-up batch) is its result; the wall time of the whole
  process (``runc run`` for the container) is recorded too, for information.
* **e2ebench ratio** — ``e2ebench run ic CN/N/PIN/CPU --engine runc`` vs ``e2ebench run ic BM/N/PIN/CPU``
  (subprocesses, ``--json``, a throw-away ``--store``): ``throughput_sps`` and ``e2e_s``.

All four programs run once per round, in an order that is a seeded shuffle rotated by one place each round, so
that every program goes first equally often; N rounds (``--rounds``, default 6) on the same generated images
(``e2ebench data make ic DIR --count 64``, in a temporary folder, or ``--data DIR``: used as is, or generated
there and kept when it is empty), batch 8, 2 cores (``--cores``).  Per round: the plain container/host
throughput ratio (and wall-time ratio) and the e2ebench CN/BM throughput ratio (and E2E-seconds ratio).
Printed: the per-round rows, the median and min-max of each ratio, the coefficient of variation of each
program's throughput over the rounds, and whether the two medians agree — "agree" means the two
throughput-ratio medians differ by no more than the sum of the two ratios' half min-max ranges over the rounds
(the intervals median +- (max-min)/2 overlap; judged only with at least 2 rounds).

    .venv/bin/python benchmarks/container_overhead.py [--rounds 6] [--requests 64] [--cores 2] [--json]
    .venv/bin/python benchmarks/container_overhead.py --check      # = --rounds 1 --requests 8 --variant tiny

Needs root, ``runc`` and writable cgroups (as e2ebench's CN platform does).  This measures and prints; it
asserts nothing.  It cleans up after itself — the container (``runc delete --force``), its cgroups in every
hierarchy, the bundle and the temporary folder (including e2ebench's LoadGen logs and store) — also on errors
and Ctrl-C; containers and cgroups left by a SIGKILLed run of this script are removed by the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAIN_IC = REPO / "benchmarks" / "plain" / "ic.py"
PREFIX = "e2ebench-overhead-"                  # container ids and cgroup names: e2ebench-overhead-<pid>-<random>
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROBE_TAG = "E2EBENCH-OVERHEAD-PROBE"
PROGRAMS = ("plain-host", "plain-container", "e2ebench-BM", "e2ebench-CN")
IMAGES = 64
AGREE_MEANING = ("the two throughput-ratio medians differ by no more than the sum of the two ratios' half "
                 "min-max ranges over the rounds, i.e. the intervals median +- (max-min)/2 overlap "
                 "(judged with at least 2 rounds)")
# what the container's process is: a probe line on stderr, then exec the program (same prologue on the host)
PROBE_SH = ('printf "%s pid=%s pidns=%s cpus=%s cpuset=%s hostname=%s\\n" ' + PROBE_TAG + ' "$$" '
            '"$(readlink /proc/self/ns/pid)" "$(grep Cpus_allowed_list /proc/self/status | cut -f2)" '
            '"$(grep -m1 :cpuset: /proc/self/cgroup | cut -d: -f3)" "$(cat /proc/sys/kernel/hostname)" >&2; '
            'exec "$0" "$@"')
CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]   # runc spec's defaults
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


class BenchmarkError(RuntimeError):
    pass


# ---------------------------------------------------------------------------
# small helpers


def quiet(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 127, "", str(exc))


def cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the kernel's cpulist format)."""
    from e2ebench.measure import format_cpu_list

    return format_cpu_list(cpus)


def within(path: str, parent: str) -> bool:
    parent = parent.rstrip("/") or "/"
    return path == parent or path.startswith(parent + "/") or parent == "/"


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def parse_probe(stderr: str) -> dict:
    for line in stderr.splitlines():
        if line.startswith(PROBE_TAG + " "):
            return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
    return {}


def mounts_below(path: Path) -> list[str]:
    prefix = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4].replace("\\040", " ") for line in f]
    except OSError:
        return []
    return [p for p in points if within(p, prefix)]


def remove_tree(path: Path) -> str | None:
    """rm -rf, but never through a mount (a bind that outlived its container); returns an error or None."""
    if not os.path.lexists(path):
        return None
    left = mounts_below(path)
    if left:
        return f"{path} still has mounts ({', '.join(left[:3])}); left in place"
    shutil.rmtree(path, ignore_errors=True)
    return f"could not remove {path}" if os.path.lexists(path) else None


# ---------------------------------------------------------------------------
# cgroups: where runc puts a relative cgroupsPath, and removing it


def own_cgroups() -> dict[str, str]:
    """{controller: path} from /proc/self/cgroup ("" for the v2/unified line, "name=systemd" ...)."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def cgroup_dirs(name: str) -> list[Path]:
    """Every directory runc creates for the relative cgroupsPath ``name``: on cgroup v2 one, under this
    process's own cgroup; on v1/hybrid one per mounted hierarchy, under this process's cgroup there."""
    own = own_cgroups()
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT / own.get("", "/").lstrip("/") / name]
    out = []
    for entry in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        if entry.is_symlink() or not entry.is_dir() or not os.path.ismount(entry):
            continue
        if entry.name == "unified":
            keys = [""]
        elif entry.name == "systemd":
            keys = ["name=systemd"]
        else:
            keys = entry.name.split(",")
        path = next((own[k] for k in keys if k in own), "/")
        out.append(entry / path.lstrip("/") / name)
    return out


def remove_cgroups(dirs: list[Path], timeout_s: float = 10.0) -> list[str]:
    """rmdir each existing directory (killing what is still inside first); returns the failures."""
    errors = []
    for d in dirs:
        if not d.is_dir():
            continue
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                for procs in ("cgroup.procs", "tasks"):
                    try:
                        for pid in (d / procs).read_text().split():
                            os.kill(int(pid), signal.SIGKILL)
                    except (OSError, ValueError):
                        pass
                if time.monotonic() > deadline:
                    errors.append(f"cannot remove cgroup {d}: {exc.strerror or exc}")
                    break
                time.sleep(0.05)
    return errors


def owner_alive(name: str) -> bool:
    """``e2ebench-overhead-<pid>-<random>``: is <pid> still running? (True when the name is not ours)"""
    try:
        pid = int(name[len(PREFIX):].split("-", 1)[0])
    except ValueError:
        return True
    return Path(f"/proc/{pid}").exists()


def delete_container(cid: str) -> str | None:
    """Kill and delete the runc container ``cid`` if it exists; returns an error or None."""
    if quiet(["runc", "state", cid]).returncode != 0:
        return None
    quiet(["runc", "kill", cid, "KILL"])
    proc = quiet(["runc", "delete", "--force", cid], timeout=60)
    if proc.returncode != 0 and quiet(["runc", "state", cid]).returncode == 0:
        return f"runc delete {cid}: {(proc.stderr or proc.stdout).strip()[-200:]}"
    return None


def remove_stale() -> list[str]:
    """Containers and cgroups that a SIGKILLed run of this script left (owner pid gone)."""
    removed = []
    proc = quiet(["runc", "list", "--format", "json"])
    containers = []
    if proc.returncode == 0 and proc.stdout.strip():
        try:
            containers = json.loads(proc.stdout) or []
        except json.JSONDecodeError:
            pass
    for c in containers:
        cid = c.get("id", "")
        if cid.startswith(PREFIX) and not owner_alive(cid):
            delete_container(cid)
            removed.append(f"runc:{cid}")
    for probe in cgroup_dirs("x"):
        try:
            children = list(probe.parent.iterdir())
        except OSError:
            continue
        for child in children:
            if child.name.startswith(PREFIX) and child.is_dir() and not owner_alive(child.name):
                if not remove_cgroups([child], 5.0):
                    removed.append(str(child))
    for tmp in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        if tmp.is_dir() and not owner_alive(tmp.name) and remove_tree(tmp) is None:
            removed.append(str(tmp))
    return removed


# ---------------------------------------------------------------------------
# the minimal OCI bundle


def host_layout() -> tuple[list[str], dict[str, str]]:
    """(identity binds, symlinks) for the host's system directories: /usr, /etc, and /bin, /lib, /lib64,
    /sbin as binds where they are real directories, as the same symlinks where the host has a merged /usr."""
    binds, links = ["/usr", "/etc"], {}
    for d in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(d):
            links[d] = os.readlink(d)
        elif os.path.isdir(d):
            binds.append(d)
    return binds, links


def minimal_cover(paths: list[str]) -> list[str]:
    """Absolute identity-bind sources without duplicates or paths inside another one, outermost first."""
    out: list[str] = []
    for p in sorted({os.path.normpath(p) for p in paths}, key=lambda s: (s.count("/"), s)):
        if p != "/" and not any(within(p, q) for q in out):
            out.append(p)
    return out


def oci_config(argv: list[str], env: dict[str, str], binds: list[str], cpus: list[int], cgroups_path: str,
               hostname: str) -> dict:
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=1g"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
    ]
    mounts += [{"destination": b, "type": "bind", "source": b, "options": ["rbind", "ro"]} for b in binds]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": argv,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/",
            "capabilities": {k: list(CAPABILITIES) for k in ("bounding", "effective", "permitted", "ambient")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}], "cpu": {"cpus": cpu_list(cpus)}},
            "cgroupsPath": cgroups_path,
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def write_bundle(bundle: Path, argv: list[str], env: dict[str, str], binds: list[str], cpus: list[int],
                 name: str) -> dict:
    """config.json + an empty root with the host's symlinks and a mount point for every bind outside /tmp
    (a read-only root cannot grow them; binds under /tmp land in the container's tmpfs)."""
    system, links = host_layout()
    binds = minimal_cover(system + binds)
    root = bundle / "rootfs"
    root.mkdir(parents=True)
    for link, target in links.items():
        (root / link.lstrip("/")).symlink_to(target)
    for b in binds:
        if within(b, "/tmp") or within(b, "/dev") or within(b, "/proc") or within(b, "/sys"):
            continue
        target = root / b.lstrip("/")
        if os.path.isfile(b):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        else:
            target.mkdir(parents=True, exist_ok=True)
    config = oci_config(argv, env, binds, cpus, name, hostname=name[:63])
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return config


# ---------------------------------------------------------------------------
# running one program


def run_process(argv: list[str], *, timeout: float, env: dict | None = None, cwd: str | None = None,
                cpus: list[int] | None = None, on_abort=None, interrupt_first: bool = False) -> tuple[int, str, str, float]:
    """Run ``argv`` in its own session; (rc, stdout, stderr, wall seconds).  On timeout or Ctrl-C:
    ``on_abort()`` (kill the container), SIGINT first when ``interrupt_first`` (e2ebench tears down its
    own container), then SIGKILL to the process group; re-raises / raises BenchmarkError."""
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env, cwd=cwd, start_new_session=True, preexec_fn=preexec)

    def stop() -> None:
        if on_abort:
            on_abort()
        if interrupt_first and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()

    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop()
        raise BenchmarkError(f"{shlex.join(argv[:4])} ... timed out after {timeout:g} s") from None
    except BaseException:
        stop()
        raise
    return proc.returncode, out, err, time.perf_counter() - t0


class Bench:
    """Everything one benchmark run owns: the temp folder, the bundle, the container id and its cgroups."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        from e2ebench.platforms.cgroups import numa_nodes, plan_limits

        try:   # the CPUs e2ebench's CN/N/PIN (and BM/N/PIN) would use
            self.cpus = list(plan_limits(args.cores, "PIN", sorted(os.sched_getaffinity(0)), numa_nodes()).cpus)
        except ValueError as exc:
            raise BenchmarkError(str(exc)) from None
        self.venv = Path(args.venv).absolute()
        self.python = self.venv / "bin" / "python"
        self.e2ebench = self.venv / "bin" / "e2ebench"
        if not self.python.exists() or not self.e2ebench.exists():
            raise BenchmarkError(f"{self.venv} has no bin/python or bin/e2ebench (set up the venv, or --venv)")
        self.python_home = Path(os.path.realpath(self.python)).parents[1]     # the installation the venv points to
        self.name = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"      # container id = cgroupsPath = tmp prefix
        self.cgroups = cgroup_dirs(self.name)
        self.errors: list[str] = []
        self.workdir = Path(tempfile.mkdtemp(prefix=self.name + "-"))
        self.bundle = self.workdir / "bundle"
        self.env = {"PATH": f"{self.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME": "/root", "TMPDIR": "/tmp", "LANG": os.environ.get("LANG", "C.UTF-8"),
                    "PYTHONPATH": str(REPO / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        self.config: dict = {}

    # -- preparation ----------------------------------------------------------------------------

    def prepare(self) -> None:
        a = self.args
        if a.data:
            self.data = Path(a.data).resolve()
            if not self.data.is_dir() or not any(self.data.iterdir()):
                self.make_data(self.data)
        else:
            self.data = self.workdir / "data"
            self.make_data(self.data)
        sys.path.insert(0, str(REPO / "benchmarks" / "plain"))
        from worklist import write_work_list

        work_dir = self.workdir / "work"
        work_dir.mkdir()
        self.work_list = write_work_list(work_dir / "worklist.json", "ic", self.data, a.requests, a.batch_size,
                                         variant=a.variant, seed=a.seed)
        self.plain_argv = ["/bin/sh", "-c", PROBE_SH, str(self.python), str(PLAIN_IC),
                           "--work-list", str(self.work_list), "--batch-size", str(a.batch_size),
                           "--threads", str(a.cores), "--variant", a.variant]
        binds = [str(self.python_home), str(self.venv), str(REPO / "src"), str(REPO / "benchmarks"),
                 str(self.data), str(work_dir)]
        self.config = write_bundle(self.bundle, self.plain_argv, self.env, binds, self.cpus, self.name)

    def make_data(self, out: Path) -> None:
        proc = quiet([str(self.e2ebench), "data", "make", "ic", str(out), "--count", str(IMAGES)], timeout=600)
        if proc.returncode != 0:
            raise BenchmarkError(f"e2ebench data make failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    # -- the four programs ----------------------------------------------------------------------

    def plain(self, where: str) -> dict:
        timeout = self.args.timeout
        if where == "host":
            rc, out, err, wall = run_process(self.plain_argv, timeout=timeout, env=self.env, cwd="/", cpus=self.cpus)
        else:
            argv = ["runc", "run", "--bundle", str(self.bundle), self.name]
            try:
                rc, out, err, wall = run_process(argv, timeout=timeout, on_abort=lambda: delete_container(self.name))
            finally:
                self.after_container()
        result = last_json_line(out)
        if rc != 0 or not result or "throughput_sps" not in result:
            raise BenchmarkError(f"plain program on the {where} failed (rc {rc}): {(err or out).strip()[-800:]}")
        return {"throughput_sps": result["throughput_sps"], "wall_s": result["wall_s"], "outer_wall_s": wall,
                "warmup_s": result.get("warmup_s"), "pid": result.get("pid"), "probe": parse_probe(err)}

    def after_container(self) -> None:
        """`runc run` deletes the container when its process exits; make sure of it, and of its cgroups."""
        error = delete_container(self.name)
        if error:
            self.errors.append(error)
        self.errors += remove_cgroups(self.cgroups)

    def e2e(self, platform: str) -> dict:
        a = self.args
        argv = [str(self.e2ebench), "run", "ic", f"{platform}/{a.cores}/PIN/CPU", "--requests", str(a.requests),
                "--batch-size", str(a.batch_size), "--variant", a.variant, "--data", str(self.data), "--json",
                "--store", str(self.workdir / "e2ebench.sqlite"), "--timeout", str(a.timeout)]
        if platform == "CN":
            argv += ["--engine", "runc"]
        # cwd: e2ebench writes its LoadGen logs under ./results/logs — inside the temp folder
        rc, out, err, wall = run_process(argv, timeout=a.timeout + 120, cwd=str(self.workdir), interrupt_first=True)
        result = last_json_line(out)
        if rc != 0 or not result or result.get("error") or not result.get("throughput_sps"):
            why = (result or {}).get("error") or (err or out).strip()[-800:]
            raise BenchmarkError(f"e2ebench run {platform} failed (rc {rc}): {why}")
        return {"throughput_sps": result["throughput_sps"], "e2e_s": result["e2e_s"], "outer_wall_s": wall,
                "cold_start_s": result.get("cold_start_s"), "effective_cpus": result.get("effective_cpus")}

    def run_program(self, program: str) -> dict:
        return {"plain-host": lambda: self.plain("host"), "plain-container": lambda: self.plain("container"),
                "e2ebench-BM": lambda: self.e2e("BM"), "e2ebench-CN": lambda: self.e2e("CN")}[program]()

    # -- cleanup --------------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        errors = list(self.errors)
        error = delete_container(self.name)
        if error:
            errors.append(error)
        errors += remove_cgroups(self.cgroups)
        error = remove_tree(self.workdir)
        if error:
            errors.append(error)
        return errors


# ---------------------------------------------------------------------------
# statistics and output


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def cv(values: list[float]) -> float | None:
    return statistics.stdev(values) / statistics.mean(values) if len(values) >= 2 else None


def summarize(args: argparse.Namespace, bench: Bench, rounds: list[dict]) -> dict:
    plain_t = [r["plain_ratio"]["throughput"] for r in rounds]
    e2e_t = [r["e2ebench_ratio"]["throughput"] for r in rounds]
    plain = {"throughput": spread(plain_t), "time": spread([r["plain_ratio"]["time"] for r in rounds])}
    e2e = {"throughput": spread(e2e_t), "e2e_s": spread([r["e2ebench_ratio"]["e2e_s"] for r in rounds])}
    if len(rounds) >= 2:
        half_widths = (max(plain_t) - min(plain_t)) / 2 + (max(e2e_t) - min(e2e_t)) / 2
        agree = abs(e2e["throughput"]["median"] - plain["throughput"]["median"]) <= half_widths
    else:
        agree = None
    container_probe = next((r["programs"]["plain-container"]["probe"] for r in rounds), {})
    host_probe = next((r["programs"]["plain-host"]["probe"] for r in rounds), {})
    return {
        "benchmark": "container_overhead", "app": "ic", "variant": args.variant, "requests": args.requests,
        "batch_size": args.batch_size, "cores": args.cores, "cpus": bench.cpus, "images": IMAGES,
        "rounds": len(rounds), "seed": args.seed, "data": str(bench.data) if args.data else "(temporary)",
        "per_round": rounds,
        "plain_ratio": plain, "e2ebench_ratio": e2e,
        "cv_throughput": {p: cv([r["programs"][p]["throughput_sps"] for r in rounds]) for p in PROGRAMS},
        "median_difference": e2e["throughput"]["median"] - plain["throughput"]["median"],
        "agree": agree, "agree_meaning": AGREE_MEANING,
        "ratio_meaning": "throughput ratios are container/host (< 1: the container is slower); "
                         "time ratios are container/host seconds (> 1: the container is slower)",
        "container": {"runtime": "runc", "id": bench.name, "cgroups_path": bench.name,
                      "cpus": bench.config.get("linux", {}).get("resources", {}).get("cpu", {}).get("cpus"),
                      "namespaces": [n["type"] for n in bench.config.get("linux", {}).get("namespaces", [])],
                      "binds": [m["source"] for m in bench.config.get("mounts", []) if m["type"] == "bind"],
                      "probe": container_probe},
        "host_probe": host_probe,
        "host_pidns": os.readlink("/proc/self/ns/pid"),
    }


def print_table(s: dict) -> None:
    print(f"container overhead: ic ({s['variant']}), {s['requests']} requests, batch {s['batch_size']}, "
          f"{s['cores']} cores = CPUs {cpu_list(s['cpus'])}, {s['images']} images, {s['rounds']} rounds, seed {s['seed']}")
    c, h = s["container"], s["host_probe"]
    p = c["probe"]
    print(f"plain program in the runc container: pid {p.get('pid', '?')}, {p.get('pidns', '?')} "
          f"(host {s['host_pidns']}), CPUs {p.get('cpus', '?')}, cpuset cgroup {p.get('cpuset', '?')}, "
          f"hostname {p.get('hostname', '?')}")
    print(f"plain program on the host:           pid {h.get('pid', '?')}, {h.get('pidns', '?')}, "
          f"CPUs {h.get('cpus', '?')}, cpuset cgroup {h.get('cpuset', '?')}")
    print("throughput in samples/s; ratio = container/host throughput (< 1: container slower); "
          "time ratio = container/host seconds; outer = wall time of the whole process")
    print(f"{'round':>5}  {'plain host':>10} {'plain CN':>9} {'ratio':>6} {'time':>6}   "
          f"{'e2e BM':>8} {'e2e CN':>8} {'ratio':>6} {'E2E s':>6}   {'outer s (host/runc/BM/CN)':>26}  order")
    for r in s["per_round"]:
        g = r["programs"]
        outer = "/".join(f"{g[x]['outer_wall_s']:.2f}" for x in PROGRAMS)
        print(f"{r['round']:>5}  {g['plain-host']['throughput_sps']:>10.2f} {g['plain-container']['throughput_sps']:>9.2f} "
              f"{r['plain_ratio']['throughput']:>6.3f} {r['plain_ratio']['time']:>6.3f}   "
              f"{g['e2ebench-BM']['throughput_sps']:>8.2f} {g['e2ebench-CN']['throughput_sps']:>8.2f} "
              f"{r['e2ebench_ratio']['throughput']:>6.3f} {r['e2ebench_ratio']['e2e_s']:>6.3f}   {outer:>26}  "
              f"{','.join(r['order'])}")
    for label, key, sub in (("plain container/host throughput", "plain_ratio", "throughput"),
                            ("plain container/host wall time", "plain_ratio", "time"),
                            ("e2ebench CN/BM throughput", "e2ebench_ratio", "throughput"),
                            ("e2ebench CN/BM E2E seconds", "e2ebench_ratio", "e2e_s")):
        v = s[key][sub]
        print(f"{label:<34} median {v['median']:.3f}  (min-max {v['min']:.3f}-{v['max']:.3f})")
    cvs = s["cv_throughput"]
    print("throughput spread over rounds (coefficient of variation): " +
          ", ".join(f"{p} " + ("n/a" if cvs[p] is None else f"{100 * cvs[p]:.1f}%") for p in PROGRAMS))
    verdict = {True: "AGREE", False: "DO NOT AGREE", None: "not judged (fewer than 2 rounds)"}[s["agree"]]
    print(f"throughput-ratio medians: plain {s['plain_ratio']['throughput']['median']:.3f}, "
          f"e2ebench {s['e2ebench_ratio']['throughput']['median']:.3f} (difference {s['median_difference']:+.3f}): "
          f"{verdict}; agree = {AGREE_MEANING}")


# ---------------------------------------------------------------------------


def _interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the four programs (default 6)")
    parser.add_argument("--requests", type=int, default=64, help="requests per program run (default 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="requests per inference batch (default 8)")
    parser.add_argument("--cores", type=int, default=2, help="pinned cores (CN/N/PIN, BM/N/PIN; default 2)")
    parser.add_argument("--variant", default="full", help="model size: full, or tiny (for tests)")
    parser.add_argument("--data", type=Path, default=None,
                        help="image folder (used as is; generated there when missing or empty); default: temporary")
    parser.add_argument("--seed", type=int, default=0, help="seeds the program order and the LoadGen sample order")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before one program is killed")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv", help="the virtual environment (default .venv)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--check", action="store_true", help="fast path: --rounds 1 --requests 8 --variant tiny")
    args = parser.parse_args()
    if args.check:
        args.rounds, args.requests, args.variant = 1, 8, "tiny"
    if args.rounds < 1 or args.requests < 1 or args.cores < 1 or args.batch_size < 1:
        parser.error("--rounds, --requests, --cores and --batch-size must be at least 1")
    if not shutil.which("runc"):
        print("container_overhead: runc is not installed (apt-get install runc)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("container_overhead: runc containers and cgroups need root", file=sys.stderr)
        return 2

    # SIGTERM behaves like Ctrl-C: the finally below tears everything down
    signal.signal(signal.SIGTERM, _interrupt)
    remove_stale()
    try:
        bench = Bench(args)
    except BenchmarkError as exc:
        print(f"container_overhead: {exc}", file=sys.stderr)
        return 2
    rounds: list[dict] = []
    status = 0
    try:
        bench.prepare()
        base = list(PROGRAMS)
        random.Random(args.seed).shuffle(base)
        for k in range(args.rounds):
            shift = k % len(base)
            order = base[shift:] + base[:shift]
            got = {}
            for program in order:
                got[program] = bench.run_program(program)
                if not args.json:
                    print(f"  round {k}: {program:<16} {got[program]['throughput_sps']:8.2f} samples/s",
                          file=sys.stderr, flush=True)
            rounds.append({
                "round": k, "order": order, "programs": got,
                "plain_ratio": {"throughput": got["plain-container"]["throughput_sps"] / got["plain-host"]["throughput_sps"],
                                "time": got["plain-container"]["wall_s"] / got["plain-host"]["wall_s"]},
                "e2ebench_ratio": {"throughput": got["e2ebench-CN"]["throughput_sps"] / got["e2ebench-BM"]["throughput_sps"],
                                   "e2e_s": got["e2ebench-CN"]["e2e_s"] / got["e2ebench-BM"]["e2e_s"]},
            })
        summary = summarize(args, bench, rounds)
    except BenchmarkError as exc:
        print(f"container_overhead: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("container_overhead: interrupted; cleaning up", file=sys.stderr)
        status = 130
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)      # a second Ctrl-C must not stop the teardown
        try:
            errors = bench.cleanup()
        finally:
            signal.signal(signal.SIGINT, old)
        for error in errors:
            print(f"container_overhead: cleanup: {error}", file=sys.stderr)
    if status:
        return status
    summary["cleanup_errors"] = errors
    if args.json:
        print(json.dumps(summary))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
