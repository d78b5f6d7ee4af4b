"""The cost of the statistics on the ``show`` path: ``e2ebench.tdist`` (standard library) against scipy.

Three numbers, each for both implementations:

* 1,000 ``stats.paired_log_ratio`` calls on realistic pairs (3-30 rounds, log-normal run times): the same function,
  once with :mod:`e2ebench.tdist` and once with a stand-in module whose ``t_ppf``/``norm_ppf``/``ttest_1samp_p`` call
  ``scipy.stats`` (what ``stats`` did before); the quantile cache is cleared before every block so both pay for it;
* 1,000 ``t_ppf(0.975, dof)`` calls with distinct fractional dof (Welch-Satterthwaite's, not cached);
* a fresh interpreter's time to import ``e2ebench.stats`` and make one comparison, without and with ``scipy.stats``
  (which the old code imported at the first comparison).

Blocks alternate (tdist first in even rounds, scipy first in odd ones) so that drift on a shared host hits both
alike; printed are the medians over the rounds.

    .venv/bin/python benchmarks/tdist_speed.py [--rounds 5] [--imports 7]

This measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import subprocess
import sys
import time
import types

from e2ebench import stats, tdist


def _scipy_tdist() -> types.SimpleNamespace:
    """``tdist``'s functions as scipy computes them."""
    from scipy import stats as scipy_stats

    def ttest_1samp_p(values):
        values = list(values)
        centre, sd = stats.mean(values), stats.stdev(values)
        if sd <= 1e-12 * max(1.0, abs(centre)):
            return 1.0 if abs(centre) <= 1e-12 else 0.0
        return float(scipy_stats.ttest_1samp(values, 0.0).pvalue)

    return types.SimpleNamespace(t_ppf=lambda q, dof: float(scipy_stats.t.ppf(q, dof)),
                                 norm_ppf=lambda q: float(scipy_stats.norm.ppf(q)), ttest_1samp_p=ttest_1samp_p)


def _pairs(count: int, rng: random.Random) -> list[tuple[list[float], list[float]]]:
    pairs = []
    for _ in range(count):
        n = rng.randint(3, 30)
        base = [rng.lognormvariate(0.0, 0.05) for _ in range(n)]
        pairs.append(([b * rng.lognormvariate(0.02, 0.03) for b in base], base))
    return pairs


def _time_paired(module, pairs) -> float:
    stats.tdist = module
    stats._t_ppf.cache_clear()
    start = time.perf_counter()
    for subject, baseline in pairs:
        stats.paired_log_ratio(subject, baseline)
    elapsed = time.perf_counter() - start
    stats.tdist = tdist
    return elapsed


def _time_ppf(ppf, dofs) -> float:
    start = time.perf_counter()
    for dof in dofs:
        ppf(0.975, dof)
    return time.perf_counter() - start


def _import_seconds(with_scipy: bool) -> float:
    code = ("import time; t = time.perf_counter(); import e2ebench.stats as s"
            + ("; import scipy.stats" if with_scipy else "")
            + "; s.paired_log_ratio([1.0, 1.1, 1.05], [1.0, 1.0, 1.02]); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--imports", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(1)
    pairs = _pairs(1000, rng)
    dofs = [rng.uniform(2.0, 60.0) for _ in range(1000)]
    scipy_module = _scipy_tdist()
    from scipy import stats as scipy_stats

    def scipy_ppf(q, dof):
        return float(scipy_stats.t.ppf(q, dof))

    # the two give the same answers (to ~1e-12) before they are timed
    for subject, baseline in pairs[:50]:
        a = stats.paired_log_ratio(subject, baseline)
        stats.tdist = scipy_module
        b = stats.paired_log_ratio(subject, baseline)
        stats.tdist = tdist
        assert math.isclose(a.p_value, b.p_value, rel_tol=1e-9) and math.isclose(a.ratio_ci[1], b.ratio_ci[1])
    times: dict[str, list[float]] = {k: [] for k in ("paired tdist", "paired scipy", "ppf tdist", "ppf scipy",
                                                     "import", "import+scipy")}
    for r in range(args.rounds):
        order = (("tdist", tdist), ("scipy", scipy_module)) if r % 2 == 0 else (("scipy", scipy_module),
                                                                              ("tdist", tdist))
        for name, module in order:
            times[f"paired {name}"].append(_time_paired(module, pairs))
        for name, ppf in ((n, tdist.t_ppf if n == "tdist" else scipy_ppf) for n, _ in order):
            times[f"ppf {name}"].append(_time_ppf(ppf, dofs))
    for i in range(args.imports):
        for with_scipy in ((False, True) if i % 2 == 0 else (True, False)):
            times["import+scipy" if with_scipy else "import"].append(_import_seconds(with_scipy))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"1,000 paired_log_ratio calls: tdist {med['paired tdist'] * 1e3:.1f} ms, "
          f"scipy {med['paired scipy'] * 1e3:.1f} ms  (x{med['paired scipy'] / med['paired tdist']:.1f})")
    print(f"1,000 t_ppf(0.975, fractional dof): tdist {med['ppf tdist'] * 1e3:.1f} ms, "
          f"scipy {med['ppf scipy'] * 1e3:.1f} ms  (x{med['ppf scipy'] / med['ppf tdist']:.1f})")
    print(f"fresh process, import e2ebench.stats + one comparison: {med['import'] * 1e3:.0f} ms; "
          f"with scipy.stats (as before): {med['import+scipy'] * 1e3:.0f} ms")
    print(f"(medians of {args.rounds} alternated rounds and {args.imports} process starts each)")


if __name__ == "__main__":
    main()
