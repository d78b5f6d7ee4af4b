"""The HTML report, its figures, cost and the `e2ebench report` command, from a real SQLite store.

The acceptance study: BM and CN at 1 and 2 cores, VNL and PIN.  The screenshot test opens the report in
headless Chromium (scripts/screenshot-report) and is skipped, with the reason, when no Chromium is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.collections import LineCollection, PolyCollection

from e2ebench import analysis, overhead_model
from e2ebench.cost import PriceError, PriceTable, Targets, cheapest, cost_rows
from e2ebench.report import figures
from e2ebench.report.html import build_report, esc
from e2ebench.store import Store
from test_analysis import fill_store, make_result, phases, scale

ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>alert('x')</script>"

ACCEPTANCE = {
    "BM/1/VNL/CPU": scale(phases(), 1.9), "BM/1/PIN/CPU": scale(phases(), 1.85),
    "BM/2/VNL/CPU": phases(), "BM/2/PIN/CPU": scale(phases(), 0.97),
    "CN/1/VNL/CPU": scale(phases(), 2.1), "CN/1/PIN/CPU": scale(phases(), 1.87),
    "CN/2/VNL/CPU": scale(phases(), 1.08), "CN/2/PIN/CPU": scale(phases(), 0.99),
}


@pytest.fixture(scope="module")
def acceptance_store(tmp_path_factory):
    """BM and CN at 1 and 2 cores, VNL and PIN; a study name and some stored strings carry <script>."""
    path = tmp_path_factory.mktemp("store") / "results.sqlite"
    with Store(path) as store:
        sid = store.create_study(f"acceptance {EVIL}", config={"host": {"cores": 2}, "note": EVIL})
        fill_store(store, sid, ACCEPTANCE, runs=4, noise=0.02)
        failed = make_result("ic", "CN/2/VNL/CPU", phases(), hostname=f"host{EVIL}")
        failed.error = f"worker failed: {EVIL}"
        failed.platform_info["engine"] = EVIL
        store.add_run(failed, study_id=sid, seq=99)
        fill_store(store, sid, {"VM/2/VNL/CPU": scale(phases(), 230.0)}, runs=2, emulated=True)
    return path, sid


def test_report_from_acceptance_study(acceptance_store, tmp_path):
    path, sid = acceptance_store
    with Store(path) as store:
        out = build_report(store, None, tmp_path / "report")
    html = out.html_path.read_text()
    assert out.html_path == tmp_path / "report" / "report.html"
    assert out.summary["study"]["id"] == sid
    # one self-contained file: figures embedded, no external scripts or styles
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)
    names = {f.name for f in out.figures}
    assert {"e2e-by-platform-ic", "scale-up-ic", "overhead-vs-bm-ic", "cold-start",
            "normalised-e2e-2-VNL-CPU", "normalised-e2e-2-PIN-CPU"} <= names
    assert len(images) == len(out.figures)
    assert "<script" not in html.lower().replace("&lt;script", "")
    assert "<link" not in html
    for f in out.figures:
        assert f.png.stat().st_size > 5000 and f.svg.read_text().lstrip().startswith("<?xml")
    # findings, answers, practices, model, provenance
    for text in ("Overhead vs bare metal", "Scale-up knee", "Pinning gain", "GPU payoff and Amdahl bound",
                 "Container-to-host ratio", "Idle host cores", "Cold start", "Best practices, evaluated",
                 "PREDICTION", "Provenance of every run", "ic on CPU:", "6.1.0-test", "torch 2.13.0"):
        assert text in html, text
    for run_id in range(1, 34):
        assert f"<td class=\"num\">{run_id}</td>" in html
    # emulated runs: kept apart by default, and said so
    assert "scenario(s) ran EMULATED (QEMU TCG)" in html and "--include-emulated" in html
    assert not any(f.emulated for f in out.figures)
    assert all(not s["emulated"] for s in out.summary["native"]["findings"]["scenarios"])
    assert out.summary["emulated"] is None and out.summary["emulated_scenarios_kept_apart"] == 1
    json.dumps(out.summary, allow_nan=False)


def test_strings_from_the_store_are_escaped(acceptance_store, tmp_path):
    path, _ = acceptance_store
    with Store(path) as store:
        out = build_report(store, None, tmp_path / "report")
    html = out.html_path.read_text()
    assert EVIL not in html
    assert "<script>" not in html
    escaped = esc(EVIL)
    assert escaped == "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert html.count(escaped) >= 5          # title, subtitle, name, config, error, hostname, platform_info


def test_include_emulated_draws_them_apart_and_labelled(acceptance_store, tmp_path):
    path, _ = acceptance_store
    with Store(path) as store:
        out = build_report(store, None, tmp_path / "report", include_emulated=True)
    emulated = [f for f in out.figures if f.emulated]
    native = [f for f in out.figures if not f.emulated]
    assert emulated and native
    assert all(f.name.startswith("emulated-") and "[EMULATED]" in f.title for f in emulated)
    assert all("[EMULATED]" not in f.title for f in native)
    html = out.html_path.read_text()
    assert "EMULATED — Answers" in html and figures.EMULATED_BANNER in html
    assert all(s["emulated"] for s in out.summary["emulated"]["findings"]["scenarios"])


def test_figure_functions_have_titles_labels_and_units(acceptance_store):
    path, sid = acceptance_store
    with Store(path) as store:
        data = analysis.load_study(store, sid)
    f = analysis.analyse(data)
    models = overhead_model.fit_scaling_models(f.scenarios, data.host_cores)
    fig = figures.e2e_by_platform(f.scenarios, "ic")
    ax = fig.axes[0]
    assert "(s)" in ax.get_ylabel() and "stacked by phase" in " ".join(fig.get_suptitle().split())
    bars = [path for c in ax.collections if isinstance(c, PolyCollection) for path in c.get_paths()]
    assert len(bars) == 8 * 5                              # 8 bars x 5 phases, one polygon collection per phase
    assert sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection)) == 8   # error bars
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1\nVNL", "1\nPIN", "2\nVNL", "2\nPIN"] * 2
    fig = figures.scale_up(f.scenarios, f.knees, models, "ic")
    assert fig.axes[0].get_xlabel() == "cores" and "(s)" in fig.axes[0].get_ylabel()
    assert any("knee" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert any("prediction" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    fig = figures.overhead_vs_bm(f.overheads, "ic")
    assert "% of BM" in fig.axes[0].get_ylabel()
    assert figures.gpu_speedup(f.gpu) is None              # no GPU data -> no Fig. 5
    assert figures.cold_start(f.cold_starts).axes[0].get_ylabel() == "cold start (s)"
    emulated = analysis.analyse(data, emulated=True)
    fig = figures.e2e_by_platform(emulated.scenarios, "ic", emulated=True)
    assert fig.get_suptitle().startswith("[EMULATED]")
    assert any(figures.EMULATED_BANNER == t.get_text() for t in fig.texts)


def test_gpu_speedup_figure_with_gpu_data(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        sid = store.create_study("gpu")
        cpu = phases(pre=0.61, infer=0.35)
        fill_store(store, sid, {"BM/4/PIN/CPU": cpu, "BM/4/PIN/GPU": dict(cpu, infer=0.035),
                                "CN/4/PIN/CPU": cpu, "CN/4/PIN/GPU": dict(cpu, infer=0.04)}, runs=3, host_cpus=4)
        f = analysis.analyse(analysis.load_study(store, sid))
    fig = figures.gpu_speedup(f.gpu)
    assert fig is not None and "speedup" in fig.axes[0].get_ylabel()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sorted(labels) == ["Amdahl bound of E2E", "E2E", "inference only"]
    saved = figures.save(fig, tmp_path / "figs", "gpu <speedup>", "caption")
    assert saved.png.name == "gpu_speedup.png" and saved.svg.exists()


# ---------------------------------------------------------------------------------------------
# cost


def test_price_table_matching_and_cost_per_1000(tmp_path):
    table = PriceTable.from_dict({
        "currency": "EUR",
        "prices": {"*/*/*/GPU": {"per_hour": 0.9, "per_core_hour": 0.05}, "VM/16/*/GPU": 1.5,
                   "BM/*/*/CPU": {"per_core_hour": 1.8}, "BM/2/PIN/CPU": 3.6},
        "targets": {"throughput_sps": 50},
    })
    assert table.match("VM/16/PIN/GPU").per_hour == 1.5              # most specific wins
    assert table.match("VM/8/PIN/GPU").price_per_hour(8) == pytest.approx(0.9 + 0.4)
    assert table.match("BM/2/PIN/CPU").price_per_hour(2) == 3.6
    assert table.match("CN/2/PIN/CPU") is None
    with Store(tmp_path / "r.sqlite") as store:
        sid = store.create_study("cost")
        fill_store(store, sid, {"BM/2/PIN/CPU": phases(), "BM/1/PIN/CPU": scale(phases(), 1.9)}, runs=3, noise=0.0)
        f = analysis.analyse(analysis.load_study(store, sid))
    rows = cost_rows(f.scenarios, table)
    by = {r.key.deployment: r for r in rows}
    # 1.0 s per 64 requests at 3.6/h: 3.6 / 3600 * (1.0 / 64) * 1000
    assert by["BM/2/PIN/CPU"].cost_per_1000 == pytest.approx(3.6 / 3600 * (1.0 / 64) * 1000, rel=1e-6)
    assert by["BM/1/PIN/CPU"].cost_per_1000 == pytest.approx(1.8 / 3600 * (1.9 / 64) * 1000, rel=1e-6)
    # 64 samples / 1.9 s = 33.7 samples/s misses the 50 target; 64 / 1.0 s meets it
    assert by["BM/1/PIN/CPU"].meets_target is False and by["BM/2/PIN/CPU"].meets_target is True
    choice = cheapest(rows, "ic", table.targets, table.currency)
    assert choice.row.key.deployment == "BM/2/PIN/CPU"
    no_target = cheapest(cost_rows(f.scenarios, table, Targets()), "ic", Targets())
    assert no_target.row.key.deployment == "BM/1/PIN/CPU"           # cheaper when nothing is required
    impossible = cheapest(cost_rows(f.scenarios, table, Targets(p99_ms=1.0)), "ic", Targets(p99_ms=1.0))
    assert impossible.row is None and "none of the 2" in impossible.reason


def test_bad_price_tables_are_rejected(tmp_path):
    for bad in ({}, {"prices": {"BM/*/CPU": 1.0}}, {"prices": {"BM/*/*/CPU": "cheap"}},
                {"prices": {"BM/*/*/CPU": -1}}, {"prices": {"BM/*/*/CPU": {"per_day": 3}}},
                {"prices": {"BM/*/*/CPU": 1}, "targets": {"p50_ms": 3}}):
        with pytest.raises(PriceError):
            PriceTable.from_dict(bad)
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[prices\n")
    with pytest.raises(PriceError, match="cannot read"):
        PriceTable.load(bad_file)
    example = PriceTable.load(ROOT / "examples" / "prices.toml")
    assert example.match("CN/4/PIN/CPU").price_per_hour(4) == pytest.approx(4 * 0.048)
    assert example.targets.p99_ms == 2000


# ---------------------------------------------------------------------------------------------
# the command and the screenshot


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", "from e2ebench.cli import main; main()"] + args
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "src")})


def test_report_command_json_prices_and_errors(acceptance_store, tmp_path):
    path, sid = acceptance_store
    proc = _cli(["report", "--store", str(path), "--prices", str(ROOT / "examples" / "prices.toml"), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    html_path = Path(payload["html"])
    assert html_path == Path("results/report/report.html")          # default out, relative to the cwd
    assert (tmp_path / html_path).is_file()
    assert payload["study"]["id"] == sid
    assert payload["native"]["cost"]["cheapest"][0]["choice"] is not None
    assert "Cost per 1,000 inferences" in (tmp_path / html_path).read_text()
    proc = _cli(["report", "--store", str(path), "--out", str(tmp_path / "o2")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "o2" / "report.html")
    proc = _cli(["report", "--store", str(tmp_path / "missing.sqlite")], tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[prices]\n"BM/*" = 1\n')
    proc = _cli(["report", "--store", str(path), "--prices", str(bad)], tmp_path)
    assert proc.returncode == 2 and "4 parts" in proc.stderr


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (Debian: apt-get install -y chromium)")
def test_screenshot_in_headless_chromium(acceptance_store, tmp_path):
    from PIL import Image, ImageStat

    path, _ = acceptance_store
    with Store(path) as store:
        out = build_report(store, None, tmp_path / "report")
    png = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot-report"), str(out.html_path), str(png)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    with Image.open(png) as image:
        assert image.size == (1400, 3000)
        gray = image.convert("L")
        # a rendered page: mostly white background with dark text and coloured figures, not a blank canvas
        assert ImageStat.Stat(gray).stddev[0] > 20
        top = gray.crop((0, 0, 1400, 120))
        assert top.getextrema()[0] < 80                       # the title's dark text is at the top


def test_cold_cache_scenarios_are_drawn_and_labelled_apart(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        sid = store.create_study("cache", config={"host": {"cores": 2}})
        spec = {"BM/1/VNL/CPU": scale(phases(), 1.9), "BM/2/VNL/CPU": phases(), "CN/2/VNL/CPU": scale(phases(), 1.05)}
        fill_store(store, sid, spec, runs=3)
        fill_store(store, sid, {k: dict(v, io=0.3) for k, v in spec.items()}, runs=3, cache="cold")
        data = analysis.load_study(store, sid)
        out = build_report(store, sid, tmp_path / "report")
    f = analysis.analyse(data)
    fig = figures.e2e_by_platform(f.scenarios, "ic")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "1\nVNL", "1\nVNL\ncold cache", "2\nVNL", "2\nVNL\ncold cache", "2\nVNL", "2\nVNL\ncold cache"]
    fig = figures.overhead_vs_bm(f.overheads, "ic")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["CN\n2 VNL CPU", "CN\n2 VNL CPU\ncold cache"]
    models = overhead_model.fit_scaling_models(f.scenarios, data.host_cores)
    fig = figures.scale_up(f.scenarios, f.knees, models, "ic")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("BM VNL (knee") for t in labels) and any(t.startswith("BM VNL, cold cache") for t in labels)
    names = {x.name for x in out.figures}
    assert {"normalised-e2e-2-VNL-CPU", "normalised-e2e-2-VNL-CPU-cold-cache"} <= names
    html = out.html_path.read_text()
    assert "ic@CN/2/VNL/CPU#cold-cache" in html and "ic@BM/*/VNL/CPU#cold-cache" in html
    overheads = out.summary["native"]["findings"]["overhead_vs_bm"]
    assert {(o["subject"]["scenario"], o["baseline"]["scenario"]) for o in overheads} == {
        ("ic@CN/2/VNL/CPU", "ic@BM/2/VNL/CPU"), ("ic@CN/2/VNL/CPU#cold-cache", "ic@BM/2/VNL/CPU#cold-cache")}
    json.dumps(out.summary, allow_nan=False)


def test_cheapest_compares_deployments_of_one_cache_state(tmp_path):
    table = PriceTable.from_dict({"currency": "EUR", "prices": {"BM/*/*/CPU": {"per_core_hour": 1.0}}})
    with Store(tmp_path / "r.sqlite") as store:
        sid = store.create_study("cost-cache")
        fill_store(store, sid, {"BM/2/PIN/CPU": phases(), "BM/1/PIN/CPU": scale(phases(), 1.9)}, runs=2, noise=0.0)
        fill_store(store, sid, {"BM/1/PIN/CPU": scale(phases(), 1.2)}, runs=2, noise=0.0, cache="cold")
        f = analysis.analyse(analysis.load_study(store, sid))
    rows = cost_rows(f.scenarios, table)
    warm = cheapest(rows, "ic", Targets(), "EUR")
    assert warm.cache == "warm" and warm.considered == 2 and warm.row.key.cache == "warm"
    cold = cheapest(rows, "ic", Targets(), "EUR", cache="cold")
    assert cold.considered == 1 and cold.row.key.scenario == "ic@BM/1/PIN/CPU#cold-cache"
    assert "cold page cache" in cold.reason


# ---------------------------------------------------------------------------------------------
# escaping is the default (Jinja2, autoescape on)

HOSTILE = '<script>alert(1)</script>"q'


def test_hostile_study_name_scenario_and_app_option_are_escaped(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        sid = store.create_study(f"study {HOSTILE}", config={"host": {"cores": 2},
                                                             "apps": {"ic": {"options": {"resize": HOSTILE}}}})
        fill_store(store, sid, {"BM/2/PIN/CPU": phases(), "CN/2/PIN/CPU": scale(phases(), 1.05)}, runs=2)
        odd = make_result("ic", "BM/2/PIN/CPU", phases())
        odd.scenario = f"ic@BM/2/PIN/CPU{HOSTILE}"
        odd.parameters = {"app_options": {"resize": HOSTILE}}
        odd.platform_info["option"] = HOSTILE
        store.add_run(odd, study_id=sid, seq=9)
        out = build_report(store, sid, tmp_path / "report")
    page = out.html_path.read_text()
    assert "<script" not in page and '"q' not in page
    assert f"<title>e2ebench report — study {esc(HOSTILE)}</title>" in page              # study name
    assert f'<span class="nowrap">ic@BM/2/PIN/CPU{esc(HOSTILE)}</span>' in page          # scenario
    assert esc(json.dumps(HOSTILE)) in page                                              # app option (configuration)
    assert esc(HOSTILE) == "&lt;script&gt;alert(1)&lt;/script&gt;&quot;q"


def test_a_template_variable_without_an_escape_call_is_escaped():
    from markupsafe import Markup

    from e2ebench.report import html as report_html

    env = report_html.environment()
    assert env.autoescape is True
    # a variable nobody escaped, in text and in an attribute
    page = env.from_string('<p title="{{ added }}">{{ added }}</p>{{ nothing }}').render(added=HOSTILE, nothing=None)
    assert page == f'<p title="{esc(HOSTILE)}">{esc(HOSTILE)}</p>—'
    assert env.from_string("{{ ours }}").render(ours=Markup("<b>ours</b>")) == "<b>ours</b>"      # the marked exception
    # the report's template, and the blocks and cells its sections are made of
    section = report_html._Section(HOSTILE, HOSTILE, [
        report_html._h3(HOSTILE), report_html._p(HOSTILE), report_html._notice(HOSTILE),
        report_html.Block("answer", text=HOSTILE, add=HOSTILE), report_html.Block("lead", lead=HOSTILE, text=HOSTILE),
        report_html.Block("figure", title=HOSTILE, png_base64="AAAA", caption=HOSTILE, svg=HOSTILE, emulated=True),
        report_html.table([HOSTILE], [[HOSTILE, report_html.badge(HOSTILE), report_html.nowrap(HOSTILE),
                                       report_html._details(HOSTILE, HOSTILE),
                                       report_html._scenario_cell(HOSTILE, True, no_wrap=True), 1.5]],
                          [HOSTILE], cls=HOSTILE),
        report_html._meta_table([(HOSTILE, HOSTILE)]),
    ])
    page = env.get_template("report.html").render(title=HOSTILE, subtitle=HOSTILE, style=Markup("p { }"),
                                                  sections=[section], version=HOSTILE, generated_at=HOSTILE,
                                                  store=HOSTILE)
    assert "<script" not in page and '"q' not in page
    assert page.count(esc(HOSTILE)) >= 30
    assert '<td class="num">1.5</td>' in page and '<span class="emulated-label">EMULATED</span>' in page


def _table_after(page: str, heading: str) -> list[list[str]]:
    """The cells (markup stripped, entities kept) of the first table after ``<h3>heading</h3>``."""
    body = page[page.index(f"<h3>{heading}</h3>"):]
    body = body[body.index("<tbody>"):body.index("</tbody>")]
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def test_provenance_of_a_big_study_groups_environments_and_lists_unused_runs(acceptance_store, tmp_path, monkeypatch):
    """Above the threshold the provenance lists environments (sampled, bisected where they change) and the runs not
    used; checked against every run's JSON read whole (store.runs with_result) and the analysis' used runs."""
    from e2ebench.report import html as report_html

    path = tmp_path / "results.sqlite"
    shutil.copyfile(acceptance_store[0], path)
    sid = acceptance_store[1]
    with Store(path) as store:
        # warm-ups, then BM runs after an upgrade (new host name and kernel): real runs, as a study stores them
        for deployment in ("BM/1/VNL/CPU", "BM/1/PIN/CPU", "BM/2/PIN/CPU"):
            store.add_run(make_result("ic", deployment, phases()), study_id=sid, phase="warmup", seq=0)
        for i in range(4):
            upgraded = make_result("ic", "BM/2/VNL/CPU", phases(), hostname="upgraded")
            upgraded.environment["kernel"] = "6.2.0-test"
            store.add_run(upgraded, study_id=sid, seq=100 + i)
        monkeypatch.setattr(report_html, "PROVENANCE_RUNS_LISTED", 20)
        monkeypatch.setattr(report_html, "PROVENANCE_UNUSED_LISTED", 2)
        monkeypatch.setattr(report_html, "ENVIRONMENT_SAMPLES", 3)     # so that the change is found by bisection
        out = build_report(store, sid, tmp_path / "report")
        every = store.runs(study_id=sid, phase=None, with_result=True)
        used = analysis.load_study(store, sid).used_run_ids
    page = out.html_path.read_text()
    assert "Provenance of every run" not in page and "Provenance: environments and the runs not used" in page
    assert f"This study has {len(every)} runs, more than the 20 listed one by one" in page
    assert esc(f"e2ebench show --study {shlex.quote(sid)} --runs --json") in page     # quoted for the shell
    assert "<script" not in page

    expected: dict[tuple, list] = {}             # (platform, host name, kernel) -> [runs, first id, last id]
    for run in every:
        env = run["result"]["environment"]
        key = (run["platform"] + (" (emulated)" if run["emulated"] else ""), esc(env["hostname"]), env["kernel"])
        entry = expected.setdefault(key, [0, run["id"], run["id"]])
        entry[0] += 1
        entry[1], entry[2] = min(entry[1], run["id"]), max(entry[2], run["id"])
    rows = _table_after(page, "Environments")
    shown = {(r[0], r[2], r[3]): [int(r[7]), *map(int, r[8].split("–"))] for r in rows}
    assert shown == expected
    assert ("BM", "upgraded", "6.2.0-test") in shown and ("CN", esc(f"host{EVIL}"), "6.1.0-test") in shown
    assert all(r[4] == "Test CPU" and r[5] == "3.11.7" and r[6].startswith("torch 2.13.0") for r in rows)

    unused = [r for r in every if r["id"] not in used]
    assert len(unused) == 4                      # the failed run and the three warm-ups
    assert f"{len(unused)} runs not used (phase warmup: 3, status failed: 1); the first 2 listed" in page
    assert "2 more not listed" in page
    listed = _table_after(page, "Runs not used")
    failed = next(r for r in unused if r["status"] != "ok")
    assert [int(r[0]) for r in listed] == [failed["id"], min(r["id"] for r in unused if r["phase"] == "warmup")]
    assert listed[0][6] == "status failed" and listed[1][6] == "phase warmup"


def test_provenance_bisection_finds_every_change_to_the_run(tmp_path, monkeypatch):
    """_environments on a real store whose BM runs change host name at a known run and back at another, sampled 5
    runs at a time: both changes found to the run (the counts say so), reading the JSON of far fewer runs."""
    from e2ebench.report import html as report_html

    hosts = ["a"] * 37 + ["b"] * 50 + ["a"] * 13                # changed, and changed back
    with Store(tmp_path / "r.sqlite") as store:
        sid = store.create_study("hosts", config={"host": {"cores": 2}})
        for seq, host in enumerate(hosts):
            store.add_run(make_result("ic", "BM/2/VNL/CPU", phases(), hostname=host), study_id=sid, seq=seq)
        ids = [r["id"] for r in store.runs(study_id=sid, phase=None, with_result=False)]
        read_ids: list[int] = []
        real = store.results

        def counted(run_ids, keys=None, batch=500):
            read_ids.extend(run_ids)
            return real(run_ids, keys=keys, batch=batch)

        monkeypatch.setattr(store, "results", counted)
        monkeypatch.setattr(report_html, "ENVIRONMENT_SAMPLES", 5)
        found, read = report_html._environments([(i, None, "BM", 0) for i in ids], store)
    assert [(env["hostname"], n, first, last) for env, n, first, last in found.values()] == [
        ("a", 50, ids[0], ids[99]), ("b", 50, ids[37], ids[86])]
    assert read == len(set(read_ids)) < 20


def test_figures_drawn_by_worker_processes_are_those_drawn_in_one_process(acceptance_store, tmp_path):
    """The figures drawn two at a time in forked workers: the same files, byte for byte, in the same order."""
    path, sid = acceptance_store
    with Store(path) as store:
        data = analysis.load_study(store, sid)
    f = analysis.analyse(data)
    models = overhead_model.fit_scaling_models(f.scenarios, data.host_cores)
    alone = figures.all_figures(f, models, tmp_path / "one", workers=1)
    pooled = figures.all_figures(f, models, tmp_path / "two", workers=2)
    assert [x.name for x in pooled] == [x.name for x in alone] and len(alone) >= 6
    for a, b in zip(alone, pooled):
        assert (a.title, a.caption, a.emulated) == (b.title, b.caption, b.emulated)
        assert a.png.read_bytes() == b.png.read_bytes() and a.svg.read_bytes() == b.svg.read_bytes()
        assert b.png.parent == tmp_path / "two"


def test_a_report_that_fails_leaves_no_figure_worker(acceptance_store, tmp_path):
    """The figures start drawing in worker processes before the report's process builds the provenance; when that
    fails -- here for real: one run's stored JSON damaged, which only the provenance reads -- the error comes through
    and no worker process is left."""
    import shutil
    import sqlite3

    import psutil

    from e2ebench.store import StoreDamagedError

    path, _ = acceptance_store
    damaged = tmp_path / "damaged.sqlite"
    shutil.copy(path, damaged)
    db = sqlite3.connect(damaged)
    db.execute("UPDATE runs SET result_json = '{\"cut off' WHERE id = (SELECT MAX(id) FROM runs)")
    db.commit()
    db.close()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with Store(damaged) as store, pytest.raises(StoreDamagedError, match="cannot be read"):
        build_report(store, None, tmp_path / "report")
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []
