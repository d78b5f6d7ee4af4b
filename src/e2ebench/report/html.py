"""One self-contained HTML report per study (figures embedded as base64 PNG), plus the figure files.

The page is rendered by Jinja2 from ``templates/report.html`` with escaping as the default: the environment has
autoescape on, and its ``finalize`` hook escapes every ``{{ value }}`` that is not :class:`markupsafe.Markup`
(with :func:`esc`, so the entities are those of :func:`html.escape`).  No code here writes HTML: a section is a
list of :class:`Block` (table, heading, paragraph, notice, answer, figure) whose table cells are plain values or
:class:`Cell` (badge, nowrap, details, scenario label, prediction tag), and the template's macros draw them.
The one raw exception is the style sheet, read from this package's ``templates/report.css`` (marked Markup).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import functools
import html
import json
import shlex
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Iterator, Sequence

import jinja2
from markupsafe import Markup

from e2ebench import analysis, overhead_model, recommend
from e2ebench.analysis import PHASE_TITLES, PHASES, Findings, StudyData, fmt_pct, fmt_ratio, fmt_s, significance_text
from e2ebench.cost import PriceTable, cheapest, cost_notes, cost_rows, row_caches
from e2ebench.machine_types import machine_type_section
from e2ebench.report import figures as figs
from e2ebench.scenario import scenario_string
from e2ebench.store import ADHOC_STUDY


def esc(value: Any) -> str:
    """Escape anything for HTML text and attribute values (``None`` becomes an em dash; Markup stays as it is)."""
    if hasattr(value, "__html__"):
        return str(value.__html__())
    if value is None:
        return "—"
    return html.escape(str(value), quote=True)


def _finalize(value: Any) -> Markup:
    """Every ``{{ value }}`` of the report's templates passes here: escaped unless it is Markup."""
    return Markup(esc(value))


class Block(SimpleNamespace):
    """One piece of a section's body, drawn by the ``block`` macro of ``report.html``."""

    KINDS = ("table", "meta", "h3", "p", "lead", "notice", "answer", "figure", "models_intro")

    def __init__(self, kind: str, **fields: Any):
        if kind not in self.KINDS:
            raise ValueError(f"unknown report block {kind!r}")
        super().__init__(kind=kind, **fields)


class Cell(SimpleNamespace):
    """A table cell with markup (drawn by the ``content`` macro); any other cell value is plain text."""

    KINDS = ("badge", "nowrap", "details", "scenario", "prediction")

    def __init__(self, kind: str, **fields: Any):
        if kind not in self.KINDS:
            raise ValueError(f"unknown report cell {kind!r}")
        super().__init__(kind=kind, **fields)


def _is_numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell_text(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], row_classes: Sequence[str] | None = None,
          cls: str = "") -> Block:
    """A table (``<p class="muted">No data.</p>`` when it has no row); numbers are right-aligned, floats 4 digits."""
    rows = [list(r) for r in rows]
    classes = [(row_classes[i] if row_classes else "") or "" for i in range(len(rows))]
    return Block("table", headers=list(headers), rows=rows, row_classes=classes, cls=cls)


def _meta_table(rows: Iterable[tuple[str, Any]]) -> Block:
    return Block("meta", rows=list(rows))


def _h3(text: str) -> Block:
    return Block("h3", text=text)


def _p(text: str, muted: bool = False) -> Block:
    return Block("p", text=text, muted=muted)


def _notice(text: str) -> Block:
    return Block("notice", text=text)


def nowrap(value: Any) -> Cell:
    return Cell("nowrap", value=value)


def _details(summary: str, body: str) -> Cell:
    return Cell("details", summary=summary, body=body)


def _scenario_cell(scenario: str, emulated: bool, no_wrap: bool = False) -> Cell:
    return Cell("scenario", value=scenario, emulated=emulated, nowrap=no_wrap)


def _small(value: float) -> str:
    """A residual or similar: 3 significant digits, values below a nanosecond shown as 0."""
    return "0" if abs(value) < 1e-9 else f"{value:+.3g}"


def badge(verdict: str) -> Cell:
    return Cell("badge", value=verdict, css="v-" + verdict.replace(" ", "-"))


def _iso(ts: Any) -> str:
    try:
        return _dt.datetime.fromtimestamp(float(ts), _dt.timezone.utc).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("e2ebench")
    except Exception:
        return "unknown"


