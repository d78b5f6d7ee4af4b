"""The paper's figures, drawn from a study's findings with matplotlib (Agg, no display needed).

One function per figure; each returns a :class:`matplotlib.figure.Figure` (or ``None`` when the data for it
do not exist) and never touches pyplot's global state.  :func:`save` writes PNG and SVG.

* :func:`e2e_by_platform` — per app: grouped bars of mean E2E by platform, one bar per core count, VNL and
  PIN side by side, each bar stacked by phase, error bar = 95% CI of the mean (paper Fig. 4/6/7/8).
* :func:`gpu_speedup` — CPU→GPU speedup of inference alone and of E2E, with the Amdahl bound (Fig. 5).
* :func:`normalised_e2e` — E2E of every platform normalised to BM at one deployment, all apps (Fig. 10/11).
* :func:`overhead_vs_bm` — each platform's overhead vs BM per phase, in points of BM's E2E, with CIs.
* :func:`scale_up` — E2E vs cores per platform with the scale-up knee marked and the fitted model dotted.
* :func:`cold_start` — cold start per platform, stacked by part.
* :func:`e2e_by_thread_policy` — per app: mean E2E per deployment, one bar per thread policy (sized,
  framework-default, a fixed count) with its 95% CI, the penalty vs sized and the throttled time per run; drawn
  only when the study measured more than one policy.

Emulated (QEMU TCG) results are drawn only in figures of their own, whose title and a red banner say so.
Cold-cache scenarios (``#cold-cache``) are drawn next to the warm ones with "cold cache" in their labels; every
comparison they enter (vs BM, a knee, a normalisation) is with scenarios of the same cache state.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg", force=False)
from matplotlib import transforms  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from e2ebench.analysis import (  # noqa: E402
    PHASE_TITLES,
    PHASES,
    ColdStartFinding,
    GpuPayoff,
    KneeFinding,
    OverheadFinding,
    PolicyStats,
    ScenarioKey,
    ScenarioStats,
    ThreadPolicyFinding,
    thread_policy_rank,
)
from e2ebench.overhead_model import ScalingModel  # noqa: E402
from e2ebench.platforms import BASELINE_PLATFORM, platform_colour, platform_rank, platform_title  # noqa: E402

matplotlib.rcParams["svg.hashsalt"] = "e2ebench"      # deterministic SVG ids
# SVG text as text (selectable, searchable, editable; the viewer draws it with its sans-serif font) instead of
# every glyph as a path: a 212-scenario study's SVGs are 40% smaller and written ~20% faster
matplotlib.rcParams["svg.fonttype"] = "none"

PHASE_COLORS = {"io": "#8c564b", "pre": "#1f77b4", "infer": "#ff7f0e", "post": "#2ca02c", "other": "#b0b0b0"}
COLD_PARTS = ("provision_s", "process_start_s", "import_s", "model_load_s", "first_inference_s")
COLD_COLORS = {"provision_s": "#7f7f7f", "process_start_s": "#bcbd22", "import_s": "#17becf",
               "model_load_s": "#9467bd", "first_inference_s": "#ff7f0e"}
EMULATED_BANNER = "EMULATED (QEMU TCG) — not comparable with native results"
PIN_HATCH = "///"
THREADS_FIGURE_PREFIX = "e2e-by-thread-policy-"
PNG_DPI = 110
STAR = {"marker": (6, 2, 0), "markersize": 5, "markeredgewidth": 0.8, "color": "black"}   # a 6-armed asterisk


@dataclasses.dataclass
class FigureFile:
    """A saved figure: PNG and SVG paths, its title and a one-sentence caption for the report."""

    name: str
    title: str
    caption: str
    png: Path
    svg: Path
    emulated: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "caption": self.caption, "png": str(self.png),
                "svg": str(self.svg), "emulated": self.emulated}


def safe_name(text: str) -> str:
    """A file-name-safe slug (store strings may contain anything)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:80] or "figure"


