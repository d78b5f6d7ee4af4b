"""SQLite result store (stdlib ``sqlite3``).

One row per run with the full RunResult JSON plus indexed columns for queries.  Every run is
committed in its own transaction, so a run that finished is never lost when a later one dies.

Schema (version 2)::

    meta(key PRIMARY KEY, value)                         -- schema_version
    studies(id PRIMARY KEY, name, source, config_json, created_at, status)
    runs(id PRIMARY KEY AUTOINCREMENT, study_id, scenario, app, platform, cores, cpu_mode,
         device, mode, cache, phase, seq, status, outlier, started_at, finished_at, e2e_s,
         emulated, error, result_json)

``phase`` is ``warmup`` or ``measure``; ``status`` is ``ok`` or ``failed``; ``seq`` numbers the
runs of one scenario in one study (0-based, per phase) and is unique with (study, scenario,
phase), which makes resuming idempotent.  ``cache`` is ``warm`` or ``cold``, the page-cache state the run
was measured with; it is part of the scenario (``ic@BM/2/PIN/CPU#cold-cache``).

Migrations: version 1 -> 2 adds ``runs.cache`` (``ALTER TABLE ... ADD COLUMN``, default ``warm``: version 1
had no cold-cache runs; the column then comes last in the table, which no query depends on).  A store is migrated when it is opened; a store newer than this code is refused.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 2
DEFAULT_STORE = Path("results") / "e2ebench.sqlite"
ADHOC_STUDY = "adhoc"

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
    phase TEXT NOT NULL DEFAULT 'measure',
    seq INTEGER,
    status TEXT NOT NULL,
    outlier INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    e2e_s REAL,
    emulated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_study ON runs(study_id, scenario, phase);
CREATE INDEX IF NOT EXISTS runs_app ON runs(app, platform, cores, cpu_mode, device);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started_at);
CREATE INDEX IF NOT EXISTS runs_e2e ON runs(e2e_s);
CREATE UNIQUE INDEX IF NOT EXISTS runs_seq ON runs(study_id, scenario, phase, seq) WHERE seq IS NOT NULL;
"""

RUN_COLUMNS = (
    "id", "study_id", "scenario", "app", "platform", "cores", "cpu_mode", "device", "mode", "cache", "phase", "seq",
    "status", "outlier", "started_at", "finished_at", "e2e_s", "emulated", "error",
)


class StoreError(RuntimeError):
    pass


class Store:
    """A results database.  Use as a context manager or call :meth:`close`."""

    def __init__(self, path: Path | str = DEFAULT_STORE):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        # executescript() COMMITs any open transaction first (Python 3.11), so it cannot run inside
        # transaction(); the schema statements are idempotent (IF NOT EXISTS) and run in one script.
        self.db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        with self.transaction():
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema version {row['value']}, newer than this e2ebench ({SCHEMA_VERSION})"
                )
            # 1 -> 2: runs.cache.  Checked on the columns, not only the version, so a half-migrated store heals.
            columns = {r["name"] for r in self.db.execute("PRAGMA table_info(runs)")}
            if "cache" not in columns:
                self.db.execute("ALTER TABLE runs ADD COLUMN cache TEXT NOT NULL DEFAULT 'warm'")
            if row is not None and int(row["value"]) < SCHEMA_VERSION:
                self.db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()["value"])

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
        if self.get_study(study_id) is None:
            self.create_study(name or study_id, config, source, study_id=study_id)
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
    def add_run(self, result: dict, study_id: str = ADHOC_STUDY, phase: str = "measure", seq: int | None = None,
                status: str | None = None, error: str | None = None) -> int:
        """Store one RunResult (a failed run too) atomically; return its row id."""
        dep = result["deployment"]
        status = status or ("failed" if result.get("error") else "ok")
        error = error or result.get("error")
        now = time.time()
        if study_id == ADHOC_STUDY:
            self.ensure_study(ADHOC_STUDY, "ad-hoc runs")
        with self.transaction():
            cur = self.db.execute(
                f"INSERT INTO runs({', '.join(RUN_COLUMNS[1:])}, result_json) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                (
                    study_id, result["scenario"], result["app"], dep["platform"], int(dep["cores"]), dep["cpu_mode"],
                    dep["device"], result.get("mode", "e2e"), run_cache(result), phase, seq, status, 0,
                    float(result.get("started_at", now)), float(result.get("finished_at", now)),
                    result.get("e2e_s") if status == "ok" else None, int(bool(result.get("emulated"))), error,
                    json.dumps(result, sort_keys=True),
                ),
            )
        return int(cur.lastrowid)

    def runs(self, study_id: str | None = None, scenario: str | None = None, phase: str | None = "measure",
             status: str | None = None, app: str | None = None, cache: str | None = None,
             with_result: bool = True) -> list[dict]:
        sql = f"SELECT {', '.join(RUN_COLUMNS)}{', result_json' if with_result else ''} FROM runs WHERE 1=1"
        args: list[Any] = []
        for column, value in (("study_id", study_id), ("scenario", scenario), ("phase", phase), ("status", status),
                              ("app", app), ("cache", cache)):
            if value is not None:
                sql += f" AND {column}=?"
                args.append(value)
        rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        out = []
        for row in rows:
            d = {c: row[c] for c in RUN_COLUMNS}
            d["outlier"] = bool(d["outlier"])
            d["emulated"] = bool(d["emulated"])
            if with_result:
                d["result"] = json.loads(row["result_json"])
            out.append(d)
        return out

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


def _study_dict(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"], "name": row["name"], "source": row["source"],
        "config": json.loads(row["config_json"] or "{}"), "created_at": row["created_at"], "status": row["status"],
    }