def _template(name: str) -> str:
    return resources.files("e2ebench.report").joinpath("templates", name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report: autoescape on, every output escaped unless Markup."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template), autoescape=True, finalize=_finalize, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    env.tests["cell"] = lambda value: isinstance(value, Cell)
    env.tests["numeric"] = _is_numeric
    env.filters["cell_text"] = _cell_text
    return env


# ---------------------------------------------------------------------------------------------
# building the whole report


@dataclasses.dataclass
class ReportOutput:
    html_path: Path
    figures: list[figs.FigureFile]
    summary: dict                       # what `e2ebench report --json` prints


@dataclasses.dataclass
class _Section:
    anchor: str
    title: str
    blocks: list[Block]


def build_report(store, study_id: str | None = None, out_dir: Path = Path("results") / "report",
                 prices: PriceTable | None = None, include_emulated: bool = False, include_outliers: bool | None = None,
                 knee_tolerance_pct: float = analysis.DEFAULT_KNEE_TOLERANCE_PCT) -> ReportOutput:
    """Analyse ``study_id`` (default: the latest study, else the ad-hoc runs of ``e2ebench run``), draw its figures
    and write ``out_dir/report.html``."""
    if study_id is None:
        latest = store.latest_study() or store.get_study(ADHOC_STUDY)
        if latest is None:
            raise LookupError(f"no study in {store.path}; run `e2ebench study` or `e2ebench run` first")
        study_id = latest["id"]
    data = analysis.load_study(store, study_id, include_outliers=include_outliers)
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    native = analysis.analyse(data, emulated=False, knee_tolerance_pct=knee_tolerance_pct)
    parts = [_Part.make(native, data, prices, fig_dir)]
    try:
        if include_emulated and data.has_emulated:
            emulated = analysis.analyse(data, emulated=True, knee_tolerance_pct=knee_tolerance_pct)
            parts.append(_Part.make(emulated, data, prices, fig_dir))
        sections = [_overview(data, store.path, native, include_emulated, knee_tolerance_pct)]
        machines = machine_type_section(native.scenarios, parts[0].costs if prices else None, prices)
        if machines:
            sections.append(_machine_types(machines))
        provenance = _provenance(data, store)                # (while the figures are drawn)
        for part in parts:
            part.figures = part.drawing.collect()
            sections += part.sections(out_dir)
        sections.append(provenance)
    except BaseException:
        for part in parts:
            part.drawing.close()                             # no worker outlives a report that failed
        raise
    study = data.study
    counts = f"{len(data.used_run_ids)} runs in {len(data.scenarios)} scenarios"
    page = environment().get_template("report.html").render(
        title=f"e2ebench report — {study['name']}",
        subtitle=(f"study {study['id']} · created {_iso(study['created_at'])} · status {study['status']} · {counts}"
                  if study["id"] != ADHOC_STUDY else f"runs made with e2ebench run (study id {ADHOC_STUDY}) · {counts}"),
        style=Markup(_template("report.css")),          # our own style sheet: the one raw insertion
        sections=sections,
        version=_version(),
        generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        store=str(store.path),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    all_figures = [f for p in parts for f in p.figures]
    summary = {
        "study": {k: study[k] for k in ("id", "name", "source", "created_at", "status")},
        "html": str(html_path),
        "figures": [f.to_dict() for f in all_figures],
        "runs_used": len(data.used_run_ids),
        "runs_excluded": data.excluded,
        "host_cores": data.host_cores,
        "native": parts[0].to_dict(),
        "emulated": parts[1].to_dict() if len(parts) > 1 else None,
        "emulated_scenarios_kept_apart": sum(1 for k in data.scenarios if k.emulated),
        "machine_types": machines,
    }
    return ReportOutput(html_path, all_figures, summary)


def _machine_types(section: dict) -> _Section:
    """A fleet study's host types side by side (:mod:`e2ebench.machine_types`)."""
    headers = ["scenario"] + [f"{t} E2E (s)" for t in section["host_types"]]
    rows = []
    for row in section["rows"]:
        cells = [row["scenario"]]
        for host_type in section["host_types"]:
            s = row["by_host_type"].get(host_type)
            cells.append("—" if not s or s["mean"] is None else
                         f"{s['mean']:.4g}" + (f" ± {s['half_width']:.2g}" if s["half_width"] is not None else "")
                         + f" (n={s['n']})")
        rows.append(cells)
    blocks = [_p("Runs of different machine types are separate scenarios (never pooled); mean E2E time with its 95% "
                 "CI half-width and the number of runs."), table(headers, rows)]
    for choice in section["cheapest"]:
        blocks.append(Block("lead", lead=choice["app"], text=f"{choice['reason']}."))
    return _Section("machine-types", "Machine types side by side", blocks)


@dataclasses.dataclass
class _Part:
    """Everything derived from one emulation class (native, or emulated kept apart)."""

    findings: Findings
    models: list[overhead_model.ScalingModel]
    recommendations: recommend.RecommendationSet
    figures: list[figs.FigureFile]
    prices: PriceTable | None
    costs: list

    @classmethod
    def make(cls, findings: Findings, data: StudyData, prices: PriceTable | None, fig_dir: Path) -> "_Part":
        drawing = figs.FigureDrawing(findings, fig_dir)      # drawn by worker processes meanwhile
        try:
            models = overhead_model.fit_scaling_models(findings.scenarios, data.host_cores)
            rows = cost_rows(findings.scenarios, prices) if prices else []
            recs = recommend.recommend(findings, cost_notes(rows, prices) if prices else None)
            drawing.draw_with(models)
        except BaseException:
            drawing.close()                                  # no worker outlives a report that failed
            raise
        part = cls(findings, models, recs, [], prices, rows)
        part.drawing = drawing                               # collected once the rest of the report is built
        return part

    @property
    def tag(self) -> str:
        return "emulated" if self.findings.emulated else "native"

    def to_dict(self) -> dict:
        d = {
            "findings": self.findings.to_dict(),
            "recommendations": self.recommendations.to_dict(),
            "models": [m.to_dict() for m in self.models],
        }
        if self.prices:
            d["cost"] = {
                "currency": self.prices.currency, "rows": [r.to_dict() for r in self.costs],
                "cheapest": [cheapest(self.costs, app, self.prices.targets, self.prices.currency, cache).to_dict()
                             for app in sorted({k.app for k in self.findings.scenarios})
                             for cache in row_caches(self.costs, app)],
            }
        return d

    def sections(self, out_dir: Path) -> list[_Section]:
        f = self.findings
        pre = "EMULATED — " if f.emulated else ""
        anchor = "emu-" if f.emulated else ""
        if not f.scenarios:
            if f.emulated:
                return []
            return [_Section("answers", "Answers", [_p("No successful native measurement runs in this study.", muted=True)])]
        notice = [_notice(f"{figs.EMULATED_BANNER}. These scenarios ran under QEMU TCG; they are compared only with "
                          "each other.")] if f.emulated else []
        threads = [x for x in self.figures if x.name.removeprefix("emulated-").startswith(figs.THREADS_FIGURE_PREFIX)]
        others = [x for x in self.figures if x not in threads]
        out = [
            _Section(anchor + "answers", pre + "Answers", notice + _answers(self.recommendations)),
            _Section(anchor + "practices", pre + "Best practices, evaluated", _practices(self.recommendations)),
            _Section(anchor + "figures", pre + "Figures", _figures(others, out_dir)),
            _Section(anchor + "scenarios", pre + "Scenarios", _scenarios(f)),
            _Section(anchor + "findings", pre + "Findings", _findings(f)),
        ]
        if len(f.policies) > 1:          # only when the study measured more than one thread policy
            out.append(_Section(anchor + "threads", pre + "Thread pools vs the CPU limit", _threads(f, threads, out_dir)))
        out.append(_Section(anchor + "model", pre + "Scaling model (predictions)", _models(self.models)))
        if self.prices:
            out.append(_Section(anchor + "cost", pre + "Cost", _cost(self)))
        return out


# ---------------------------------------------------------------------------------------------
# sections


def _overview(data: StudyData, store_path: Path, native: Findings, include_emulated: bool,
              tolerance: float) -> _Section:
    s = data.study
    rows = [
        ("study id", s["id"]), ("name", s["name"]), ("source", s.get("source")), ("created", _iso(s["created_at"])),
        ("status", s["status"]), ("store", str(store_path)),
        ("runs used", f"{len(data.used_run_ids)} (phase=measure, status=ok"
                      + (", outliers included" if data.include_outliers else ", outliers excluded") + ")"),
        ("runs left out", ", ".join(f"{k}: {v}" for k, v in sorted(data.excluded.items())) or "none"),
        ("host cores", data.host_cores),
        ("scale-up knee", f"fewest cores within {tolerance:g}% of the best mean E2E"),
        ("significance", analysis.SIGNIFICANCE_METHOD),
    ]
    for drift in data.drifts:
        rows.append((f"host drift ({drift.host})", drift.line()))
    config = s.get("config") or {}
    if config:
        rows.append(("study configuration", _details("show", json.dumps(config, indent=1, sort_keys=True))))
    blocks = [_meta_table(rows)]
    if data.infeasible:
        blocks += [_h3("Planned but not feasible on this host"),
                   table(["scenario", "why"], [(p.get("scenario"), p.get("reason")) for p in data.infeasible])]
    for drift in data.drifts:
        if drift.unstable:
            blocks.append(_notice(f"Host {drift.host} was UNSTABLE during this study: " + "; ".join(drift.reasons)
                                  + f". Every mean's 95% interval includes the measured drift ({drift.drift_pct:.1f}%, "
                                  "1 sd); comparisons paired by round cancel most of it."))
    n_emu = sum(1 for k in data.scenarios if k.emulated)
    if n_emu:
        where = "shown in their own sections below, never beside native results" if include_emulated else \
            "left out of this report (add --include-emulated to see them in their own sections)"
        blocks.append(_notice(f"{n_emu} scenario(s) ran EMULATED (QEMU TCG): {where}."))
    return _Section("overview", "Study", blocks)


def _answers(recs: recommend.RecommendationSet) -> list[Block]:
    return [Block("answer", text=a.text, add=", ".join(a.runs_to_add)) for a in recs.answers]


def _practices(recs: recommend.RecommendationSet) -> list[Block]:
    out = []
    apps = sorted({r.app for r in recs.practices})
    for app in apps:
        rows = []
        for r in recs.for_app(app):
            rows.append((r.practice, r.title, badge(r.verdict), r.text, ", ".join(r.runs_to_add) or None))
        out += [_h3(app), table(["#", "best practice (1–7: paper, section VI)", "verdict", "what the data say",
                                 "scenarios to add"], rows)]
    return out


def _figures(files: Sequence[figs.FigureFile], out_dir: Path) -> list[Block]:
    if not files:
        return [_p("No figure: not enough data.", muted=True)]
    out = []
    for f in files:
        data = base64.b64encode(f.png.read_bytes()).decode("ascii")
        try:
            svg_rel = f.svg.relative_to(out_dir).as_posix()
        except ValueError:
            svg_rel = f.svg.as_posix()
        out.append(Block("figure", title=f.title, png_base64=data, caption=f.caption, svg=svg_rel, emulated=f.emulated))
    return out


def _scenarios(f: Findings) -> list[Block]:
    rows, classes = [], []
    for key, s in f.scenarios.items():
        shares = ", ".join(f"{p} {100 * (s.phase_share(p) or 0):.1f}%" for p in PHASES if p in s.phases_s)
        rel = f"{s.e2e_s.half_width_pct:.1f}%" if analysis.has_ci(s.e2e_s) and s.e2e_s.mean else "—"
        if rel != "—" and s.e2e_s.drift_pct:
            rel += f" (runs alone {s.e2e_s.runs_half_width_pct:.1f}%, drift {s.e2e_s.drift_pct:.1f}%)"
        rows.append((
            _scenario_cell(key.scenario, key.emulated), s.n, fmt_s(s.e2e_s), rel, shares,
            fmt_s(s.latency_p99_ms).replace(" s", " ms") if s.latency_p99_ms else None,
            f"{s.throughput_sps.mean:.3g}" if s.throughput_sps else None,
            fmt_s(s.cold_start_s), s.chr, ", ".join(str(i) for i in s.run_ids),
        ))
        classes.append("emulated" if key.emulated else "")
    return [table(["scenario", "runs", "mean E2E ± 95% CI", "CI half-width", "phase shares of E2E", "p99 LoadGen latency",
                   "throughput (samples/s)", "cold start", "CHR", "run ids"], rows, classes)]


def _findings(f: Findings) -> list[Block]:
    out = [_p(f"{f.method}.", muted=True)]
    out.append(_h3("Overhead vs bare metal (BM at the same cores, CPU mode, device and cache state)"))
    rows = []
    for o in f.overheads:
        contrib = "; ".join(f"{p}: {fmt_pct(v.contribution_pct, v.contribution_ci_pct)}" for p, v in o.phases.items())
        rows.append((o.subject.label, fmt_pct(o.e2e.relative_pct, o.e2e.relative_ci_pct), significance_text(o.e2e),
                     PHASE_TITLES.get(o.largest_phase or "", o.largest_phase), contrib or None))
    out.append(table(["platform scenario", "E2E overhead ± 95% CI", "significance", "largest phase",
                      "phase contributions (points of BM's E2E)"], rows))

    out.append(_h3(f"Scale-up knee (fewest cores within {f.knee_tolerance_pct:g}% of the best)"))
    rows = []
    for k in f.knees:
        rows.append((scenario_string(k.app, f"{k.platform}/*/{k.cpu_mode}/{k.device}", k.mode, k.cache),
                     ", ".join(f"{c}: {fmt_s(s)}" for c, s in k.points), k.best_cores, k.knee_cores,
                     fmt_pct(k.knee_vs_best.relative_pct, k.knee_vs_best.relative_ci_pct) if k.knee_vs_best else "0 (same)",
                     ", ".join(str(c) for c in k.slower_beyond_best) or None))
    out.append(table(["group", "E2E by cores", "best cores", "knee cores", "knee vs best", "significantly slower beyond best"],
                     rows))

    out.append(_h3("Pinning gain (PIN vs VNL; positive = pinning faster)"))
    rows = [(p.pinned.label, fmt_s(f.scenarios[p.vanilla].e2e_s), fmt_s(f.scenarios[p.pinned].e2e_s),
             fmt_pct(p.gain_pct, p.gain_ci_pct), significance_text(p.comparison), badge(p.verdict)) for p in f.pinning]
    out.append(table(["pinned scenario", "VNL E2E", "PIN E2E", "time saved ± 95% CI", "significance", "verdict"], rows))

    out.append(_h3("GPU payoff and Amdahl bound"))
    rows = []
    for g in f.gpu:
        rows.append((g.cpu.label, g.gpu.label if g.gpu else "not measured",
                     f"{100 * g.infer_share:.1f}%" if g.infer_share is not None else None,
                     PHASE_TITLES.get(g.bounding_phase or "", g.bounding_phase),
                     f"{100 * g.bounding_phase_share:.1f}%" if g.bounding_phase_share is not None else None,
                     f"{g.amdahl_bound:.2f}x ({g.amdahl_source})" if g.amdahl_bound else None,
                     fmt_ratio(g.inference_speedup) if g.inference_speedup else None,
                     fmt_ratio(g.e2e_speedup) if g.e2e_speedup else None))
    out.append(table(["CPU scenario", "GPU scenario", "inference share (CPU)", "bounding phase", "its share",
                      "max E2E speedup (Amdahl)", "inference speedup", "E2E speedup (measured)"], rows))

    out.append(_h3("Container-to-host ratio (CHR)"))
    rows = [(p.key.label, f"{p.chr:.3g}", p.host_cores, p.host_cores_source,
             fmt_pct(p.overhead.relative_pct, p.overhead.relative_ci_pct) if p.overhead else "no BM baseline")
            for p in f.chr.points]
    out.append(table(["scenario", "CHR", "host cores", "host cores from", "E2E overhead vs BM"], rows))
    for mode, (rho, p_value, n) in f.chr.correlation.items():
        out.append(_p(f"{mode}: Spearman rank correlation of CHR with overhead rho = {rho:.2f} "
                      f"(p = {p_value:.2g}, {n} scenarios); the paper expects rho < 0 for vanilla CN."))

    out.append(_h3("Idle host cores (deployment cores = host cores, the paper's Fig. 9 case)"))
    rows = [(i.full.label, fmt_pct(i.full_overhead.relative_pct, i.full_overhead.relative_ci_pct) if i.full_overhead else "no BM baseline",
             i.idle.label if i.idle else "not measured",
             fmt_pct(i.idle_overhead.relative_pct, i.idle_overhead.relative_ci_pct) if i.idle_overhead else None,
             {True: "yes (CIs do not overlap)", False: "no", None: "undetermined"}[i.worse_without_idle_cores])
            for i in f.idle_cores]
    out.append(table(["no idle host core", "overhead vs BM", "with idle host cores", "overhead vs BM",
                      "overhead higher without idle cores?"], rows))

    out.append(_h3("Cold start"))
    rows = [(c.app, c.platform, c.device, fmt_s(c.total_s),
             ", ".join(f"{k.removesuffix('_s')} {v.mean:.3g} s" for k, v in c.parts_s.items())) for c in f.cold_starts]
    out.append(table(["app", "platform", "device", "cold start ± 95% CI", "parts (means)"], rows))
    return out


def _counter_pair(t: analysis.ThreadPolicyFinding, name: str) -> str | None:
    """``sized → policy`` means per run of one counter."""
    a, b = t.sized.counters.get(name), t.other.counters.get(name)
    if a is None and b is None:
        return None
    return " → ".join(f"{x.mean:.3g}" if x is not None else "—" for x in (a, b))


def _pools_cell(stats: analysis.PolicyStats) -> str | None:
    shown = [(p, stats.pools[p]) for p in (*analysis.THREAD_POOLS, "process_threads") if p in stats.pools]
    return ", ".join(f"{analysis.POOL_TITLES.get(p, p)} {v}" for p, v in shown) or None


def _threads(f: Findings, figures: Sequence[figs.FigureFile], out_dir: Path) -> list[Block]:
    """The thread-policy section: each policy vs sized pools, the counters that explain it, and the figure."""
    out = [_p("sized: every library's thread pool sized to the deployment's cores (e2ebench's default); "
              "framework-default: e2ebench sets no thread count and no OMP_NUM_THREADS, so each library chooses as it "
              "would in the user's own program (often the host's core count); a number: every pool that size. "
              "Penalty = mean E2E with the policy / mean E2E sized − 1, with the ratio's 95% CI and test paired by study "
              "round where both ran in the same rounds (else the delta method and Welch's test); verdict penalty or faster when p < 0.05 and the CI excludes 0. Counters are means per run "
              "over the timed window (cgroup cpu.stat and getrusage), sized → policy.", muted=True)]
    rows = []
    for t in f.thread_policies:
        rows.append((
            _scenario_cell(t.key.scenario, t.key.emulated), t.policy, t.cores,
            t.other.pools.get("os_cpu_count") or t.sized.pools.get("os_cpu_count"),
            _pools_cell(t.sized), _pools_cell(t.other),
            fmt_s(t.sized.e2e_s), fmt_s(t.other.e2e_s), fmt_pct(t.penalty_pct, t.penalty_ci_pct),
            (f"{t.comparison.p_value:.3g} ({'paired' if t.comparison.method == 'paired' else 'Welch'})"
             if t.comparison.p_value is not None else "not tested (n < 2)"),
            _counter_pair(t, "throttled_time_s"), _counter_pair(t, "nr_throttled"),
            _counter_pair(t, "involuntary_ctx_switches"), badge(t.verdict),
        ))
    out.append(table(["scenario", "thread policy", "cores", "CPUs the libraries see", "pools, sized", "pools, policy",
                      "E2E sized", "E2E policy", "penalty ± 95% CI", "p (test)", "throttled s/run",
                      "nr_throttled/run", "involuntary switches/run", "verdict"], rows))
    if not f.thread_policies:
        out.append(_p(f"Thread policies measured: {', '.join(f.policies)}; no scenario has sized pools next to "
                      "another policy, so there is nothing to compare.", muted=True))
    out += _figures(figures, out_dir) if figures else []
    return out


def _models(models: Sequence[overhead_model.ScalingModel]) -> list[Block]:
    if not models:
        return [_p("No group was measured at two or more core counts: nothing to fit.", muted=True)]
    out = [Block("models_intro")]          # the method, with its formulas: written in report.html
    for m in models:
        out.append(_h3(m.label))
        rows = []
        for metric, fits in m.fits.items():
            for name, fit in fits.items():
                params = ", ".join(f"{k}={v:.4g}" + (f" [{fit.param_ci[k][0]:.3g}, {fit.param_ci[k][1]:.3g}]"
                                                    if fit.param_ci else "") for k, v in fit.params.items())
                rows.append((metric, name + (" (preferred)" if m.preferred.get(metric) == name else ""), params,
                             f"{fit.r2:.4f}" if fit.r2 is not None else None, f"{fit.rmse_s:.3g}",
                             ", ".join(f"{c}: {_small(v)}" for c, v in fit.residual_by_cores_s.items()),
                             "yes" if fit.saturated else "no", fit.n_runs))
        out.append(table(["metric", "model", "parameters [95% CI]", "R²", "RMSE (s)", "mean residual by cores (s)",
                          "saturated", "runs"], rows))
        rows = []
        for p in m.predictions:
            rows.append((Cell("prediction"), p.cores, f"{p.value_s:.4g} s",
                         f"[{p.ci_s[0]:.4g}, {p.ci_s[1]:.4g}]" if p.ci_s else "no band (no residual dof)",
                         f"[{p.pi_s[0]:.4g}, {p.pi_s[1]:.4g}]" if p.pi_s else None,
                         "extrapolated" if p.extrapolated else ("fitted at a measured count" if p.measured else "interpolated"),
                         p.model))
        out.append(table(["kind", "cores", "predicted mean E2E", "95% band (mean)", "95% band (one run)", "range", "model"],
                         rows))
    return out


def _cost(part: _Part) -> list[Block]:
    prices = part.prices
    assert prices is not None
    out = [_p(f"Price table {prices.source}; currency {prices.currency}; targets: {prices.targets.describe()}. Cost "
              "per 1,000 inferences = price per hour / 3600 × (E2E / completed requests) × 1000. A target is met when "
              "the conservative end of the 95% CI meets it.")]
    rows = [(r.key.label, r.pattern, f"{r.price_per_hour:.4g}", f"{r.cost_per_1000:.4g}",
             f"[{r.cost_per_1000_ci[0]:.4g}, {r.cost_per_1000_ci[1]:.4g}]" if r.cost_per_1000_ci else None,
             f"{r.p99_ms:.4g}" if r.p99_ms is not None else None,
             f"{r.throughput_sps:.4g}" if r.throughput_sps is not None else None,
             {True: "yes", False: "no", None: "no target"}[r.meets_target]) for r in part.costs]
    out.append(table(["scenario", "price rule", "price per hour", "cost per 1,000", "95% CI", "p99 (ms)",
                      "throughput (samples/s)", "meets target"], rows))
    for app in sorted({k.app for k in part.findings.scenarios}):
        for cache in row_caches(part.costs, app):
            choice = cheapest(part.costs, app, prices.targets, prices.currency, cache)
            out.append(Block("lead", lead=app, text=f"{choice.reason}."))
    return out


# ---------------------------------------------------------------------------------------------
# provenance: every run of a small study; the environments and the runs not used of a big one

PROVENANCE_RUNS_LISTED = 2000      # a study of more runs gets environments and unused runs instead of a row per run
PROVENANCE_UNUSED_LISTED = 500     # unused runs listed in the grouped provenance, then a count
ENVIRONMENT_SAMPLES = 128          # runs whose environment is read per (fleet host, platform) group, evenly spread
ENVIRONMENT_FIELDS = ("hostname", "kernel", "cpu_model", "python", "libraries")   # what makes two environments differ


def _with_results(runs: list[dict], store, batch: int = 500) -> Iterator[tuple[dict, dict]]:
    """``(run, the environment and platform_info of its result)`` for each run, read from ``store`` ``batch`` runs at
    a time (a run that carries its ``result`` already keeps it)."""
    for start in range(0, len(runs), batch):
        chunk = runs[start:start + batch]
        wanted = [r["id"] for r in chunk if "result" not in r]
        found = dict(store.results(wanted, keys=("environment", "platform_info"))) if wanted else {}
        for run in chunk:
            yield run, (run["result"] if "result" in run else found.get(run["id"])) or {}


def _provenance(data: StudyData, store, runs_listed: int | None = None) -> _Section:
    """Where the runs ran.  A study of up to ``runs_listed`` runs (default :data:`PROVENANCE_RUNS_LISTED`) lists every
    run with its environment; a bigger one -- a fleet's 10^5 runs would be an HTML table of 10^5 rows and seconds of
    JSON -- lists the environments the runs ran in, grouped, and the runs that were not used (:func:`_grouped`).
    Read from the store (``data`` gives the study and the used runs)."""
    limit = PROVENANCE_RUNS_LISTED if runs_listed is None else runs_listed
    study_id = data.study["id"]
    count = store.db.execute("SELECT COUNT(*) FROM runs WHERE study_id=?", (study_id,)).fetchone()[0]
    if count > limit:
        return _grouped(data, store, count, limit)
    runs = store.runs(study_id=study_id, phase=None, with_result=False)
    return _Section("provenance", "Provenance of every run", [_run_table(runs, data.used_run_ids, store)])


_LIBRARIES_KEY = "libraries"


def _libraries_cell(libs: dict) -> Cell:
    headline = f"torch {libs['torch']}" if "torch" in libs else f"{len(libs)} libraries"
    return _details(headline, "\n".join(f"{k} {v}" for k, v in sorted(libs.items())))


def _run_table(runs: list[dict], used_run_ids: set[int], store) -> Block:
    """Every run with where it ran; its environment and platform_info read from its JSON, a batch at a time."""
    rows, classes = [], []
    drawn: dict[int, tuple[Any, Any]] = {}      # id(value) -> (value, its cell): the runs of one host share values

    def platform_info_cell(info: dict) -> Any:
        return _details(f"{len(info)} keys", json.dumps(info, indent=1, sort_keys=True, default=str))

    def cell(value: dict, draw) -> Any:
        hit = drawn.get(id(value))
        if hit is None or hit[0] is not value:
            hit = drawn[id(value)] = (value, draw(value))
        return hit[1]

    for run, r in _with_results(runs, store):
        env = r.get("environment") or {}
        libs = env.get(_LIBRARIES_KEY) or {}
        info = r.get("platform_info") or {}
        info_html = cell(info, platform_info_cell) if info else None
        libs_html = cell(libs, _libraries_cell) if libs else None
        rows.append((
            run["id"], _scenario_cell(run["scenario"], bool(run["emulated"]), no_wrap=True), run["phase"], run["seq"],
            run["status"], "yes" if run["outlier"] else "no", "yes" if run["id"] in used_run_ids else "no",
            _started_cell(run["started_at"]), nowrap(f"{run['e2e_s']:.4g} s") if run.get("e2e_s") is not None else None,
            env.get("hostname"), env.get("kernel"), env.get("cpu_model"), env.get("python"), libs_html, info_html,
            run.get("error"),
        ))
        classes.append("emulated" if run["emulated"] else "")
    return table(["run", "scenario", "phase", "seq", "status", "outlier", "used", "started (UTC)", "E2E", "host",
                  "kernel", "CPU", "Python", "libraries", "platform_info", "error"], rows, classes, cls="provenance")


def _started_cell(ts: Any) -> Cell:
    return nowrap(_iso(ts).replace("T", " ").replace("+00:00", "Z"))


def _grouped(data: StudyData, store, count: int, limit: int) -> _Section:
    """The provenance of a big study: its environments (:func:`_environments`), its runs not used (up to
    :data:`PROVENANCE_UNUSED_LISTED`), and how to get every run."""
    study_id = data.study["id"]
    columns = {r["name"] for r in store.db.execute("PRAGMA table_info(runs)")}
    host = "host" if "host" in columns else "NULL"           # an older store read as it is: no fleet hosts
    with store._guard():                 # plain tuples of columns the analysis index covers: 10^5 rows in ~0.1 s
        cursor = store.db.raw.cursor()
        cursor.row_factory = None
        runs = sorted(cursor.execute(f"SELECT id, {host}, platform, emulated FROM runs WHERE study_id=?",
                                     (study_id,)).fetchall())
    environments, read = _environments(runs, store)
    ends = [i for _, _, first, last in environments.values() for i in (first, last)]
    started = {int(r[0]): r[1] for r in store.db.execute(
        f"SELECT id, started_at FROM runs WHERE id IN ({', '.join('?' * len(ends))})", ends)} if ends else {}
    rows = [(platform + (" (emulated)" if emulated else ""), fleet_host, env["hostname"], env["kernel"], env["cpu_model"],
             env["python"], _libraries_cell(env["libraries"]) if env["libraries"] else None, n,
             nowrap(f"{first}–{last}"), _started_cell(started.get(first)), _started_cell(started.get(last)))
            for (platform, emulated, fleet_host, _), (env, n, first, last) in environments.items()]
    blocks = [
        _p(f"This study has {count:,} runs, more than the {limit:,} listed one by one: below are the environments "
           "they ran in and the runs that were not used. Every run is listed by "
           f"\"e2ebench show --study {shlex.quote(study_id)} --runs --json\" (or --csv); each run's full result, its environment "
           "and platform_info included, is kept in the store (runs.result_json)."),
        _h3("Environments"),
        _p(f"Sampled: the environment (host name, kernel, CPU model, Python, libraries) of {read:,} of the {count:,} "
           f"runs was read — up to {ENVIRONMENT_SAMPLES} runs spread evenly over each group of runs of one fleet host "
           "and platform, and, where two of them differ, the runs between them by bisection, which finds the run "
           "where the environment changed. A change that was undone between two sampled runs of a group is not seen. "
           "Run counts and id ranges are per environment; the ids of a group interleave with the other groups'.",
           muted=True),
        table(["platform", "fleet host", "host name", "kernel", "CPU", "Python", "libraries", "runs", "run ids",
               "first id started (UTC)", "last id started (UTC)"], rows),
        _h3("Runs not used"),
    ]
    blocks += _unused(runs, data.used_run_ids, store)
    return _Section("provenance", "Provenance: environments and the runs not used", blocks)


def _environments(runs: Sequence[tuple], store) -> tuple[dict, int]:
    """The environments of ``runs`` (tuples from :func:`_grouped`'s query), sampled: per (fleet host, platform,
    emulated) group, :data:`ENVIRONMENT_SAMPLES` runs spread evenly, then bisection between two samples that differ
    until the change is found to the run.  Returns ``{(platform, emulated, host, environment key): (environment,
    runs, first id, last id)}`` in the order of first appearance, and how many runs' JSON was read."""
    groups: dict[tuple, list[tuple]] = {}
    for run in runs:
        groups.setdefault((run[2], bool(run[3]), run[1]), []).append(run)
    known: dict[int, tuple[tuple, dict]] = {}            # run id -> (environment key, environment)

    def read(ids: Iterable[int]) -> None:
        wanted = [i for i in ids if i not in known]
        for run_id, result in store.results(wanted, keys=("environment",)):
            env = result.get("environment") if isinstance(result.get("environment"), dict) else {}
            shown = {f: env.get(f) for f in ENVIRONMENT_FIELDS}
            if not isinstance(shown[_LIBRARIES_KEY], dict):
                shown[_LIBRARIES_KEY] = {}
            known[run_id] = (tuple(json.dumps(shown[f], sort_keys=True, default=str) for f in ENVIRONMENT_FIELDS),
                             shown)
        for run_id in wanted:                            # a run whose row vanished meanwhile: no environment
            known.setdefault(run_id, (("null",) * len(ENVIRONMENT_FIELDS), dict.fromkeys(ENVIRONMENT_FIELDS)))

    samples = {g: _spread(len(members), ENVIRONMENT_SAMPLES) for g, members in groups.items()}
    read(members[i][0] for g, members in groups.items() for i in samples[g])
    out: dict[tuple, list] = {}
    for g, members in groups.items():
        key_at = lambda i: known[members[i][0]][0]      # noqa: E731 -- the environment key of the group's i-th run
        changes = []                                     # positions where the environment differs from the run before
        pending = [(a, b) for a, b in zip(samples[g], samples[g][1:]) if key_at(a) != key_at(b)]
        while pending:
            a, b = pending.pop()
            if b - a == 1:
                changes.append(b)
                continue
            middle = (a + b) // 2
            read([members[middle][0]])
            pending += [(x, y) for x, y in ((a, middle), (middle, b)) if key_at(x) != key_at(y)]
        bounds = [0, *sorted(changes), len(members)]
        for start, end in zip(bounds, bounds[1:]):
            env_key, env = known[members[start][0]]
            part = members[start:end]
            entry = out.setdefault((g[0], g[1], g[2], env_key), [env, 0, part[0][0], part[-1][0]])
            entry[1] += len(part)
            entry[2], entry[3] = min(entry[2], part[0][0]), max(entry[3], part[-1][0])
    ordered = sorted(out.items(), key=lambda item: item[1][2])
    return {k: tuple(v) for k, v in ordered}, len(known)


def _spread(n: int, k: int) -> list[int]:
    """Up to ``k`` positions among ``n``, evenly spread, the first and the last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _why_unused(phase: str, status: str, outlier: Any, has_e2e: Any) -> str:
    """Why the analysis left a run out, in the words of ``excluded`` (the overview's "runs left out")."""
    if phase != "measure":
        return f"phase {phase}"
    if status != "ok":
        return f"status {status}"
    if outlier:
        return "outlier"
    if not has_e2e:
        return "no e2e_s"
    return analysis.ADHOC_OTHER_WORKLOAD


def _rows_by_id(store, columns: str, ids: Sequence[int], batch: int = 500) -> dict[int, tuple]:
    """``{id: (id, *columns)}`` of the given runs, ``batch`` ids a statement."""
    found: dict[int, tuple] = {}
    for start in range(0, len(ids), batch):
        chunk = list(ids[start:start + batch])
        for row in store.db.execute(f"SELECT id, {columns} FROM runs WHERE id IN ({', '.join('?' * len(chunk))})",
                                    chunk):
            found[int(row[0])] = tuple(row)
    return found


def _unused(runs: Sequence[tuple], used_run_ids: set[int], store) -> list[Block]:
    """The runs the analysis did not use, failed ones first, then outliers, then the others (warm-ups), each by id;
    up to :data:`PROVENANCE_UNUSED_LISTED` listed, the rest counted."""
    unused_ids = [r[0] for r in runs if r[0] not in used_run_ids]
    if not unused_ids:
        return [_p("Every run was used.", muted=True)]
    unused = list(_rows_by_id(store, "phase, status, outlier, e2e_s IS NOT NULL", unused_ids).values())
    reasons: dict[str, int] = {}
    for r in unused:
        why = _why_unused(*r[1:])
        reasons[why] = reasons.get(why, 0) + 1
    order = sorted(unused, key=lambda r: (r[2] == "ok", not r[3], r[0]))
    shown = [r[0] for r in order[:PROVENANCE_UNUSED_LISTED]]
    names = ("id", "scenario", "phase", "seq", "status", "outlier", "started_at", "e2e_s", "emulated", "error")
    found = {i: dict(zip(names, row)) for i, row in _rows_by_id(store, ", ".join(names[1:]), shown).items()}
    rows, classes = [], []
    for run_id in shown:
        run = found.get(run_id)
        if run is None:
            continue
        rows.append((run["id"], _scenario_cell(run["scenario"], bool(run["emulated"]), no_wrap=True), run["phase"],
                     run["seq"], run["status"], "yes" if run["outlier"] else "no",
                     _why_unused(run["phase"], run["status"], run["outlier"], run["e2e_s"] is not None),
                     _started_cell(run["started_at"]),
                     nowrap(f"{run['e2e_s']:.4g} s") if run["e2e_s"] is not None else None, run["error"]))
        classes.append("emulated" if run["emulated"] else "")
    counts = ", ".join(f"{why}: {n:,}" for why, n in sorted(reasons.items()))
    listed = (f"all {len(unused):,} listed" if len(unused) <= len(rows) else
              f"the first {len(rows):,} listed (failed runs first, then outliers, then the others, each by id); "
              f"{len(unused) - len(rows):,} more not listed")
    return [_p(f"{len(unused):,} runs not used ({counts}); {listed}."),
            table(["run", "scenario", "phase", "seq", "status", "outlier", "why not used", "started (UTC)", "E2E",
                   "error"], rows, classes, cls="provenance")]