def save(fig: Figure, out_dir: Path, name: str, caption: str, emulated: bool = False) -> FigureFile:
    """Write ``name.png`` and ``name.svg``.  The constrained layout runs once, for the PNG; the SVG reuses the
    positions it found (the engine is switched off in between), since every ``savefig`` would otherwise rerun it
    -- with hundreds of tick labels, that is a third of a big figure's cost."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = safe_name(name)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    # (zlib level 1: the same pixels, ~20% bigger files, a third of the encoding time)
    fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None}, pil_kwargs={"compress_level": 1})
    fig.set_layout_engine("none")              # positions stay as the PNG's layout left them
    fig.savefig(svg, metadata={"Date": None, "Creator": None})
    title = " ".join(fig.get_suptitle().split())
    return FigureFile(name, title or name, caption, png, svg, emulated)


def _cold(key: ScenarioKey, sep: str = "\n") -> str:
    """``sep + "cold cache"`` for a cold-cache scenario, ``""`` for the default warm cache."""
    return f"{sep}{key.cache_title}" if key.cache_title else ""


@functools.lru_cache(maxsize=None)
def _platform_rank(platform: str) -> tuple[int, str]:
    return platform_rank(platform)        # the platform's own `order` (e2ebench.platforms); remembered: sorts ask often


def _title(fig: Figure, text: str, emulated: bool) -> None:
    """Bold suptitle, wrapped to the figure's width; emulated figures get a red title and banner."""
    import textwrap

    width = max(40, int(fig.get_figwidth() * 9.5))
    if emulated:
        text = f"[EMULATED] {text}"
    text = textwrap.fill(text, width)
    if emulated:
        fig.suptitle(text, fontsize=12, fontweight="bold", color="#b00000")
        fig.text(0.5, 0.005, EMULATED_BANNER, ha="center", va="bottom", fontsize=10, color="white",
                 fontweight="bold", bbox={"facecolor": "#b00000", "edgecolor": "none", "pad": 3})
    else:
        fig.suptitle(text, fontsize=12, fontweight="bold")


def _ci_err(summary) -> float:
    hw = summary.half_width
    return float(hw) if hw is not None and math.isfinite(hw) else 0.0


def _bars(ax, xs: Sequence[float], heights: Sequence[float], width: float, bottoms: Sequence[float] | None = None,
          hatches: Sequence[str | None] | None = None, *, color: str, edgecolor: str = "none",
          linewidth: float = 1.0) -> None:
    """Vertical bars centred on ``xs``, as ``Axes.bar`` draws them, but one polygon collection per hatch instead of a
    Rectangle artist per bar (each costs its own limits update, transform and draw call: ~1 ms a bar, and a figure of
    the paper's matrix has hundreds).  Like ``bar``, the y axis sticks to each bar's base (no margin below 0)."""
    bottoms = list(bottoms) if bottoms is not None else [0.0] * len(xs)
    hatches = list(hatches) if hatches is not None else [None] * len(xs)
    half = width / 2.0
    for hatch in dict.fromkeys(hatches):
        verts = [((x - half, b), (x - half, b + h), (x + half, b + h), (x + half, b))
                 for x, h, b, mine in zip(xs, heights, bottoms, hatches) if mine == hatch]
        bars = PolyCollection(verts, closed=True, facecolors=color, edgecolors=edgecolor, linewidths=linewidth,
                              hatch=hatch, hatchcolors="edge")
        bars.sticky_edges.y.extend(sorted({b for b, mine in zip(bottoms, hatches) if mine == hatch}))
        ax.add_collection(bars)


def _error_bars(ax, xs: Sequence[float], ys: Sequence[float], yerr, **style) -> None:
    """Error bars at many points with one ``errorbar`` call (no line between the points); one call per bar costs a
    container, a line collection and two cap lines each."""
    if len(xs):
        ax.errorbar(xs, ys, yerr=yerr, fmt="none", **style)


def _stars(ax, points: Sequence[tuple[float, float, bool]]) -> None:
    """A ``*`` above each ``(x, y, True)`` point and below each ``(x, y, False)``: one marker line per side (the
    marker is the glyph's path, drawn at an offset in points), not one text annotation per star."""
    for above, dy in ((True, 5.0), (False, -5.0)):
        mine = [(x, y) for x, y, up in points if up == above]
        if mine:
            shifted = transforms.offset_copy(ax.transData, fig=ax.get_figure(), x=0.0, y=dy, units="points")
            ax.plot([x for x, _ in mine], [y for _, y in mine], linestyle="none", transform=shifted, **STAR)


# ---------------------------------------------------------------------------------------------
# (a) E2E by platform, stacked by phase


