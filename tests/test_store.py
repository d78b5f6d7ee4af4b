import json
import sqlite3

import pytest

from e2ebench.store import ADHOC_STUDY, SCHEMA_VERSION, Store, StoreError


def make_result(scenario="ic@BM/2/PIN/CPU", e2e=1.5, error=None):
    app, dep = scenario.split("@")
    platform, cores, mode, device = dep.split("/")
    return {
        "schema": "e2ebench.run/1", "scenario": scenario, "app": app, "mode": "e2e",
        "deployment": {"platform": platform, "cores": int(cores), "cpu_mode": mode, "device": device},
        "requests": 8, "e2e_s": e2e, "phases_s": {"io": 0.1, "pre": 0.2, "infer": 1.0, "post": 0.1, "other": 0.1},
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0}, "throughput_sps": 8 / e2e if e2e else None, "emulated": False,
        "error": error, "started_at": 100.0, "finished_at": 101.5, "cold_start_s": 2.0,
    }


def test_round_trip(tmp_path):
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        run_id = store.add_run(make_result())
        failed_id = store.add_run(make_result(e2e=None, error="boom"))
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        runs = store.runs(phase=None)
        assert [r["id"] for r in runs] == [run_id, failed_id]
        ok, failed = runs
        assert ok["status"] == "ok" and ok["e2e_s"] == 1.5 and ok["platform"] == "BM" and ok["cores"] == 2
        assert ok["result"] == make_result()
        assert failed["status"] == "failed" and failed["error"] == "boom" and failed["e2e_s"] is None
        assert ok["study_id"] == ADHOC_STUDY
        rows = store.export_rows()
        assert rows[0]["infer_s"] == 1.0 and rows[0]["latency_p99_ms"] == 3.0


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
        store.add_run(make_result(e2e=None, error="x"), study_id=sid, seq=1)
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
        bad = make_result()
        bad["not_json"] = object()
        with pytest.raises(TypeError):
            store.add_run(bad)
        assert len(store.runs(phase=None)) == 1
        json.dumps(store.runs()[0]["result"])
