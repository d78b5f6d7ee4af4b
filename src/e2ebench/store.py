"""SQLite result store (stdlib ``sqlite3``).

One row per run with the full RunResult JSON plus indexed columns for queries.  Every run is
committed in its own transaction, so a run that finished is never lost when a later one dies.

Schema (version 7)::

    meta(key PRIMARY KEY, value)                         -- schema_version
    studies(id PRIMARY KEY, name, source, config_json, created_at, status)
    runs(id PRIMARY KEY AUTOINCREMENT, study_id, scenario, app, platform, cores, cpu_mode,
         device, mode, cache, thread_policy, phase, seq, status, outlier, started_at, finished_at, e2e_s,
         emulated, error, result_json, uuid, round, host, host_type, metrics_version, <METRIC_COLUMNS>)
    calibrations(id, study_id, round, host, started_at, probe_s, probe_version, cpus, threads, repeats_json)

``phase`` is ``warmup`` or ``measure``; ``status`` is ``ok`` or ``failed``; ``seq`` numbers the
runs of one scenario in one study (0-based, per phase) and is unique with (study, scenario,
phase), which makes resuming idempotent.  ``cache`` is ``warm`` or ``cold``, the page-cache state the run
was measured with; it is part of the scenario (``ic@BM/2/PIN/CPU#cold-cache``), and so is ``thread_policy``
(``sized``, ``framework-default`` or a number N: ``ic@BM/1/VNL/CPU#threads=framework-default``).  ``uuid`` is the run's
identity (32 hex digits, unique): it is chosen before the run is stored, so a run kept in a spill file
(below) is imported once, whatever happens.

Migrations: version 1 -> 2 adds ``runs.cache`` (``ALTER TABLE ... ADD COLUMN``, default ``warm``: version 1
had no cold-cache runs; the column then comes last in the table, which no query depends on); version 2 -> 3
adds ``runs.uuid`` (random for the runs already stored) and its unique index; version 3 -> 4 adds
``runs.thread_policy`` (default ``sized``: every run before it sized its thread pools to the deployment); version 4 -> 5
adds ``runs.round`` (the study round the run belongs to; ``NULL`` for runs made before rounds were stored, which the
analysis compares unpaired) and the ``calibrations`` table (one calibration probe per study round and host, see
:mod:`e2ebench.calibration`); version 5 -> 6 adds ``runs.host`` and ``runs.host_type`` (a fleet's host and machine
type) and the columns the analysis reads (:data:`METRIC_COLUMNS`: phase times, throughput, cold start, counters,
pool sizes, host cores), filled from each stored result in SQL, a batch per transaction (see :meth:`Store._fill_metrics`),
so that ``show``, ``report`` and ``recommend`` never parse every run's JSON; version 6 -> 7 adds the cold-start parts
as number columns (metrics version 2: every row is filled again, in SQL) and the covering index
``runs_analysis`` (:data:`ANALYSIS_INDEX_COLUMNS`): what ``show`` reads of every run then comes from the index's
narrow pages instead of the table's ~4 KB rows (at 10^5 runs a scan of 0.07 s instead of 0.3 s; see docs/store.md).
A store is migrated when it is opened; a store newer than this code is refused.  A read-only store of an older
version is read as it is by the run lists (a missing ``thread_policy`` reads ``sized``; missing analysis columns are
read from each run's JSON); the analysis reads it through a migrated copy in memory (:meth:`Store.for_analysis`).

Faults (see docs/store.md): every SQLite error that means the file cannot be used is raised as a
:class:`StoreFault` (a :class:`StoreError`) whose message is one sentence naming the file and what to do:
not a store, damaged (SQLite notices some damage only when a query reaches it, so queries are guarded
too, not only the opening), read-only, full, I/O error, locked.  A run that cannot be stored is written
to a spill file (``<store>.pending/<uuid>.json``, else ``$E2EBENCH_CACHE/pending``, the run's log folder,
or the temporary folder) that the error names; the next writable opening imports the spill files beside
the store (and those in ``$E2EBENCH_CACHE/pending`` written for it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import quote

from e2ebench.result import RunResult

SCHEMA_VERSION = 7
DEFAULT_STORE = Path("results") / "e2ebench.sqlite"
ADHOC_STUDY = "adhoc"
BUSY_TIMEOUT_S = 30.0
PENDING_FORMAT = "e2ebench.pending-run/1"

log = logging.getLogger("e2ebench.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    source TEXT,
    config_json TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'running'
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id TEXT NOT NULL REFERENCES studies(id),
    scenario TEXT NOT NULL,
    app TEXT NOT NULL,
    platform TEXT NOT NULL,
    cores INTEGER NOT NULL,
    cpu_mode TEXT NOT NULL,
    device TEXT NOT NULL,
    mode TEXT NOT NULL DEFAULT 'e2e',
    cache TEXT NOT NULL DEFAULT 'warm',
    thread_policy TEXT NOT NULL DEFAULT 'sized',
    phase TEXT NOT NULL DEFAULT 'measure',
    seq INTEGER,
    status TEXT NOT NULL,
    outlier INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    e2e_s REAL,
    emulated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    round INTEGER,
    host TEXT,
    host_type TEXT,
    metrics_version INTEGER,
    io_s REAL, pre_s REAL, infer_s REAL, post_s REAL, other_s REAL,
    throughput_sps REAL, completed REAL, requests REAL, loadgen_p99_ms REAL,
    cold_start_s REAL, cold_start_json TEXT,
    cold_provision_s REAL, cold_process_start_s REAL, cold_import_s REAL, cold_model_load_s REAL,
    cold_first_inference_s REAL, cold_start_other INTEGER,
    throttled_time_s REAL, nr_throttled REAL, involuntary_ctx_switches REAL,
    pool_torch_intra_op REAL, pool_torch_inter_op REAL, pool_onnxruntime_intra_op REAL, pool_opencv REAL,
    pool_openmp REAL, pool_process_threads REAL, pool_os_cpu_count REAL,
    platform_host_cpus REAL, env_host_cpus REAL,
    result_json TEXT NOT NULL,
    uuid TEXT
);
CREATE TABLE IF NOT EXISTS calibrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_at REAL NOT NULL,
    probe_s REAL NOT NULL,
    probe_version INTEGER NOT NULL,
    cpus TEXT NOT NULL,
    threads INTEGER NOT NULL,
    repeats_json TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS calibrations_round ON calibrations(study_id, round, host);
CREATE INDEX IF NOT EXISTS calibrations_host ON calibrations(host, probe_version, cpus);
CREATE INDEX IF NOT EXISTS runs_study ON runs(study_id, scenario, phase);
CREATE INDEX IF NOT EXISTS runs_app ON runs(app, platform, cores, cpu_mode, device);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started_at);
CREATE INDEX IF NOT EXISTS runs_e2e ON runs(e2e_s);
CREATE UNIQUE INDEX IF NOT EXISTS runs_seq ON runs(study_id, scenario, phase, seq) WHERE seq IS NOT NULL;
"""
# Created by _migrate, after the column exists (a version 2 store has the table without it).  In a new store the
# columns the analysis reads come before ``result_json``: SQLite then reads them without walking the result's overflow
# pages (a migrated store has them last, which reads the same values, more slowly); no query depends on the order.
_UUID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS runs_uuid ON runs(uuid)"
STORE_TABLES = frozenset({"meta", "studies", "runs", "calibrations"})

