"""benchmarks/container_overhead.py: its fast path (tiny model, 8 requests, 1 round) runs all four programs —
the plain IC program on the host and in the script's own minimal runc container, e2ebench BM and CN — reports
both CN/BM ratios, shows that the plain program really ran inside the container, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT
from e2ebench.platforms import cgroups

pytestmark = pytest.mark.platform

SCRIPT = ROOT / "benchmarks" / "container_overhead.py"
CAN_WRITE, WHY = cgroups.writable()
RUNC_REASON = ("runc is not installed" if not shutil.which("runc") else
               "runc containers need root here" if os.geteuid() != 0 else
               None if CAN_WRITE else f"cgroups not writable: {WHY}")
needs_runc = pytest.mark.skipif(RUNC_REASON is not None, reason=RUNC_REASON or "")


def leftovers(owner: int) -> list[str]:
    """Containers, cgroups (any hierarchy, any depth) and temporary folders named after the run ``owner``."""
    prefix = f"e2ebench-overhead-{owner}-"
    listing = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True, timeout=30)
    out = [f"runc:{c['id']}" for c in json.loads(listing.stdout or "null") or [] if c["id"].startswith(prefix)]
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        out += [os.path.join(dirpath, d) for d in dirnames if d.startswith(prefix)]
    out += [str(p) for p in Path(tempfile.gettempdir()).glob(prefix + "*")]
    return out


@needs_runc
def test_fast_path_reports_both_ratios_and_cleans_up():
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--check", "--json"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])

    assert summary["rounds"] == 1 and summary["variant"] == "tiny" and summary["requests"] == 8
    for key, subs in (("plain_ratio", ("throughput", "time")), ("e2ebench_ratio", ("throughput", "e2e_s"))):
        for sub in subs:
            assert summary[key][sub]["median"] > 0, (key, sub)
    (row,) = summary["per_round"]
    assert sorted(row["order"]) == sorted(["plain-host", "plain-container", "e2ebench-BM", "e2ebench-CN"])
    assert all(p["throughput_sps"] > 0 for p in row["programs"].values())
    assert summary["agree"] is None and summary["agree_meaning"]           # not judged with one round

    # the plain program ran inside the container: PID 1 of a new pid namespace, in the script's own cpuset cgroup
    inside = row["programs"]["plain-container"]["probe"]
    host = row["programs"]["plain-host"]["probe"]
    assert inside["pid"] == "1" and row["programs"]["plain-container"]["pid"] == 1
    assert inside["pidns"] != host["pidns"] and host["pidns"] == summary["host_pidns"]
    assert inside["cpuset"] == "/" + summary["container"]["id"] or inside["cpuset"].endswith("/" + summary["container"]["id"])
    assert summary["container"]["id"].startswith(f"e2ebench-overhead-{proc.pid}-")
    assert inside["cpus"] == host["cpus"] == summary["container"]["cpus"]
    assert set(summary["container"]["namespaces"]) == {"pid", "ipc", "uts", "mount", "network"}

    assert summary["cleanup_errors"] == []
    assert leftovers(proc.pid) == []
