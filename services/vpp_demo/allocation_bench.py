"""How fast the dispatch allocator is, and how close to HiGHS, on realistic fleets of 1k to 100k sites.

``python -m vpp_demo.allocation_bench`` prints a table; ``run_allocation_bench`` returns the rows for a
harness. Every instance is checked twice: against HiGHS's objective (relative gap) and by the KKT
conditions of the allocator's own answer, which needs no reference and so also covers fleets HiGHS
cannot solve in reasonable time (its active-set QP solver grows ~n^3: ~1 s at 1,000 sites, 10 s at
2,000; with highspy-extras HiGHS uses its interior-point QP solver HiPO instead, ~1.5 s at 100,000).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dispatch.allocation import (
    HIGHS_ACTIVE_SET_MAX_SITES,
    AllocationProblem,
    AllocationResult,
    allocate,
    make_problem,
    solve_with_highs,
)

SUSTAIN_H = 0.25  # an offset is only offered if the battery can hold it for a 15-minute product
OBJ_FLOOR = 1e-6  # relative gaps are taken against max(|f_highs|, this): see tests/unit/test_allocation.py
ACTIVE_SET_MAX_SITES = 2_000  # above this HiGHS's active-set QP solver takes minutes: skipped by default


def make_instance(sites: int, rng: np.random.Generator) -> AllocationProblem:
    """One step of a realistic fleet: 95 % homes of 3-10 kW, 5 % commercial sites of 50-500 kW.

    SoC varies 5-98 %; bounds are the power headroom around each site's own baseline, cut to what its
    energy can sustain for SUSTAIN_H; 2 % of sites have dropped out (pinned at 0 while their last
    offset was not), 1 % hold their offset locally (pinned at it). The previous step's offsets are
    about half of each site's headroom in the activation's direction, the target 60 % of the fleet's
    headroom in that direction (up or down at random).
    """
    big = rng.random(sites) < 0.05
    rating_kw = np.where(big, rng.uniform(50, 500, sites), rng.uniform(3, 10, sites))
    capacity_kwh = rating_kw * np.where(big, rng.uniform(1, 2, sites), rng.uniform(1.5, 3, sites))
    soc = rng.uniform(0.05, 0.98, sites)
    energy_up_kwh = capacity_kwh * np.clip(soc - 0.05, 0, None)
    energy_down_kwh = capacity_kwh * np.clip(0.95 - soc, 0, None)
    baseline_kw = rating_kw * rng.uniform(-0.3, 0.3, sites)
    hi_kw = np.minimum(rating_kw - baseline_kw, energy_up_kwh / SUSTAIN_H)
    lo_kw = -np.minimum(rating_kw + baseline_kw, energy_down_kwh / SUSTAIN_H)
    up = bool(rng.random() < 0.5)
    headroom_kw = hi_kw if up else lo_kw
    previous_kw = np.clip(rng.normal(0.5, 0.2, sites) * headroom_kw, lo_kw, hi_kw)
    previous_kw[rng.random(sites) < 0.1] = 0.0  # joined since the last step
    held = rng.random(sites) < 0.01
    lo_kw[held] = hi_kw[held] = previous_kw[held]
    dropped = rng.random(sites) < 0.02
    lo_kw[dropped] = hi_kw[dropped] = 0.0
    target_kw = 0.6 * float(headroom_kw.sum())
    return make_problem(
        target_kw,
        lo_kw,
        hi_kw,
        energy_up_kwh=energy_up_kwh,
        energy_down_kwh=energy_down_kwh,
        previous_kw=previous_kw,
    )


def kkt_violation(problem: AllocationProblem, result: AllocationResult) -> float:
    """Largest breach of the optimality conditions, relative to the gradients' scale (0 = optimal):
    f_i'(x_i) = lam inside the bounds, >= lam at the floor, <= lam at the ceiling."""
    x, lam = result.offsets_kw, result.multiplier
    a = problem.balance_weight + problem.wear_weight + problem.churn_weight
    b = 2 * (problem.balance_weight * problem.preferred_kw + problem.churn_weight * problem.previous_kw)
    grad = 2 * a * x - b
    free = (x > problem.lo_kw) & (x < problem.hi_kw)
    movable = problem.lo_kw < problem.hi_kw
    breach = np.concatenate(
        (
            np.abs(grad[free] - lam),
            np.maximum(lam - grad[movable & (x == problem.lo_kw)], 0),
            np.maximum(grad[movable & (x == problem.hi_kw)] - lam, 0),
        )
    )
    scale = max(1.0, abs(lam), float(np.abs(grad).max(initial=0.0)))
    return float(breach.max(initial=0.0)) / scale


def highs_has_interior_point() -> bool:
    """True when the installed highspy offers HiPO (highspy-extras), which solve_with_highs then uses."""
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return bool(h.setOptionValue("solver", "hipo") == highspy.HighsStatus.kOk)


