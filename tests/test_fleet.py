"""e2ebench on a real Ray cluster on this machine: a head and two nodes, each its own raylet (processes of
``ray.cluster_utils.Cluster``), each an e2ebench host with its own data cache; ``e2ebench study --cluster`` runs as
its own process (the driver), like a user's.

What is checked: ``fleet status`` lists three hosts with their facts; ``study --plan --cluster`` says which hosts can
run each scenario; a study spread over the hosts never runs two runs on one host at once (start/finish times in the
store); a host whose data set differs from the head's fails its runs naming the host; a node killed mid-run loses
nothing and duplicates nothing; Ctrl-C cancels the runs in flight; the study process killed (SIGKILL) leaves no run
going on the hosts and resumes; a node joined with its own machine type (``--host-type``) makes a second type, and
each (scenario, host type) is measured on its own hosts to its own stopping decision, also across a resume.
Without ``--cluster`` nothing imports Ray.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'e2ebench[fleet]')")

from e2ebench import fleet  # noqa: E402

pytestmark = [pytest.mark.timeout(600), pytest.mark.fleet]

CLI = [sys.executable, "-c", "from e2ebench.cli import main; main()"]
HOSTS = ("head", "node1", "node2")
MARK = f"e2ebench-fleet-test-{uuid.uuid4().hex[:8]}"       # in every process the cluster starts (environment)


def cli(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, COLUMNS="200"))


def tiny_study(tmp_path: Path, name: str, runs: int, cpu_modes=("PIN",), warmup: int = 0, cores=(1,),
               calibrate: bool = False) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""
        name = "{name}"
        store = "{tmp_path / (name + '.sqlite')}"
        timeout_s = 180
        apps = ["ic"]
        platforms = ["BM"]
        cores = {json.dumps(list(cores))}
        cpu_modes = {json.dumps(list(cpu_modes))}
        [repetition]
        warmup_runs = {warmup}
        min_runs = {runs}
        max_runs = {runs}
        max_consecutive_failures = 10
        calibrate = {'true' if calibrate else 'false'}
        [workload.ic]
        requests = 4
        variant = "tiny"
    """))
    return path


def stored_runs(store: Path) -> list[dict]:
    with sqlite3.connect(store) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY id")]
    for row in rows:
        row["result"] = json.loads(row["result_json"]) if row.get("result_json") else {}
    return rows


def host_of(row: dict) -> str | None:
    return row.get("host") or row["result"].get("host")


def marked_processes(pattern: str) -> list[psutil.Process]:
    """Live processes the test's cluster started (they carry MARK in their environment) whose command line has
    ``pattern``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or pattern not in " ".join(proc.info["cmdline"] or ()):
                continue
            if proc.environ().get("E2EBENCH_FLEET_TEST") == MARK:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for(predicate, timeout_s: float, step_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    return predicate()


class LocalCluster:
    """A head and two nodes of one machine, each offering ``e2ebench_host`` and its own E2EBENCH_CACHE."""

    def __init__(self, root: Path):
        from ray.cluster_utils import Cluster

        self.root = root
        self.nodes: dict[str, object] = {}
        self.cluster = Cluster(initialize_head=False)
        for name in HOSTS:
            self.add(name)
        self.address = self.cluster.address

    def add(self, name: str, host_type: str | None = None) -> None:
        """Start the node ``name`` (its labels as ``e2ebench fleet join --name NAME --host-type TYPE`` gives them)."""
        saved = dict(os.environ)
        os.environ.update(E2EBENCH_FLEET_TEST=MARK, RAY_DEDUP_LOGS="0", E2EBENCH_CACHE=str(self.root / f"cache-{name}"))
        args = {"resources": {fleet.HOST_RESOURCE: 1}, "num_cpus": 1, "labels": fleet.node_labels(name, host_type),
                "object_store_memory": 80 * 1024 * 1024}
        if name == "head":
            args["include_dashboard"] = False
        try:
            self.nodes[name] = self.cluster.add_node(**args)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def kill(self, name: str) -> None:
        """SIGKILL the node's processes (raylet and its workers), as a host that dies."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    c = LocalCluster(root)
    fleet.connect(c.address)            # the test is a driver too: it reads what the hosts run now
    try:
        yield c
    finally:
        fleet.disconnect()
        c.shutdown()