RUN_COLUMNS = (
    "id", "study_id", "scenario", "app", "platform", "cores", "cpu_mode", "device", "mode", "cache", "phase", "seq",
    "status", "outlier", "started_at", "finished_at", "e2e_s", "emulated", "error", "thread_policy", "round",
    "host", "host_type",
)
# What a column added by a later schema version reads in an older store opened read-only (not migrated).
RUN_COLUMN_DEFAULTS = {"thread_policy": "sized", "round": None, "host": None, "host_type": None}

# Schema 6: what the analysis reads of a run, copied from its result into columns, so that ``show``, ``report`` and
# ``recommend`` read columns instead of parsing every run's JSON.  ``metrics_version`` says which copy a row holds
# (NULL: not copied yet -- a row written by an older e2ebench, or a migration that was interrupted; such a row is
# read from its JSON).  Each column: (name, JSON path in the result, kind); ``number`` keeps only JSON numbers
# (not booleans), ``text`` only strings, ``object`` the JSON text of an object, ``other_keys`` how many keys of an
# object are not among COLD_START_PARTS (schema 7, metrics version 2: the cold-start parts as numbers, the rest read
# from ``cold_start_json`` only where there is a rest).
METRICS_VERSION = 2
COLD_START_PARTS = ("provision_s", "process_start_s", "import_s", "model_load_s", "first_inference_s")
PHASE_NAMES = ("io", "pre", "infer", "post", "other")
POOL_NAMES = ("torch_intra_op", "torch_inter_op", "onnxruntime_intra_op", "opencv", "openmp", "process_threads",
              "os_cpu_count")
_POOLS = "$.pools"          # stands for the result's ``thread_pools``, else its ``threads`` (older results)
METRIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("host", "$.host", "text"), ("host_type", "$.host_type", "text"),
    *((f"{p}_s", f"$.phases_s.{p}", "number") for p in PHASE_NAMES),
    ("throughput_sps", "$.throughput_sps", "number"), ("completed", "$.completed", "number"),
    ("requests", "$.requests", "number"), ("loadgen_p99_ms", "$.loadgen_latency_ms.p99", "number"),
    ("cold_start_s", "$.cold_start_s", "number"), ("cold_start_json", "$.cold_start", "object"),
    *((f"cold_{part}", f"$.cold_start.{part}", "number") for part in COLD_START_PARTS),
    ("cold_start_other", "$.cold_start", "other_keys"),
    *((name, f"$.counters.{name}", "number") for name in ("throttled_time_s", "nr_throttled",
                                                            "involuntary_ctx_switches")),
    *((f"pool_{name}", f"{_POOLS}.{name}", "number") for name in POOL_NAMES),
    ("platform_host_cpus", "$.platform_info.host_cpus", "number"), ("env_host_cpus", "$.environment.host_cpus", "number"),
)
_METRIC_TYPES = {"number": "REAL", "text": "TEXT", "object": "TEXT", "other_keys": "INTEGER"}
# Schema 7: everything the analysis reads of a measured run (e2ebench.study_runs), in one index, so that SQLite answers
# its queries from the index alone ("covering"): ~150 bytes an entry instead of the table's ~4 KB rows.
ANALYSIS_INDEX_COLUMNS = (
    # in the order the analysis groups by, so that its GROUP BY queries stream the index without sorting
    "study_id", "phase", "status", "scenario", "host_type", "emulated", "thread_policy", "outlier", "round", "e2e_s",
    "io_s", "pre_s", "infer_s", "post_s", "other_s", "throughput_sps", "cold_start_s", "loadgen_p99_ms", "completed",
    "requests", "platform_host_cpus", "env_host_cpus", "host", "app", "platform", "cores", "cpu_mode", "device", "mode",
    "cache", *(f"cold_{part}" for part in COLD_START_PARTS), "cold_start_other", "throttled_time_s", "nr_throttled",
    "involuntary_ctx_switches", *(f"pool_{name}" for name in POOL_NAMES),
)
_ANALYSIS_INDEX = f"CREATE INDEX IF NOT EXISTS runs_analysis ON runs({', '.join(ANALYSIS_INDEX_COLUMNS)})"
# The keys ``Store.runs(metrics=True)`` adds to each run (``cold_start`` and ``thread_pools`` as dicts).
METRIC_KEYS = tuple([c for c, _, _ in METRIC_COLUMNS if c not in ("host", "host_type", "cold_start_json")
                     and not c.startswith(("pool_", "cold_")) or c == "cold_start_s"] + ["cold_start", "thread_pools"])
MIGRATION_BATCH = 5000


class StoreError(RuntimeError):
    pass


class StoreFault(StoreError):
    """The store file cannot be used as it is.  The message is one sentence naming the file and what to do.

    ``spill`` is the file that holds a run that could not be stored (None when there was none, or when no
    folder took it)."""

    def __init__(self, message: str, path: Path | None = None, spill: Path | None = None):
        super().__init__(message)
        self.path = path
        self.spill = spill


class StoreNotAStoreError(StoreFault):
    """The file is not an SQLite database, or an SQLite database of something else."""


class StoreDamagedError(StoreFault):
    """SQLite reports the file as malformed, or a stored result cannot be read back."""


class StoreReadOnlyError(StoreFault):
    """The file or its folder cannot be written."""


class StoreFullError(StoreFault):
    """The file system holding the store is full."""


class StoreIOError(StoreFault):
    """The operating system reported an I/O error reading or writing the store."""


class StoreBusyError(StoreFault):
    """Another process held the store's write lock for longer than the busy timeout."""


def _damaged_sentence(path: Path, what: str) -> str:
    return (f"store {path} is damaged ({what}): run `e2ebench store check --store {path} --repair` to copy its "
            f"readable runs into a new file")


