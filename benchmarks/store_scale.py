"""Store scale: the time and peak memory of ``e2ebench show``, ``report`` and ``recommend`` on stores of 10^3 to 10^5
runs (issue 14, item 9: a fleet running the paper's protocol makes 10^5-10^6 runs).

Measured, not asserted.  The stores are made from a real study: a tiny ``e2ebench study`` (tiny IC on BM/1, VNL and
PIN, one warm-up and two measured runs each, a calibration probe per round) is run once into ``WORK/seed.sqlite``;
its study record, its runs' result JSON (~4 KB each) and its probes are then multiplied into a study of the paper's
shape -- four apps x BM/CN/VM/MVM/VMCN x 1..16 cores x VNL/PIN, plus framework-default thread pools on BM and CN at
1 and 2 cores (212 scenarios) -- run in rounds (one run of every scenario per round, a warm-up first, a probe per
round, 0.5% failed runs, 1% outliers), until the store holds the number of runs asked for.  Each result is the
seed's JSON with its scenario, times, phases, counters and pool sizes varied, and the rows go in through the
store's own column function (``e2ebench.store._run_columns``) in one transaction per store.

Each command runs as its own process, as a user runs it; its wall time and its peak resident memory (``ru_maxrss``
of that child, from ``os.wait4``) are printed as a table.  ``--code REV`` also runs the commands with the code of a
git revision (``git archive``; its ``src`` first on ``PYTHONPATH``) on a copy of the store at that revision's schema
version (the schema-6 columns dropped), which gives the "before" rows; ``--check`` compares the JSON outputs of
``show --json``, ``recommend --json`` and ``report --json`` across the code versions (the same numbers expected).

    .venv/bin/python benchmarks/store_scale.py --runs 1000 10000 100000
    .venv/bin/python benchmarks/store_scale.py --runs 10000 --code 0511b0b --check
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

from e2ebench.store import METRIC_COLUMNS, SCHEMA_VERSION, Store, _run_columns

ROOT = Path(__file__).resolve().parents[1]
APPS = ("ic", "sr", "nlp", "rs")
PLATFORMS = ("BM", "CN", "VM", "MVM", "VMCN")
CORES = (1, 2, 4, 8, 16)
# relative E2E of each app and platform (roughly the paper's), and how it scales with cores
APP_E2E_S = {"ic": 1.6, "sr": 4.0, "nlp": 9.0, "rs": 0.8}
PLATFORM_FACTOR = {"BM": 1.0, "CN": 1.01, "VM": 1.08, "MVM": 1.12, "VMCN": 1.10}
SEED_STUDY = """\
name = "store-scale-seed"
store = "{store}"
timeout_s = 300
apps = ["ic"]
platforms = ["BM"]
cores = [1]
cpu_modes = ["VNL", "PIN"]
[repetition]
warmup_runs = 1
min_runs = 2
max_runs = 2
[workload.ic]
requests = 4
batch_size = 2
variant = "tiny"
"""
COMMANDS = {
    "show": ["show"],
    "show --json": ["show", "--json"],
    "report": ["report", "--out", "{out}"],
    "recommend": ["recommend"],
}


# -- the seed: one real tiny study ---------------------------------------------------------------------------------

def seed_store(work: Path) -> Path:
    """``WORK/seed.sqlite``: a real tiny study (made once, kept)."""
    path = work / "seed.sqlite"
    if path.exists():
        return path
    spec = work / "seed.toml"
    spec.write_text(SEED_STUDY.format(store=path))
    print(f"running the seed study ({spec}) ...", file=sys.stderr)
    proc = subprocess.run([sys.executable, "-c", "from e2ebench.cli import main; main()", "study", str(spec),
                           "--quiet"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"the seed study failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return path


def read_seed(path: Path) -> tuple[dict, list[dict], list[dict]]:
    with Store(path, read_only_ok=True) as store:
        study = store.latest_study()
        assert study is not None, f"no study in {path}"
        runs = [r["result"] for r in store.runs(study_id=study["id"], status="ok")]
        probes = store.calibrations(study_id=study["id"])
    if not runs or not probes:
        raise SystemExit(f"the seed study in {path} has no successful run or no probe")
    return study, runs, probes


# -- a big store made from the seed --------------------------------------------------------------------------------

def scenarios() -> list[tuple[str, str, int, str, str]]:
    """(key, app, cores, cpu mode, platform, thread policy) of the synthetic study, in plan order."""
    out = []
    for app in APPS:
        for platform in PLATFORMS:
            for cores in CORES:
                for mode in ("VNL", "PIN"):
                    if platform == "MVM" and mode == "PIN":
                        continue
                    out.append((f"{app}@{platform}/{cores}/{mode}/CPU", app, platform, cores, mode, "sized"))
                    if platform in ("BM", "CN") and cores in (1, 2):
                        out.append((f"{app}@{platform}/{cores}/{mode}/CPU#threads=framework-default", app, platform,
                                    cores, mode, "framework-default"))
    return out


def _result(template: dict, rng: random.Random, scenario: tuple, study_id: str, round_index: int, phase: str,
            started_at: float, failed: bool) -> dict:
    key, app, platform, cores, mode, policy = scenario
    base = APP_E2E_S[app] * PLATFORM_FACTOR[platform] * (1 + 3 / cores) / 4 * (1.03 if mode == "VNL" else 1.0)
    base *= 1.2 if policy != "sized" and cores == 1 else 1.0
    e2e = base * rng.lognormvariate(0, 0.03)
    r = dict(template)
    share = {"io": 0.01, "pre": 0.25, "infer": 0.68, "post": 0.03, "other": 0.03}
    r.update(scenario=key, app=app, deployment={"platform": platform, "cores": cores, "cpu_mode": mode,
                                                "device": "CPU"},
             thread_policy=policy, study_id=study_id, round=round_index, started_at=started_at,
             finished_at=started_at + e2e + 1.5, run_wall_s=e2e + 2.0, run_id=None)
    if failed:
        r.update(error="worker failed: exit status 1 (synthetic)", e2e_s=None, phases_s=None, throughput_sps=None,
                 completed=None)
        return r
    requests = int(template.get("requests") or 4)
    cold = {k: v * rng.uniform(0.9, 1.1) for k, v in (template.get("cold_start") or {}).items()}
    counters = dict(template.get("counters") or {})
    counters.update(throttled_time_s=round(rng.uniform(0, 0.05 if mode == "VNL" else 0.0), 6),
                    nr_throttled=rng.randint(0, 20) if mode == "VNL" else 0,
                    involuntary_ctx_switches=rng.randint(5, 200))
    pools = dict(template.get("thread_pools") or {})
    pools.update(torch_intra_op=cores if policy == "sized" else 16, torch_inter_op=1, os_cpu_count=16)
    environment = {**(template.get("environment") or {}), "host_cpus": 16}
    r.update(e2e_s=e2e, phases_s={k: e2e * v * rng.uniform(0.97, 1.03) for k, v in share.items()},
             throughput_sps=requests / e2e, completed=requests, cold_start=cold,
             cold_start_s=sum(cold.values()) if cold else None, counters=counters, thread_pools=pools,
             environment=environment,
             loadgen_latency_ms={k: 1000 * e2e * f for k, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99),
                                                                 ("mean", 0.5), ("max", 1.0))})
    return r


def build_store(path: Path, n_runs: int, seed: tuple[dict, list[dict], list[dict]], rng_seed: int = 0) -> dict:
    """A store of about ``n_runs`` runs of one synthetic study (see the module's docstring)."""
    study, templates, probes = seed
    rng = random.Random(rng_seed)
    plan = scenarios()
    rounds = max(1, -(-n_runs // len(plan)))
    config = json.loads(json.dumps(study["config"]))
    config["config"] = {**config.get("config", {}), "name": "store-scale",
                        "apps": list(APPS), "platforms": list(PLATFORMS), "cores": list(CORES)}
    config["config"]["repetition"] = {**config["config"].get("repetition", {}), "warmup_runs": 1,
                                      "min_runs": 3, "max_runs": rounds, "target_ci_halfwidth_pct": 0.5}
    config["plan"] = [{"scenario": s[0], "feasible": True, "reason": None, "origin": "matrix", "note": None}
                      for s in plan]
    config["host"] = {"cores": 16, "gpus": 0}
    for path_ in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        path_.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with Store(path) as store:
        study_id = store.create_study("store-scale", config, source=str(path.with_suffix(".toml")))
        clock = 1.7e9
        rows, calibrations, made = [], [], 0
        for round_index in range(rounds):
            probe = probes[round_index % len(probes)]
            calibrations.append((study_id, round_index, probe["host"], clock, probe["probe_s"] * rng.uniform(0.99, 1.01),
                                 probe["probe_version"], ",".join(str(c) for c in probe["cpus"]), probe["threads"],
                                 json.dumps(probe["repeats_s"])))
            order = list(plan)
            rng.shuffle(order)
            for scenario in order:
                phases = (["warmup"] if round_index == 0 else []) + ["measure"]
                for phase in phases:
                    if phase == "measure" and made >= n_runs:
                        break
                    failed = rng.random() < 0.005
                    result = _result(templates[made % len(templates)], rng, scenario, study_id, round_index, phase,
                                     clock, failed)
                    clock += (result.get("run_wall_s") or 2.0)
                    record = {"study_id": study_id, "phase": phase, "seq": round_index if phase == "measure" else 0,
                              "status": "failed" if failed else "ok", "error": result.get("error"), "result": result}
                    columns = _run_columns(record)
                    columns["outlier"] = int(phase == "measure" and not failed and rng.random() < 0.01)
                    rows.append((*columns.values(), json.dumps(result, sort_keys=True), uuid.uuid4().hex))
                    if phase == "measure":
                        made += 1
        names = list(columns) + ["result_json", "uuid"]
        with store.transaction():
            store.db.executemany(f"INSERT INTO runs({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", rows)
            store.db.executemany(
                "INSERT INTO calibrations(study_id, round, host, started_at, probe_s, probe_version, cpus, threads, "
                "repeats_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", calibrations)
        store.set_study_status(study_id, "complete")
    return {"runs": len(rows), "scenarios": len(plan), "rounds": rounds, "build_s": time.perf_counter() - t0,
            "mib": path.stat().st_size / 2 ** 20}


# -- code of another revision, and its store ----------------------------------------------------------------------

def code_of(rev: str, work: Path) -> tuple[Path, int]:
    """The ``src`` folder of a git revision (extracted once) and its store schema version."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    folder = work / f"code-{sha}"
    if not (folder / "src" / "e2ebench").is_dir():
        blob = subprocess.run(["git", "archive", "--format=tar", sha, "src"], cwd=ROOT, capture_output=True,
                              check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(folder, filter="data")
    text = (folder / "src" / "e2ebench" / "store.py").read_text()
    version = int(re.search(r"^SCHEMA_VERSION = (\d+)", text, re.M).group(1))
    return folder / "src", version


def store_for(path: Path, version: int) -> Path:
    """``path`` itself for this code's schema, else a copy as that schema left it: for version 6 without schema 7's
    covering index, for version 5 also without the schema-6 columns."""
    if version >= SCHEMA_VERSION:
        return path
    if version not in (5, 6):
        raise SystemExit(f"only schemas 5 and 6 can be compared (got {version})")
    copy = path.with_name(path.stem + f"-v{version}.sqlite")
    if copy.exists() and copy.stat().st_mtime >= path.stat().st_mtime:
        return copy
    copy.unlink(missing_ok=True)
    src = sqlite3.connect(path)
    src.execute("VACUUM INTO ?", (str(copy),))
    src.close()
    db = sqlite3.connect(copy)
    db.execute("DROP INDEX IF EXISTS runs_analysis")
    for column in ("metrics_version", *dict.fromkeys(c for c, _, _ in METRIC_COLUMNS)) if version < 6 else ():
        db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
    if version < 6:
        db.execute("DELETE FROM meta WHERE key='metrics_filled'")
    db.commit()
    db.execute("VACUUM")
    db.close()
    return copy


# -- timing a command --------------------------------------------------------------------------------------------

def timed(args: list[str], pythonpath: Path | None, capture: bool) -> tuple[float, float, int, str]:
    """(wall s, peak RSS MiB, exit code, stdout) of one ``e2ebench`` process."""
    env = dict(os.environ)
    # as a user runs it, with Python's byte-code cache: a session that sets PYTHONDONTWRITEBYTECODE makes every
    # import compile its module again (+0.3 s for show)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["COLUMNS"] = "160"
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "from e2ebench.cli import main; main()", *args], stdout=out,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    stdout = proc.stdout.read() if capture else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, stdout


def comparable(name: str, text: str) -> object:
    """A command's JSON with what differs between two runs of it (paths, times) left out."""
    data = json.loads(text)
    if name == "report --json":
        data.pop("html", None)
        data["figures"] = [{k: v for k, v in f.items() if k != "path"} for f in data.get("figures", [])]
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/e2ebench-store-scale"))
    parser.add_argument("--code", action="append", default=[],
                        help="also time the commands with this git revision's code (repeatable)")
    parser.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    parser.add_argument("--check", action="store_true",
                        help="compare the JSON outputs (show, recommend, report) of the code versions")
    parser.add_argument("--only-code", action="store_true", help="time only the --code revisions")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each command; the table gives the median wall time and the largest peak memory")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    seed = read_seed(seed_store(args.work))
    versions: list[tuple[str, Path | None, int]] = [] if args.only_code else [("now", None, SCHEMA_VERSION)]
    for rev in args.code:
        src, version = code_of(rev, args.work)
        versions.append((rev, src, version))
    table = []
    warmed: set[tuple[str, int]] = set()
    for n in args.runs:
        path = args.work / f"store-{n}.sqlite"
        if not path.exists():
            facts = build_store(path, n, seed)
            print(f"built {path}: {facts['runs']} runs ({facts['scenarios']} scenarios x {facts['rounds']} rounds), "
                  f"{facts['mib']:.0f} MiB in {facts['build_s']:.1f} s", file=sys.stderr)
        with Store(path) as store:              # migrated (when built by older code) before anything is timed
            total = store.db.execute("SELECT COUNT(*) AS n FROM runs").fetchone()["n"]
        outputs: dict[str, dict[str, object]] = {}
        for label, src, version in versions:
            target = store_for(path, version)
            for name in args.commands:
                command = [a.format(out=args.work / f"report-{n}-{label}") for a in COMMANDS[name]]
                check = args.check and name in ("show --json", "recommend", "report")
                if check and name != "show --json":
                    command = command + ["--json"]
                if (label, n) not in warmed:             # (an untimed first run: byte code, page cache, migration)
                    timed([*command, "--store", str(target)], src, capture=False)
                    warmed.add((label, n))
                runs = [timed([*command, "--store", str(target)], src, capture=check) for _ in range(args.repeat)]
                wall = sorted(r[0] for r in runs)[len(runs) // 2]
                rss = max(r[1] for r in runs)
                code = max((r[2] for r in runs), key=abs)
                stdout = runs[-1][3]
                if check and code == 0:
                    outputs.setdefault(name, {})[label] = comparable(
                        "report --json" if name == "report" else name, stdout)
                row = (total, target.stat().st_size / 2 ** 20, name, label, wall, rss, code)
                table.append(row)
                print(f"{total:>8} runs {row[1]:7.0f} MiB  {name:<12} {label:<10} {wall:7.2f} s  {rss:7.0f} MiB"
                      f"  exit {code}", file=sys.stderr)
        for name, by_label in outputs.items():
            labels = list(by_label)
            same = all(by_label[label] == by_label[labels[0]] for label in labels)
            print(f"{total:>8} runs: {name} output {'identical' if same else 'DIFFERS'} across "
                  f"{', '.join(labels)}", file=sys.stderr)
            table.append((total, None, f"{name} output", "/".join(labels), "identical" if same else "DIFFERS"))
    print()
    print(f"{'runs':>8}  {'store MiB':>9}  {'command':<12}  {'code':<10}  {'wall s':>7}  {'peak MiB':>8}")
    for row in table:
        if len(row) == 5:
            print(f"{row[0]:>8}  {'':>9}  {row[2]:<12}  {row[3]:<10}  {row[4]}")
        else:
            total, mib, name, label, wall, rss, code = row
            print(f"{total:>8}  {mib:9.0f}  {name:<12}  {label:<10}  {wall:7.2f}  {rss:8.0f}"
                  + ("" if code == 0 else f"  (exit {code})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
