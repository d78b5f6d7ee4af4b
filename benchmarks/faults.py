#!/usr/bin/env python3
"""Fault injection: hurt e2ebench the ways the world does, and count what survives.

Each fault runs real e2ebench commands (tiny model variants, small workloads) in a scratch folder and injects
the fault for real: SIGKILL / SIGTERM of a study at random moments followed by a resume, SIGKILL of the worker,
of the container's process and of QEMU, the OOM killer (a memory limit too small for the worker), a full file
system under the store (a small tmpfs), a read-only and a corrupt store, a hung (SIGSTOPped) worker and guest,
two studies writing one store at once, randomly mutated study files, damaged input data.  It then prints one
table:

    fault | injected | runs expected | stored | duplicated | lost | left running | clear errors

*left running* counts, for the e2ebench processes the fault killed or started: processes still running two
seconds after a kill or at the end (`p`), runc containers (`c`), VMM processes (`g`), cgroups (`cg`), mounts
(`m`) and temp folders (`t`).  *clear errors* is the share of failures that ended in a sentence a user can act on
(no traceback; for a failed run, an `error` that names the cause).  The goal: 0 lost, 0 duplicated, 0 left
running, 100% clear errors.

    .venv/bin/python benchmarks/faults.py                   # everything (~20 min on 2 cores; VM faults need QEMU)
    .venv/bin/python benchmarks/faults.py --only study-sigkill --kills 20
    .venv/bin/python benchmarks/faults.py --no-vm --json out.json

Needs root (cgroups, runc, tmpfs mounts, other processes' environments).  tests/test_faults.py runs the quick
cases with small counts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from e2ebench import housekeeping  # noqa: E402
from e2ebench.platforms import cgroups  # noqa: E402

CLI = [sys.executable, "-m", "e2ebench.cli"]
TINY = ["--variant", "tiny"]


# ---------------------------------------------------------------------------
# what a fault left


@dataclasses.dataclass
class Left:
    processes: int = 0
    containers: int = 0
    guests: int = 0
    cgroups: int = 0
    mounts: int = 0
    temp_folders: int = 0

    def add(self, other: "Left") -> "Left":
        return Left(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))

    def __str__(self) -> str:
        if not self.total:
            return "0"
        names = ("p", "c", "g", "cg", "m", "t")
        return " ".join(f"{n}{v}" for n, v in zip(names, dataclasses.astuple(self)) if v)


def processes_of(owners: set[int]) -> list[housekeeping.MarkedProcess]:
    return [p for p in housekeeping.marked_processes()
            if p.owner.split(":")[0] in {str(o) for o in owners} and housekeeping.is_running(p.pid)]


def left_by(owners: set[int]) -> Left:
    """What e2ebench processes ``owners`` (dead or alive) still have: processes, containers, guests, cgroups,
    mounts and temp folders named after them."""
    procs = processes_of(owners)
    tags = {f"-{o}-" for o in owners}
    listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout.split() \
        if shutil.which("runc") else []
    containers = [c for c in listed if any(t in c for t in tags)]
    groups = [d for d in cgroups.list_children() if cgroups.owner_pid(d.name) in owners]
    try:
        from e2ebench.platforms.container import container_cgroup_leftovers

        groups += [d for d in container_cgroup_leftovers() if cgroups.owner_pid(d.name) in owners]
    except Exception:
        pass
    tmp = Path(tempfile.gettempdir())
    folders = [d for d in tmp.iterdir() if any(d.name.startswith(f"e2ebench-{o}-") for o in owners)]
    mounts = 0
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if any(point.startswith(str(f)) for f in folders):
                mounts += 1
    except OSError:
        pass
    return Left(processes=len(procs), containers=len(containers),
                guests=len([p for p in procs if p.what in ("qemu", "firecracker")]),
                cgroups=len(set(groups)), mounts=mounts, temp_folders=len(folders))


# ---------------------------------------------------------------------------
# outcome rows


@dataclasses.dataclass
class Outcome:
    fault: str
    injected: int = 0
    expected: int | None = None      # runs expected in the store (None: the fault makes no runs)
    stored: int | None = None
    duplicated: int = 0
    left: Left = dataclasses.field(default_factory=Left)
    errors: int = 0                  # failures that needed an explanation
    clear: int = 0                   # ... and got a clear one
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def lost(self) -> int | None:
        if self.expected is None or self.stored is None:
            return None
        return max(0, self.expected - (self.stored - self.duplicated))

    def clear_pct(self) -> str:
        return "—" if not self.errors else f"{100.0 * self.clear / self.errors:.0f}% ({self.clear}/{self.errors})"

    def as_dict(self) -> dict:
        return {"fault": self.fault, "injected": self.injected, "runs_expected": self.expected,
                "stored": self.stored, "duplicated": self.duplicated, "lost": self.lost,
                "left_running": dataclasses.asdict(self.left), "left_running_total": self.left.total,
                "errors": self.errors, "clear_errors": self.clear,
                "clear_errors_pct": None if not self.errors else 100.0 * self.clear / self.errors,
                "notes": self.notes, "seconds": round(self.seconds, 1)}


def clear_message(text: str) -> bool:
    """A sentence a user can act on: something said, no Python traceback, no bare exception repr."""
    text = (text or "").strip()
    return bool(text) and "Traceback (most recent call last)" not in text and not re.search(
        r"^\w+(Error|Exception): ", text, re.M)


def cli(args: list[str], cwd: Path, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def run_json(args: list[str], cwd: Path, timeout: float = 900) -> tuple[int, dict | None, str]:
    proc = cli(args + ["--json"], cwd, timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        payload = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        payload = None
    return proc.returncode, payload, proc.stderr


def store_rows(store: Path) -> list[tuple]:
    if not store.exists():
        return []
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT study_id, scenario, phase, seq, status FROM runs ORDER BY id").fetchall()
    except sqlite3.DatabaseError:
        return []
    finally:
        db.close()


def count_runs(store: Path) -> tuple[int, int]:
    """(runs stored, runs stored more than once under one identity).  A study run's identity is
    (study, scenario, phase, seq) and a failed run of a study is retried under a new seq, so a study's
    runs count once per identity that ended ``ok`` plus its failed runs."""
    rows = store_rows(store)
    counts = Counter((r[0], r[1], r[2], r[3]) for r in rows if r[3] is not None)
    return len(rows), sum(n - 1 for n in counts.values() if n > 1)


def count_study_runs(store: Path) -> tuple[int, int, int]:
    """(identities that ended ok, identities stored more than once, failed runs) of the studies in ``store``."""
    rows = [r for r in store_rows(store) if r[3] is not None]
    counts = Counter((r[0], r[1], r[2], r[3]) for r in rows)
    ok = {(r[0], r[1], r[2], r[3]) for r in rows if r[4] == "ok"}
    return len(ok), sum(n - 1 for n in counts.values() if n > 1), sum(1 for r in rows if r[4] != "ok")


def wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def settle(owners: set[int], within_s: float = 2.0) -> int:
    """Processes of ``owners`` still running ``within_s`` after a kill (the orphans the kill made)."""
    time.sleep(within_s)
    return len(processes_of(owners))


# ---------------------------------------------------------------------------
# studies


def study_file(path: Path, name: str, store: Path, platforms: list[str], runs: int, apps=("ic", "rs"),
               warmup: int = 1) -> Path:
    path.write_text(textwrap.dedent(f"""
        name = "{name}"
        seed = 7
        store = "{store}"
        timeout_s = 300
        apps = {json.dumps(list(apps))}
        platforms = {json.dumps(platforms)}
        cores = [1]
        cpu_modes = ["VNL", "PIN"]
        devices = ["CPU"]

        [repetition]
        warmup_runs = {warmup}
        min_runs = {runs}
        max_runs = {runs}
        max_consecutive_failures = 50

        [workload.ic]
        requests = 8
        batch_size = 4
        variant = "tiny"

        [workload.rs]
        requests = 16
        batch_size = 8
        variant = "tiny"
    """))
    return path


def fault_study_signal(work: Path, sig: signal.Signals, kills: int, seed: int, platforms: list[str],
                       runs: int = 3) -> Outcome:
    """Kill a study ``kills`` times at random moments with ``sig``, resuming each time, then let it finish."""
    name = f"study-{sig.name.lower()[3:]}"
    out = Outcome(name)
    store = work / f"{name}.sqlite"
    spec = study_file(work / f"{name}.toml", name, store, platforms, runs)
    expected = 2 * len(platforms) * 2 * (runs + 1)
    rng = random.Random(seed)
    owners: set[int] = set()
    orphans = 0
    for _ in range(kills):
        proc = subprocess.Popen(CLI + ["study", str(spec), "--quiet"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, cwd=work)
        owners.add(proc.pid)
        try:
            proc.wait(timeout=rng.uniform(0.5, 9.0))
            out.notes.append("the study finished before all kills were made")
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            out.notes.append(f"{sig.name} did not stop the study within 120 s")
        out.injected += 1
        orphans = max(orphans, settle({proc.pid}))
        if sig != signal.SIGKILL and proc.returncode == -sig:
            out.notes.append(f"{sig.name} came before e2ebench installed its handler (interpreter start-up): "
                             "the process ended at once, before it had started anything")
        elif sig != signal.SIGKILL:
            out.errors += 1
            ok = proc.returncode == 130 and clear_message(err) and "interrupted" in err
            out.clear += int(ok)
            if not ok:
                out.notes.append(f"{sig.name}: exit {proc.returncode}: {err.strip()[-200:]}")
    final = cli(["study", str(spec), "--quiet"], work, timeout=1800)
    if final.returncode != 0:
        out.notes.append(f"the resumed study exited {final.returncode}: {final.stderr.strip()[-200:]}")
    out.expected = expected
    out.stored, out.duplicated, failed = count_study_runs(store)
    if failed:
        out.notes.append(f"{failed} failed runs (retried)")
    out.left = left_by(owners)
    out.left.processes += orphans
    contended = sum(1 for r in _results(store) if r.get("contended"))
    if contended:
        out.notes.append(f"{contended} runs flagged contended")
    return out


def _results(store: Path) -> list[dict]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT result_json FROM runs").fetchall()
    except sqlite3.DatabaseError:
        return []
    finally:
        db.close()
    out = []
    for (text,) in rows:
        try:
            out.append(json.loads(text))
        except (TypeError, json.JSONDecodeError):
            pass
    return out


def fault_two_studies(work: Path, platforms: list[str]) -> Outcome:
    """Two different studies writing one store at the same time."""
    out = Outcome("two-studies-one-store")
    store = work / "shared.sqlite"
    files = [study_file(work / f"shared-{k}.toml", f"shared-{k}", store, platforms, 2, apps=(app,), warmup=0)
             for k, app in (("a", "rs"), ("b", "ic"))]
    procs = [subprocess.Popen(CLI + ["study", str(f), "--quiet"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, cwd=work) for f in files]
    owners = {p.pid for p in procs}
    out.injected = 1
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            out.errors += 1
            out.clear += int(clear_message(err))
            out.notes.append(f"a study exited {p.returncode}: {err.strip()[-160:]}")
    out.expected = 2 * (len(platforms) * 2 * 2)
    out.stored, out.duplicated, failed = count_study_runs(store)
    if failed:
        out.notes.append(f"{failed} failed runs (retried)")
    by_study = Counter(r[0] for r in store_rows(store))
    out.notes.append("runs per study: " + ", ".join(f"{k[:8]} {v}" for k, v in sorted(by_study.items())))
    out.left = left_by(owners)
    return out


# ---------------------------------------------------------------------------
# single runs with a fault inside


def _run_proc(args: list[str], work: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + args + ["--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=work)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, dict | None, str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        payload = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        payload = None
    return proc.returncode, payload, stderr


def _victim(owner: int, kinds: tuple[str, ...], timeout: float = 300) -> int | None:
    found = wait_for(lambda: [p for p in processes_of({owner}) if p.what in kinds], timeout)
    return found[0].pid if found else None


def failed_run_outcome(out: Outcome, store: Path, code: int, result: dict | None, stderr: str,
                       must_mention: tuple[str, ...]) -> None:
    """A fault that should end in a failed, stored run with an error that names the cause."""
    out.expected = (out.expected or 0) + 1
    error = (result or {}).get("error") or ""
    out.errors += 1
    named = any(word in error.lower() for word in must_mention)
    out.clear += int(code == 1 and bool(error) and clear_message(error) and named
                     and "Traceback (most recent call last)" not in stderr)
    if not named:
        out.notes.append(f"error was: {error[:160] or stderr.strip()[-160:]}")


def fault_kill_process(work: Path, name: str, deployment: str, kinds: tuple[str, ...], after_s: float,
                       must_mention: tuple[str, ...], sig: signal.Signals = signal.SIGKILL,
                       extra: list[str] | None = None, timeout_s: float | None = None) -> Outcome:
    """Start `e2ebench run`, wait for a process of ``kinds`` (worker, runc, qemu), send it ``sig`` after
    ``after_s``; the run must fail, be stored, and say why."""
    out = Outcome(name)
    store = work / f"{name}.sqlite"
    args = ["run", "ic", deployment, *TINY, "-n", "256", "--batch-size", "2", "--store", str(store), *(extra or [])]
    if timeout_s:
        args += ["--timeout", str(timeout_s)]
    proc = _run_proc(args, work)
    victim = _victim(proc.pid, kinds)
    if victim is None:
        proc.kill()
        out.notes.append(f"no {'/'.join(kinds)} process appeared")
        _finish(proc)
    else:
        time.sleep(after_s)
        try:
            os.kill(victim, sig)
            out.injected = 1
        except ProcessLookupError:
            out.notes.append("the victim ended before the signal")
        code, result, err = _finish(proc)
        failed_run_outcome(out, store, code, result, err, must_mention)
    out.stored, out.duplicated = count_runs(store)
    out.left = left_by({proc.pid})
    return out


def fault_oom(work: Path, deployment: str) -> Outcome:
    out = Outcome(f"oom-killer {deployment.split('/')[0]}")
    store = work / f"oom-{deployment.split('/')[0]}.sqlite"
    proc = _run_proc(["run", "rs", deployment, *TINY, "-n", "8", "--memory-mib", "128", "--store", str(store)], work)
    code, result, err = _finish(proc)
    out.injected = 1
    failed_run_outcome(out, store, code, result, err, ("out of memory",))
    out.stored, out.duplicated = count_runs(store)
    out.left = left_by({proc.pid})
    return out


# ---------------------------------------------------------------------------
# the store


@contextlib.contextmanager
def tmpfs(path: Path, size: str, out: Outcome) -> Iterator[bool]:
    """A small tmpfs at ``path`` for the duration (False, and a note, where mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    if not mounted:
        out.notes.append("tmpfs mount not permitted here: skipped")
    try:
        yield mounted
    finally:
        if mounted:
            _umount(path)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fault_full_disk(work: Path) -> Outcome:
    """The store's file system fills up between two runs: the second run's result must survive."""
    out = Outcome("store on a full file system")
    mnt = work / "full"
    with tmpfs(mnt, "4m", out) as mounted:
        if not mounted:
            return out
        store = mnt / "s.sqlite"
        code, _, err = run_json(["run", "rs", "BM/1/VNL/CPU", *TINY, "-n", "8", "--store", str(store)], work)
        if code != 0:
            out.notes.append(f"the first run failed: {err.strip()[-160:]}")
        filler = mnt / "filler"
        # the file system fills up while the second run measures (its worker is running)
        proc = _run_proc(["run", "rs", "BM/1/VNL/CPU", *TINY, "-n", "256", "--store", str(store)], work)
        if _victim(proc.pid, ("worker",)) is None:
            out.notes.append("the second run's worker never appeared")
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        code, result, err = _finish(proc)
        out.injected = 1
        out.errors += 1
        message = err.strip().splitlines()[-1] if err.strip() else ""
        spilled = re.findall(r"(/\S+\.json)", err)
        out.clear += int(code != 0 and clear_message(err) and "full" in err.lower() and bool(spilled))
        out.notes.append(message[:240])
        filler.unlink()
        for path in spilled:                       # a spill file kept elsewhere is imported by hand
            if Path(path).exists() and not str(path).startswith(str(mnt)):
                cli(["store", "import", "--store", str(store), path], work)
        cli(["show", "--store", str(store)], work)   # opening the store imports the spill files beside it
        out.expected = 2
        out.stored, out.duplicated = count_runs(store)
    return out


def fault_readonly_store(work: Path) -> Outcome:
    out = Outcome("read-only store")
    mnt = work / "ro"
    with tmpfs(mnt, "16m", out) as mounted:
        if not mounted:
            return out
        store = mnt / "s.sqlite"
        run_json(["run", "rs", "BM/1/VNL/CPU", *TINY, "-n", "8", "--store", str(store)], work)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        for args in (["run", "rs", "BM/1/VNL/CPU", *TINY, "-n", "8", "--store", str(store)],
                     ["show", "--store", str(store)]):
            proc = cli(args, work)
            out.injected += 1
            if args[0] == "show" and proc.returncode == 0:
                continue                          # reading a read-only store is fine
            out.errors += 1
            out.clear += int(clear_message(proc.stderr) and ("read-only" in proc.stderr.lower()
                                                             or "read only" in proc.stderr.lower()))
            out.notes.append(f"{args[0]}: {proc.stderr.strip().splitlines()[-1][:240] if proc.stderr.strip() else ''}")
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        cli(["show", "--store", str(store)], work)
        # a run refused before it measured loses nothing; one that measured and was kept must be imported now
        out.expected = 1 + sum(1 for n in out.notes if n.startswith("run:") and "kept in" in n)
        out.stored, out.duplicated = count_runs(store)
    return out


def fault_corrupt_store(work: Path) -> Outcome:
    out = Outcome("corrupt store")
    good = work / "good.sqlite"
    run_json(["run", "rs", "BM/1/VNL/CPU", *TINY, "-n", "8", "--store", str(good)], work)
    cases = {}
    garbage = work / "garbage.sqlite"
    garbage.write_bytes(os.urandom(8192))
    cases["random bytes"] = garbage
    text = work / "text.sqlite"
    text.write_text("this is not a database\n" * 50)
    cases["a text file"] = text
    truncated = work / "truncated.sqlite"
    data = good.read_bytes()
    truncated.write_bytes(data[: max(512, len(data) // 3)])
    cases["truncated"] = truncated
    smashed = work / "smashed.sqlite"
    blob = bytearray(data)
    for i in range(4096, min(len(blob), 4096 * 3)):
        blob[i] = 0xA5
    smashed.write_bytes(bytes(blob))
    cases["overwritten pages"] = smashed
    for label, path in cases.items():
        for args in (["show", "--store", str(path)], ["run", "rs", "BM/1/VNL/CPU", *TINY, "-n", "8",
                                                      "--store", str(path)]):
            proc = cli(args, work)
            out.injected += 1
            if proc.returncode == 0:
                continue                          # SQLite may not notice every damage: not an error then
            out.errors += 1
            ok = clear_message(proc.stderr) and str(path) in proc.stderr
            out.clear += int(ok)
            if not ok:
                out.notes.append(f"{label}/{args[0]}: {proc.stderr.strip()[-160:]}")
        check = cli(["store", "check", "--store", str(path)], work)
        out.injected += 1
        out.errors += 1
        out.clear += int(check.returncode != 0 and clear_message(check.stderr + check.stdout))
    return out


# ---------------------------------------------------------------------------
# hostile input


VALID_STUDY = """
name = "hostile"
seed = 1
store = "hostile.sqlite"
timeout_s = 60
apps = ["ic", "rs"]
platforms = ["BM", "CN"]
cores = [1, 2]
cpu_modes = ["VNL", "PIN"]
devices = ["CPU"]

[repetition]
warmup_runs = 1
min_runs = 3
max_runs = 5
target_ci_halfwidth_pct = 2.0

[workload.ic]
requests = 8
batch_size = 4
variant = "tiny"

[workload.rs]
requests = 16
variant = "tiny"
"""

HOSTILE_VALUES = [
    '"ïç😀\\u202e"', '"$(touch {canary})"', '"; touch {canary}"', '"`touch {canary}`"', '"../../../../../../etc/passwd"',
    '"../../x/../../{canary_name}.sqlite"', '"\\u0000"', '"a\\nb"', "1e309", "-1", "0", "99999999999999999999999999",
    "3.5", "true", "[]", "[1, \"x\"]", "{{ a = 1 }}", '""', '"   "', '"%s%n"', '"' + "A" * 5000 + '"', "-inf", "nan",
]


def mutate_study(rng: random.Random, canary: Path) -> str:
    lines = VALID_STUDY.strip().splitlines()
    kind = rng.random()
    if kind < 0.15:                                   # a byte-level mutation of the TOML text
        text = bytearray("\n".join(lines).encode())
        for _ in range(rng.randint(1, 4)):
            text[rng.randrange(len(text))] = rng.randrange(256)
        return text.decode(errors="replace")
    if kind < 0.25:                                   # an unknown key (a typo)
        at = rng.randrange(len(lines))
        lines.insert(at + 1, rng.choice(["aps = [\"ic\"]", "min_run = 3", "platfroms = [\"BM\"]", "cpu_mode = \"PIN\""]))
        return "\n".join(lines)
    candidates = [i for i, line in enumerate(lines) if "=" in line]
    at = rng.choice(candidates)
    key = lines[at].split("=", 1)[0].strip()
    value = rng.choice(HOSTILE_VALUES).format(canary=canary, canary_name=canary.name)
    if rng.random() < 0.3 and key in ("apps", "platforms", "cpu_modes", "devices", "cores"):
        value = f"[{value}]"
    lines[at] = f"{key} = {value}"
    return "\n".join(lines)


def fault_hostile_studies(work: Path, count: int, seed: int) -> Outcome:
    """Random mutations of a valid study file: each must plan fine or be refused with a clear error (exit 2),
    and none may run a shell command or write outside the paths a user gave."""
    out = Outcome("hostile study files")
    rng = random.Random(seed)
    folder = work / "hostile"
    folder.mkdir(exist_ok=True)
    canary = work / "pwned"
    accepted = 0
    for k in range(count):
        path = folder / f"mutant-{k}.toml"
        path.write_text(mutate_study(rng, canary), errors="replace")
        proc = cli(["study", str(path), "--plan"], folder, timeout=120)
        out.injected += 1
        if proc.returncode == 0:
            accepted += 1
            continue
        out.errors += 1
        ok = proc.returncode == 2 and clear_message(proc.stderr) and len(proc.stderr.strip().splitlines()) <= 6
        out.clear += int(ok)
        if not ok and len(out.notes) < 4:
            out.notes.append(f"mutant-{k}: exit {proc.returncode}: {proc.stderr.strip()[-200:]}")
    if canary.exists() or list(work.glob("**/pwned*")):
        out.notes.append("INJECTION: a canary file was created")
        out.clear = 0
    out.notes.append(f"{accepted} of {count} mutants were valid studies (planned)")
    return out


def _damage(path: Path, how: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: max(1, len(data) // 3)])
    elif how == "random":
        path.write_bytes(os.urandom(max(64, len(data) // 4)))
    elif how == "empty":
        path.write_bytes(b"")


def fault_hostile_data(work: Path, seed: int, apps=("ic", "sr", "nlp", "rs")) -> Outcome:
    """Damaged inputs: each run must either finish with the bad samples counted as errors, or fail with an error
    that names the data — never a traceback."""
    from e2ebench.apps import get_app_class

    out = Outcome("hostile data")
    rng = random.Random(seed)
    store = work / "data.sqlite"
    files = {"ic": "*.JPEG", "sr": "**/*.wav", "nlp": "*.json", "rs": "*.txt"}
    for app in apps:
        for how in ("truncated", "random", "empty"):
            folder = work / f"data-{app}-{how}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            root = Path(get_app_class(app).make_data(folder, 4, seed=seed))
            victims = sorted(root.glob(files[app]) if root.is_dir() else [root])
            victim = victims[rng.randrange(len(victims))] if victims else root
            _damage(victim, how, rng)
            code, result, err = run_json(["run", app, "BM/1/VNL/CPU", *TINY, "-n", "4", "--batch-size", "2",
                                          "--data", str(root), "--store", str(store)], work, timeout=600)
            out.injected += 1
            out.expected = (out.expected or 0) + (1 if code in (0, 1) else 0)
            counted = bool(result) and (result.get("errors") or {}).get("count", 0) > 0
            if code == 0 and not counted:
                out.notes.append(f"{app}/{how}: the run succeeded without reading the damaged part")
                continue
            out.errors += 1
            error = (result or {}).get("error") or ""
            ok = (code == 0 and counted) or (code in (1, 2) and clear_message(error or err) and
                                             "Traceback" not in err)
            out.clear += int(ok)
            if not ok and len(out.notes) < 6:
                out.notes.append(f"{app}/{how}: exit {code}: {(error or err).strip()[-200:]}")
    out.stored, out.duplicated = count_runs(store)
    return out


# ---------------------------------------------------------------------------
# main


def _platforms_here() -> list[str]:
    ok = ["BM"]
    if shutil.which("runc") and os.geteuid() == 0:
        ok.append("CN")
    return ok


def _qemu_usable() -> bool:
    return bool(shutil.which("qemu-system-x86_64")) and os.geteuid() == 0


FAULTS = ("study-sigkill", "study-sigterm", "worker-sigkill", "container-sigkill", "runc-sigkill", "qemu-sigkill",
          "oom", "full-disk", "readonly-store", "corrupt-store", "hung-worker", "hung-guest", "two-studies",
          "hostile-study", "hostile-data")


def run_faults(work: Path, only: set[str] | None, kills: int, mutations: int, seed: int, vm: bool,
               progress: Callable[[str], None] = lambda m: None) -> list[Outcome]:
    platforms = _platforms_here()
    cn = "CN" in platforms
    plan: list[tuple[str, Callable[[], Outcome]]] = [
        ("study-sigkill", lambda: fault_study_signal(work, signal.SIGKILL, kills, seed, platforms)),
        ("study-sigterm", lambda: fault_study_signal(work, signal.SIGTERM, kills, seed + 1, platforms)),
        ("worker-sigkill", lambda: fault_kill_process(work, "SIGKILL worker (BM)", "BM/1/VNL/CPU", ("worker",), 0.5,
                                                      ("signal", "killed", "sigkill"))),
    ]
    if cn:
        plan += [
            ("container-sigkill", lambda: fault_kill_process(work, "SIGKILL container's process (CN)", "CN/1/PIN/CPU",
                                                             ("worker",), 0.5, ("signal", "killed", "sigkill"))),
            ("runc-sigkill", lambda: fault_kill_process(work, "SIGKILL runc run (CN)", "CN/1/VNL/CPU", ("runc",), 1.0,
                                                        ("signal", "killed", "sigkill", "runc"))),
        ]
    if vm and _qemu_usable():
        plan += [
            ("qemu-sigkill", lambda: fault_kill_process(work, "SIGKILL QEMU (VM)", "VM/1/VNL/CPU", ("qemu",), 3.0,
                                                        ("qemu", "guest", "vm", "killed", "signal"))),
            ("hung-guest", lambda: fault_kill_process(work, "hung guest (SIGSTOP QEMU)", "VM/1/VNL/CPU", ("qemu",), 3.0,
                                                      ("timed out",), sig=signal.SIGSTOP, timeout_s=120)),
        ]
    plan += [("oom", lambda: fault_oom(work, "BM/1/VNL/CPU"))]
    if cn:
        plan += [("oom", lambda: fault_oom(work, "CN/1/VNL/CPU"))]
    plan += [
        ("hung-worker", lambda: fault_kill_process(work, "hung worker (SIGSTOP, BM)", "BM/1/VNL/CPU", ("worker",), 0.5,
                                                   ("timed out",), sig=signal.SIGSTOP, timeout_s=20)),
        ("full-disk", lambda: fault_full_disk(work)),
        ("readonly-store", lambda: fault_readonly_store(work)),
        ("corrupt-store", lambda: fault_corrupt_store(work)),
        ("two-studies", lambda: fault_two_studies(work, platforms)),
        ("hostile-study", lambda: fault_hostile_studies(work, mutations, seed)),
        ("hostile-data", lambda: fault_hostile_data(work, seed)),
    ]
    outcomes = []
    for key, make in plan:
        if only and key not in only:
            continue
        progress(f"fault: {key}")
        t0 = time.monotonic()
        try:
            outcome = make()
        except Exception as exc:   # the suite reports a broken fault instead of dying
            outcome = Outcome(key, notes=[f"the fault itself failed: {type(exc).__name__}: {exc}"])
        outcome.seconds = time.monotonic() - t0
        outcomes.append(outcome)
        progress(f"  {table_row(outcome)}")
    return outcomes


COLUMNS = ("fault", "injected", "runs expected", "stored", "duplicated", "lost", "left running", "clear errors")


def table_row(o: Outcome) -> str:
    cells = (o.fault, str(o.injected), "—" if o.expected is None else str(o.expected),
             "—" if o.stored is None else str(o.stored), str(o.duplicated), "—" if o.lost is None else str(o.lost),
             str(o.left), o.clear_pct())
    return " | ".join(cells)


def render_table(outcomes: list[Outcome]) -> str:
    rows = [COLUMNS] + [tuple(table_row(o).split(" | ")) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    total_lost = sum(o.lost or 0 for o in outcomes)
    total_dup = sum(o.duplicated for o in outcomes)
    total_left = sum(o.left.total for o in outcomes)
    errors = sum(o.errors for o in outcomes)
    clear = sum(o.clear for o in outcomes)
    lines.append("")
    lines.append(f"total: {total_lost} lost, {total_dup} duplicated, {total_left} left running, "
                 f"{'—' if not errors else f'{100.0 * clear / errors:.0f}%'} clear errors ({clear}/{errors})")
    for o in outcomes:
        for note in o.notes:
            lines.append(f"  {o.fault}: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=FAULTS, help="run only this fault (repeatable)")
    parser.add_argument("--kills", type=int, default=20, help="kills per study-signal fault (default 20)")
    parser.add_argument("--mutations", type=int, default=200, help="mutated study files (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-vm", action="store_true", help="skip the QEMU faults (slow under TCG)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--json", metavar="FILE", help="also write the outcomes as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("faults.py needs root (cgroups, runc, tmpfs, /proc/*/environ)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="faults-", dir=os.environ.get("FAULTS_DIR") or None))
    started = time.time()
    try:
        outcomes = run_faults(work, set(args.only) if args.only else None, args.kills, args.mutations, args.seed,
                              vm=not args.no_vm, progress=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        if not args.keep:
            for mnt in (work / "full", work / "ro"):
                _umount(mnt)
            shutil.rmtree(work, ignore_errors=True)
    print(f"# e2ebench fault injection, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, "
          f"{os.cpu_count()} CPUs, {time.time() - started:.0f} s")
    print(render_table(outcomes))
    if args.json:
        Path(args.json).write_text(json.dumps([o.as_dict() for o in outcomes], indent=2))
    bad = any((o.lost or 0) or o.duplicated or o.left.total or (o.errors and o.clear < o.errors) for o in outcomes)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