def test_plain_study_imports_no_ray(tmp_path):
    study = tiny_study(tmp_path, "plain", runs=1)
    code = ("import sys; from e2ebench.cli import main, register_subcommands; register_subcommands(); "
            "import e2ebench.cli_study, e2ebench.study_runner; sys.argv = ['e2ebench', 'study', sys.argv[1], '--plan'];\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'ray' not in sys.modules, 'ray was imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(study)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_status_lists_three_hosts_with_their_facts(cluster):
    proc = cli("fleet", "status", "--cluster", cluster.address, "--json")
    assert proc.returncode == 0, proc.stderr
    hosts = {h["name"]: h for h in json.loads(proc.stdout)["hosts"]}
    assert set(hosts) == set(HOSTS)
    for name, host in hosts.items():
        assert host["cores"] >= 1 and host["memory_gib"] > 0 and host["kernel"] and host["cpu_model"]
        assert "BM" in host["available_platforms"] and isinstance(host["kvm"], bool)      # status probes all
        assert host["kvm"] == (host["kvm_device"] and not set(host["emulated_platforms"]) & {"VM", "MVM", "VMCN"})
        assert host["e2ebench_cache"].endswith(f"cache-{name}")       # gathered on the host itself
        assert host["running"] is None
    assert len({h["host_type"] for h in hosts.values()}) == 1          # one machine: one host type
    human = cli("fleet", "status", "--cluster", cluster.address)
    assert human.returncode == 0 and "node1" in human.stdout and "idle" in human.stdout


def test_plan_says_which_hosts_can_run_each_scenario(cluster, tmp_path):
    study = tiny_study(tmp_path, "plan", runs=1)
    text = study.read_text().replace('cores = [1]', 'cores = [1, 4096]').replace(
        'cpu_modes = ["PIN"]', 'cpu_modes = ["PIN"]\nscenarios = ["ic@BM/1/PIN/GPU"]')
    study.write_text(text)
    proc = cli("study", str(study), "--plan", "--json", "--cluster", cluster.address)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    by_key = {s["scenario"]: s for s in plan["scenarios"]}
    assert sorted(by_key["ic@BM/1/PIN/CPU"]["hosts"]) == sorted(HOSTS)
    gpu = by_key["ic@BM/1/PIN/GPU"]
    assert not gpu["feasible"] and gpu["hosts"] == [] and set(gpu["host_reasons"]) == set(HOSTS)
    assert "no host of the cluster can run it" in gpu["reason"]
    assert {h["name"] for h in plan["hosts"]} == set(HOSTS)


def _no_overlap_per_host(rows: list[dict]) -> None:
    by_host: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        by_host.setdefault(host_of(row), []).append((row["started_at"], row["finished_at"]))
    for host, spans in by_host.items():
        spans.sort()
        for (s1, f1), (s2, f2) in zip(spans, spans[1:]):
            assert s2 >= f1, f"host {host} ran two runs at once: {s1}-{f1} and {s2}-{f2}"


def test_study_spreads_over_the_hosts_one_run_per_host_at_a_time(cluster, tmp_path):
    study = tiny_study(tmp_path, "spread", runs=3, cpu_modes=("VNL", "PIN"), calibrate=True)
    proc = cli("study", str(study), "--json", "--cluster", cluster.address)
    assert proc.returncode == 0, proc.stderr
    rows = stored_runs(tmp_path / "spread.sqlite")
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    keys = [(r["scenario"], r["phase"], r["seq"]) for r in rows]
    assert len(set(keys)) == len(keys)
    hosts = {host_of(r) for r in rows}
    assert hosts <= set(HOSTS) and len(hosts) >= 2, hosts
    assert all(r["result"].get("host_type") or r.get("host_type") for r in rows)
    _no_overlap_per_host(rows)
    # runs of one round overlap in time on different hosts: the fleet ran them at once
    spans = sorted((r["started_at"], r["finished_at"]) for r in rows)
    assert any(s2 < f1 for (s1, f1), (s2, f2) in zip(spans, spans[1:]))
    shown = cli("show", "--store", str(tmp_path / "spread.sqlite"))
    assert shown.returncode == 0, shown.stderr
    assert "hosts of the fleet" in shown.stdout and all(h in shown.stdout for h in hosts)
    as_json = json.loads(cli("show", "--store", str(tmp_path / "spread.sqlite"), "--json").stdout)
    assert sum(h["runs"] for h in as_json["hosts"]) == 6 and {h["host"] for h in as_json["hosts"]} == hosts
    # issue 11 in a fleet: a calibration probe on every host at the start of every round, under the host's fleet name,
    # never while a run holds that host; show gives each host's drift
    with sqlite3.connect(tmp_path / "spread.sqlite") as db:
        probes = db.execute("SELECT host, round, started_at FROM calibrations").fetchall()
    rounds = {r["round"] for r in rows}
    assert {(h, r) for h, r, _ in probes} == {(h, r) for h in HOSTS for r in rounds}
    for host, _, started in probes:
        assert not any(host_of(r) == host and r["started_at"] < started < r["finished_at"] for r in rows)
    assert {d["host"] for d in as_json["drift"]} == set(HOSTS) and all(d["probes"] == len(rounds)
                                                                      for d in as_json["drift"])


def test_a_host_whose_data_differs_fails_its_runs_naming_it(cluster, tmp_path):
    # node2's cached data set is made first (the same way a run makes it), then one byte is changed
    env = dict(os.environ, E2EBENCH_CACHE=str(cluster.root / "cache-node2"))
    made = subprocess.run([sys.executable, "-c", "from e2ebench.runner import default_data; "
                           "print(default_data('ic', 4, variant='tiny', seed=0))"],
                          capture_output=True, text=True, env=env, timeout=120, check=True).stdout.strip()
    victim = sorted(p for p in Path(made).rglob("*") if p.is_file() and p.name != ".complete")[0]
    original = victim.read_bytes()
    victim.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
    try:
        study = tiny_study(tmp_path, "differs", runs=1, cpu_modes=("VNL", "PIN"), cores=(1, 2))   # 4 at once
        proc = cli("study", str(study), "--json", "--cluster", cluster.address)
        rows = stored_runs(tmp_path / "differs.sqlite")
    finally:
        victim.write_bytes(original)
    on_node2 = [r for r in rows if host_of(r) == "node2"]
    assert on_node2, "no run went to node2"
    for row in on_node2:
        assert row["status"] != "ok" and "host node2" in row["error"] and "differs from the head's" in row["error"]
    assert all(r["status"] == "ok" for r in rows if host_of(r) != "node2"), proc.stderr


def _wait_running(timeout_s: float = 120, since: float = 0.0, hosts=HOSTS) -> dict:
    """What the hosts run now: runs started after ``since`` on ``hosts`` (waits until there is one)."""
    return wait_for(lambda: {h: e for h, e in fleet.running_now().items()
                             if h in hosts and e["started_at"] >= since}, timeout_s)


def test_study_process_killed_leaves_nothing_running_and_resumes(cluster, tmp_path):
    study = tiny_study(tmp_path, "headkill", runs=4, cpu_modes=("VNL", "PIN"))
    store = tmp_path / "headkill.sqlite"
    started = time.time()
    driver = subprocess.Popen(CLI + ["study", str(study), "--json", "--cluster", cluster.address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_running(since=started), "no run started on the hosts"
        time.sleep(1.0)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    # Ray kills the dead driver's tasks: their workers and the e2ebench workers they started
    left = wait_for(lambda: not marked_processes("e2ebench.worker") and
                    ray.available_resources().get(fleet.HOST_RESOURCE, 0) == len(HOSTS), 60)
    assert left, (f"left running: {[p.pid for p in marked_processes('e2ebench.worker')]}, "
                  f"free hosts {ray.available_resources().get(fleet.HOST_RESOURCE)}")
    before = stored_runs(store)
    resumed = cli("study", str(study), "--json", "--cluster", cluster.address)
    assert resumed.returncode == 0, resumed.stderr
    rows = stored_runs(store)
    keys = [(r["scenario"], r["phase"], r["seq"]) for r in rows]
    assert len(rows) == 8 and len(set(keys)) == 8, keys
    assert [r["id"] for r in rows[:len(before)]] == [r["id"] for r in before]     # the finished runs were kept
    _no_overlap_per_host(rows)


def test_ctrl_c_cancels_the_runs_in_flight(cluster, tmp_path):
    study = tiny_study(tmp_path, "interrupt", runs=3, cpu_modes=("VNL", "PIN"), cores=(1, 2))
    started = time.time()
    driver = subprocess.Popen(CLI + ["study", str(study), "--json", "--cluster", cluster.address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_running(since=started), "no run started on the hosts"
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err
    assert "resume with" in err
    free = wait_for(lambda: not marked_processes("e2ebench.worker") and
                    ray.available_resources().get(fleet.HOST_RESOURCE, 0) == len(HOSTS), 30)
    assert free, f"left running: {[p.pid for p in marked_processes('e2ebench.worker')]}"
    rows = stored_runs(tmp_path / "interrupt.sqlite")
    keys = [(r["scenario"], r["phase"], r["seq"]) for r in rows]
    assert len(set(keys)) == len(keys) and all(r["status"] == "ok" for r in rows)     # cancelled runs not stored


def test_join_host_type_is_a_label_and_is_validated():
    proc = cli("fleet", "join", "10.0.0.1:6379", "--name", "spot-1", "--host-type", "m7i.2xlarge", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "--labels e2ebench-host=spot-1,e2ebench-host-type=m7i.2xlarge" in proc.stdout
    for bad in ("m7i 2xlarge", "-x", "x;rm", "a" * 64, ""):
        refused = cli("fleet", "join", "10.0.0.1:6379", "--name", "spot-1", "--host-type", bad, "--dry-run")
        assert refused.returncode == 2 and "host type" in refused.stderr, (bad, refused.stdout, refused.stderr)


def _stored_rows_while_running(store: Path) -> int:
    try:
        with sqlite3.connect(store, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:           # not created yet, or busy
        return 0


def test_each_host_type_is_measured_to_its_own_stopping_decision(cluster, tmp_path):
    """A node joined with its own type next to the others (their type derived from the same facts): one warm-up and
    min = max = 3 measured runs per (scenario, host type), not 3 in all, each on hosts of its type; the study killed
    after its first runs and resumed keeps the per-type counts."""
    cluster.add("nodeb", host_type="type-b")
    try:
        status = json.loads(cli("fleet", "status", "--cluster", cluster.address, "--json").stdout)["hosts"]
        types = {h["name"]: h["host_type"] for h in status}
        derived = {h["name"]: h.get("derived_host_type") for h in status}
        assert types["nodeb"] == "type-b" and derived["nodeb"] not in (None, "type-b")
        type_a = derived["nodeb"]                                  # the others: the type of this machine's facts
        hosts_a = sorted(n for n, t in types.items() if n != "nodeb")
        assert hosts_a and all(types[n] == type_a and derived[n] is None for n in hosts_a)

        study = tiny_study(tmp_path, "types", runs=3, cpu_modes=("VNL",), warmup=1)
        scenario = "ic@BM/1/VNL/CPU"
        plan = json.loads(cli("study", str(study), "--plan", "--json", "--cluster", cluster.address).stdout)
        (entry,) = plan["scenarios"]
        assert entry["host_types"] == {type_a: hosts_a, "type-b": ["nodeb"]}
        assert plan["estimated_runs"] == {"min": 2 * (1 + 3), "max": 2 * (1 + 3)}

        store = tmp_path / "types.sqlite"
        driver = subprocess.Popen(CLI + ["study", str(study), "--json", "--cluster", cluster.address],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: _stored_rows_while_running(store) >= 2, 200), "no run was stored"
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()
        assert wait_for(lambda: not marked_processes("e2ebench.worker") and
                        ray.available_resources().get(fleet.HOST_RESOURCE, 0) == len(types), 60), "runs left going"
        before = stored_runs(store)
        assert 2 <= len(before) < 8, len(before)                  # killed mid-study
        resumed = cli("study", str(study), "--json", "--cluster", cluster.address)
        assert resumed.returncode == 0, resumed.stderr
        events = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith("{")]
        rows = stored_runs(store)
    finally:
        cluster.kill("nodeb")
    assert [r["id"] for r in rows[:len(before)]] == [r["id"] for r in before]        # the finished runs were kept
    assert len(events) == len(rows) - len(before) and {e["host_type"] for e in events} <= {type_a, "type-b"}
    keys = [(r["scenario"], r["phase"], r["seq"]) for r in rows]
    assert len(set(keys)) == len(keys), keys                               # no seq given twice, nothing duplicated
    assert all(r["status"] == "ok" and r["scenario"] == scenario for r in rows), [r["error"] for r in rows]
    for host_type, hosts in ((type_a, hosts_a), ("type-b", ["nodeb"])):
        mine = [r for r in rows if r["host_type"] == host_type]
        assert sorted(r["phase"] for r in mine) == ["measure"] * 3 + ["warmup"], (host_type, mine)
        assert {host_of(r) for r in mine} <= set(hosts), (host_type, [host_of(r) for r in mine])
    assert len(rows) == 8
    assert sorted(r["seq"] for r in rows if r["phase"] == "measure") == list(range(6))   # shared by the two types
    assert sorted(r["seq"] for r in rows if r["phase"] == "warmup") == [0, 1]
    _no_overlap_per_host(rows)
    shown = json.loads(cli("show", "--store", str(store), "--json").stdout)
    per_type = {s["host_type"]: s for s in shown["scenarios"]}
    assert set(per_type) == {type_a, "type-b"} and len(shown["scenarios"]) == 2
    for summary in per_type.values():
        assert summary["scenario"] == scenario and summary["n"] == 3 and summary["warmup_runs"] == 1
        assert summary["status"] == "max-runs"


def test_node_killed_mid_run_loses_nothing_and_duplicates_nothing(cluster, tmp_path):
    study = tiny_study(tmp_path, "nodekill", runs=2, cpu_modes=("VNL", "PIN"), cores=(1, 2))
    store = tmp_path / "nodekill.sqlite"
    started = time.time()
    driver = subprocess.Popen(CLI + ["study", str(study), "--json", "--cluster", cluster.address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        running = _wait_running(since=started, hosts=("node1", "node2"))
        assert running, "no run started on node1 or node2"
        victim = sorted(running)[0]
        cluster.kill(victim)
        out, err = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err
    assert f"on host {victim} failed in the cluster" in err
    rows = stored_runs(store)
    keys = [(r["scenario"], r["phase"], r["seq"]) for r in rows]
    assert len(rows) == 8 and len(set(keys)) == 8, keys               # expected 8, stored 8, duplicated 0
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]   # the lost run ran again elsewhere
    assert wait_for(lambda: not marked_processes("e2ebench.worker"), 30), "e2ebench workers left running"
    _no_overlap_per_host(rows)
    print(f"fault counts: expected 8, stored {len(rows)}, duplicated {len(keys) - len(set(keys))}, lost "
          f"{8 - len(set(keys))}, left running {len(marked_processes('e2ebench.worker'))}")
