"""A third-party application registered through the `e2ebench.apps` entry-point group runs like a built-in."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli, run_json
from e2ebench.platforms import cgroups

APP_SOURCE = '''
from pathlib import Path
import numpy as np
import torch
from e2ebench.apps.base import App, SampleError, SampleRef


class CsvRegression(App):
    """Reads one CSV row of 16 numbers per request and scores it with a small MLP."""

    name = "csvreg"
    title = "CSV regression (MLP)"
    input_kind = "tabular"
    model_name = "MLP-16-32-1"
    default_requests = 8
    default_batch_size = 4

    def load(self, device, threads, weights):
        torch.manual_seed(0)
        self.device = device
        self.model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)).eval()

    def samples(self, data):
        return [SampleRef(i, str(p)) for i, p in enumerate(sorted(Path(data).glob("*.csv")))]

    def preprocess(self, ref, raw):
        try:
            values = [float(x) for x in raw.decode().strip().split(",")]
        except ValueError as exc:
            raise SampleError(ref.where, f"not a number: {exc}")
        if len(values) != 16:
            raise SampleError(ref.where, f"expected 16 values, got {len(values)}")
        return np.asarray(values, dtype=np.float32)

    def collate(self, items):
        return torch.from_numpy(np.stack(items))

    def infer(self, batch):
        with torch.inference_mode():
            return self.model(batch)

    def postprocess(self, output, batch):
        return [float(v) for v in output[:, 0]]

    @classmethod
    def make_data(cls, out, count, seed=0, **options):
        rng = np.random.default_rng(seed)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (out / f"row{i:04d}.csv").write_text(",".join(f"{v:.5f}" for v in rng.normal(size=16)))
        return out
'''


@pytest.fixture()
def plugin_path(tmp_path) -> Path:
    site = tmp_path / "site"
    (site / "csvreg_plugin").mkdir(parents=True)
    (site / "csvreg_plugin" / "__init__.py").write_text(textwrap.dedent(APP_SOURCE))
    dist = site / "csvreg_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: csvreg-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[e2ebench.apps]\ncsvreg = csvreg_plugin:CsvRegression\n")
    return site


def test_entry_point_app_is_listed_and_runs(plugin_path, tmp_path):
    env = {"PYTHONPATH": str(plugin_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = run_cli(["apps", "--json"], env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "csvreg" in [a["name"] for a in json.loads(proc.stdout)]
    proc = run_cli(["data", "make", "csvreg", str(tmp_path / "data"), "--count", "6"], env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if not cgroups.writable()[0]:
        pytest.skip("cgroups not writable: the run part needs BM limits")
    rc, result, err = run_json(["run", "csvreg", "BM/1/PIN/CPU", "--data", str(tmp_path / "data"), "--requests", "6",
                                "--store", str(tmp_path / "r.sqlite")], env=env, timeout=300)
    assert rc == 0, err
    assert result["scenario"] == "csvreg@BM/1/PIN/CPU" and result["completed"] == 6
