import json
import sqlite3

import pytest

from conftest import as_version_5, make_result
from e2ebench.store import ADHOC_STUDY, METRIC_COLUMNS, METRICS_VERSION, SCHEMA_VERSION, Store, StoreError, metric_columns


def test_round_trip(tmp_path):
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        run_id = store.add_run(make_result())
        failed_id = store.add_run(make_result(e2e_s=None, error="boom"))
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        runs = store.runs(phase=None)
        assert [r["id"] for r in runs] == [run_id, failed_id]
        ok, failed = runs
        assert ok["status"] == "ok" and ok["e2e_s"] == 1.5 and ok["platform"] == "BM" and ok["cores"] == 2
        assert ok["result"] == make_result().as_dict()
        assert failed["status"] == "failed" and failed["error"] == "boom" and failed["e2e_s"] is None
        assert ok["study_id"] == ADHOC_STUDY
        rows = store.export_rows()
        assert rows[0]["infer_s"] == make_result().phases_s["infer"] == 0.6 * 1.5
        assert rows[0]["latency_p99_ms"] == make_result().latency_ms["p99"]


def test_indexed_columns_and_schema_version(tmp_path):
    path = tmp_path / "r.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    assert {"study_id", "app", "platform", "cores", "cpu_mode", "device", "started_at", "e2e_s", "result_json"} <= columns
    indexes = {row[1] for row in db.execute("PRAGMA index_list(runs)")}
    assert {"runs_study", "runs_app", "runs_started", "runs_e2e"} <= indexes
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_studies_and_resume_counts(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        sid = store.create_study("quick", {"apps": ["ic"]}, source="studies/quick.toml")
        store.add_run(make_result(), study_id=sid, phase="warmup", seq=0)
        store.add_run(make_result(), study_id=sid, seq=0)
        store.add_run(make_result(e2e_s=None, error="x"), study_id=sid, seq=1)
        counts = store.run_counts(sid)
        assert counts[("ic@BM/2/PIN/CPU", "measure")] == {"ok": 1, "failed": 1, "next_seq": 2}
        assert counts[("ic@BM/2/PIN/CPU", "warmup")]["next_seq"] == 1
        # the same (study, scenario, phase, seq) cannot be stored twice: resuming is idempotent
        with pytest.raises(sqlite3.IntegrityError):
            store.add_run(make_result(), study_id=sid, seq=0)
        assert store.latest_study()["id"] == sid
        assert store.studies()[0]["ok_runs"] == 1


def test_a_failing_insert_leaves_the_store_unchanged(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        store.add_run(make_result())
        bad = make_result(extra={"not_json": object()})
        with pytest.raises(TypeError):
            store.add_run(bad)
        assert len(store.runs(phase=None)) == 1
        json.dumps(store.runs()[0]["result"])


def test_cold_and_warm_runs_are_kept_apart(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        sid = store.create_study("cache", {})
        store.add_run(make_result(), study_id=sid, seq=0)
        cold = make_result("ic@BM/2/PIN/CPU#cold-cache")
        assert cold.cache == "cold"
        store.add_run(cold, study_id=sid, seq=0)           # same seq, other scenario: no conflict
        # a result without the field: the scenario's suffix says it
        legacy = cold.as_dict()
        del legacy["cache"]
        store.add_run(legacy, study_id=sid, seq=1)
        runs = store.runs(study_id=sid)
        assert [r["cache"] for r in runs] == ["warm", "cold", "cold"]
        assert [r["id"] for r in store.runs(study_id=sid, cache="cold")] == [runs[1]["id"], runs[2]["id"]]
        counts = store.run_counts(sid)
        assert counts[("ic@BM/2/PIN/CPU", "measure")]["next_seq"] == 1
        assert counts[("ic@BM/2/PIN/CPU#cold-cache", "measure")]["next_seq"] == 2
        assert [r["cache"] for r in store.export_rows(sid)] == ["warm", "cold", "cold"]


# The schema of version 1, exactly as e2ebench wrote it before runs.cache existed.
SCHEMA_V1 = """
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


def _v1_store(path):
    """A store as version 1 of e2ebench left it: its schema, its meta row, one study with two runs."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_V1)
    db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")
    db.execute("INSERT INTO studies(id, name, source, config_json, created_at) VALUES ('old', 'old', NULL, '{}', 1.0)")
    for seq, (result, status) in enumerate(((make_result().as_dict(), "ok"),
                                            (make_result(e2e_s=None, error="x").as_dict(), "failed"))):
        db.execute(
            "INSERT INTO runs(study_id, scenario, app, platform, cores, cpu_mode, device, mode, phase, seq, status, "
            "outlier, started_at, finished_at, e2e_s, emulated, error, result_json) "
            "VALUES ('old', ?, 'ic', 'BM', 2, 'PIN', 'CPU', 'e2e', 'measure', ?, ?, 0, 100.0, 101.5, ?, 0, ?, ?)",
            (result["scenario"], seq, status, result["e2e_s"], result["error"], json.dumps(result, sort_keys=True)))
    db.commit()
    db.close()


def test_a_version_1_store_is_migrated_and_still_reads(tmp_path):
    path = tmp_path / "v1.sqlite"
    _v1_store(path)
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 7
        runs = store.runs(study_id="old", phase=None)
        assert [(r["status"], r["cache"], r["seq"]) for r in runs] == [("ok", "warm", 0), ("failed", "warm", 1)]
        assert runs[0]["result"] == make_result().as_dict() and runs[0]["e2e_s"] == 1.5
        assert store.run_counts("old")[("ic@BM/2/PIN/CPU", "measure")] == {"ok": 1, "failed": 1, "next_seq": 2}
        # new runs go in next to the old ones, a cold one with its state
        store.add_run(make_result("ic@BM/2/PIN/CPU#cold-cache"), study_id="old", seq=0)
        assert [r["cache"] for r in store.runs(study_id="old", status="ok")] == ["warm", "cold"]
    db = sqlite3.connect(path)
    columns = {row[1]: row for row in db.execute("PRAGMA table_info(runs)")}
    assert columns["cache"][2] == "TEXT" and columns["cache"][3] == 1 and columns["cache"][4] == "'warm'"
    db.close()
    with Store(path) as store:                       # opening again: nothing left to migrate
        assert store.schema_version == 7 and len(store.runs(phase=None)) == 3
        assert [r["round"] for r in store.runs(phase=None)] == [None, None, None]   # 4 -> 5: rounds unknown before



# -- schema 6: the columns the analysis reads -----------------------------------------------------------------------

def _varied_results() -> list[dict]:
    """Results whose metric keys take every shape the columns must copy faithfully: pools from ``thread_pools`` and
    from ``threads`` (older results), a boolean and a string where a number belongs, NaN (which SQLite's JSON
    functions cannot read), a failed run, a fleet host."""
    base = make_result("ic@BM/2/PIN/CPU", 1.5, counters={"throttled_time_s": 0.25, "nr_throttled": 3,
                                                         "involuntary_ctx_switches": 40},
                       thread_pools={"torch_intra_op": 2, "openmp": [{"num_threads": 2}], "os_cpu_count": 2},
                       platform_info={"host_cpus": 64}, host="node-1", host_type="c5.4xlarge").as_dict()
    base["cold_start"] = {**(base.get("cold_start") or {}), "import_s": 0.5, "provision_s": True,  # a bool is no time
                          "vendor_hook_s": 0.01}                                  # a part of another name
    older = {**make_result("ic@BM/2/PIN/CPU", 1.6).as_dict(), "thread_pools": {}, "threads": {"torch_intra_op": 2}}
    odd = {**make_result("ic@BM/2/PIN/CPU", 1.7).as_dict(), "throughput_sps": True, "completed": "8",
           "cold_start": None, "environment": {"host_cpus": 4}}
    nan = {**make_result("ic@BM/2/PIN/CPU", 1.8).as_dict(), "cold_start_s": float("nan")}
    failed = make_result(e2e_s=None, error="boom").as_dict()
    return [base, older, odd, nan, failed]


def _no_nan(metrics: dict) -> dict:
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()}


def _metrics(runs: list[dict]) -> list[dict]:
    from e2ebench.store import METRIC_KEYS

    return [{k: r[k] for k in (*METRIC_KEYS, "host", "host_type")} for r in runs]


def test_schema_6_columns_hold_what_the_json_holds(tmp_path):
    from e2ebench.store import METRIC_KEYS, metric_columns, metrics_from_columns

    path = tmp_path / "s6.sqlite"
    results = _varied_results()
    with Store(path) as store:
        for r in results:
            store.add_run(r)
        runs = store.runs(phase=None, metrics=True)
    first = runs[0]
    assert first["host"] == "node-1" and first["host_type"] == "c5.4xlarge"
    assert first["thread_pools"] == {"torch_intra_op": 2, "os_cpu_count": 2}          # openmp's list is no size
    assert first["throttled_time_s"] == 0.25 and first["nr_throttled"] == 3 and first["platform_host_cpus"] == 64
    assert first["cold_start"] == results[0]["cold_start"] and first["infer_s"] == results[0]["phases_s"]["infer"]
    assert runs[1]["thread_pools"] == {"torch_intra_op": 2}                           # from ``threads``
    assert runs[2]["throughput_sps"] is None and runs[2]["completed"] is None and runs[2]["env_host_cpus"] == 4
    assert runs[3]["cold_start_s"] is None                                            # NaN is stored as NULL
    assert runs[4]["io_s"] is None and runs[4]["host"] is None
    for run, result in zip(runs, results):
        expected = _no_nan(metrics_from_columns(metric_columns(json.loads(json.dumps(result, sort_keys=True)))))
        assert {k: run[k] for k in METRIC_KEYS} == expected


def test_a_version_5_store_is_migrated_in_sql_and_read_as_it_is_read_only(tmp_path):
    path = tmp_path / "v5.sqlite"
    with Store(path) as store:
        for r in _varied_results():
            store.add_run(r)
        expected = _metrics(store.runs(phase=None, metrics=True))
    as_version_5(path)
    reader = Store.__new__(Store)                       # the read-only opening (root would write a chmod'ed file)
    reader.path, reader.imported = path, []
    reader._open_read_only()
    with reader:                                        # no columns: the metrics come from the JSON
        assert not reader.writable and reader.schema_version == 5
        assert _metrics(reader.runs(phase=None, metrics=True)) == expected
    with Store(path) as store:                          # migrated: the columns filled in SQL (NaN's row in Python)
        assert store.schema_version == SCHEMA_VERSION == 7
        assert _metrics(store.runs(phase=None, metrics=True)) == expected
        assert [r["metrics_version"] for r in store.db.execute("SELECT metrics_version FROM runs")] == \
            [METRICS_VERSION] * 5
        # every column as the migration's SQL filled it, against the Python mapping a new run is written with
        names = [c for c, _, _ in METRIC_COLUMNS]
        for row in store.db.execute(f"SELECT {', '.join(names)}, result_json FROM runs WHERE json_valid(result_json)"):
            python = metric_columns(json.loads(row["result_json"]))
            objects = {c for c, _, kind in METRIC_COLUMNS if kind == "object"}            # (JSON text: compared parsed)
            read = lambda value, c: json.loads(value) if c in objects and value else value  # noqa: E731
            assert {c: read(row[c], c) for c in names} == {c: read(python[c], c) for c in names}
        cold = store.db.execute("SELECT cold_import_s, cold_provision_s, cold_start_other FROM runs "
                                "WHERE cold_start_other > 0").fetchall()
        assert [tuple(r) for r in cold] == [(0.5, None, 1)]


def test_a_half_migrated_store_heals(tmp_path):
    """Columns added but not filled (an interrupted migration, or a row an older writer added): a reader reads those
    runs' JSON meanwhile, and the next writable opening fills them."""
    path = tmp_path / "half.sqlite"
    with Store(path) as store:
        for r in _varied_results():
            store.add_run(r)
        expected = _metrics(store.runs(phase=None, metrics=True))
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET metrics_version=NULL, io_s=NULL, cold_start_json=NULL, pool_torch_intra_op=NULL, "
               "host=NULL WHERE id % 2 = 0")
    db.execute("DELETE FROM meta WHERE key='metrics_filled'")       # what an interrupted migration leaves
    db.commit()
    db.close()
    reader = Store.__new__(Store)
    reader.path, reader.imported = path, []
    reader._open_read_only()
    with reader:
        assert _metrics(reader.runs(phase=None, metrics=True)) == expected
    with Store(path) as store:
        assert store.db.execute("SELECT COUNT(*) AS n FROM runs WHERE metrics_version IS NULL").fetchone()["n"] == 0
        assert _metrics(store.runs(phase=None, metrics=True)) == expected
