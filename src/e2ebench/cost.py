"""Cost per 1,000 inferences from a price table, and the cheapest deployment that meets a target.

A price table is TOML::

    currency = "USD"

    [prices]                        # deployment pattern -> price per hour of the whole deployment
    "BM/*/*/CPU" = 1.60
    "CN/*/PIN/CPU" = { per_core_hour = 0.048 }               # x cores
    "VM/16/*/GPU" = { per_hour = 0.90, per_core_hour = 0.04 } # fixed part + per core

    [host_types]                    # optional, for a fleet (docs/fleet.md): machine type pattern -> price per hour
    "amd-epyc-64c-*" = 2.40         # of the whole machine; a run on that host type costs this, whatever deployment
    "*-nvidia-*" = { per_hour = 3.10 }

    [targets]                       # optional: what "meets the target" means
    p99_ms = 800                    # 99th-percentile LoadGen latency (issue -> answer), milliseconds
    throughput_sps = 20             # samples per second

Patterns are ``fnmatch``-style over ``PLATFORM/CORES/CPUMODE/DEVICE`` (``*`` any text, ``?`` one character,
``[...]`` a set; matched case-sensitively against the canonical upper-case deployment).  When several match,
the most specific wins — the one with the fewest wildcard characters; ties go to the first in the file.
``[host_types]`` patterns match a fleet host type (:func:`e2ebench.fleet.host_type_of`, lower case) the same way; a
scenario measured on a host type that has a price is priced by its machine, else by its deployment.

Numbers: ``cost per 1,000 inferences = price_per_hour / 3600 * (e2e_s / completed) * 1000``, computed per run
and summarised with a 95% CI.  A deployment *meets* a latency target when the upper end of its p99's 95% CI
is at or under the target, and a throughput target when the lower end of its throughput CI is at or over it
(with one run: the value itself) — conservative on purpose.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import tomllib
from pathlib import Path
from typing import Any

from e2ebench.analysis import ScenarioKey, ScenarioStats, ci_bounds


class PriceError(ValueError):
    """A price table that cannot be used; the message names the entry."""


@dataclasses.dataclass(frozen=True)
class PriceRule:
    pattern: str
    per_hour: float
    per_core_hour: float
    order: int

    @property
    def specificity(self) -> tuple[int, int]:
        wildcards = sum(self.pattern.count(c) for c in "*?[")
        return (wildcards, self.order)

    def price_per_hour(self, cores: int) -> float:
        return self.per_hour + self.per_core_hour * cores


@dataclasses.dataclass(frozen=True)
class Targets:
    p99_ms: float | None = None
    throughput_sps: float | None = None

    @property
    def any(self) -> bool:
        return self.p99_ms is not None or self.throughput_sps is not None

    def describe(self) -> str:
        parts = []
        if self.p99_ms is not None:
            parts.append(f"p99 latency <= {self.p99_ms:g} ms")
        if self.throughput_sps is not None:
            parts.append(f"throughput >= {self.throughput_sps:g} samples/s")
        return " and ".join(parts) or "no target"


@dataclasses.dataclass
class PriceTable:
    rules: list[PriceRule]
    currency: str = "USD"
    targets: Targets = dataclasses.field(default_factory=Targets)
    source: str = ""
    host_types: list[PriceRule] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, path: Path | str) -> "PriceTable":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PriceError(f"cannot read price table {path}: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> "PriceTable":
        prices = data.get("prices")
        if not isinstance(prices, dict) or not prices:
            raise PriceError(f"price table {source or ''} has no [prices] table of 'PATTERN = price per hour'".replace("  ", " "))
        rules = []
        for order, (pattern, value) in enumerate(prices.items()):
            parts = pattern.split("/")
            if len(parts) != 4:
                raise PriceError(f"price pattern {pattern!r} must have 4 parts: PLATFORM/CORES/CPUMODE/DEVICE")
            if isinstance(value, bool):
                raise PriceError(f"price of {pattern!r} must be a number or a table, got {value!r}")
            if isinstance(value, (int, float)):
                per_hour, per_core = float(value), 0.0
            elif isinstance(value, dict):
                unknown = set(value) - {"per_hour", "per_core_hour"}
                if unknown:
                    raise PriceError(f"price of {pattern!r} has unknown key(s) {sorted(unknown)}; "
                                     "accepted: per_hour, per_core_hour")
                per_hour = _number(value.get("per_hour", 0.0), pattern)
                per_core = _number(value.get("per_core_hour", 0.0), pattern)
            else:
                raise PriceError(f"price of {pattern!r} must be a number or a table, got {value!r}")
            if per_hour < 0 or per_core < 0 or (per_hour == 0 and per_core == 0):
                raise PriceError(f"price of {pattern!r} must be positive")
            rules.append(PriceRule(pattern.upper(), per_hour, per_core, order))
        host_types = data.get("host_types") or {}
        if not isinstance(host_types, dict):
            raise PriceError("[host_types] must be a table of 'HOST-TYPE-PATTERN = price per hour'")
        machine_rules = []
        for order, (pattern, value) in enumerate(host_types.items()):
            if isinstance(value, dict):
                unknown = set(value) - {"per_hour"}
                if unknown:
                    raise PriceError(f"price of host type {pattern!r} has unknown key(s) {sorted(unknown)}; "
                                     "accepted: per_hour")
                value = value.get("per_hour", 0.0)
            per_hour = _number(value, f"host_types.{pattern}")
            if per_hour <= 0:
                raise PriceError(f"price of host type {pattern!r} must be positive")
            machine_rules.append(PriceRule(pattern.lower(), per_hour, 0.0, order))
        targets = data.get("targets") or {}
        if not isinstance(targets, dict):
            raise PriceError("[targets] must be a table with p99_ms and/or throughput_sps")
        unknown = set(targets) - {"p99_ms", "throughput_sps"}
        if unknown:
            raise PriceError(f"[targets] has unknown key(s) {sorted(unknown)}; accepted: p99_ms, throughput_sps")
        t = Targets(
            p99_ms=_number(targets["p99_ms"], "targets.p99_ms") if "p99_ms" in targets else None,
            throughput_sps=_number(targets["throughput_sps"], "targets.throughput_sps") if "throughput_sps" in targets else None,
        )
        return cls(rules, str(data.get("currency", "USD")), t, source, machine_rules)

    def match(self, deployment: str) -> PriceRule | None:
        hits = [r for r in self.rules if fnmatch.fnmatchcase(deployment, r.pattern)]
        return min(hits, key=lambda r: r.specificity) if hits else None

    def match_host_type(self, host_type: str | None) -> PriceRule | None:
        if not host_type:
            return None
        hits = [r for r in self.host_types if fnmatch.fnmatchcase(host_type.lower(), r.pattern)]
        return min(hits, key=lambda r: r.specificity) if hits else None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PriceError(f"{where}: expected a number, got {value!r}")
    return float(value)


@dataclasses.dataclass
class CostRow:
    """Cost and service level of one measured scenario."""

    key: ScenarioKey
    pattern: str
    price_per_hour: float
    cost_per_1000: float
    cost_per_1000_ci: tuple[float, float] | None
    p99_ms: float | None
    p99_ms_ci_high: float | None
    throughput_sps: float | None
    throughput_sps_ci_low: float | None
    meets_target: bool | None                  # None when no target was given

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["key"] = self.key.to_dict()
        return d


def cost_rows(scenarios: dict[ScenarioKey, ScenarioStats], prices: PriceTable,
              targets: Targets | None = None) -> list[CostRow]:
    """One row per E2E scenario that has a price; inference-only scenarios are not services and are skipped."""
    targets = targets or prices.targets
    rows = []
    for key, stats in scenarios.items():
        if key.mode != "e2e" or stats.cost_basis_s_per_sample is None:
            continue
        rule = prices.match_host_type(key.host_type) or prices.match(key.deployment)
        if rule is None:
            continue
        price = rule.price_per_hour(key.cores)
        per = stats.cost_basis_s_per_sample
        factor = price / 3600.0 * 1000.0
        bounds = ci_bounds(per)
        ci = (bounds[0] * factor, bounds[1] * factor) if bounds else None
        p99 = stats.latency_p99_ms
        tput = stats.throughput_sps
        p99_high = ((ci_bounds(p99) or (p99.mean, p99.mean))[1]) if p99 else None
        tput_low = ((ci_bounds(tput) or (tput.mean, tput.mean))[0]) if tput else None
        meets: bool | None = None
        if targets.any:
            meets = True
            if targets.p99_ms is not None:
                meets = meets and p99_high is not None and p99_high <= targets.p99_ms
            if targets.throughput_sps is not None:
                meets = meets and tput_low is not None and tput_low >= targets.throughput_sps
        rows.append(CostRow(key, rule.pattern, price, per.mean * factor, ci, p99.mean if p99 else None, p99_high,
                            tput.mean if tput else None, tput_low, meets))
    rows.sort(key=lambda r: (r.key.app, r.cost_per_1000))
    return rows


@dataclasses.dataclass
class CheapestChoice:
    app: str
    targets: Targets
    row: CostRow | None
    considered: int
    reason: str
    cache: str = "warm"

    def to_dict(self) -> dict:
        return {"app": self.app, "cache": self.cache, "targets": dataclasses.asdict(self.targets),
                "choice": self.row.to_dict() if self.row else None, "considered": self.considered,
                "reason": self.reason}


def row_caches(rows: list[CostRow], app: str) -> list[str]:
    """The page-cache states of ``app``'s rows, warm first (``["warm"]`` when it has none)."""
    present = {r.key.cache for r in rows if r.key.app == app}
    return [c for c in ("warm", "cold") if c in present] or ["warm"]