def sqlite_fault(path: Path, exc: BaseException) -> StoreFault | None:
    """The :class:`StoreFault` an SQLite error means for the store at ``path``; None for errors that are not about
    the file (a constraint, a programming error), which callers re-raise unchanged."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
        return None
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    message = str(exc)
    if primary == 26:                                                  # SQLITE_NOTADB
        return StoreNotAStoreError(
            f"{path} is not an e2ebench store (not an SQLite database): pass --store with your results file, or move "
            f"this file aside to start a new store under its name", path)
    if primary == 11 or message.startswith("Could not decode to UTF-8"):   # SQLITE_CORRUPT; a mangled text value
        return StoreDamagedError(_damaged_sentence(path, message.split(" with text ")[0][:200]), path)
    if primary == 13 or (primary == 10 and _nearly_full(path)):        # SQLITE_FULL; a -shm that cannot grow
        return StoreFullError(f"the file system holding store {path} is full: free some space and run the command "
                              f"again", path)
    if primary in (8, 23) or (primary in (10, 14) and not _writable(path)):  # READONLY, AUTH; CANTOPEN, IOERR
        return StoreReadOnlyError(
            f"store {path} is read-only ({message}): make the file and its folder writable, or pass --store with a "
            f"writable path", path)
    if primary == 14:
        return StoreFault(f"store {path} cannot be opened ({message}): check that its folder exists and that this "
                          f"user may write there, or pass another --store", path)
    if primary == 10:                                                  # SQLITE_IOERR
        return StoreIOError(f"store {path} could not be read or written ({message}): check the disk (`dmesg`), then "
                            f"run `e2ebench store check --store {path}`", path)
    if primary in (5, 6):                                              # SQLITE_BUSY, SQLITE_LOCKED
        return StoreBusyError(f"store {path} stayed locked by another process for more than {BUSY_TIMEOUT_S:g} s "
                              f"({message}): run the command again when the other one has finished, or use another "
                              f"--store", path)
    return None


def _nearly_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has less than 64 KiB left (SQLite reports a -shm file that cannot
    grow as an I/O error, not as a full disk)."""
    try:
        st = os.statvfs(path.parent if str(path.parent) else ".")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def _writable(path: Path) -> bool:
    """Whether this user may write the store file (when it exists) and its folder (for the -wal and -shm files)."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not os.access(path, os.W_OK):
        return False
    return os.access(folder, os.W_OK)


class _Cursor:
    """An ``sqlite3.Cursor`` whose reads raise :class:`StoreFault` (SQLite finds damage while stepping, too)."""

    def __init__(self, cursor: sqlite3.Cursor, guard):
        self._cursor, self._guard = cursor, guard

    def fetchone(self):
        with self._guard():
            return self._cursor.fetchone()

    def fetchall(self):
        with self._guard():
            return self._cursor.fetchall()

    def __iter__(self):
        return iter(self.fetchall())

    @property
    def lastrowid(self):
        return self._cursor.lastrowid

    @property
    def rowcount(self):
        return self._cursor.rowcount


class _Connection:
    """An ``sqlite3.Connection`` whose statements raise :class:`StoreFault` for faults of the file."""

    def __init__(self, conn: sqlite3.Connection, guard):
        self.raw, self._guard = conn, guard

    def execute(self, sql: str, args: Any = ()) -> _Cursor:
        with self._guard():
            return _Cursor(self.raw.execute(sql, args), self._guard)

    def executemany(self, sql: str, rows: Any) -> _Cursor:
        with self._guard():
            return _Cursor(self.raw.executemany(sql, rows), self._guard)

    def executescript(self, script: str) -> None:
        with self._guard():
            self.raw.executescript(script)

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def close(self) -> None:
        self.raw.close()


def spill_folders(store_path: Path, result: dict | None = None) -> list[Path]:
    """Where a run that cannot be stored is written, in order: beside the store, the cache's ``pending`` folder,
    the run's log folder (``logs_dir``: where the worker's output is), the temporary folder."""
    folders = [pending_dir(store_path), cache_pending_dir()]
    logs_dir = (result or {}).get("logs_dir")
    if logs_dir:
        folders.append(Path(logs_dir))
    folders.append(Path(tempfile.gettempdir()) / "e2ebench-pending")
    return folders


def pending_dir(store_path: Path) -> Path:
    """The spill folder beside a store: ``<store>.pending``."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".pending")


def cache_pending_dir() -> Path:
    return Path(os.environ.get("E2EBENCH_CACHE", Path.home() / ".cache" / "e2ebench")) / "pending"


def pending_files(store_path: Path) -> list[Path]:
    """The spill files waiting for this store: all of ``<store>.pending/*.json`` and those in the cache's
    ``pending`` folder that name this store."""
    store_path = Path(store_path)
    found = sorted(pending_dir(store_path).glob("*.json")) if pending_dir(store_path).is_dir() else []
    cache = cache_pending_dir()
    if cache.is_dir():
        resolved = str(store_path.resolve())
        for path in sorted(cache.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text()).get("store") == resolved:
                    found.append(path)
    return found


