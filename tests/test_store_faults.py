"""The store under faults: not a store, damaged, read-only, full, two writers at once.

Real files, real SQLite, real damage (truncation, overwritten page bytes, garbage), a real small tmpfs filled with a
file (skipped where mounting is not permitted), real processes writing one store at once.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import E2EBENCH, cli_cwd, make_result, run_cli
from e2ebench import store as store_module
from e2ebench.store import (SCHEMA_VERSION, Store, StoreDamagedError, StoreError, StoreFault, StoreFullError,
                            StoreNotAStoreError, StoreReadOnlyError, pending_dir)
from e2ebench.store_check import RepairError, check_store, repair_store

pytestmark = pytest.mark.timeout(300)


def result(i: int, scenario: str = "ic@BM/2/PIN/CPU", pad: int = 300) -> dict:
    """Run ``i``'s JSON as the store keeps it: a RunResult from conftest's builder, with a marker and padding."""
    return make_result(scenario, 1.0 + i / 1000, started_at=1000.0 + i, finished_at=1001.0 + i,
                       extra={"marker": f"RUN-{i:05d}", "pad": "x" * pad}).as_dict()


def one_line_error(stderr: str, *needles: str) -> str:
    """The CLI's error: one line, ``error: ...``, naming what it must, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def filled_store(path: Path, n: int = 120) -> list[dict]:
    """A store with a study of n runs (two scenarios) and a few ad-hoc runs; the runs as stored."""
    with Store(path) as store:
        sid = store.create_study("faults", {"n": n}, source="faults.toml")
        for i in range(n):
            scenario = ("ic@BM/2/PIN/CPU", "ic@BM/1/VNL/CPU")[i % 2]
            store.add_run(result(i, scenario), study_id=sid, seq=i // 2)
        for i in range(n, n + 6):
            store.add_run(result(i))
        rows = store.db.execute("SELECT id, uuid, study_id, seq FROM runs ORDER BY id").fetchall()
        runs = [dict(r) | {"result": r2["result"]} for r, r2 in zip(rows, store.runs(phase=None))]
    return runs


def page_of(path: Path, needle: bytes) -> tuple[int, int]:
    """(page number, page size) of the table leaf page (type 0x0D) that holds ``needle``."""
    data = path.read_bytes()
    size = int.from_bytes(data[16:18], "big")
    size = 65536 if size == 1 else size
    for number in range(2, len(data) // size + 1):
        page = data[(number - 1) * size: number * size]
        if page[0] == 0x0D and needle in page:
            return number, size
    raise AssertionError(f"no leaf page holds {needle!r}")


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


# ---------------------------------------------------------------------------
# a small tmpfs


def _mount(target: Path, options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                          text=True)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size; unmounted at the end (skipped where mounting is not permitted)."""
    mounted: list[Path] = []

    def mount(size: str = "1m") -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        proc = _mount(target, f"size={size},mode=0777")
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(target)
        return target

    try:
        yield mount
    finally:
        gc.collect()                      # connections left by a failed assertion
        for target in reversed(mounted):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` with one file until it is full."""
    path = folder / "fill"
    with open(path, "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
    return path


def remount(target: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(target)], check=True, capture_output=True)


# ---------------------------------------------------------------------------
# 1. not a store, damaged: one sentence from every command


STUDY_TOML = """
name = "faults"
seed = 1
store = "{store}"
timeout_s = 120
apps = ["ic"]
platforms = ["BM"]
cores = [1]
cpu_modes = ["VNL"]
devices = ["CPU"]

[repetition]
warmup_runs = 0
min_runs = {runs}
max_runs = {runs}

[workload.ic]
requests = 4
variant = "tiny"
"""


def test_a_file_that_is_not_a_store_is_refused_in_one_sentence(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("these are my notes, not a store\n" * 50)
    noise = tmp_path / "noise.sqlite"
    noise.write_bytes(os.urandom(16384))
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE bookmarks(url)")
    db.commit()
    db.close()
    for path in (text, noise, other):
        before = sha256(path)
        with pytest.raises(StoreNotAStoreError) as info:
            Store(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message and "--store" in message
        assert sha256(path) == before                 # nothing written into somebody else's file
    assert not (tmp_path / "notes.sqlite-wal").exists() or (tmp_path / "notes.sqlite-wal").stat().st_size == 0
    with pytest.raises(StoreNotAStoreError, match="is a folder"):
        Store(tmp_path)

    study_file = tmp_path / "study.toml"
    study_file.write_text(STUDY_TOML.format(store=text, runs=1))
    for args in (["show"], ["studies"], ["report", "--out", str(tmp_path / "r")], ["recommend"],
                 ["run", "ic", "BM/1/VNL/CPU", "--variant", "tiny", "-n", "4"], ["store", "import", str(other)]):
        proc = run_cli(args + ["--store", str(text)], timeout=120)
        assert proc.returncode == 3, (args, proc.stderr)
        one_line_error(proc.stderr, str(text), "not an e2ebench store")
    proc = run_cli(["study", str(study_file)], timeout=120)
    assert proc.returncode == 3, proc.stderr
    one_line_error(proc.stderr, str(text), "not an e2ebench store")
    proc = run_cli(["show", "--store", str(other)])
    assert proc.returncode == 3
    one_line_error(proc.stderr, str(other), "not an e2ebench store", "bookmarks")


def test_a_truncated_or_corrupted_store_is_refused_in_one_sentence(tmp_path):
    good = tmp_path / "good.sqlite"
    filled_store(good)
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupted = tmp_path / "corrupted.sqlite"          # bytes in the middle of one run's page overwritten
    shutil.copy(good, corrupted)
    number, size = page_of(corrupted, b"RUN-00060")
    overwrite(corrupted, (number - 1) * size + size // 2, os.urandom(48))
    for path in (truncated, corrupted):
        before = sha256(path)
        with pytest.raises(StoreDamagedError) as info:          # when opening, or on the query that meets it
            with Store(path) as store:
                store.runs(phase=None)
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        assert f"e2ebench store check --store {path} --repair" in message
        assert sha256(path) == before
        # what reads the runs' JSON meets the damage (``show`` and ``recommend`` read the store's columns, schema 6:
        # a run's JSON damaged in the middle of its text is found where that run is shown)
        proc = run_cli(["show", "--runs", "--json", "--store", str(path)])
        assert proc.returncode == 3, proc.stderr
        one_line_error(proc.stderr, str(path), "is damaged", "--repair")
    proc = run_cli(["run", "ic", "BM/1/VNL/CPU", "--variant", "tiny", "-n", "4", "--store", str(truncated)])
    assert proc.returncode == 3
    one_line_error(proc.stderr, str(truncated), "is damaged")


# ---------------------------------------------------------------------------
# 2. store check [--repair]


def test_check_says_ok_for_a_sound_store(tmp_path):
    path = tmp_path / "s.sqlite"
    filled_store(path, 10)
    facts = check_store(path)
    assert facts["ok"] and facts["kind"] == "ok" and facts["runs"] == 16 and facts["studies"] == 2
    assert facts["schema_version"] == SCHEMA_VERSION and facts["pending"] == []
    proc = run_cli(["store", "check", "--store", str(path)])
    assert proc.returncode == 0, proc.stderr
    assert "ok: SQLite's integrity check passed" in proc.stdout and "runs 16 (16 ok, 0 failed)" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]     # checking leaves no file beside it


def test_repair_copies_every_readable_run_and_leaves_the_original_alone(tmp_path):
    original = tmp_path / "good.sqlite"
    runs = filled_store(original, 150)
    by_uuid = {r["uuid"]: r for r in runs}
    damaged = tmp_path / "damaged.sqlite"
    shutil.copy(original, damaged)
    # one leaf page's header overwritten (SQLite: malformed), and bytes in the middle of another page
    number, size = page_of(damaged, b"RUN-00030")
    overwrite(damaged, (number - 1) * size, b"\xff" * 12)
    number2, _ = page_of(damaged, b"RUN-00100")
    overwrite(damaged, (number2 - 1) * size + size // 2, os.urandom(40))
    before = sha256(damaged)
    listing = sorted(p.name for p in tmp_path.iterdir())

    proc = run_cli(["store", "check", "--store", str(damaged)])
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "damaged" in proc.stdout and "--repair" in proc.stdout

    target = tmp_path / "repaired.sqlite"
    proc = run_cli(["store", "check", "--store", str(damaged), "--repair", "--to", str(target), "--json"])
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    outcome = report["repair"]
    assert report["ok"] is False and report["kind"] == "damaged"
    assert sha256(damaged) == before                                   # the damaged original is never modified
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(listing + ["repaired.sqlite"])
    with Store(target) as store:
        copied = store.db.execute("SELECT id, uuid, study_id, seq FROM runs ORDER BY id").fetchall()
        results = {r["id"]: r["result"] for r in store.runs(phase=None)}
        assert {s["id"] for s in store.studies()} == {r["study_id"] for r in runs}
    lost = set(by_uuid) - {r["uuid"] for r in copied}
    assert outcome["runs_recovered"] == len(copied) == len(runs) - len(lost)
    assert outcome["runs_lost"] == len(lost) and 1 <= len(lost) <= 10       # only what was on the damaged pages
    for row in copied:                                 # every recovered run exactly as it was, same id and identity
        before_row = by_uuid[row["uuid"]]
        assert (row["id"], row["study_id"], row["seq"]) == (before_row["id"], before_row["study_id"], before_row["seq"])
        assert results[row["id"]] == before_row["result"]
    assert check_store(target)["ok"]
    # the repair target is never overwritten
    proc = run_cli(["store", "check", "--store", str(damaged), "--repair", "--to", str(target)])
    assert proc.returncode == 2 and "exists already" in proc.stderr


def test_repair_of_a_truncated_store_and_of_garbage(tmp_path):
    original = tmp_path / "good.sqlite"
    runs = filled_store(original, 150)
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(original.read_bytes()[: int(original.stat().st_size * 0.6)])
    facts = check_store(truncated)
    assert not facts["ok"] and facts["kind"] == "damaged" and facts["problems"]
    outcome = repair_store(truncated, tmp_path / "t-repaired.sqlite")
    assert 0 < outcome["runs_recovered"] < len(runs)
    assert outcome["runs_recovered"] + outcome["runs_lost"] == len(runs)
    with Store(tmp_path / "t-repaired.sqlite") as store:
        assert len(store.runs(phase=None)) == outcome["runs_recovered"]

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(40000))
    facts = check_store(garbage)
    assert facts["kind"] == "not-sqlite" and not facts["ok"]
    with pytest.raises(RepairError, match="nothing"):
        repair_store(garbage, tmp_path / "g-repaired.sqlite")
    assert not (tmp_path / "g-repaired.sqlite").exists()
    proc = run_cli(["store", "check", "--store", str(garbage), "--repair"])
    assert proc.returncode == 3 and "not an SQLite database" in proc.stdout
    one_line_error(proc.stderr, "cannot repair")
    assert not list(tmp_path.glob("garbage.repaired-*"))


# ---------------------------------------------------------------------------
# 3. a full disk keeps the run


def test_a_full_disk_keeps_the_run_and_the_next_opening_imports_it_once(tmpfs, tmp_path, monkeypatch):
    mnt = tmpfs("1m")
    cache = tmp_path / "cache"
    monkeypatch.setenv("E2EBENCH_CACHE", str(cache))
    path = mnt / "s.sqlite"
    with Store(path) as store:
        store.add_run(result(0))
        filler = fill(mnt)
        with pytest.raises(StoreFullError) as info:
            store.add_run(result(1, pad=20000))
        assert [r["result"] for r in store.runs()] == [result(0)]        # the store is as it was
    spill = info.value.spill
    message = str(info.value)
    assert spill is not None and spill.parent == cache / "pending"      # beside the store: no space either
    assert str(path) in message and str(spill) in message and "full" in message and "\n" not in message
    assert not pending_dir(path).exists()
    saved = spill.read_text()
    record = json.loads(saved)
    assert record["result"] == result(1, pad=20000) and record["store"] == str(path.resolve())

    with Store(path) as store:                          # still full: the file waits, the store opens
        assert store.imported == [] and spill.exists()
    filler.unlink()
    with Store(path) as store:
        assert [o["outcome"] for o in store.imported] == ["imported"]
        assert [r["result"]["marker"] for r in store.runs()] == ["RUN-00000", "RUN-00001"]
    assert not spill.exists()
    # an import interrupted after its commit, before the file was deleted: the run is not stored twice
    spill.write_text(saved)
    with Store(path) as store:
        assert [o["outcome"] for o in store.imported] == ["already stored"]
        assert len(store.runs()) == 2
    assert not spill.exists()


def test_spill_beside_a_damaged_store_then_repair_and_import(tmp_path):
    path = tmp_path / "s.sqlite"
    runs = filled_store(path, 60)
    last = max(r["result"]["marker"] for r in runs)
    number, size = page_of(path, last.encode())            # the last leaf: the next insert goes there
    overwrite(path, (number - 1) * size, b"\xff" * 12)
    with Store(path) as store:
        with pytest.raises(StoreDamagedError) as info:
            store.add_run(result(999))
    spill = info.value.spill
    assert spill == pending_dir(path) / f"{json.loads(spill.read_text())['uuid']}.json"
    assert "--repair" in str(info.value) and str(spill) in str(info.value)
    proc = run_cli(["store", "check", "--store", str(path)])
    assert proc.returncode == 3 and "spill files waiting to be imported: 1" in proc.stdout
    outcome = repair_store(path, tmp_path / "fixed.sqlite")
    path.rename(tmp_path / "damaged.sqlite")
    (tmp_path / "fixed.sqlite").rename(path)
    with Store(path) as store:                          # the repaired store, under the old name, takes the spill
        assert [o["outcome"] for o in store.imported] == ["imported"]
        assert len(store.runs(phase=None)) == outcome["runs_recovered"] + 1
        assert "RUN-00999" in {r["result"]["marker"] for r in store.runs(phase=None)}
    assert not spill.exists()


def test_spill_falls_back_to_the_log_folder_and_store_import_takes_it(tmpfs, tmp_path, monkeypatch):
    mnt = tmpfs("1m")
    monkeypatch.setenv("E2EBENCH_CACHE", str(mnt / "cache"))        # the cache is on the full disk too
    monkeypatch.setattr(tempfile, "tempdir", str(mnt / "tmp"))
    path = mnt / "s.sqlite"
    logs = tmp_path / "logs"
    with Store(path) as store:
        store.add_run(result(0))
        filler = fill(mnt)
        run = result(1, pad=20000) | {"logs_dir": str(logs)}
        with pytest.raises(StoreFullError) as info:
            store.add_run(run)
        spill = info.value.spill
        assert spill.parent == logs and spill.name.startswith("pending-run-")
        assert f"e2ebench store import --store {path} {spill}" in str(info.value)
        with pytest.raises(StoreFullError, match="no folder could keep its result") as info:
            store.add_run(result(2, pad=20000))         # no log folder, every other folder full
        assert info.value.spill is None
    filler.unlink()
    plain = tmp_path / "run.json"                       # a RunResult kept by hand: an ad-hoc run, never deleted
    plain.write_text(json.dumps(result(3)))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = run_cli(["store", "import", "--store", str(path), str(spill), str(plain), "--keep"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": imported") == 2
    proc = run_cli(["store", "import", "--store", str(path), str(spill), str(plain), str(bad), "--json"])
    assert proc.returncode == 2
    assert [o["outcome"][:14] for o in json.loads(proc.stdout)] == ["already stored", "already stored",
                                                                    "not imported: "]
    assert not spill.exists() and plain.exists()
    with Store(path) as store:
        assert sorted(r["result"]["marker"] for r in store.runs()) == ["RUN-00000", "RUN-00001", "RUN-00003"]


def test_a_new_store_on_a_full_disk_leaves_no_empty_file(tmpfs):
    mnt = tmpfs("1m")
    fill(mnt)
    with pytest.raises(StoreFullError, match="is full: free some space"):
        Store(mnt / "new.sqlite")
    assert sorted(p.name for p in mnt.iterdir()) == ["fill"]


def _worker_started(proc: subprocess.Popen) -> bool:
    import psutil

    try:
        return any("e2ebench.worker" in " ".join(child.cmdline())
                   for child in psutil.Process(proc.pid).children(recursive=True))
    except psutil.Error:
        return False


def _fill_once(store: Path, proc: subprocess.Popen, ready) -> Path | None:
    """Fill the disk of ``store`` as soon as ``ready()``; None when the process ended first."""
    while not ready():
        if proc.poll() is not None:
            return None
        time.sleep(0.01)
    return fill(store.parent)


def test_run_on_a_full_disk_says_where_the_result_is(tmpfs, tmp_path):
    mnt = tmpfs("2m")
    path = mnt / "s.sqlite"
    env = {**os.environ, "E2EBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(E2EBENCH + ["run", "rs", "BM/1/VNL/CPU", "--variant", "tiny", "-n", "8", "--store",
                                        str(path)], cwd=cli_cwd(), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # the disk fills once the run is measuring: the store opened (its WAL files exist, the schema is made) and
        # the worker started -- not at the first WAL file, while the opening may still be writing the schema
        filler = _fill_once(path, proc, lambda: Path(f"{path}-shm").exists() and _worker_started(proc))
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert filler is not None, err
    assert proc.returncode == 3, err
    line = one_line_error(err, f"the file system holding store {path} is full", "so this run was not stored",
                          "its result is kept in")
    spill = Path(line.split("kept in ", 1)[1].split(";", 1)[0])
    assert spill.is_file() and json.loads(spill.read_text())["result"]["scenario"] == "rs@BM/1/VNL/CPU"
    filler.unlink()
    shown = run_cli(["show", "--store", str(path), "--json"], env={"E2EBENCH_CACHE": str(tmp_path / "cache")})
    assert shown.returncode == 0, shown.stderr
    assert "imported 1 run(s)" in shown.stderr
    assert [s["n"] for s in json.loads(shown.stdout)["scenarios"]] == [1]
    assert not spill.exists()


def test_a_study_stops_on_a_full_disk_and_resumes_with_its_runs(tmpfs, tmp_path):
    mnt = tmpfs("8m")
    path = mnt / "study.sqlite"
    study_file = tmp_path / "study.toml"
    study_file.write_text(STUDY_TOML.format(store=path, runs=3))
    env = {**os.environ, "E2EBENCH_CACHE": str(tmp_path / "cache")}

    def stored() -> list[tuple]:
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                return db.execute("SELECT scenario, phase, seq, uuid FROM runs ORDER BY id").fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            return []

    proc = subprocess.Popen(E2EBENCH + ["study", str(study_file)], cwd=cli_cwd(), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        filler = _fill_once(path, proc, lambda: len(stored()) >= 1)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert filler is not None, err
    assert proc.returncode == 3, err                    # stopped, not measuring on into a full disk
    line = one_line_error(err, f"store {path} is full", "so this run was not stored", "kept in")
    spill = Path(line.split("kept in ", 1)[1].split(";", 1)[0])
    kept = json.loads(spill.read_text())
    assert (kept["phase"], kept["seq"]) == ("measure", 1)
    assert len(stored()) == 1                            # the finished run stays stored
    filler.unlink()
    again = run_cli(["study", str(study_file)], timeout=240, env={"E2EBENCH_CACHE": str(tmp_path / "cache")})
    assert again.returncode == 0, again.stderr
    rows = stored()
    # the kept run is imported (seq 1) and the study goes on after it: none lost, none twice.  (The kept run may be
    # a failed one: the worker's log folder is on the full disk too; then the study measures one run more.)
    assert [(r[1], r[2]) for r in rows] == [("measure", k) for k in range(len(rows))]
    assert kept["uuid"] == rows[1][3] and len({r[3] for r in rows}) == len(rows)
    assert len(rows) == 3 + (kept["status"] == "failed")
    assert not spill.exists()


# ---------------------------------------------------------------------------
# read-only


def test_a_read_only_store_is_read_but_not_written(tmpfs):
    mnt = tmpfs("2m")
    path = mnt / "s.sqlite"
    with Store(path) as store:
        store.add_run(result(0))
    remount(mnt, "ro")
    try:
        with pytest.raises(StoreReadOnlyError) as info:
            Store(path)
        assert str(path) in str(info.value) and "writable" in str(info.value) and "\n" not in str(info.value)
        with Store(path, read_only_ok=True) as store:
            assert not store.writable and [r["result"] for r in store.runs()] == [result(0)]
        shown = run_cli(["show", "--store", str(path), "--json"])
        assert shown.returncode == 0, shown.stderr
        assert [s["n"] for s in json.loads(shown.stdout)["scenarios"]] == [1]
        ran = run_cli(["run", "ic", "BM/1/VNL/CPU", "--variant", "tiny", "-n", "4", "--store", str(path)])
        assert ran.returncode == 3                      # refused before measuring
        one_line_error(ran.stderr, f"store {path} is read-only", "writable")
    finally:
        remount(mnt, "rw")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes a chmod 444 file anyway (covered by the read-only mount)")
def test_a_chmod_444_store_is_read_only(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    path.chmod(0o444)
    with pytest.raises(StoreReadOnlyError):
        Store(path)


# ---------------------------------------------------------------------------
# 4. two writers at once


HAMMER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[5])
    from test_store_faults import result
    from e2ebench.store import Store
    path, name, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    while not os.path.exists(go):
        time.sleep(0.001)
    out = []
    with Store(path) as store:
        sid = store.create_study(name, {"n": n})
        for i in range(n):
            for k, scenario in enumerate(("ic@BM/2/PIN/CPU", "ic@BM/1/VNL/CPU")):
                run = result(i, scenario, pad=50) | {"writer": name}
                out.append([store.add_run(run, study_id=sid, seq=i), sid, scenario, i])
            if i % 3 == 0:
                out.append([store.add_run(result(i, pad=50) | {"writer": name}), "adhoc", "ic@BM/2/PIN/CPU", None])
    print(json.dumps(out))
""")


def test_two_processes_writing_one_store_never_mix_identities(tmp_path):
    path = tmp_path / "shared.sqlite"                    # created by the writers themselves, at the same moment
    go = tmp_path / "go"
    n = 40
    writers = [subprocess.Popen([sys.executable, "-c", HAMMER, str(path), name, str(n), str(go),
                                 str(Path(__file__).parent)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name in ("alpha", "beta", "gamma")]
    time.sleep(1.0)
    go.touch()
    claimed = {}
    for name, proc in zip(("alpha", "beta", "gamma"), writers):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        claimed[name] = json.loads(out)
    with Store(path) as store:
        rows = {r["id"]: r for r in store.runs(phase=None)}
        uuids = [r["uuid"] for r in store.db.execute("SELECT uuid FROM runs")]
        studies = store.studies()
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    per_writer = 2 * n + len(range(0, n, 3))
    assert len(rows) == 3 * per_writer                   # every run stored exactly once
    assert len(set(uuids)) == len(uuids) and None not in uuids
    all_ids = [entry[0] for entries in claimed.values() for entry in entries]
    assert sorted(all_ids) == sorted(rows)               # no id handed out twice
    for name, entries in claimed.items():
        ids = [e[0] for e in entries]
        assert ids == sorted(ids)                        # each writer's ids in its own order
        for run_id, study_id, scenario, seq in entries:
            row = rows[run_id]
            assert (row["study_id"], row["scenario"], row["seq"]) == (study_id, scenario, seq)
            assert row["result"]["writer"] == name       # the row holds this writer's result, not another's
    for study in studies:
        if study["id"] == "adhoc":
            continue
        for scenario in ("ic@BM/2/PIN/CPU", "ic@BM/1/VNL/CPU"):
            seqs = [r["seq"] for r in rows.values() if r["study_id"] == study["id"] and r["scenario"] == scenario]
            assert sorted(seqs) == list(range(n))
    assert sum(1 for s in studies if s["id"] == "adhoc") == 1 and len(studies) == 4


# ---------------------------------------------------------------------------
# migration 2 -> 3


def _v2_store(path: Path, n: int = 5) -> None:
    schema_v2 = store_module._SCHEMA.replace(",\n    uuid TEXT\n", "\n").replace("    round INTEGER,\n", "")  # (and
    # thread_policy and the schema-6 columns,
    # which the migration tolerates being there already)
    assert schema_v2 != store_module._SCHEMA
    db = sqlite3.connect(path)
    db.executescript(schema_v2)
    db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '2')")
    db.execute("INSERT INTO studies(id, name, created_at) VALUES ('old', 'old', 1.0)")
    for i in range(n):
        r = result(i)
        db.execute(
            "INSERT INTO runs(study_id, scenario, app, platform, cores, cpu_mode, device, mode, cache, phase, seq, "
            "status, started_at, finished_at, e2e_s, result_json) VALUES ('old', ?, 'ic', 'BM', 2, 'PIN', 'CPU', "
            "'e2e', 'warm', 'measure', ?, 'ok', ?, ?, ?, ?)",
            (r["scenario"], i, r["started_at"], r["finished_at"], r["e2e_s"], json.dumps(r, sort_keys=True)))
    db.commit()
    db.close()


def test_a_version_2_store_gets_run_identities(tmp_path):
    path = tmp_path / "v2.sqlite"
    _v2_store(path)
    # two processes open it at once: one migrates, the other finds it migrated
    opener = "import sys; from e2ebench.store import Store; Store(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", opener, str(path)], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 7
        uuids = [r["uuid"] for r in store.db.execute("SELECT uuid FROM runs ORDER BY id")]
        assert len(set(uuids)) == 5 and all(len(u) == 32 for u in uuids)
        assert [r["result"] for r in store.runs(study_id="old")] == [result(i) for i in range(5)]
        store.add_run(result(5), study_id="old", seq=5)
    db = sqlite3.connect(path)
    assert "runs_uuid" in {row[1] for row in db.execute("PRAGMA index_list(runs)")}
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE runs SET uuid=? WHERE id=2", (uuids[0],))
    db.close()
    with Store(path) as store:                          # opening again changes nothing
        assert [r["uuid"] for r in store.db.execute("SELECT uuid FROM runs ORDER BY id")][:5] == uuids


def test_add_run_with_a_stored_identity_returns_the_stored_row(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        first = store.add_run(result(0), run_uuid="a" * 32)
        again = store.add_run(result(0), run_uuid="a" * 32)
        assert first == again and len(store.runs()) == 1
        assert not isinstance(StoreError("x"), StoreFault)      # "no study" and the like stay usage errors


def test_a_store_locked_too_long_keeps_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.3)
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")               # another process holding the write lock
        try:
            with pytest.raises(store_module.StoreBusyError) as info:
                store.add_run(result(0))
            assert len(store.runs()) == 0               # readers are not blocked (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
    message = str(info.value)
    assert "stayed locked by another process" in message and str(info.value.spill) in message
    assert info.value.spill.parent == pending_dir(path)
    with Store(path) as store:
        assert [r["result"] for r in store.runs()] == [result(0)]