def cheapest(rows: list[CostRow], app: str, targets: Targets, currency: str = "USD",
             cache: str | None = None) -> CheapestChoice:
    """The cheapest priced deployment of ``app`` that meets ``targets`` (all of them when no target is set).

    Deployments are compared within one page-cache state: ``cache``, by default warm (cold when ``app`` has only
    cold-cache rows)."""
    cache = cache or row_caches(rows, app)[0]
    mine = [r for r in rows if r.key.app == app and r.key.cache == cache]
    if not mine:
        return CheapestChoice(app, targets, None, 0, "no priced E2E scenario", cache)
    ok = [r for r in mine if r.meets_target is not False]
    if not ok:
        return CheapestChoice(app, targets, None, len(mine),
                              f"none of the {len(mine)} priced deployments meets {targets.describe()}"
                              + _cold_words(cache), cache)
    best = min(ok, key=lambda r: r.cost_per_1000)
    where = best.key.deployment + (f" on host type {best.key.host_type}" if best.key.host_type else "")
    reason = (f"{where} at {currency} {best.cost_per_1000:.4g} per 1,000 inferences "
              f"({currency} {best.price_per_hour:.4g}/h) is the cheapest of {len(ok)} deployments meeting "
              f"{targets.describe()}" + _cold_words(cache))
    return CheapestChoice(app, targets, best, len(mine), reason, cache)


def _cold_words(cache: str) -> str:
    return "" if cache == "warm" else f" (measured with a {cache} page cache)"


def cost_notes(rows: list[CostRow], prices: PriceTable) -> dict[str, str]:
    """One sentence per app for the GPU best practice: cheapest CPU vs cheapest GPU deployment."""
    notes = {}
    for app in sorted({r.key.app for r in rows}):
        cache = row_caches(rows, app)[0]          # the state recommend judges the app on
        mine = [r for r in rows if r.key.app == app and r.key.cache == cache and r.meets_target is not False]
        cpu = [r for r in mine if r.key.device == "CPU"]
        gpu = [r for r in mine if r.key.device == "GPU"]
        if cpu and gpu:
            c, g = min(cpu, key=lambda r: r.cost_per_1000), min(gpu, key=lambda r: r.cost_per_1000)
            cheaper = "CPU" if c.cost_per_1000 <= g.cost_per_1000 else "GPU"
            notes[app] = (f"Cost: cheapest CPU {c.key.deployment} {prices.currency} {c.cost_per_1000:.4g} vs cheapest GPU "
                          f"{g.key.deployment} {prices.currency} {g.cost_per_1000:.4g} per 1,000 inferences — "
                          f"{cheaper} is cheaper.")
    return notes
