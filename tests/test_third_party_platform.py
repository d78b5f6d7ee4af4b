"""A third-party platform registered through the `e2ebench.platforms` entry-point group is a platform like the
built-ins: the notation accepts it, the study plan asks its own feasibility rule, doctor lists it, and a run on it
works.  Adding it takes one file (the class) plus its registration (one entry-point line): nothing in e2ebench."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli, run_json
from e2ebench.platforms import platform_classes, refresh_registry
from e2ebench.scenario import Deployment, HostFacts, NotationError, infeasibility

PLATFORM_SOURCE = '''
from e2ebench.platforms.baremetal import BareMetal


class PinnedSandbox(BareMetal):
    """Bare metal that always pins: an example platform that reuses BM's provisioning and narrows what it offers."""

    name = "XX"
    title = "pinned sandbox"
    colour = "#e377c2"
    order = 50
    cpu_modes = ("PIN",)
    devices = ("CPU",)
    design_limit = "the sandbox always pins its cores to dedicated host cores"
'''


@pytest.fixture()
def plugin_site(tmp_path) -> Path:
    """An installed distribution, as pip leaves it: the package plus a dist-info with the entry point."""
    site = tmp_path / "site"
    (site / "xxsandbox").mkdir(parents=True)
    (site / "xxsandbox" / "__init__.py").write_text(textwrap.dedent(PLATFORM_SOURCE))
    dist = site / "xxsandbox-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xxsandbox\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[e2ebench.platforms]\nXX = xxsandbox:PinnedSandbox\n")
    return site


@pytest.fixture()
def installed(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    refresh_registry()
    yield plugin_site
    monkeypatch.undo()
    sys.modules.pop("xxsandbox", None)
    refresh_registry()


def _env(site: Path) -> dict:
    return {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_registered_platform_is_in_the_registry_and_the_notation(installed):
    classes = platform_classes()
    assert list(classes) == ["BM", "CN", "VM", "MVM", "VMCN", "XX"]          # sorted by order (XX: 50)
    assert classes["XX"].title == "pinned sandbox" and classes["XX"].NAME == "XX"
    assert str(Deployment.parse("xx/1/vnl/cpu")) == "XX/1/VNL/CPU"          # the notation accepts it...
    host = HostFacts(cores=2, available_platforms=frozenset({"BM", "XX"}))
    reason = infeasibility(Deployment.parse("XX/1/VNL/CPU"), host)           # ...and its own rule refuses VNL
    assert reason == ("XX supports only PIN/CPU deployments "
                      "(the sandbox always pins its cores to dedicated host cores)")
    assert infeasibility(Deployment.parse("XX/1/PIN/CPU"), host) is None
    assert "XX supports only PIN/CPU" in infeasibility(Deployment.parse("XX/1/PIN/GPU"), host)


def test_without_the_plugin_the_name_is_refused():
    refresh_registry()
    with pytest.raises(NotationError, match="unknown platform 'XX'.*accepted: BM, CN, VM, MVM, VMCN"):
        Deployment.parse("XX/1/PIN/CPU")


def test_plan_and_doctor_ask_the_plugin(plugin_site, tmp_path):
    env = _env(plugin_site)
    study = tmp_path / "xx.toml"
    study.write_text('name = "xx"\napps = ["ic"]\nplatforms = ["BM", "XX"]\ncores = [1]\ncpu_modes = ["VNL", "PIN"]\n'
                     'devices = ["CPU"]\n')
    proc = run_cli(["study", str(study), "--plan", "--json"], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    reasons = {p["scenario"]: p["reason"] for p in plan["scenarios"]}
    assert reasons["ic@XX/1/PIN/CPU"] is None
    assert reasons["ic@XX/1/VNL/CPU"] == ("XX supports only PIN/CPU deployments "
                                          "(the sandbox always pins its cores to dedicated host cores)")
    support = {p["name"]: p for p in plan["platform_support"]}
    assert support["XX"]["cpu_modes"] == ["PIN"] and support["XX"]["devices"] == ["CPU"]
    assert support["XX"]["class"] == "xxsandbox:PinnedSandbox"
    assert [p["name"] for p in plan["platform_support"]] == ["BM", "CN", "VM", "MVM", "VMCN", "XX"]
    proc = run_cli(["study", str(study), "--plan"], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "XX (pinned sandbox): PIN × CPU" in proc.stdout
    proc = run_cli(["doctor", "--json"], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["platforms"]["XX"]
    assert entry["usable"] is True and entry["title"] == "pinned sandbox" and entry["class"] == "xxsandbox:PinnedSandbox"


def test_a_run_on_the_plugin_platform(plugin_site, tmp_path, ic_data):
    env = _env(plugin_site)
    rc, result, err = run_json(["run", "ic", "XX/1/PIN/CPU", "--data", str(ic_data), "--requests", "4",
                                "--variant", "tiny", "--batch-size", "2", "--store", str(tmp_path / "r.sqlite")],
                               env=env, timeout=300)
    assert rc == 0, err
    assert result["scenario"] == "ic@XX/1/PIN/CPU" and result["completed"] == 4
    assert result["deployment"] == {"platform": "XX", "cores": 1, "cpu_mode": "PIN", "device": "CPU"}
    assert len(result["effective_cpus"]) == 1
    proc = run_cli(["run", "ic", "XX/1/VNL/CPU", "--store", str(tmp_path / "r.sqlite")], env=env, timeout=120)
    assert proc.returncode == 2 and "XX supports only PIN/CPU deployments" in proc.stderr.replace("\n", " ")