def e2e_by_platform(scenarios: dict[ScenarioKey, ScenarioStats], app: str, emulated: bool = False) -> Figure | None:
    keys = [k for k in scenarios if k.app == app and k.mode == "e2e"]
    if not keys:
        return None
    devices = [d for d in ("CPU", "GPU") if any(k.device == d for k in keys)]
    widths = []
    for d in devices:
        widths.append(sum(1 for k in keys if k.device == d) + len({k.platform for k in keys if k.device == d}))
    fig = Figure(figsize=(max(8.5, 0.55 * sum(widths) + 4.5), 5.2), layout="constrained")
    axes = fig.subplots(1, len(devices), squeeze=False, width_ratios=widths)[0]
    for ax, device in zip(axes, devices):
        dev_keys = [k for k in keys if k.device == device]
        platforms = sorted({k.platform for k in dev_keys}, key=_platform_rank)
        x = 0.0
        ticks, tick_labels, group_centres = [], [], []
        stacks: dict[str, tuple[list, list, list, list]] = {}       # phase -> x, height, bottom, hatch of its bars
        plain: tuple[list, list, list] = ([], [], [])               # bars without phase times: x, height, hatch
        means, errs = [], []
        for platform in platforms:
            combos = sorted((k for k in dev_keys if k.platform == platform),
                            key=lambda k: (k.cores, k.cpu_mode != "VNL", k.cache != "warm"))
            start = x
            for k in combos:
                s = scenarios[k]
                bottom = 0.0
                hatch = PIN_HATCH if k.cpu_mode == "PIN" else None
                if s.phases_s:
                    for phase in PHASES:
                        if phase not in s.phases_s:
                            continue
                        h = s.phases_s[phase].mean
                        for column, value in zip(stacks.setdefault(phase, ([], [], [], [])), (x, h, bottom, hatch)):
                            column.append(value)
                        bottom += h
                else:
                    for column, value in zip(plain, (x, s.e2e_s.mean, hatch)):
                        column.append(value)
                means.append(s.e2e_s.mean)
                errs.append(_ci_err(s.e2e_s))
                ticks.append(x)
                tick_labels.append(f"{k.cores}\n{k.cpu_mode}{_cold(k)}")
                x += 1.0
            group_centres.append(((start + x - 1.0) / 2.0, platform))
            x += 0.8
        for phase in PHASES:                      # one bar call per phase: the stacks' layers in the same order
            if phase in stacks:
                xs, heights, bottoms, hatches = stacks[phase]
                _bars(ax, xs, heights, 0.8, bottoms, hatches, color=PHASE_COLORS[phase], edgecolor="white",
                      linewidth=0.5)
        if plain[0]:
            _bars(ax, plain[0], plain[1], 0.8, None, plain[2], color="#999999", edgecolor="white")
        _error_bars(ax, ticks, means, errs, color="black", capsize=3, linewidth=1)
        ax.set_xticks(ticks, tick_labels, fontsize=8)
        third_line = any(k.cache != "warm" for k in dev_keys)         # "cold cache" under some ticks
        for centre, platform in group_centres:
            ax.annotate(platform, xy=(centre, 0), xycoords=("data", "axes fraction"), xytext=(0, -42 if third_line else -30),
                        textcoords="offset points", ha="center", va="top", fontsize=10, fontweight="bold")
        ax.set_ylabel("mean E2E time of the workload (s)")
        ax.set_xlabel(("\n\n\n" if third_line else "\n\n") + "platform; cores and CPU mode per bar", fontsize=9)
        ax.set_title(f"{device}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles = [Patch(facecolor=PHASE_COLORS[p], label=PHASE_TITLES[p]) for p in PHASES]
    handles += [Patch(facecolor="white", edgecolor="black", hatch=PIN_HATCH, label="PIN (pinned cores)"),
                Patch(facecolor="white", edgecolor="black", label="VNL (vanilla)"),
                Line2D([], [], color="black", marker="_", linestyle="none", markersize=10, label="95% CI of mean E2E")]
    axes[-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _title(fig, f"{app}: mean E2E time by platform, cores and CPU mode (stacked by phase)", emulated)
    return fig


# ---------------------------------------------------------------------------------------------
# (b) GPU speedup


def gpu_speedup(payoffs: Sequence[GpuPayoff], emulated: bool = False) -> Figure | None:
    measured = [g for g in payoffs if g.gpu is not None and g.e2e_speedup is not None]
    if not measured:
        return None
    apps = sorted({g.cpu.app for g in measured})
    fig = Figure(figsize=(max(7.0, 2.2 * len(measured) + 2), 4.8), layout="constrained")
    axes = fig.subplots(1, len(apps), squeeze=False)[0]
    for ax, app in zip(axes, apps):
        mine = sorted((g for g in measured if g.cpu.app == app),
                      key=lambda g: (_platform_rank(g.cpu.platform), g.cpu.cores, g.cpu.cpu_mode, g.cpu.cache != "warm"))
        for i, g in enumerate(mine):
            for offset, value, colour, label in (
                (-0.2, g.inference_speedup, "#ff7f0e", "inference only"),
                (0.2, g.e2e_speedup, "#1f77b4", "E2E"),
            ):
                if value is None:
                    continue
                ratio, ci = value
                err = [[ratio - ci[0]], [ci[1] - ratio]] if ci else None
                ax.bar(i + offset, ratio, 0.4, color=colour, label=label if i == 0 else None)
                if err:
                    ax.errorbar(i + offset, ratio, yerr=err, color="black", capsize=3, linewidth=1)
            if g.amdahl_bound:
                ax.plot([i + 0.0, i + 0.4], [g.amdahl_bound] * 2, color="black", linestyle="--", linewidth=1.2,
                        label="Amdahl bound of E2E" if i == 0 else None)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(mine)), [f"{g.cpu.platform}\n{g.cpu.cores} {g.cpu.cpu_mode}{_cold(g.cpu)}" for g in mine],
                      fontsize=8)
        ax.set_ylabel("speedup, CPU time / GPU time (x)")
        ax.set_title(app, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(fontsize=8)
    _title(fig, "GPU vs CPU speedup: inference alone vs end to end (error bars: 95% CI)", emulated)
    return fig


# ---------------------------------------------------------------------------------------------
# (c) normalised E2E across platforms, all apps


def choose_config(scenarios: dict[ScenarioKey, ScenarioStats], cpu_mode: str | None = None,
                  cache: str = "warm") -> tuple[int, str, str] | None:
    """The (cores, CPU mode, device) measured on the most (app, platform) pairs of one cache state; ties: more
    cores."""
    cover: dict[tuple[int, str, str], set] = {}
    for k in scenarios:
        if k.mode != "e2e" or k.cache != cache or (cpu_mode and k.cpu_mode != cpu_mode):
            continue
        cover.setdefault((k.cores, k.cpu_mode, k.device), set()).add((k.app, k.platform))
    if not cover:
        return None
    return max(cover, key=lambda c: (len(cover[c]), c[2] == "CPU", c[0], c[1] == "VNL"))


def normalised_e2e(scenarios: dict[ScenarioKey, ScenarioStats], config: tuple[int, str, str],
                   emulated: bool = False, cache: str = "warm") -> Figure | None:
    cores, cpu_mode, device = config
    keys = [k for k in scenarios
            if (k.cores, k.cpu_mode, k.device, k.mode, k.cache) == (cores, cpu_mode, device, "e2e", cache)]
    platforms = sorted({k.platform for k in keys}, key=_platform_rank)
    apps = sorted({k.app for k in keys})
    if len(platforms) < 2 or not apps:
        return None
    fig = Figure(figsize=(max(8.5, 0.6 * len(apps) * len(platforms) + 4), 4.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(platforms)
    reference_names = []
    bars: dict[str, tuple[list, list, list]] = {}         # platform -> x, normalised mean, normalised CI half-width
    for a, app in enumerate(apps):
        mine = {k.platform: scenarios[k] for k in keys if k.app == app}
        ref_platform = (BASELINE_PLATFORM if BASELINE_PLATFORM in mine
                        else min(mine, key=lambda p: mine[p].e2e_s.mean))
        reference_names.append(ref_platform)
        ref = mine[ref_platform].e2e_s.mean
        for p, platform in enumerate(platforms):
            if platform not in mine:
                continue
            s = mine[platform].e2e_s
            for column, value in zip(bars.setdefault(platform, ([], [], [])),
                                     (a - 0.4 + width * (p + 0.5), s.mean / ref, _ci_err(s) / ref)):
                column.append(value)
    for platform, (xs, ys, errs) in bars.items():      # one bar call and one errorbar call per platform
        _bars(ax, xs, ys, width, color=platform_colour(platform))
        _error_bars(ax, xs, ys, errs, color="black", capsize=2, linewidth=1)
    handles = [Patch(facecolor=platform_colour(p), label=f"{p} ({platform_title(p)})")
               for p in platforms]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(apps)), [f"{app}\n(= 1: {ref})" for app, ref in zip(apps, reference_names)])
    ax.set_ylabel("mean E2E / reference platform's mean E2E")
    ax.set_xlabel("application (reference platform)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    cold = "" if cache == "warm" else f", {cache} cache"
    _title(fig, f"E2E normalised to the reference platform at {cores}/{cpu_mode}/{device}{cold} (95% CI)", emulated)
    return fig


# ---------------------------------------------------------------------------------------------
# (d) overhead vs BM per phase


def overhead_vs_bm(overheads: Sequence[OverheadFinding], app: str, emulated: bool = False) -> Figure | None:
    mine = sorted((o for o in overheads if o.subject.app == app and o.subject.mode == "e2e" and o.phases),
                  key=lambda o: (o.subject.device, _platform_rank(o.subject.platform), o.subject.cores,
                                 o.subject.cpu_mode != "VNL", o.subject.cache != "warm"))
    if not mine:
        return None
    series = [p for p in PHASES if any(p in o.phases for o in mine)] + ["e2e"]
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(8.5, 1.2 * len(mine) + 4.5), 4.8), layout="constrained")
    ax = fig.subplots()
    stars: list[tuple[float, float, bool]] = []
    for j, name in enumerate(series):             # one bar call and one errorbar call per series
        xs, values, ci_x, ci_y, low, high = [], [], [], [], [], []
        for i, o in enumerate(mine):
            xpos = i - 0.4 + width * (j + 0.5)
            if name == "e2e":
                value, ci, significant = o.e2e.relative_pct, o.e2e.relative_ci_pct, o.e2e.significant
            else:
                if name not in o.phases:
                    continue
                ph = o.phases[name]
                value, ci, significant = ph.contribution_pct, ph.contribution_ci_pct, ph.comparison.significant
            if value is None:
                continue
            xs.append(xpos)
            values.append(value)
            if ci is not None:
                ci_x.append(xpos)
                ci_y.append(value)
                low.append(value - ci[0])
                high.append(ci[1] - value)
            if significant:
                top = ci[1] if (ci and value >= 0) else (ci[0] if ci else value)
                stars.append((xpos, top, value >= 0))
        if xs:
            _bars(ax, xs, values, width, color="black" if name == "e2e" else PHASE_COLORS[name])
        _error_bars(ax, ci_x, ci_y, [low, high], color="#444444", capsize=2, linewidth=0.8)
    _stars(ax, stars)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(mine)), [f"{o.subject.platform}\n{o.subject.cores} {o.subject.cpu_mode} {o.subject.device}"
                                     f"{_cold(o.subject)}" for o in mine], fontsize=8)
    ax.set_ylabel("difference vs BM (% of BM's mean E2E)")
    ax.set_xlabel("platform (vs BM at the same cores, CPU mode, device and cache state)")
    handles = [Patch(facecolor=PHASE_COLORS[p], label=PHASE_TITLES[p]) for p in series if p != "e2e"]
    handles.append(Patch(facecolor="black", label="E2E total"))
    handles.append(Line2D([], [], linestyle="none", label="significant (paired or Welch, p<0.05)", **STAR))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _title(fig, f"{app}: overhead vs bare metal per phase (phases add up to the E2E bar; error bars: 95% CI)", emulated)
    return fig


