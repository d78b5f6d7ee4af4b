"""Machine types side by side (issue 14, item 6) on a constructed fleet study whose answer is known: two host types,
runs stored with their host type (real SQLite store, real analysis, the recommend and report commands)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_result
from e2ebench import analysis
from e2ebench.cost import PriceTable, cost_rows
from e2ebench.machine_types import machine_type_section
from e2ebench.store import Store

SMALL, BIG = "amd-epyc-2c-8g-cpu", "intel-xeon-64c-256g-cpu"
CLI = [sys.executable, "-c", "from e2ebench.cli import main; main()"]
PRICES = """
currency = "USD"
[prices]
"BM/*/*/CPU" = 1.0
[host_types]
"amd-epyc-2c-*" = 0.10
"intel-xeon-64c-*" = 4.00
[targets]
p99_ms = {p99}
"""


def fleet_store(path: Path) -> tuple[Store, str]:
    """BM/2/PIN/CPU on both host types, the big one twice as fast; 5 runs each, 1% noise."""
    store = Store(path)
    sid = store.create_study("fleet-types")
    rng = np.random.default_rng(1)
    for host_type, host, e2e in ((SMALL, "small-1", 2.0), (BIG, "big-1", 1.0)):
        for seq in range(5):
            result = make_result("ic@BM/2/PIN/CPU", e2e * (1 + 0.01 * rng.standard_normal()),
                                 started_at=1_700_000_000.0 + 10 * seq, host=host, host_type=host_type)
            store.add_run(result, study_id=sid, seq=seq if host_type == SMALL else 5 + seq)
    return store, sid


def test_host_types_are_never_pooled(tmp_path):
    store, sid = fleet_store(tmp_path / "s.sqlite")
    with store:
        data = analysis.load_study(store, sid)
    keys = sorted(data.scenarios, key=lambda k: k.sort_key())
    assert [k.host_type for k in keys] == [SMALL, BIG]
    means = {k.host_type: data.scenarios[k].e2e_s.mean for k in keys}
    assert means[SMALL] == pytest.approx(2.0, rel=0.03) and means[BIG] == pytest.approx(1.0, rel=0.03)
    assert keys[0].label == f"ic@BM/2/PIN/CPU on {SMALL}"


@pytest.mark.parametrize("p99, cheapest", [(100_000, SMALL), (3_000, BIG)])
def test_side_by_side_and_the_cheapest_machine_meeting_the_target(tmp_path, p99, cheapest):
    store, sid = fleet_store(tmp_path / "s.sqlite")
    prices = PriceTable.from_dict(__import__("tomllib").loads(PRICES.format(p99=p99)))
    with store:
        findings = analysis.analyse(analysis.load_study(store, sid))
    section = machine_type_section(findings.scenarios, cost_rows(findings.scenarios, prices), prices)
    assert section["host_types"] == [SMALL, BIG]
    [row] = section["rows"]
    assert row["scenario"] == "ic@BM/2/PIN/CPU"
    assert row["by_host_type"][SMALL]["n"] == 5 and row["by_host_type"][BIG]["mean"] == pytest.approx(1.0, rel=0.03)
    [choice] = section["cheapest"]
    # per inference: small 0.10 $/h x 2.0 s, big 4.00 $/h x 1.0 s -> small is 20x cheaper; the constructed runs' p99
    # is ~2.5 s on the big machine and ~5 s on the small one, so with p99 <= 3 s only the big machine qualifies
    assert choice["choice"]["key"]["host_type"] == cheapest
    assert f"on host type {cheapest}" in choice["reason"]


def test_recommend_and_report_show_machine_types(tmp_path):
    store, sid = fleet_store(tmp_path / "s.sqlite")
    store.close()
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES.format(p99=3_000))
    proc = subprocess.run(CLI + ["recommend", "--store", str(tmp_path / "s.sqlite"), "--prices", str(prices)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="200"))
    assert proc.returncode == 0, proc.stderr
    assert SMALL in proc.stdout and BIG in proc.stdout and f"on host type {BIG}" in proc.stdout
    as_json = json.loads(subprocess.run(CLI + ["recommend", "--store", str(tmp_path / "s.sqlite"), "--json"],
                                        capture_output=True, text=True, timeout=120).stdout)
    assert as_json["machine_types"]["host_types"] == [SMALL, BIG]
    report = subprocess.run(CLI + ["report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "r"),
                                   "--prices", str(prices), "--json"], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["machine_types"]["cheapest"][0]["choice"]["key"]["host_type"] == BIG
    assert "Machine types side by side" in (tmp_path / "r" / "report.html").read_text()
