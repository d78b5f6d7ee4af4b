"""The host's drift over a study: what the calibration probes and the rounds say, and whether the host was stable.

Two measurements of one thing, from independent sources:

* **probe drift** — the robust relative standard deviation (:func:`e2ebench.stats.robust_rel_sd_pct`) of the
  calibration probe's time (:mod:`e2ebench.calibration`) over the study's rounds *and* the same host's probes of the
  last 24 hours in the same store (same probe version, CPUs and threads): a re-run draws the host's state again, and
  the recent history says how far that state moves between studies;
* **round effect** — the standard deviation of the round in a random-effects model of the study's own runs
  (:func:`e2ebench.stats.round_effect_pct`): how much every scenario of a round moved together.

The study's ``drift_pct`` is the largest of the probe's sd over the study's own rounds, its sd over the host's recent
history, and the round effect (either source can miss what the other sees: the probe does dense arithmetic in cache,
the applications also stream memory and files; and the history, by adding calmer hours, must not dilute a drift the
study itself measured), and goes into every scenario's interval (:func:`e2ebench.stats.drift_aware_interval`) and the
stopping rule.

**Unstable host** (the warning ``show`` and the report print, in the spirit of pyperf's): any of

* drift above ``UNSTABLE_DRIFT_PCT`` (5 %): the host's speed moved by more than 5 % (one standard deviation)
  between rounds or recent studies, so means of this host carry at least +-10 % at 95 %;
* a trend above ``UNSTABLE_TREND_PCT`` (10 %): the median probe of the study's last third of rounds differs from the
  first third's by more than 10 %: the host changed speed during the study;
* probe noise above ``UNSTABLE_NOISE_PCT`` (10 %): the median relative spread of the 5 repeats inside one probe —
  something else ran on the study's CPUs at that moment.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import median
from typing import Sequence

from e2ebench.stats import robust_rel_sd_pct, round_effect_pct, stdev

HISTORY_WINDOW_S = 24 * 3600.0
UNSTABLE_DRIFT_PCT = 5.0
UNSTABLE_TREND_PCT = 10.0
UNSTABLE_NOISE_PCT = 10.0


@dataclasses.dataclass
class HostDrift:
    """The drift of one host over one study (see the module docstring)."""

    host: str
    probes: int                              # this study's probes
    probe_median_s: float | None
    probe_sd_pct: float | None               # over this study's probes
    history_probes: int                      # probes of the host in the window, this study's included
    history_sd_pct: float | None             # over those
    trend_pct: float | None                  # last third's median probe vs the first third's, percent
    noise_pct: float | None                  # median relative spread of the repeats inside one probe
    round_effect_pct: float | None
    drift_pct: float                         # what the intervals use: max(probe_sd_pct, history_sd_pct,
                                             # round_effect_pct), 0 if none
    unstable: bool
    reasons: list[str]

    @property
    def source(self) -> str:
        """Which measurement set ``drift_pct``."""
        if not self.drift_pct:
            return "none"
        if self.round_effect_pct is not None and self.round_effect_pct >= max(self.history_sd_pct or 0.0,
                                                                                self.probe_sd_pct or 0.0):
            return "round effect"
        return "calibration probe"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "source": self.source}

    def line(self) -> str:
        """One line for ``show``: the drift, its parts, and the verdict."""
        parts = []
        if self.probes:
            parts.append(f"probe {self.probe_median_s * 1000:.1f} ms median over {self.probes} rounds"
                         + (f", sd {self.probe_sd_pct:.1f}%" if self.probe_sd_pct is not None else ""))
        if self.history_probes > self.probes and self.history_sd_pct is not None:
            parts.append(f"sd {self.history_sd_pct:.1f}% over the host's {self.history_probes} probes of the last 24 h")
        if self.trend_pct is not None:
            parts.append(f"trend {self.trend_pct:+.1f}%")
        if self.noise_pct is not None:
            parts.append(f"noise {self.noise_pct:.1f}%")
        if self.round_effect_pct is not None:
            parts.append(f"round effect {self.round_effect_pct:.1f}%")
        verdict = ("UNSTABLE: " + "; ".join(self.reasons)) if self.unstable else "stable"
        measured = "; ".join(parts) if parts else "no calibration probes"
        return f"host {self.host}: drift {self.drift_pct:.1f}% ({self.source}) — {measured} — {verdict}"


def _comparable(probe: dict, reference: dict) -> bool:
    return (probe.get("probe_version") == reference.get("probe_version") and probe.get("cpus") == reference.get("cpus")
            and probe.get("threads") == reference.get("threads"))


def host_drift(host: str, study_probes: Sequence[dict], history: Sequence[dict],
               by_scenario_rounds: dict[object, dict[int, float]] | None = None) -> HostDrift:
    """The drift of ``host``: ``study_probes`` are this study's probes of the host (oldest first), ``history`` the
    host's probes from the store (any study, the study's own included or not); ``by_scenario_rounds``
    {scenario: {round: e2e_s}} of the study's counted runs on the host."""
    study_probes = [p for p in study_probes if p.get("probe_s")]
    times = [float(p["probe_s"]) for p in study_probes]
    reference = study_probes[-1] if study_probes else None
    window: list[float] = []
    if reference is not None:
        latest = max(float(p["started_at"]) for p in study_probes)
        seen = {(p.get("study_id"), p.get("round")) for p in study_probes}
        window = list(times) + [float(p["probe_s"]) for p in history
                                if _comparable(p, reference) and (p.get("study_id"), p.get("round")) not in seen
                                and latest - HISTORY_WINDOW_S <= float(p["started_at"]) <= latest and p.get("probe_s")]
    trend = None
    if len(times) >= 6:
        third = len(times) // 3
        first, last = median(times[:third]), median(times[-third:])
        trend = 100.0 * (last / first - 1.0) if first > 0 else None
    noises = []
    for p in study_probes:
        repeats = [float(r) for r in p.get("repeats_s") or [] if r]
        if len(repeats) >= 2:
            noises.append(100.0 * stdev(repeats) / (sum(repeats) / len(repeats)))
    noise = median(noises) if noises else None
    probe_sd = robust_rel_sd_pct(times)
    history_sd = robust_rel_sd_pct(window)
    rounds_sd = round_effect_pct(by_scenario_rounds or {})
    drift = max([v for v in (probe_sd, history_sd, rounds_sd) if v is not None and math.isfinite(v)], default=0.0)
    reasons = []
    if drift > UNSTABLE_DRIFT_PCT:
        reasons.append(f"the host's speed moved by {drift:.1f}% (1 sd) between rounds, above {UNSTABLE_DRIFT_PCT:g}%")
    if trend is not None and abs(trend) > UNSTABLE_TREND_PCT:
        reasons.append(f"the probe got {'slower' if trend > 0 else 'faster'} by {abs(trend):.1f}% from the first "
                       f"third of the study to the last, above {UNSTABLE_TREND_PCT:g}%")
    if noise is not None and noise > UNSTABLE_NOISE_PCT:
        reasons.append(f"the probe's repeats spread by {noise:.1f}% (median), above {UNSTABLE_NOISE_PCT:g}%: "
                       "something else ran on the study's CPUs")
    return HostDrift(host=host, probes=len(times), probe_median_s=median(times) if times else None,
                     probe_sd_pct=probe_sd, history_probes=len(window), history_sd_pct=history_sd, trend_pct=trend,
                     noise_pct=noise, round_effect_pct=rounds_sd, drift_pct=drift, unstable=bool(reasons),
                     reasons=reasons)


def study_drift(store, study_id: str, by_scenario_rounds: dict[object, dict[int, float]] | None = None,
                calibrations: Sequence[dict] | None = None) -> list[HostDrift]:
    """The drift of every host that probed for ``study_id`` (one entry per host; ``[]`` when the study has no probes
    and no rounds).  Runs are not yet tagged with a host, so the round effect is given to every host."""
    probes = list(calibrations) if calibrations is not None else store.calibrations(study_id=study_id)
    hosts = sorted({p["host"] for p in probes})
    if not hosts:
        if round_effect_pct(by_scenario_rounds or {}) is None:
            return []
        return [host_drift("(no probes)", [], [], by_scenario_rounds)]
    return [host_drift(host, [p for p in probes if p["host"] == host], store.calibrations(host=host),
                       by_scenario_rounds) for host in hosts]


def drift_pct_of(drifts: Sequence[HostDrift]) -> float:
    """The drift the intervals of a study use: the largest of its hosts'."""
    return max((d.drift_pct for d in drifts), default=0.0)
