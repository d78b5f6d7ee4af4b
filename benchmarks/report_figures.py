"""Report figures: the time of ``e2ebench.report.figures.all_figures`` on a big study, this code vs an older revision.

Measured, not asserted (issue 14, item 9: ``e2ebench report`` under 10 s at 10^5 runs).  The figures' cost depends
on the scenarios (212 in the paper's matrix), not on the runs, so one store of ~10^3 runs made by
``benchmarks/store_scale.py`` is enough.  Each measurement is its own process, with the ``src`` of one code version
first on ``PYTHONPATH`` (an older revision comes from ``git archive``, the working tree is never touched): it loads
the study from its own copy of the store, analyses it and fits the models (not timed), then times one call of
``all_figures`` into a fresh folder (wall and CPU time of the process, which includes any worker processes it
waits for).  The versions alternate, ``--rounds`` times, so that other work on the machine falls on both alike;
the table gives every measurement and the median per version, with the figures' count and the bytes of their PNGs.
The code of now runs twice: drawing in this process alone (``workers=1``) and with two worker processes (the
default), so that the table says what the worker processes add on this machine.

    .venv/bin/python benchmarks/report_figures.py --store /tmp/i14/store-scale/store-1000.sqlite --before ab8a3af
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
from e2ebench import analysis, overhead_model
from e2ebench.report import figures
from e2ebench.store import Store

store_path, out_dir, workers = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with Store(store_path) as store:
    study_id = store.latest_study()["id"]
    data = analysis.load_study(store, study_id)
native = analysis.analyse(data, emulated=False)
models = overhead_model.fit_scaling_models(native.scenarios, data.host_cores)
def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
wall, used = time.perf_counter(), cpu()
drawn = (figures.all_figures(native, models, out_dir) if workers == "default" else
         figures.all_figures(native, models, out_dir, workers=int(workers)))
wall, used = time.perf_counter() - wall, cpu() - used
print(json.dumps({"wall_s": wall, "cpu_s": used, "figures": len(drawn), "scenarios": len(native.scenarios),
                  "png_bytes": sum(f.png.stat().st_size for f in drawn),
                  "svg_bytes": sum(f.svg.stat().st_size for f in drawn)}))
"""


def source_of(rev: str, work: Path) -> Path:
    """The ``src`` folder of revision ``rev``, unpacked from ``git archive`` under ``work``."""
    if not rev.replace("~", "").replace("^", "").isalnum():
        raise SystemExit(f"not a revision: {rev!r}")
    tree = work / f"code-{rev.replace('~', '_').replace('^', '_')}"
    if not tree.exists():
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"], check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(tree, filter="data")
    return tree / "src"


def measure(src: Path, workers: str, store: Path, out_dir: Path) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(src), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", CHILD, str(store), str(out_dir), workers], env=env, capture_output=True,
                          text=True, cwd=out_dir.parent)
    if done.returncode != 0:
        raise SystemExit(f"measurement with {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("/tmp/i14/store-scale/store-1000.sqlite"),
                        help="a store of the 212-scenario study (read only: each version gets its own copy)")
    parser.add_argument("--before", default="ab8a3af", help="the older revision (default: before the figure work)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if not args.store.is_file():
        raise SystemExit(f"no store at {args.store}: make one with benchmarks/store_scale.py --runs 1000")
    work = args.work or Path(tempfile.mkdtemp(prefix="report-figures-"))
    work.mkdir(parents=True, exist_ok=True)
    versions = {f"before ({args.before})": (source_of(args.before, work), "default"),
                "now, 1 process": (ROOT / "src", "1"),
                "now, 2 workers": (ROOT / "src", "2")}
    stores = {}
    for i, name in enumerate(versions):            # its own copy: a version may migrate the store it opens
        stores[name] = work / f"store-{i}.sqlite"
        shutil.copyfile(args.store, stores[name])
    rows = []
    for r in range(args.rounds):
        for i, (name, (src, workers)) in enumerate(versions.items()):
            m = measure(src, workers, stores[name], work / f"figures-{i}")
            m["load"] = os.getloadavg()[0]        # other work on the machine: 1-minute load average after the run
            rows.append((r + 1, name, m))
            print(f"round {r + 1}  {name:<24} all_figures {m['wall_s']:6.2f} s wall, {m['cpu_s']:6.2f} s CPU",
                  file=sys.stderr, flush=True)
    print(f"\nall_figures on {args.store} ({rows[0][2]['scenarios']} scenarios), {os.cpu_count()} cores\n")
    print("| round | code | wall (s) | CPU (s) | load | figures | PNG KiB | SVG KiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r, name, m in rows:
        print(f"| {r} | {name} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} | {m['load']:.1f} | {m['figures']} | "
              f"{m['png_bytes'] / 1024:.0f} | {m['svg_bytes'] / 1024:.0f} |")
    medians = {name: statistics.median(m["wall_s"] for _, n, m in rows if n == name) for name in versions}
    print()
    for name, value in medians.items():
        cpu = statistics.median(m["cpu_s"] for _, n, m in rows if n == name)
        print(f"median, {name}: {value:.2f} s wall, {cpu:.2f} s CPU")
    before, *now = medians.values()
    for name, value in list(medians.items())[1:]:
        print(f"speedup, {name}: {before / value:.2f}x")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