def run_allocation_bench(
    sizes: Sequence[int] = (1_000, 10_000, 100_000),
    instances: int = 5,
    seed: int = 0,
    highs: bool = True,
    progress: Callable[[str], Any] = print,
    *,
    runs: int = 20,
    highs_max_sites: int | None = None,
) -> list[dict[str, Any]]:
    """Per size: median allocate() time (median of ``runs`` timed calls after 2 warm-up calls, then the
    median over instances), median HiGHS time over instances, the largest relative objective gap to
    HiGHS and the largest KKT violation. Rows: {"sites", "ours_ms", "highs_ms", "max_rel_gap",
    "max_kkt_violation", "highs_solver"}; the HiGHS figures are NaN where HiGHS was not run (floats, so a
    harness formatting them with :.1f / :.1e still works).

    highs_max_sites: skip HiGHS above this many sites; None = no limit with HiPO, else
    ACTIVE_SET_MAX_SITES.
    """
    solver = ""
    if highs:
        solver = "hipo" if highs_has_interior_point() else "active-set"
        if highs_max_sites is None:
            highs_max_sites = None if solver == "hipo" else ACTIVE_SET_MAX_SITES
    rows: list[dict[str, Any]] = []
    for sites in sizes:
        rng = np.random.default_rng([seed, sites])
        used = "active-set" if solver == "hipo" and sites <= HIGHS_ACTIVE_SET_MAX_SITES else solver
        with_highs = highs and (highs_max_sites is None or sites <= highs_max_sites)
        if highs and not with_highs:
            progress(
                f"allocation bench: {sites} sites: HiGHS skipped (its {solver} QP solver would take minutes;"
                " install highspy-extras for HiPO, or pass highs_max_sites)"
            )
        ours_ms: list[float] = []
        deadband_ms: list[float] = []
        highs_ms: list[float] = []
        gaps: list[float] = []
        kkt: list[float] = []
        for k in range(instances):
            problem = make_instance(sites, rng)
            allocate(problem)
            allocate(problem)
            times_ms = []
            result = None
            for _ in range(runs):
                t0 = time.perf_counter()
                result = allocate(problem)
                times_ms.append((time.perf_counter() - t0) * 1e3)
            assert result is not None
            ours_ms.append(statistics.median(times_ms))
            # The same step as dispatch runs it: with the 0.05 kW command deadband (a heuristic re-solve on
            # top of the exact one; not part of the HiGHS comparison).
            banded = dataclasses.replace(problem, deadband_kw=0.05)
            banded_times_ms = []
            for _ in range(max(3, runs // 4)):
                t0 = time.perf_counter()
                allocate(banded)
                banded_times_ms.append((time.perf_counter() - t0) * 1e3)
            deadband_ms.append(statistics.median(banded_times_ms))
            kkt.append(kkt_violation(problem, result))
            line = f"allocation bench: {sites} sites, instance {k + 1}/{instances}: ours {ours_ms[-1]:.2f} ms"
            if with_highs:
                t0 = time.perf_counter()
                _, f_highs = solve_with_highs(problem)
                highs_ms.append((time.perf_counter() - t0) * 1e3)
                signed_gap = (result.objective - f_highs) / max(abs(f_highs), OBJ_FLOOR)  # > 0: HiGHS found better
                gaps.append(abs(signed_gap))
                line += f", HiGHS ({used}) {highs_ms[-1]:.0f} ms, (ours - HiGHS) / HiGHS {signed_gap:+.1e}"
            progress(line + f", KKT {kkt[-1]:.1e}")
        rows.append(
            {
                "sites": sites,
                "ours_ms": round(statistics.median(ours_ms), 3),
                "ours_with_deadband_ms": round(statistics.median(deadband_ms), 3),
                "highs_ms": round(statistics.median(highs_ms), 1) if highs_ms else math.nan,
                "max_rel_gap": max(gaps) if gaps else math.nan,
                "max_kkt_violation": max(kkt),
                "highs_solver": used if highs_ms else None,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def num(value: float, spec: str) -> str:
        return "-" if math.isnan(value) else format(value, spec)

    lines = [
        "| sites | allocate() ms | HiGHS ms | HiGHS solver | max rel gap | max KKT violation |",
        "|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sites']:,} | {r['ours_ms']:.2f} | {num(r['highs_ms'], ',.0f')} | {r['highs_solver'] or '-'} "
            f"| {num(r['max_rel_gap'], '.1e')} | {r['max_kkt_violation']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-highs", action="store_true")
    parser.add_argument("--highs-max-sites", type=int, default=None)
    args = parser.parse_args()
    rows = run_allocation_bench(
        args.sizes,
        args.instances,
        args.seed,
        highs=not args.no_highs,
        runs=args.runs,
        highs_max_sites=args.highs_max_sites,
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
