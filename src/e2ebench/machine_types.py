"""Machine types side by side: a study run on a fleet of more than one host type (``e2ebench study --cluster``).

The analysis keeps every host type its own scenario (:attr:`e2ebench.analysis.ScenarioKey.host_type`: runs of
different machines are never pooled); this module lines them up — one row per scenario without its host type, one
column per host type with the mean E2E time, its 95% CI and n — for ``e2ebench recommend`` and ``e2ebench report``.
With a price table (``--prices``, :mod:`e2ebench.cost`, ``[host_types]``) the cheapest host type and deployment that
meets the table's targets is :func:`e2ebench.cost.cheapest` over rows that carry their host type.
No Ray here: it reads the store only.
"""

from __future__ import annotations

from e2ebench.analysis import ScenarioKey, ScenarioStats, summary_dict


def host_types(scenarios: dict[ScenarioKey, ScenarioStats]) -> list[str]:
    """The host types a study's scenarios were measured on (runs without one, the local host, are left out)."""
    return sorted({k.host_type for k in scenarios if k.host_type})


def side_by_side(scenarios: dict[ScenarioKey, ScenarioStats]) -> list[dict]:
    """One row per scenario measured on a fleet host type: ``{"scenario", "app", "deployment", "emulated",
    "by_host_type": {host type: E2E summary (mean, CI, n)}}``, in the analysis's scenario order."""
    rows: dict[ScenarioKey, dict] = {}
    for key in sorted(scenarios, key=lambda k: k.sort_key()):
        if not key.host_type:
            continue
        plain = key.with_(host_type=None)
        row = rows.setdefault(plain, {"scenario": plain.scenario, "app": key.app, "deployment": key.deployment,
                                      "emulated": key.emulated, "by_host_type": {}})
        row["by_host_type"][key.host_type] = summary_dict(scenarios[key].e2e_s)
    return list(rows.values())


def machine_type_section(scenarios: dict[ScenarioKey, ScenarioStats], cost_rows=None, prices=None) -> dict | None:
    """What recommend and report show when a study has more than one host type (None otherwise): the host types,
    the side-by-side rows and, with prices, the cheapest host type and deployment per app."""
    types = host_types(scenarios)
    if len(types) < 2:
        return None
    section = {"host_types": types, "rows": side_by_side(scenarios), "cheapest": []}
    if cost_rows is not None and prices is not None:
        from e2ebench.cost import cheapest

        typed = [r for r in cost_rows if r.key.host_type]
        for app in sorted({r.key.app for r in typed}):
            section["cheapest"].append(cheapest(typed, app, prices.targets, prices.currency).to_dict())
    return section
