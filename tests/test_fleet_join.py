"""``e2ebench fleet join`` for real (it wraps ``ray start``) and a study driven through Ray Client (``ray://``).

tests/test_fleet.py starts its nodes with ``ray.cluster_utils.Cluster``; here the head is what a user starts on a
real host: ``e2ebench fleet join --head`` (a daemonised ``ray start``, with its Ray Client port), then ``e2ebench
study FILE --cluster ray://127.0.0.1:PORT`` from a driver that is not part of the cluster's processes, and ``ray
stop`` at the end.  ``ray stop`` stops every Ray process of this machine, so the test runs only when no other Ray
node is running here.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'e2ebench[fleet]')")
pytest.importorskip("grpc", reason="Ray Client needs ray[client] (pip install 'e2ebench[fleet]')")

pytestmark = [pytest.mark.timeout(300), pytest.mark.fleet]

CLI = [sys.executable, "-c", "from e2ebench.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _ray_processes() -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        text = " ".join(proc.info.get("cmdline") or []) + " " + (proc.info.get("name") or "")
        if "raylet" in text or "gcs_server" in text:
            out.append(proc)
    return out


def test_fleet_join_head_and_a_study_through_ray_client(tmp_path):
    if _ray_processes():
        pytest.skip("another Ray node runs on this machine (ray stop would stop it too)")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    gcs, client = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="e2eb-ray-", dir="/tmp")          # (short: Ray's socket paths)
    joined = subprocess.run(CLI + ["fleet", "join", "--head", "--name", "joined", "--host-type", "join-test",
                                   "--port", str(gcs), "--client-port", str(client), "--temp-dir", temp_dir],
                            capture_output=True, text=True, timeout=180)
    try:
        assert joined.returncode == 0, joined.stderr[-2000:]
        assert "starting a Ray node for host joined" in joined.stderr
        _wait_for_port(client, 90)                  # (ray start returns before its client server listens)
        store = tmp_path / "join.sqlite"
        spec = tmp_path / "join.toml"
        spec.write_text(textwrap.dedent(f"""
            name = "join"
            store = "{store}"
            timeout_s = 120
            apps = ["ic"]
            cores = [1]
            cpu_modes = ["VNL"]
            [repetition]
            warmup_runs = 0
            min_runs = 2
            max_runs = 2
            calibrate = false
            [workload.ic]
            requests = 2
            variant = "tiny"
        """))
        study = subprocess.run(CLI + ["study", str(spec), "--cluster", f"ray://127.0.0.1:{client}", "--quiet"],
                               capture_output=True, text=True, timeout=240)
        assert study.returncode == 0, study.stderr[-3000:]
        with sqlite3.connect(store) as db:
            rows = db.execute("SELECT host, host_type, status, phase, seq FROM runs ORDER BY id").fetchall()
        assert rows == [("joined", "join-test", "ok", "measure", 0), ("joined", "join-test", "ok", "measure", 1)]
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not _ray_processes()
    assert not [p for p in psutil.process_iter(["cmdline"]) if "e2ebench.worker" in " ".join(p.info["cmdline"] or [])]