# ---------------------------------------------------------------------------------------------
# (e) E2E vs cores with the knee


def scale_up(scenarios: dict[ScenarioKey, ScenarioStats], knees: Sequence[KneeFinding],
             models: Sequence[ScalingModel], app: str, emulated: bool = False) -> Figure | None:
    mine = [k for k in knees if k.app == app and k.mode == "e2e"]
    if not mine:
        return None
    devices = [d for d in ("CPU", "GPU") if any(k.device == d for k in mine)]
    fig = Figure(figsize=(8.5 * len(devices), 5.0), layout="constrained")
    axes = fig.subplots(1, len(devices), squeeze=False)[0]
    import numpy as np

    for ax, device in zip(axes, devices):
        all_cores: set[int] = set()
        for k in sorted((k for k in mine if k.device == device),
                        key=lambda k: (_platform_rank(k.platform), k.cpu_mode, k.cache != "warm")):
            colour = platform_colour(k.platform)
            style = "-" if k.cpu_mode == "VNL" else "--"
            cold = _cold(k.key, ", ")
            xs = [c for c, _ in k.points]
            ys = [s.mean for _, s in k.points]
            errs = [_ci_err(s) for _, s in k.points]
            all_cores.update(xs)
            ax.errorbar(xs, ys, yerr=errs, color=colour, linestyle=style, marker="o", capsize=3,
                        mfc="white" if cold else None,
                        label=f"{k.platform} {k.cpu_mode}{cold} (knee {k.knee_cores}, best {k.best_cores} cores)")
            knee_value = dict(k.points)[k.knee_cores].mean
            ax.plot([k.knee_cores], [knee_value], marker="*", markersize=16, color=colour,
                    markeredgecolor="black", linestyle="none")
            model = next((m for m in models if (m.app, m.platform, m.cpu_mode, m.device, m.mode, m.emulated, m.cache)
                          == (k.app, k.platform, k.cpu_mode, k.device, "e2e", k.emulated, k.cache)), None)
            fit = model.best_fit("e2e") if model else None
            if fit is not None:
                top = max(max(xs), max((p.cores for p in model.predictions), default=max(xs)))
                grid = np.geomspace(1, top, 60)
                ax.plot(grid, [fit.value(g) for g in grid], color=colour, linestyle=":", linewidth=1.2, alpha=0.8)
                all_cores.update(p.cores for p in model.predictions)
        ax.set_xscale("log", base=2)
        ticks = sorted(all_cores)
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.minorticks_off()
        ax.set_xlabel("cores")
        ax.set_ylabel("mean E2E time of the workload (s)")
        ax.set_title(device, fontsize=10)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], marker="*", markersize=12, color="grey", markeredgecolor="black", linestyle="none"),
                    Line2D([], [], color="grey", linestyle=":")]
        labels += [f"knee: fewest cores within {mine[0].tolerance_pct:g}% of the best",
                   "fitted model (a prediction, not measured)"]
        ax.legend(handles, labels, fontsize=8)
    _title(fig, f"{app}: E2E time vs cores (solid: VNL, dashed: PIN; error bars: 95% CI)", emulated)
    return fig