def _write_atomically(folder: Path, name: str, text: str) -> Path:
    """Write ``folder/name`` whole or not at all (a temporary name, fsync, rename): a half-written spill file is
    never imported.  A folder made here for it is removed again when the file cannot be written."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    tmp = folder / f".{name}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return target


class Store:
    """A results database.  Use as a context manager or call :meth:`close`.

    Opening creates (or migrates) the schema and imports the spill files waiting beside the store.  A store that
    cannot be written raises :class:`StoreReadOnlyError`, unless ``read_only_ok``: then it is opened for reading
    (``writable`` is False) when its schema can be read as it is.
    """

    def __init__(self, path: Path | str = DEFAULT_STORE, *, read_only_ok: bool = False, import_pending: bool = True):
        self.path = Path(path)
        self.writable = True
        self.imported: list[dict] = []
        if self.path.is_dir():
            raise StoreNotAStoreError(f"{self.path} is a folder, not an e2ebench store: pass --store with a file "
                                      f"path", self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreReadOnlyError(f"cannot create the folder of store {self.path} ({exc.strerror}): pass --store "
                                     f"with a writable path", self.path) from exc
        existed = self.path.exists()
        try:
            self._open_writable()
        except StoreReadOnlyError:
            if not (read_only_ok and existed):
                raise
            self._open_read_only()
        except StoreFault:
            with contextlib.suppress(OSError):   # leave no empty file where a new store could not be made
                if not existed and self.path.stat().st_size == 0:
                    for suffix in ("", "-wal", "-shm"):
                        with contextlib.suppress(FileNotFoundError):
                            Path(f"{self.path}{suffix}").unlink()
            raise
        if self.writable and import_pending:
            self.import_pending()

    # -- opening --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            fault = sqlite_fault(self.path, exc)
            if fault is None:
                raise
            raise fault from exc

    def _connect(self, target: str, uri: bool = False) -> None:
        with self._guard():
            conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=uri)
        conn.row_factory = sqlite3.Row
        self.db = _Connection(conn, self._guard)

    def _open_writable(self) -> None:
        self._connect(str(self.path))
        try:
            self._check_is_a_store()         # first: switching to WAL would write into somebody else's file
            self._switch_to_wal()
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            self.db.close()
            raise

    def _switch_to_wal(self) -> None:
        """``journal_mode=WAL`` needs an exclusive lock, and SQLite answers "locked" at once instead of waiting when
        two connections would otherwise deadlock (two processes opening a rollback-journal store together): retry
        for the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except StoreBusyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _open_read_only(self) -> None:
        """Read-only: ``mode=ro`` reads a WAL store when its ``-shm`` file can be used; on a read-only file system
        without one, ``immutable=1`` (nobody can write it there, so nothing changes under the reader)."""
        target = quote(str(self.path.resolve()))
        last: StoreFault | None = None
        for flags in ("mode=ro", "immutable=1"):
            try:
                self._connect(f"file:{target}?{flags}", uri=True)
                self.db.execute("PRAGMA foreign_keys=ON")
                self._check_is_a_store()
                version = self.schema_version
                break
            except StoreFault as exc:
                with contextlib.suppress(Exception):
                    self.db.close()
                last = exc
        else:
            assert last is not None
            raise last
        if version > SCHEMA_VERSION:
            self.db.close()
            raise StoreError(f"store {self.path} has schema version {version}, newer than this e2ebench "
                             f"({SCHEMA_VERSION})")
        if version < 2:
            self.db.close()
            raise StoreReadOnlyError(f"store {self.path} is read-only and has schema version {version}, which must be "
                                     f"migrated before it can be read: make it writable once", self.path)
        self.writable = False

    def _check_is_a_store(self) -> None:
        tables = {r["name"] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
        if tables and "meta" not in tables and not tables <= STORE_TABLES:
            shown = ", ".join(sorted(tables)[:4]) + (", …" if len(tables) > 4 else "")
            raise StoreNotAStoreError(f"{self.path} is an SQLite database but not an e2ebench store (its tables: "
                                      f"{shown}): pass --store with your results file", self.path)

    def _migrate(self) -> None:
        # executescript() COMMITs any open transaction first (Python 3.11), so it cannot run inside
        # transaction(); the schema statements are idempotent (IF NOT EXISTS) and run in one script.
        try:
            self.db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except BaseException:
            self._rollback()
            raise
        with self.transaction():
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema version {row['value']}, newer than this e2ebench ({SCHEMA_VERSION})"
                )
            # Checked on the columns, not only the version, so a half-migrated store heals.
            columns = {r["name"] for r in self.db.execute("PRAGMA table_info(runs)")}
            if "cache" not in columns:                          # 1 -> 2
                self.db.execute("ALTER TABLE runs ADD COLUMN cache TEXT NOT NULL DEFAULT 'warm'")
            if "uuid" not in columns:                           # 2 -> 3: an identity for every run
                self.db.execute("ALTER TABLE runs ADD COLUMN uuid TEXT")
                self.db.execute("UPDATE runs SET uuid=lower(hex(randomblob(16))) WHERE uuid IS NULL")
            if "thread_policy" not in columns:                  # 3 -> 4: every earlier run sized its pools
                self.db.execute("ALTER TABLE runs ADD COLUMN thread_policy TEXT NOT NULL DEFAULT 'sized'")
            if "round" not in columns:                          # 4 -> 5: rounds (NULL before; the table came with
                self.db.execute("ALTER TABLE runs ADD COLUMN round INTEGER")  # _SCHEMA above)
            for column, _, kind in (("metrics_version", "", "INTEGER"), *METRIC_COLUMNS):   # 5 -> 6: the columns
                if column not in columns:                                                  # the analysis reads
                    self.db.execute(f"ALTER TABLE runs ADD COLUMN {column} {_METRIC_TYPES.get(kind, kind)}")
                    self.db.execute("DELETE FROM meta WHERE key='metrics_filled'")      # to be filled below
            self.db.execute(_UUID_INDEX)
            indexed = [r["name"] for r in self.db.execute("PRAGMA index_info(runs_analysis)")]
            if indexed != list(ANALYSIS_INDEX_COLUMNS):         # 6 -> 7, or an index of an earlier 7
                self.db.execute("DROP INDEX IF EXISTS runs_analysis")
                self.db.execute(_ANALYSIS_INDEX)
            if row is not None and int(row["value"]) < SCHEMA_VERSION:
                self.db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            if self.db.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is None:      # nothing to fill (a new store)
                self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('metrics_filled', ?)",
                                (str(METRICS_VERSION),))
        self._fill_metrics()

    def _fill_metrics(self) -> None:
        """Copy the schema-6 columns out of the stored JSON of every run that lacks them (``metrics_version`` NULL):
        in SQL, :data:`MIGRATION_BATCH` runs per transaction, so that an interrupted migration keeps what it did and
        the next opening goes on from there; a result SQLite's JSON functions cannot read (``NaN``) is read here."""
        done = self.db.execute("SELECT value FROM meta WHERE key='metrics_filled'").fetchone()
        if done is not None and int(done["value"]) >= METRICS_VERSION:
            return                           # (no scan of the table: a damaged page stays unread until a query)
        try:
            self._fill_metrics_now()
        except StoreDamagedError as exc:     # the runs it could not fill are read from their JSON meanwhile
            log.warning("e2ebench: the analysis columns of %s could not be filled: %s", self.path, exc)
            return
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('metrics_filled', ?)",
                            (str(METRICS_VERSION),))

    def _fill_metrics_now(self) -> None:
        found = self.db.execute("SELECT MIN(id) AS lo, MAX(id) AS hi FROM runs WHERE metrics_version IS NULL "
                                "OR metrics_version < ?", (METRICS_VERSION,)).fetchone()
        if found["lo"] is None:
            return
        sql = (f"UPDATE runs SET {_metric_sql()} WHERE id BETWEEN ? AND ? AND (metrics_version IS NULL OR "
               f"metrics_version < ?) AND json_valid(result_json)")
        for lo in range(int(found["lo"]), int(found["hi"]) + 1, MIGRATION_BATCH):
            with self.transaction():
                self.db.execute(sql, (lo, lo + MIGRATION_BATCH - 1, METRICS_VERSION))
        left = self.db.execute("SELECT id, result_json FROM runs WHERE metrics_version IS NULL OR metrics_version < ?",
                               (METRICS_VERSION,)).fetchall()
        updates = []
        for row in left:
            with contextlib.suppress(ValueError, TypeError):
                result = json.loads(row["result_json"])
                if isinstance(result, dict):
                    updates.append({**metric_columns(result), "id": row["id"]})
        if updates:
            names = list(updates[0])[:-1]
            with self.transaction():
                self.db.executemany(f"UPDATE runs SET {', '.join(f'{n} = :{n}' for n in names)} WHERE id = :id",
                                    updates)

    def _rollback(self) -> None:
        """Roll back what is open; SQLite has already rolled back after some errors (a full disk), and a failing
        ROLLBACK must not hide the error that caused it."""
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.raw.execute("ROLLBACK")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: the write lock is taken first (waiting up to the busy timeout for another
        writer), so what is read inside the transaction is still true when it commits."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()["value"])

    def for_analysis(self) -> "Store":
        """A store the analysis (:mod:`e2ebench.study_runs`) can read with SQL alone: this one when its analysis
        columns are there and filled (every writable store, once opened), else -- an older store opened read-only --
        a copy of it in memory, migrated (the file is not touched; the copy costs the store's size in memory)."""
        if self.writable or self._metrics_ready():
            return self
        copy = Store.__new__(Store)
        copy.path, copy.writable, copy.imported = self.path, False, []
        with self._guard():
            memory = sqlite3.connect(":memory:", isolation_level=None)
            self.db.raw.backup(memory)
        memory.row_factory = sqlite3.Row
        copy.db = _Connection(memory, copy._guard)
        copy._migrate()
        return copy

    def _metrics_ready(self) -> bool:
        if not self._has_metric_columns():
            return False
        done = self.db.execute("SELECT value FROM meta WHERE key='metrics_filled'").fetchone()
        return done is not None and int(done["value"]) >= METRICS_VERSION

    # -- studies ----------------------------------------------------------------------
    def create_study(self, name: str, config: dict | None = None, source: str | None = None,
                     study_id: str | None = None) -> str:
        study_id = study_id or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with self.transaction():
            self.db.execute(
                "INSERT INTO studies(id, name, source, config_json, created_at) VALUES (?, ?, ?, ?, ?)",
                (study_id, name, source, json.dumps(config or {}, sort_keys=True), time.time()),
            )
        return study_id

    def ensure_study(self, study_id: str, name: str | None = None, config: dict | None = None,
                     source: str | None = None) -> str:
        with self.transaction():                       # atomic: two processes may ensure the same study at once
            self.db.execute(
                "INSERT OR IGNORE INTO studies(id, name, source, config_json, created_at) VALUES (?, ?, ?, ?, ?)",
                (study_id, name or study_id, source, json.dumps(config or {}, sort_keys=True), time.time()),
            )
        return study_id

    def get_study(self, study_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM studies WHERE id=?", (study_id,)).fetchone()
        return _study_dict(row) if row else None

    def latest_study(self, name: str | None = None, source: str | None = None) -> dict | None:
        sql, args = "SELECT * FROM studies WHERE id != ?", [ADHOC_STUDY]
        if name is not None:
            sql += " AND name=?"
            args.append(name)
        if source is not None:
            sql += " AND source=?"
            args.append(source)
        row = self.db.execute(sql + " ORDER BY created_at DESC, rowid DESC LIMIT 1", args).fetchone()
        return _study_dict(row) if row else None

    def find_study(self, name: str, source: str, config_sha256: str) -> dict | None:
        """The latest study with this name, source (the study file's resolved path) and configuration hash.

        The hash is read from ``config_json``'s ``identity.config_sha256`` (written by e2ebench.study_runner).
        """
        rows = self.db.execute(
            "SELECT * FROM studies WHERE name=? AND source=? ORDER BY created_at DESC, rowid DESC", (name, source)
        ).fetchall()
        for row in rows:
            study = _study_dict(row)
            if (study["config"].get("identity") or {}).get("config_sha256") == config_sha256:
                return study
        return None

    def resolve_study(self, wanted: str | None, fallback_adhoc: bool = False) -> dict:
        """A study by id, by name (its latest), or by unique id prefix; the latest one when ``wanted`` is None
        (or, with ``fallback_adhoc``, the ad-hoc runs when there is no study).  Raises StoreError naming what exists."""
        if wanted is None:
            record = self.latest_study() or (self.get_study(ADHOC_STUDY) if fallback_adhoc else None)
            if record is None:
                raise StoreError(f"no study in {self.path}; run `e2ebench study` first")
            return record
        record = self.get_study(wanted) or self.latest_study(name=wanted)
        if record is not None:
            return record
        matches = [s for s in self.studies() if s["id"].startswith(wanted)]
        if len(matches) == 1:
            return self.get_study(matches[0]["id"])
        known = ", ".join(s["id"] for s in self.studies()) or "none"
        raise StoreError(f"no study {wanted!r} in {self.path} ({'ambiguous prefix' if matches else 'known: ' + known})")

    def set_study_status(self, study_id: str, status: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE studies SET status=? WHERE id=?", (status, study_id))

    def studies(self) -> list[dict]:
        rows = self.db.execute(
            """SELECT s.*, COUNT(r.id) AS runs,
                      SUM(CASE WHEN r.status='ok' AND r.phase='measure' THEN 1 ELSE 0 END) AS ok_runs,
                      SUM(CASE WHEN r.status='failed' THEN 1 ELSE 0 END) AS failed_runs,
                      COUNT(DISTINCT r.scenario) AS scenarios
               FROM studies s LEFT JOIN runs r ON r.study_id = s.id
               GROUP BY s.id ORDER BY s.created_at"""
        ).fetchall()
        out = []
        for row in rows:
            d = _study_dict(row)
            d.update(runs=row["runs"], ok_runs=row["ok_runs"] or 0, failed_runs=row["failed_runs"] or 0,
                     scenarios=row["scenarios"])
            out.append(d)
        return out

    # -- runs ---------------------------------------------------------------------------
    def add_run(self, result: RunResult | dict, study_id: str = ADHOC_STUDY, phase: str = "measure",
                seq: int | None = None, status: str | None = None, error: str | None = None,
                run_uuid: str | None = None) -> int:
        """Store one RunResult (a failed run too) atomically; return its row id.

        ``result``: a :class:`~e2ebench.result.RunResult`, stored as its JSON object, or such an object already
        (a spill file's, an older version's), stored as it is.

        The run's identity (``run_uuid``, random when not given) is fixed before anything is written: storing the
        same identity again returns the stored row.  When the store cannot take the run (full, read-only, damaged,
        I/O error, locked), the run is written to a spill file and the :class:`StoreFault` raised names it, so that
        nothing measured is lost; the next writable opening of the store imports it.
        """
        if isinstance(result, RunResult):
            result = result.as_dict()
        status = status or ("failed" if result.get("error") else "ok")
        record = {
            "format": PENDING_FORMAT, "store": str(self.path.resolve()), "uuid": run_uuid or uuid.uuid4().hex,
            "study_id": study_id, "phase": phase, "seq": seq, "status": status, "error": error or result.get("error"),
            "result": result,
        }
        _run_columns(record)                          # a malformed result fails here, before anything is written
        json.dumps(result)                            # an unserialisable one too (TypeError)
        try:
            with self.transaction():
                return self._insert(record)[0]
        except StoreFault as exc:
            raise self._spill(exc, record) from exc

    def _insert(self, record: dict, renumber: bool = False) -> tuple[int, str]:
        """Insert one run record (inside a transaction); ``(row id, what happened)``.  A record whose identity is
        stored already is not inserted again.  ``renumber``: a ``seq`` taken in the meantime (a study resumed before
        a spill file was imported) becomes the next free one, so the run is kept."""
        found = self.db.execute("SELECT id FROM runs WHERE uuid=?", (record["uuid"],)).fetchone()
        if found is not None:
            return int(found["id"]), "already stored"
        study_id = record["study_id"]
        study = record.get("study") or {}
        if study_id == ADHOC_STUDY:
            study = {"name": "ad-hoc runs"}
        self.db.execute(
            "INSERT OR IGNORE INTO studies(id, name, source, config_json, created_at, status) VALUES (?, ?, ?, ?, ?, ?)",
            (study_id, study.get("name") or study_id, study.get("source"),
             json.dumps(study.get("config") or {}, sort_keys=True), float(study.get("created_at") or time.time()),
             study.get("status") or "running"),
        )
        columns = _run_columns(record)
        outcome = "imported"
        if renumber and columns["seq"] is not None:
            taken = self.db.execute("SELECT 1 FROM runs WHERE study_id=? AND scenario=? AND phase=? AND seq=?",
                                    (study_id, columns["scenario"], columns["phase"], columns["seq"])).fetchone()
            if taken is not None:
                top = self.db.execute("SELECT MAX(seq) AS m FROM runs WHERE study_id=? AND scenario=? AND phase=?",
                                      (study_id, columns["scenario"], columns["phase"])).fetchone()["m"]
                outcome = f"imported as {columns['phase']} #{top + 1} (#{columns['seq']} was stored meanwhile)"
                columns["seq"] = top + 1
        names = list(columns) + ["result_json", "uuid"]
        cur = self.db.execute(
            f"INSERT INTO runs({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            (*columns.values(), json.dumps(record["result"], sort_keys=True), record["uuid"]),
        )
        return int(cur.lastrowid), outcome

    def _spill(self, exc: StoreFault, record: dict) -> StoreFault:
        """Write a run the store could not take to the first folder that takes it; the fault to raise, naming it."""
        with contextlib.suppress(Exception):
            if record["study_id"] != ADHOC_STUDY:
                study = self.get_study(record["study_id"])
                if study:
                    record = {**record, "study": {k: study[k] for k in ("name", "source", "config", "created_at")}}
        record = {**record, "written_at": time.time(), "reason": str(exc)}
        text = json.dumps(record, sort_keys=True, indent=1, default=str)
        logs_dir = record["result"].get("logs_dir")
        spill, tried = None, []
        for folder in spill_folders(self.path, record["result"]):
            name = f"pending-run-{record['uuid']}.json" if logs_dir and folder == Path(logs_dir) \
                else f"{record['uuid']}.json"
            try:
                spill = _write_atomically(folder, name, text)
                break
            except OSError as err:
                tried.append(f"{folder}: {err.strerror or err}")
        cause, remedy = _fault_words(exc, self.path)
        if spill is None:
            message = (f"{cause}, so this run was not stored, and no folder could keep its result "
                       f"({'; '.join(tried)}): {remedy} and run it again")
        elif spill.parent in (pending_dir(self.path), cache_pending_dir()):
            message = (f"{cause}, so this run was not stored: its result is kept in {spill}; {remedy}, and the next "
                       f"e2ebench command that opens the store imports it")
        else:
            message = (f"{cause}, so this run was not stored: its result is kept in {spill}; {remedy}, then run "
                       f"`e2ebench store import --store {self.path} {spill}`")
        return type(exc)(message, self.path, spill)

    # -- spill files ----------------------------------------------------------------------
    def import_pending(self) -> list[dict]:
        """Import the spill files waiting for this store (see :func:`pending_files`), each once, and delete them.

        Called when a writable store is opened.  A file that cannot be imported is kept and named in a warning; when
        the store cannot take runs now (still full), the files wait for the next opening."""
        outcomes = []
        for path in pending_files(self.path):
            try:
                outcomes.append(self.import_file(path))
            except StoreFault as exc:
                log.warning("e2ebench: %d spill file(s) wait beside %s: %s", len(pending_files(self.path)), self.path,
                            exc)
                break
            except (OSError, ValueError, KeyError, TypeError, sqlite3.IntegrityError) as exc:
                log.warning("e2ebench: spill file %s kept: it cannot be imported (%s)", path, exc)
        if outcomes:
            log.warning("e2ebench: imported %d run(s) that could not be stored earlier into %s (%s)", len(outcomes),
                        self.path, ", ".join(f"run {o['run_id']}: {o['outcome']}" for o in outcomes))
        self.imported.extend(outcomes)
        return outcomes

    def import_file(self, path: Path | str, delete: bool = True) -> dict:
        """Import one spill file (or one plain RunResult JSON, as an ad-hoc run); return ``{file, uuid, run_id,
        outcome}``.  Idempotent: the run's identity is checked in the same transaction that inserts it, and a spill
        file is deleted only after that transaction committed (``delete``); a plain RunResult is never deleted."""
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        spill = data.get("format") == PENDING_FORMAT
        if spill:
            record = data
        else:                                         # a RunResult: its identity is its scenario and start time
            if "scenario" not in data or "started_at" not in data:
                raise ValueError("neither an e2ebench spill file nor a RunResult (no scenario or started_at)")
            record = {"uuid": uuid.uuid5(uuid.NAMESPACE_URL, f"e2ebench-run:{data['scenario']}:{data['started_at']!r}").hex,
                      "study_id": ADHOC_STUDY, "phase": "measure", "seq": None,
                      "status": "failed" if data.get("error") else "ok", "error": data.get("error"), "result": data}
        if not isinstance(record.get("result"), dict) or not record.get("uuid") or not record.get("study_id"):
            raise ValueError("spill file without a result, identity or study")
        _run_columns(record)
        with self.transaction():
            if not spill:
                same = self.db.execute("SELECT id FROM runs WHERE scenario=? AND started_at=?",
                                       (record["result"]["scenario"], float(record["result"]["started_at"]))).fetchone()
                if same is not None:
                    return {"file": str(path), "uuid": record["uuid"], "run_id": int(same["id"]),
                            "outcome": "already stored"}
            run_id, outcome = self._insert(record, renumber=True)
        if spill and delete:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return {"file": str(path), "uuid": record["uuid"], "run_id": run_id, "outcome": outcome}

    def runs(self, study_id: str | None = None, scenario: str | None = None, phase: str | None = "measure",
             status: str | None = None, app: str | None = None, cache: str | None = None,
             with_result: bool = True, metrics: bool = False) -> list[dict]:
        """The runs that match, oldest first, as dicts of :data:`RUN_COLUMNS` (plus ``result``, the parsed JSON, with
        ``with_result``; plus :data:`METRIC_KEYS` with ``metrics``: read from the schema-6 columns, and from the JSON
        only for a run whose columns are not filled -- a store of an older version read as it is)."""
        present = self._present_run_columns()
        has_metrics = metrics and self._has_metric_columns()
        selected = list(present)
        if with_result:
            selected.append("result_json")
        elif metrics and not has_metrics:
            selected.append("result_json AS fallback_json")
        if has_metrics:
            selected += ["metrics_version", "cold_start_json",
                         *(c for c in dict.fromkeys(c for c, _, _ in METRIC_COLUMNS)
                           if c not in present and c != "cold_start_json")]
            if not with_result:
                selected.append("CASE WHEN metrics_version IS NULL OR metrics_version < "
                                f"{METRICS_VERSION} THEN result_json END AS fallback_json")
        sql = f"SELECT {', '.join(selected)} FROM runs WHERE 1=1"
        args: list[Any] = []
        for column, value in (("study_id", study_id), ("scenario", scenario), ("phase", phase), ("status", status),
                              ("app", app), ("cache", cache)):
            if value is not None:
                sql += f" AND {column}=?"
                args.append(value)
        with self._guard():                   # plain tuples: a study can hold 10^5 runs
            cursor = self.db.raw.cursor()
            cursor.row_factory = None
            rows = cursor.execute(sql + " ORDER BY id", args).fetchall()
        names = [s.rsplit(" AS ", 1)[-1] for s in selected]
        missing = [c for c in RUN_COLUMNS if c not in present]
        pools = [(f"pool_{name}", name) for name in POOL_NAMES]
        out = []
        for values in rows:
            d = dict(zip(names, values))
            if missing:                      # an older store read as it is: its defaults, in the columns' order
                d = {c: (d[c] if c in present else RUN_COLUMN_DEFAULTS[c]) for c in RUN_COLUMNS} | {
                    k: v for k, v in d.items() if k not in present}
            d["outlier"] = bool(d["outlier"])
            d["emulated"] = bool(d["emulated"])
            if with_result:
                d["result"] = self._parse(d["id"], d.pop("result_json"))
            if metrics:
                version = d.pop("metrics_version", None)
                cold = d.pop("cold_start_json", None)
                fallback = d.pop("fallback_json", None)
                sizes = [(name, d.pop(column)) for column, name in pools] if has_metrics else []
                if has_metrics and version is not None and version >= METRICS_VERSION:
                    d["cold_start"] = json.loads(cold) if cold else None
                    d["thread_pools"] = {name: v for name, v in sizes if v is not None}
                else:                        # columns not filled: read the JSON (``fallback_json`` or the result)
                    result = d["result"] if with_result else self._parse(d["id"], fallback)
                    filled = metric_columns(result if isinstance(result, dict) else {})
                    d.update(metrics_from_columns(filled))
                    for column in ("host", "host_type"):
                        d[column] = d[column] if d[column] is not None else filled[column]
            out.append(d)
        return out

    def _parse(self, run_id: int, text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError as exc:
            raise StoreDamagedError(_damaged_sentence(self.path, f"run {run_id}'s result cannot be read: {exc}"),
                                    self.path) from exc

    def results(self, run_ids: Sequence[int], keys: Sequence[str] | None = None,
                batch: int = 500) -> Iterator[tuple[int, dict]]:
        """``(id, result)`` of the given runs, in the order given, ``batch`` at a time (never every result at once):
        for what shows a run's JSON, such as the report's provenance table.

        ``keys``: only these top-level keys of each result, read by SQLite's ``json_extract`` instead of parsing the
        whole JSON in Python (a result SQLite cannot read, such as one with ``NaN``, is parsed whole).  Equal values
        of many runs (one host's ``environment``) are parsed once and shared: treat them as read-only."""
        ids = [int(i) for i in run_ids]
        if keys is not None:
            for key in keys:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise ValueError(f"not a result key: {key!r}")
            parts = ", ".join(f"CASE WHEN ok THEN json_type(result_json, '$.{k}') END, "
                              f"CASE WHEN ok THEN json_extract(result_json, '$.{k}') END" for k in keys)
            select = f"SELECT id, CASE WHEN ok THEN NULL ELSE result_json END, {parts} FROM " \
                     "(SELECT id, result_json, json_valid(result_json) AS ok FROM runs WHERE id IN ({}))"
        else:
            select = "SELECT id, result_json FROM runs WHERE id IN ({})"
        shared: dict[str, Any] = {}
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            rows = self.db.execute(select.format(", ".join("?" * len(chunk))), chunk).fetchall()
            found = {int(r[0]): tuple(r) for r in rows}
            for run_id in chunk:
                row = found.get(run_id)
                if row is None:
                    continue
                if keys is None or row[1] is not None:
                    result = self._parse(run_id, row[1])
                    yield run_id, result if keys is None else {k: result.get(k) for k in keys}
                    continue
                out = {}
                for i, key in enumerate(keys):
                    kind, value = row[2 + 2 * i], row[3 + 2 * i]
                    if kind in ("true", "false"):
                        value = kind == "true"
                    elif kind in ("object", "array"):                # its JSON text
                        if value not in shared:
                            if len(shared) > 4096:
                                shared.clear()
                            shared[value] = json.loads(value)
                        value = shared[value]
                    out[key] = value
                yield run_id, out

    def _has_metric_columns(self) -> bool:
        """Whether the ``runs`` table has the schema-6 columns (not when an older store is read read-only)."""
        if getattr(self, "_metric_columns_present", None) is None:
            have = {r["name"] for r in self.db.execute("PRAGMA table_info(runs)")}
            self._metric_columns_present = {"metrics_version", *(c for c, _, _ in METRIC_COLUMNS)} <= have
        return self._metric_columns_present

    def _present_run_columns(self) -> tuple[str, ...]:
        """:data:`RUN_COLUMNS` that the ``runs`` table has (all of them unless an older store is read read-only)."""
        if getattr(self, "_present", None) is None:
            have = {r["name"] for r in self.db.execute("PRAGMA table_info(runs)")}
            self._present = tuple(c for c in RUN_COLUMNS if c in have or c not in RUN_COLUMN_DEFAULTS)
        return self._present

    def get_run(self, run_id: int) -> dict | None:
        rows = [r for r in self.runs(phase=None) if r["id"] == run_id]
        return rows[0] if rows else None

    def run_counts(self, study_id: str) -> dict[tuple[str, str], dict[str, int]]:
        """{(scenario, phase): {"ok": n, "failed": m, "next_seq": k}} for resuming."""
        rows = self.db.execute(
            """SELECT scenario, phase, status, COUNT(*) AS n, MAX(seq) AS max_seq FROM runs
               WHERE study_id=? GROUP BY scenario, phase, status""",
            (study_id,),
        ).fetchall()
        out: dict[tuple[str, str], dict[str, int]] = {}
        for row in rows:
            entry = out.setdefault((row["scenario"], row["phase"]), {"ok": 0, "failed": 0, "next_seq": 0})
            entry[row["status"]] = row["n"]
            if row["max_seq"] is not None:
                entry["next_seq"] = max(entry["next_seq"], row["max_seq"] + 1)
        return out

    def mark_outliers(self, run_ids_outlier: dict[int, bool]) -> None:
        with self.transaction():
            self.db.executemany("UPDATE runs SET outlier=? WHERE id=?",
                                [(int(flag), run_id) for run_id, flag in run_ids_outlier.items()])

    # -- calibration probes (one per study round and host) ----------------------------------
    def add_calibration(self, study_id: str, round_index: int, probe: dict) -> None:
        """Store one calibration probe (a :func:`e2ebench.calibration.run_probe` result) of ``round_index``; a
        probe of the same study, round and host stored already is kept (a resumed round does not probe twice)."""
        repeats = [float(v) for v in probe["repeats_s"]]
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO calibrations(study_id, round, host, started_at, probe_s, probe_version, cpus, "
                "threads, repeats_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (study_id, int(round_index), str(probe["host"]), float(probe["started_at"]), float(probe["probe_s"]),
                 int(probe["version"]), ",".join(str(int(c)) for c in probe["cpus"]), int(probe["threads"]),
                 json.dumps(repeats)),
            )

    def calibrations(self, study_id: str | None = None, host: str | None = None) -> list[dict]:
        """Stored probes, oldest first (``[]`` for a store older than schema 5 opened read-only)."""
        have = {r["name"] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "calibrations" not in have:
            return []
        sql, args = "SELECT * FROM calibrations WHERE 1=1", []
        for column, value in (("study_id", study_id), ("host", host)):
            if value is not None:
                sql += f" AND {column}=?"
                args.append(value)
        out = []
        for row in self.db.execute(sql + " ORDER BY started_at, id", args).fetchall():
            d = {k: row[k] for k in row.keys()}
            d["repeats_s"] = json.loads(d.pop("repeats_json"))
            d["cpus"] = [int(c) for c in str(d["cpus"]).split(",") if c != ""]
            out.append(d)
        return out

    # -- export -------------------------------------------------------------------------
    def export_rows(self, study_id: str | None = None) -> list[dict]:
        """Flat rows (one per run) for CSV/JSON export."""
        out = []
        for run in self.runs(study_id=study_id, phase=None):
            r = run.pop("result")
            phases = r.get("phases_s") or {}
            latency = r.get("latency_ms") or {}
            run.update({f"{k}_s": phases.get(k) for k in ("io", "pre", "infer", "post", "other")})
            run.update({f"latency_{k}_ms": latency.get(k) for k in ("p50", "p90", "p99")})   # service time
            loadgen_latency = r.get("loadgen_latency_ms") or {}
            run.update({f"loadgen_latency_{k}_ms": loadgen_latency.get(k) for k in ("p50", "p90", "p99")})
            run["throughput_sps"] = r.get("throughput_sps")
            run["cold_start_s"] = r.get("cold_start_s")
            run["requests"] = r.get("requests")
            out.append(run)
        return out


def run_cache(result: dict) -> str:
    """The page-cache state of a RunResult: its ``cache`` field, else its scenario's suffix, else ``warm``."""
    cache = result.get("cache")
    if cache in ("warm", "cold"):
        return cache
    return "cold" if str(result.get("scenario") or "").endswith("#cold-cache") else "warm"


def run_thread_policy(result: dict) -> str:
    """The thread policy of a RunResult: its ``thread_policy`` field, else its scenario's ``#threads=`` suffix, else
    ``sized`` (results made before policies existed)."""
    policy = result.get("thread_policy")
    if not policy:
        suffix = [p for p in str(result.get("scenario") or "").split("#") if p.strip().lower().startswith("threads=")]
        policy = suffix[-1].split("=", 1)[1] if suffix else "sized"
    return str(policy).strip().lower() or "sized"


def _study_dict(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"], "name": row["name"], "source": row["source"],
        "config": json.loads(row["config_json"] or "{}"), "created_at": row["created_at"], "status": row["status"],
    }


def _run_columns(record: dict) -> dict:
    """The indexed columns of a run record (``result`` plus ``study_id``, ``phase``, ``seq``, ``status``, ``error``)."""
    result = record["result"]
    dep = result["deployment"]
    now = time.time()
    status = record["status"]
    return {
        "study_id": record["study_id"], "scenario": result["scenario"], "app": result["app"],
        "platform": dep["platform"], "cores": int(dep["cores"]), "cpu_mode": dep["cpu_mode"], "device": dep["device"],
        "mode": result.get("mode", "e2e"), "cache": run_cache(result), "thread_policy": run_thread_policy(result),
        "phase": record["phase"], "seq": record["seq"],
        "status": status, "outlier": 0, "started_at": float(result.get("started_at", now)),
        "finished_at": float(result.get("finished_at", now)),
        "e2e_s": result.get("e2e_s") if status == "ok" else None, "emulated": int(bool(result.get("emulated"))),
        "error": record["error"], "round": _round_of(result), **metric_columns(result),
    }


def _json_at(result: dict, path: str) -> Any:
    """The value at a ``$.a.b`` path of a result (None where a step is missing or not an object)."""
    node: Any = result
    for part in path[2:].split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _pools_of(result: dict) -> dict | None:
    """The pool sizes a result recorded: ``thread_pools``, else ``threads`` (results before issue 13)."""
    pools = result.get("thread_pools")
    if isinstance(pools, dict) and pools:
        return pools
    threads = result.get("threads")
    return threads if isinstance(threads, dict) else None


def metric_columns(result: dict) -> dict[str, Any]:
    """The schema-6 columns of one result (see :data:`METRIC_COLUMNS`), as the migration's SQL computes them."""
    out: dict[str, Any] = {"metrics_version": METRICS_VERSION}
    pools = _pools_of(result)
    for column, path, kind in METRIC_COLUMNS:
        value = _json_at({"pools": pools}, path) if path.startswith(_POOLS + ".") else _json_at(result, path)
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                value = None                                  # (NaN: SQLite stores it as NULL)
            elif isinstance(value, int) and not -2 ** 63 <= value < 2 ** 63:
                value = float(value)
        elif kind == "text":
            value = value if isinstance(value, str) else None
        elif kind == "other_keys":
            value = sum(1 for k in value if k not in COLD_START_PARTS) if isinstance(value, dict) else None
        else:
            value = json.dumps(value, sort_keys=True) if isinstance(value, dict) else None
        out[column] = value
    return out


def _metric_sql() -> str:
    """``SET`` assignments that fill the schema-6 columns from ``result_json`` (SQLite's JSON functions), the same
    values as :func:`metric_columns`."""
    pools = ("(CASE WHEN json_type(result_json, '$.thread_pools') = 'object' AND json_extract(result_json, "
             "'$.thread_pools') <> '{}' THEN '$.thread_pools' ELSE '$.threads' END)")
    sets = []
    known = ", ".join(f"'{part}'" for part in COLD_START_PARTS)
    for column, path, kind in METRIC_COLUMNS:
        where = f"{pools} || '{path[len(_POOLS):]}'" if path.startswith(_POOLS + ".") else f"'{path}'"
        if kind == "other_keys":
            sets.append(f"{column} = CASE WHEN json_type(result_json, {where}) = 'object' THEN (SELECT COUNT(*) FROM "
                        f"json_each(result_json, {where}) WHERE key NOT IN ({known})) END")
            continue
        types = {"number": "'integer', 'real'", "text": "'text'", "object": "'object'"}[kind]
        sets.append(f"{column} = CASE WHEN json_type(result_json, {where}) IN ({types}) "
                    f"THEN json_extract(result_json, {where}) END")
    return ", ".join(sets + [f"metrics_version = {METRICS_VERSION}"])


def metrics_from_columns(row: Any) -> dict[str, Any]:
    """The run keys of :data:`METRIC_KEYS` from a row that holds the schema-6 columns."""
    out = {k: row[k] for k in METRIC_KEYS if k not in ("cold_start", "thread_pools")}
    cold = row["cold_start_json"]
    out["cold_start"] = json.loads(cold) if cold else None
    out["thread_pools"] = {name: row[f"pool_{name}"] for name in POOL_NAMES if row[f"pool_{name}"] is not None}
    return out


def _round_of(result: dict) -> int | None:
    value = result.get("round")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a run's round must be a whole number >= 0, got {value!r}")
    return value


def _fault_words(exc: StoreFault, path: Path) -> tuple[str, str]:
    """(what happened, what to do) for a spill message."""
    if isinstance(exc, StoreFullError):
        return f"the file system holding store {path} is full", "free some space"
    if isinstance(exc, StoreReadOnlyError):
        return f"store {path} is read-only", "make it writable"
    if isinstance(exc, StoreDamagedError):
        return f"store {path} is damaged", f"repair it with `e2ebench store check --store {path} --repair`"
    if isinstance(exc, StoreNotAStoreError):
        return f"{path} is not an e2ebench store", "pass --store with your results file"
    if isinstance(exc, StoreBusyError):
        return f"store {path} stayed locked by another process", "wait for the other process to finish"
    if isinstance(exc, StoreIOError):
        return f"store {path} could not be written (I/O error)", "check the disk"
    return f"store {path} cannot be written ({exc})", "fix the store"
