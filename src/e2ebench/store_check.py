"""Checking a results store, and copying its readable runs into a new file (``e2ebench store check [--repair]``).

The store checked or repaired is only ever opened read-only (``mode=ro``, else ``immutable=1``): a damaged original
is never changed, whatever is found.  See docs/store.md.

Repair reads row by row, so that a damaged page loses only the runs on it: the run ids to look for come from a
forward and a backward scan of the table, from every index (each its own B-tree, often intact when a table page
is not) and from every id up to the table's AUTOINCREMENT counter; each is then read by its id.  A run is
recovered when its result JSON can be read: the indexed columns are rebuilt from it, as :meth:`Store.add_run`
derives them, with the row's study, phase, seq, status, error, outlier flag, id and identity.  Studies are
copied when readable; a study that only its runs name gets a placeholder record (status ``recovered``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from e2ebench.store import ADHOC_STUDY, SCHEMA_VERSION, STORE_TABLES, Store, _run_columns, pending_files

SQLITE_HEADER = b"SQLite format 3\x00"
RUN_INDEXES = (  # (index, clause that lets the planner scan it for rowids)
    ("runs_study", ""), ("runs_app", ""), ("runs_started", ""), ("runs_e2e", ""), ("runs_uuid", ""),
    ("runs_seq", " WHERE seq IS NOT NULL"),
)
MAX_PROBLEMS = 20


class RepairError(RuntimeError):
    """Nothing could be copied (the file is not SQLite, its first page is unreadable, the target exists...)."""


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that has read the schema and creates no file; raises the last ``sqlite3.Error`` when
    none works.

    ``writable_schema`` (harmless on a read-only connection) makes SQLite read a file shorter than its header says
    (a truncated store) instead of refusing it whole."""
    path = Path(path)
    target = quote(str(path.resolve()))
    last: sqlite3.Error | None = None
    # With no -wal and no -shm beside it, no connection has the store open (a WAL connection keeps its -shm) and
    # everything is in the main file: read it as immutable, which creates no file beside it.  Otherwise read the
    # -wal too, through the -shm that is there.
    in_use = any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm"))
    for flags in (("mode=ro", "immutable=1") if in_use else ("immutable=1",)):
        conn = sqlite3.connect(f"file:{target}?{flags}", uri=True, timeout=30)
        try:
            conn.execute("PRAGMA writable_schema=ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.text_factory = bytes        # text is decoded by hand: damage can leave invalid UTF-8
            return conn
        except sqlite3.Error as exc:
            conn.close()
            last = exc
    assert last is not None
    raise last


def default_repair_target(path: Path) -> Path:
    path = Path(path)
    stem = path.name[: -len(".sqlite")] if path.name.endswith(".sqlite") else path.name
    return path.with_name(f"{stem}.repaired-{time.strftime('%Y%m%d-%H%M%S')}.sqlite")


def _text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


# ---------------------------------------------------------------------------
# check


def check_store(path: Path) -> dict:
    """What a store holds and whether SQLite and e2ebench can read all of it.

    ``kind`` is ``ok``, ``empty`` (0 bytes: SQLite makes it a new store), ``not-sqlite``, ``not-e2ebench`` or
    ``damaged``; ``ok`` is True for the first two.  ``problems`` lists what was found (at most 20 lines)."""
    path = Path(path)
    facts: dict = {
        "store": str(path), "size_bytes": path.stat().st_size, "kind": "damaged", "ok": False, "verdict": "",
        "problems": [], "integrity": None, "page_size": None, "page_count": None, "schema_version": None,
        "studies": None, "runs": None, "runs_ok": None, "runs_failed": None, "unreadable_results": [],
        "pending": [str(p) for p in pending_files(path)],
    }
    problems: list[str] = facts["problems"]
    if facts["size_bytes"] == 0:
        facts.update(kind="empty", ok=True, verdict="empty file (0 bytes): SQLite makes it a new store; it holds no runs")
        return facts
    with open(path, "rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        facts.update(kind="not-sqlite", verdict="not an SQLite database (its first bytes are not SQLite's header): "
                                                "not an e2ebench store, or one whose first page was overwritten")
        return facts
    try:
        conn = open_read_only(path)
    except sqlite3.Error as exc:
        facts["verdict"] = f"damaged: SQLite cannot read its schema ({exc})"
        problems.append(str(exc))
        return facts
    try:
        for pragma in ("page_size", "page_count"):
            with contextlib.suppress(sqlite3.Error):
                facts[pragma] = conn.execute(f"PRAGMA {pragma}").fetchone()[0]
        try:
            tables = {_text(r[0]) for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            tables = set()
            problems.append(f"schema unreadable: {exc}")
        if tables and "meta" not in tables and not tables <= STORE_TABLES:
            facts.update(kind="not-e2ebench",
                         verdict=f"an SQLite database, but not an e2ebench store (tables: {', '.join(sorted(tables))})")
            return facts
        try:
            rows = conn.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})").fetchall()
            facts["integrity"] = [line for r in rows for line in (_text(r[0]) or "").splitlines()
                                  if line.strip() and not line.startswith("*** in database")]
        except sqlite3.Error as exc:
            facts["integrity"] = [f"integrity check stopped: {exc}"]
        if facts["integrity"] != ["ok"]:
            problems.extend(facts["integrity"])
        with contextlib.suppress(sqlite3.Error, ValueError, TypeError, UnicodeDecodeError):
            facts["schema_version"] = int(_text(conn.execute(
                "SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]))
        with contextlib.suppress(sqlite3.Error):
            facts["studies"] = conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
        with contextlib.suppress(sqlite3.Error):
            counts = dict(conn.execute("SELECT CAST(status AS TEXT), COUNT(*) FROM runs GROUP BY 1").fetchall())
            counts = {_text(k): v for k, v in counts.items()}
            facts.update(runs=sum(counts.values()), runs_ok=counts.get("ok", 0), runs_failed=counts.get("failed", 0))
        if "runs" in tables:
            bad = facts["unreadable_results"]
            try:
                for run_id, raw in conn.execute("SELECT id, result_json FROM runs"):
                    try:
                        result = json.loads(_text(raw))
                        if not isinstance(result, dict):
                            raise ValueError("not an object")
                    except (ValueError, TypeError, UnicodeDecodeError):
                        bad.append(run_id)
            except sqlite3.Error as exc:
                problems.append(f"reading the runs' results stopped: {exc}")
            if bad:
                problems.append(f"{len(bad)} run(s) whose result cannot be read: ids "
                                f"{', '.join(map(str, bad[:10]))}{', …' if len(bad) > 10 else ''}")
        if facts["schema_version"] is not None and facts["schema_version"] > SCHEMA_VERSION:
            problems.append(f"schema version {facts['schema_version']} is newer than this e2ebench ({SCHEMA_VERSION})")
    finally:
        conn.close()
    del problems[MAX_PROBLEMS:]
    if not problems:
        facts.update(kind="ok", ok=True, verdict="ok: SQLite's integrity check passed and every run's result reads")
        return facts
    parts = []
    if facts["integrity"] != ["ok"]:
        n = len(facts["integrity"] or [])
        parts.append(f"SQLite's integrity check reports {n}{'+' if n >= MAX_PROBLEMS else ''} problem(s)")
    if facts["unreadable_results"]:
        parts.append(f"{len(facts['unreadable_results'])} run(s) whose result cannot be read")
    facts["verdict"] = "damaged: " + ("; ".join(parts) or problems[0])
    return facts


# ---------------------------------------------------------------------------
# repair


def _scan_ids(conn: sqlite3.Connection, sql: str, into: set[int], problems: list[str]) -> None:
    try:
        for (run_id,) in conn.execute(sql):
            if isinstance(run_id, int):
                into.add(run_id)
    except sqlite3.Error as exc:
        problems.append(f"{sql}: stopped ({exc})")


def _read_studies(conn: sqlite3.Connection, problems: list[str]) -> dict[str, dict]:
    studies: dict[str, dict] = {}
    for order in ("ASC", "DESC"):
        try:
            for row in conn.execute(f"SELECT id, name, source, config_json, created_at, status FROM studies "
                                    f"ORDER BY rowid {order}"):
                with contextlib.suppress(ValueError, TypeError, UnicodeDecodeError):
                    study = _study_row(row)
                    studies.setdefault(study["id"], study)
        except sqlite3.Error as exc:
            problems.append(f"reading studies ({order}) stopped: {exc}")
    return studies


def _study_row(row) -> dict:
    sid, name, source, config_json, created_at, status = row
    config = json.loads(_text(config_json) or "{}")
    return {"id": _text(sid), "name": _text(name) or _text(sid), "source": _text(source),
            "config": config if isinstance(config, dict) else {}, "created_at": float(created_at),
            "status": _text(status) or "running"}


def repair_store(path: Path, target: Path) -> dict:
    """Copy every readable study and run of ``path`` into the new file ``target``; ``path`` is only read.

    Returns ``{store, target, runs_recovered, runs_lost, lost: [{id, why}], studies_recovered,
    studies_placeholder, problems}``.  Raises :class:`RepairError` when nothing can be read or ``target`` exists."""
    path, target = Path(path), Path(target)
    if target.exists():
        raise RepairError(f"{target} exists already: pass --to with a new file name")
    if path.resolve() == target.resolve():
        raise RepairError("the repaired copy must be a new file, not the store itself")
    try:
        conn = open_read_only(path)
    except sqlite3.Error as exc:
        raise RepairError(f"nothing in {path} can be read ({exc}): no run can be recovered from it") from exc
    problems: list[str] = []
    try:
        try:
            columns = [_text(r[1]) for r in conn.execute("PRAGMA table_info(runs)")]
        except sqlite3.Error as exc:
            raise RepairError(f"the schema of {path} cannot be read ({exc}): no run can be recovered from it") from exc
        if not columns:
            raise RepairError(f"{path} has no runs table: it is not an e2ebench store")
        known: set[int] = set()
        _scan_ids(conn, "SELECT id FROM runs ORDER BY id", known, problems)
        _scan_ids(conn, "SELECT id FROM runs ORDER BY id DESC", known, problems)
        indexed: set[int] = set()
        present_indexes = set()
        with contextlib.suppress(sqlite3.Error):
            present_indexes = {_text(r[0]) for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='runs'")}
        for index, where in RUN_INDEXES:
            if index in present_indexes:
                _scan_ids(conn, f"SELECT id FROM runs INDEXED BY {index}{where}", indexed, problems)
        top = max(known | indexed, default=0)
        with contextlib.suppress(sqlite3.Error, TypeError):
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='runs'").fetchone()
            if row and isinstance(row[0], int):
                top = max(top, row[0])
        wanted = [c for c in ("study_id", "phase", "seq", "status", "error", "outlier", "result_json", "uuid")
                  if c in columns]
        runs: list[dict] = []
        lost: list[dict] = []
        listed = known | indexed
        for run_id in range(1, top + 1):
            try:
                row = conn.execute(f"SELECT {', '.join(wanted)} FROM runs WHERE id=?", (run_id,)).fetchone()
            except sqlite3.Error as exc:
                lost.append({"id": run_id, "why": f"unreadable: {exc}"})
                continue
            if row is None:
                if run_id in listed:
                    lost.append({"id": run_id, "why": "listed in an index, missing from the table"})
                continue
            values = dict(zip(wanted, row))
            try:
                result = json.loads(_text(values["result_json"]))
                if not isinstance(result, dict):
                    raise ValueError("not a JSON object")
                record = {
                    "study_id": _text(values["study_id"]), "phase": _text(values.get("phase")) or "measure",
                    "seq": values.get("seq") if isinstance(values.get("seq"), int) else None,
                    "status": _text(values.get("status")) or ("failed" if result.get("error") else "ok"),
                    "error": _text(values.get("error")), "result": result,
                    "uuid": _text(values.get("uuid")) or uuid.uuid4().hex,
                    "outlier": int(bool(values.get("outlier"))), "id": run_id,
                }
                if not record["study_id"]:
                    raise ValueError("no study id")
                _run_columns(record)
            except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
                lost.append({"id": run_id, "why": f"result unreadable: {exc}"})
                continue
            runs.append(record)
        studies = _read_studies(conn, problems)
        for study_id in {r["study_id"] for r in runs} - set(studies):
            with contextlib.suppress(sqlite3.Error, ValueError, TypeError, UnicodeDecodeError):
                row = conn.execute("SELECT id, name, source, config_json, created_at, status FROM studies WHERE id=?",
                                   (study_id,)).fetchone()
                if row is not None:
                    studies[study_id] = _study_row(row)
    finally:
        conn.close()
    placeholders = []
    for study_id in sorted({r["study_id"] for r in runs} - set(studies)):
        first = min(float(r["result"].get("started_at") or time.time()) for r in runs if r["study_id"] == study_id)
        studies[study_id] = {"id": study_id, "name": "ad-hoc runs" if study_id == ADHOC_STUDY else study_id,
                             "source": None, "config": {}, "created_at": first, "status": "recovered"}
        placeholders.append(study_id)
    if not runs and not studies:
        raise RepairError(f"no study and no run of {path} can be read ({(problems or ['nothing found'])[0]}): "
                          f"there is nothing to copy")
    try:
        _write_copy(target, studies, runs)
    except BaseException:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(str(target) + suffix).unlink()
        raise
    return {
        "store": str(path), "target": str(target), "runs_recovered": len(runs), "runs_lost": len(lost), "lost": lost,
        "studies_recovered": len(studies) - len(placeholders), "studies_placeholder": placeholders, "highest_id": top,
        "problems": problems[:MAX_PROBLEMS],
    }


def _write_copy(target: Path, studies: dict[str, dict], runs: list[dict]) -> None:
    seen_uuids: set[str] = set()
    with Store(target, import_pending=False) as new:
        with new.transaction():
            for s in studies.values():
                new.db.execute(
                    "INSERT INTO studies(id, name, source, config_json, created_at, status) VALUES (?, ?, ?, ?, ?, ?)",
                    (s["id"], s["name"], s["source"], json.dumps(s["config"], sort_keys=True), s["created_at"],
                     s["status"]))
            for record in runs:
                if record["uuid"] in seen_uuids:
                    record["uuid"] = uuid.uuid4().hex
                seen_uuids.add(record["uuid"])
                columns = _run_columns(record)
                columns["outlier"] = record["outlier"]
                if columns["seq"] is not None and new.db.execute(
                        "SELECT 1 FROM runs WHERE study_id=? AND scenario=? AND phase=? AND seq=?",
                        (columns["study_id"], columns["scenario"], columns["phase"], columns["seq"])).fetchone():
                    columns["seq"] = None         # damage made two runs claim one seq: keep both, unnumbered
                names = ["id", *columns, "result_json", "uuid"]
                new.db.execute(f"INSERT INTO runs({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                               (record["id"], *columns.values(), json.dumps(record["result"], sort_keys=True),
                                record["uuid"]))