# ---------------------------------------------------------------------------------------------
# (f) cold start


def cold_start(cold: Sequence[ColdStartFinding], emulated: bool = False) -> Figure | None:
    if not cold:
        return None
    apps = sorted({c.app for c in cold})
    widest = max(sum(1 for c in cold if c.app == app) for app in apps)       # bars in the fullest panel
    per_app = max(3.2, 0.9 * widest)                                         # room for "CPU (n=46)" under each bar
    fig = Figure(figsize=(max(6.5, per_app * len(apps) + 2), 4.6), layout="constrained")
    axes = fig.subplots(1, len(apps), squeeze=False)[0]
    for ax, app in zip(axes, apps):
        mine = sorted((c for c in cold if c.app == app), key=lambda c: (c.device, _platform_rank(c.platform)))
        layers: dict[str, tuple[list, list, list]] = {}          # part -> x, height, bottom of its bars
        for i, c in enumerate(mine):
            bottom = 0.0
            for part in COLD_PARTS:
                if part in c.parts_s:
                    h = c.parts_s[part].mean
                    for column, value in zip(layers.setdefault(part, ([], [], [])), (i, h, bottom)):
                        column.append(value)
                    bottom += h
        for part in COLD_PARTS:                   # one bar call per part, stacked in the same order
            if part in layers:
                xs, heights, bottoms = layers[part]
                _bars(ax, xs, heights, 0.7, bottoms, color=COLD_COLORS[part], edgecolor="white", linewidth=0.5)
        whole = [i for i, c in enumerate(mine) if not c.parts_s]
        if whole:
            _bars(ax, whole, [mine[i].total_s.mean for i in whole], 0.7, color="#999999")
        _error_bars(ax, range(len(mine)), [c.total_s.mean for c in mine], [_ci_err(c.total_s) for c in mine],
                    color="black", capsize=3, linewidth=1)
        ax.set_xticks(range(len(mine)), [f"{c.platform}\n{c.device} (n={c.total_s.n})" for c in mine], fontsize=8)
        ax.set_ylabel("cold start (s)")
        ax.set_title(app, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles = [Patch(facecolor=COLD_COLORS[p], label=p.removesuffix("_s").replace("_", " ")) for p in COLD_PARTS]
    axes[-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _title(fig, "Cold start per platform: provision to first inference (error bars: 95% CI)", emulated)
    return fig


# ---------------------------------------------------------------------------------------------
# (g) E2E by thread policy


POLICY_COLORS = {"sized": "#1f77b4", "framework-default": "#d62728"}
POLICY_FALLBACK_COLORS = ("#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _policy_color(policy: str, others: Sequence[str]) -> str:
    if policy in POLICY_COLORS:
        return POLICY_COLORS[policy]
    return POLICY_FALLBACK_COLORS[list(others).index(policy) % len(POLICY_FALLBACK_COLORS)]


def e2e_by_thread_policy(findings: Sequence[ThreadPolicyFinding], app: str, emulated: bool = False) -> Figure | None:
    """Per deployment (platform, cores, CPU mode, device), one bar per thread policy: mean E2E with its 95% CI; the
    penalty vs sized over each other bar (``*`` = significant) and the mean throttled time per run under it."""
    mine = [t for t in findings if t.key.app == app]
    if not mine:
        return None
    groups: dict[ScenarioKey, dict[str, PolicyStats]] = {}
    penalty: dict[tuple[ScenarioKey, str], ThreadPolicyFinding] = {}
    for t in mine:
        groups.setdefault(t.key, {"sized": t.sized})[t.policy] = t.other
        penalty[(t.key, t.policy)] = t
    policies = sorted({p for g in groups.values() for p in g}, key=thread_policy_rank)
    extra = [p for p in policies if p not in POLICY_COLORS]
    order = sorted(groups, key=lambda k: (k.device, _platform_rank(k.platform), k.cores, k.cpu_mode != "VNL",
                                          k.mode, k.cache != "warm"))
    width = 0.8 / len(policies)
    fig = Figure(figsize=(max(6.5, 1.1 * len(order) * len(policies) + 3.0), 5.0), layout="constrained")
    ax = fig.subplots()
    top = 0.0
    for i, key in enumerate(order):
        for j, policy in enumerate(policies):
            stats = groups[key].get(policy)
            if stats is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            mean, err = stats.e2e_s.mean, _ci_err(stats.e2e_s)
            top = max(top, mean + err)
            ax.bar(x, mean, width * 0.92, color=_policy_color(policy, extra),
                   hatch=PIN_HATCH if key.cpu_mode == "PIN" else None, edgecolor="white", linewidth=0.5)
            ax.errorbar(x, mean, yerr=err, color="black", capsize=3, linewidth=1)
            t = penalty.get((key, policy))
            if t is not None and t.penalty_pct is not None:
                star = "*" if t.verdict in ("penalty", "faster") else ""
                ax.annotate(f"{t.penalty_pct:+.1f}%{star}", (x, mean + err), textcoords="offset points",
                            xytext=(0, 3), ha="center", va="bottom", fontsize=8)
            throttled = stats.counters.get("throttled_time_s")
            if throttled is not None:
                ax.annotate(f"thr {throttled.mean:.2g} s", (x, 0), textcoords="offset points", xytext=(0, 3),
                            ha="center", va="bottom", fontsize=7, rotation=90, color="white")
    labels = []
    for key in order:
        extra_bits = [b for b in (key.cache_title, "inference only" if key.mode == "inference-only" else "") if b]
        labels.append(f"{key.platform}/{_cores_label(key.cores)}\n{key.cpu_mode} {key.device}"
                      + (f"\n{', '.join(extra_bits)}" if extra_bits else ""))
    ax.set_xticks(range(len(order)), labels, fontsize=8)
    ax.set_ylabel("mean E2E time of the workload (s)")
    ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles = [Patch(facecolor=_policy_color(p, extra), label=f"threads: {p}") for p in policies]
    if any(k.cpu_mode == "PIN" for k in order):
        handles.append(Patch(facecolor="white", edgecolor="grey", hatch=PIN_HATCH, label="pinned (PIN)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _title(fig, f"{app}: E2E by thread policy per platform and core count (error bars: 95% CI; "
                "% = vs sized, * = significant; thr = throttled time per run)", emulated)
    return fig


def _cores_label(cores: int) -> str:
    return f"{cores} core" if cores == 1 else f"{cores} cores"


def all_figures(findings, models: Sequence[ScalingModel], out_dir: Path,
                workers: int | None = None) -> list[FigureFile]:
    """Draw and save every figure the findings support; return them in report order (see :class:`FigureDrawing`)."""
    return FigureDrawing(findings, out_dir, workers).finish(models)


class FigureDrawing:
    """Every figure of the findings, drawn while the caller goes on.

    The figures are independent, so up to ``workers`` (default :data:`FIGURE_WORKERS`, never more than the CPUs)
    are drawn at once in forked processes, which inherit the findings instead of receiving them pickled; they start
    at once, with every figure that needs only the findings, while the caller fits the scaling models and builds the
    rest of the report (on 2 cores the report's own work and the drawing then share the machine instead of taking
    turns).  :meth:`draw_with` draws the figures that need the models (scale-up) here, :meth:`collect` waits for the
    others and returns them all in report order (:meth:`finish`: both).  Where forking is not available (or this is a daemon process, which may not have
    children), or a worker dies, the figures are drawn here, one after the other."""

    def __init__(self, findings, out_dir: Path, workers: int | None = None):
        self.jobs = _figure_jobs(findings, None, out_dir)
        self.findings = findings
        self.done: dict[int, FigureFile | None] = {}
        self.pool: ProcessPoolExecutor | None = None
        self.futures: dict[int, Any] = {}
        wanted = FIGURE_WORKERS if workers is None else workers
        ready = [i for i, job in enumerate(self.jobs) if not job.needs_models]
        n = min(wanted, len(ready), os.cpu_count() or 1)
        if n > 1 and "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon:
            try:
                self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"),
                                                initializer=_adopt_jobs, initargs=(self.jobs,))
                for i in sorted(ready, key=lambda i: -self.jobs[i].weight):   # the big ones first: even finish
                    self.futures[i] = self.pool.submit(_run_adopted_job, i)
            except (BrokenProcessPool, OSError):
                self.close()

    def finish(self, models: Sequence[ScalingModel]) -> list[FigureFile]:
        self.draw_with(models)
        return self.collect()

    def draw_with(self, models: Sequence[ScalingModel]) -> None:
        """The figures that need the scaling models: to the workers (the models sent along; the workers have the
        findings), else drawn here."""
        for i, job in enumerate(self.jobs):
            if job.needs_models and i not in self.done and i not in self.futures:
                job.args = job.args[:2] + (models,) + job.args[3:]
                if self.pool is not None:
                    try:
                        self.futures[i] = self.pool.submit(_run_adopted_job_with_models, i, list(models))
                        continue
                    except (BrokenProcessPool, RuntimeError):
                        pass
                self.done[i] = job.run()

    def collect(self) -> list[FigureFile]:
        """Wait for the workers' figures (any they could not draw are drawn here); every figure, in report order."""
        done: dict[int, FigureFile | None] = dict(self.done)
        try:
            for i, future in self.futures.items():
                done[i] = future.result()
        except (BrokenProcessPool, OSError):
            pass                                  # drawn below, in this process
        finally:
            self.close()
        for i, job in enumerate(self.jobs):
            if i not in done:
                if job.needs_models and job.args[2] is None:
                    raise RuntimeError(f"figure {job.name} needs the scaling models: call draw_with(models) first")
                done[i] = job.run()
        return [f for i in range(len(self.jobs)) if (f := done[i]) is not None]

    def close(self) -> None:
        """Stop the workers (what they have not started is cancelled); the figures already collected stay."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


FIGURE_WORKERS = 2          # processes that draw figures at once (each ~100 MB; the report needs no more on 2 cores)


@dataclasses.dataclass
class _FigureJob:
    """One figure to draw and save: ``draw(*args)`` returns the Figure (or None), saved as ``name``."""

    draw: Callable[..., Figure | None]
    args: tuple
    out_dir: Path
    name: str
    caption: str
    emulated: bool
    weight: int = 1                     # rough cost, to start the biggest first
    needs_models: bool = False          # drawn once the scaling models are fitted (FigureDrawing.finish)

    def run(self) -> FigureFile | None:
        fig = self.draw(*self.args)
        return None if fig is None else save(fig, self.out_dir, self.name, self.caption, self.emulated)


_adopted: list[_FigureJob] = []


def _adopt_jobs(jobs: list[_FigureJob]) -> None:
    """A worker's initializer: the jobs, inherited through fork (not pickled)."""
    _adopted[:] = jobs


def _run_adopted_job(index: int) -> FigureFile | None:
    return _adopted[index].run()


def _run_adopted_job_with_models(index: int, models: list[ScalingModel]) -> FigureFile | None:
    job = _adopted[index]
    job.args = job.args[:2] + (models,) + job.args[3:]
    return job.run()


def _figure_jobs(findings, models: Sequence[ScalingModel] | None, out_dir: Path) -> list[_FigureJob]:
    """Every figure of the report, in report order (the file names and captions are part of the report's JSON);
    with ``models`` None, the figures that draw them wait for them (``needs_models``)."""
    emulated = findings.emulated
    tag = "emulated-" if emulated else ""
    suffix = " (emulated, QEMU TCG)" if emulated else ""
    out: list[_FigureJob] = []
    apps = sorted({k.app for k in findings.scenarios})
    per_app = {app: sum(1 for k in findings.scenarios if k.app == app) for app in apps}

    def keep(draw: Callable[..., Figure | None], args: tuple, name: str, caption: str, weight: int = 1,
             needs_models: bool = False) -> None:
        out.append(_FigureJob(draw, args, out_dir, tag + name, caption + suffix, emulated, weight, needs_models))

    for app in apps:
        keep(e2e_by_platform, (findings.scenarios, app, emulated), f"e2e-by-platform-{app}",
             f"{app}: mean E2E per deployment, stacked by phase; hatched bars are pinned (PIN); error bars 95% CI.",
             2 * per_app[app])
    for app in apps:
        keep(scale_up, (findings.scenarios, findings.knees, models, app, emulated), f"scale-up-{app}",
             f"{app}: E2E vs cores per platform; the star marks the knee; dotted lines are model predictions.",
             needs_models=models is None)
    for app in apps:
        keep(overhead_vs_bm, (findings.overheads, app, emulated), f"overhead-vs-bm-{app}",
             f"{app}: how much longer (or shorter) each phase takes than on BM, in % of BM's E2E; * = significant.",
             2 * per_app[app])
    keep(gpu_speedup, (findings.gpu, emulated), "gpu-speedup",
         "CPU→GPU speedup of inference alone and of E2E; the dashed line is the Amdahl bound of E2E.")
    seen = set()
    for cache in ("warm", "cold"):
        for cpu_mode in ("VNL", "PIN"):
            config = choose_config(findings.scenarios, cpu_mode, cache)
            if config and (config, cache) not in seen:
                seen.add((config, cache))
                cold = "" if cache == "warm" else f"-{cache}-cache"
                keep(normalised_e2e, (findings.scenarios, config, emulated, cache),
                     f"normalised-e2e-{config[0]}-{config[1]}-{config[2]}{cold}",
                     f"E2E of every platform divided by the reference platform's (BM when measured) at "
                     f"{config[0]}/{config[1]}/{config[2]}{', ' + cache + ' cache' if cold else ''}, per application.")
    keep(cold_start, (findings.cold_starts, emulated), "cold-start",
         "Cold start (provision, process start, imports, model load, first inference) per platform.",
         len(findings.cold_starts))
    if len(getattr(findings, "policies", ())) > 1:
        for app in apps:
            keep(e2e_by_thread_policy, (findings.thread_policies, app, emulated), f"{THREADS_FIGURE_PREFIX}{app}",
                 f"{app}: mean E2E with each thread policy per deployment (sized: pools sized to the deployment's "
                 "cores; framework-default: each library's own choice); the % is the penalty vs sized.")
    return out
