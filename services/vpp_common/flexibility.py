"""Battery flexibility maths shared by aggregation (portfolio offers) and dispatch (per-site headroom).

Pure functions, no I/O. Sign convention: battery power > 0 discharges ("up"), < 0 charges ("down").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass(frozen=True)
class BatteryState:
    site_id: str
    online: bool
    battery_power_kw: float
    soc_pct: float
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    soc_min_pct: float
    soc_max_pct: float


@dataclass(frozen=True)
class Flexibility:
    up_kw: float
    down_kw: float
    energy_up_kwh: float
    energy_down_kwh: float
    max_up_abs_kw: float    # highest discharge power sustainable over the interval
    max_down_abs_kw: float  # highest charge power (magnitude) sustainable over the interval


def battery_flexibility(state: BatteryState, interval_h: float, efficiency: float = 0.95) -> Flexibility:
    """Power the battery can add in each direction, relative to what it does now, for ``interval_h``.

    Energy is what lies between the SoC and the agent's reserve/ceiling, through the one-way
    efficiency; power is capped by the inverter and by that energy spread over the interval, so an
    offer can be held for the whole market interval.
    """
    if not state.online or interval_h <= 0 or state.capacity_kwh <= 0:
        return Flexibility(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    soc = min(max(state.soc_pct, 0.0), 100.0)
    energy_up_kwh = max(0.0, (soc - state.soc_min_pct) / 100.0 * state.capacity_kwh) * efficiency
    energy_down_kwh = max(0.0, (state.soc_max_pct - soc) / 100.0 * state.capacity_kwh) / efficiency
    max_up_abs_kw = max(0.0, min(state.max_discharge_kw, energy_up_kwh / interval_h))
    max_down_abs_kw = max(0.0, min(state.max_charge_kw, energy_down_kwh / interval_h))
    up_kw = max(0.0, max_up_abs_kw - state.battery_power_kw)
    down_kw = max(0.0, max_down_abs_kw + state.battery_power_kw)
    return Flexibility(up_kw, down_kw, energy_up_kwh, energy_down_kwh, max_up_abs_kw, max_down_abs_kw)


@dataclass(frozen=True)
class Allocation(Generic[K]):
    per_site_kw: dict[K, float]  # per site (or per partition: the split is the same at every level)
    unallocated_kw: float  # part of the request no site could take (> 0 means the portfolio is short)


def allocate_proportional(request_kw: float, capacity_kw: dict[K, float]) -> Allocation[K]:
    """Split a request over sites in proportion to each site's headroom in that direction.

    ``capacity_kw`` holds non-negative headroom magnitudes for the request's direction. Shares are
    proportional to headroom, so no site is pushed past its own headroom while the portfolio has
    room; beyond the total, every site is at its headroom and the rest is reported unallocated.
    """
    caps = {site: max(0.0, cap) for site, cap in capacity_kw.items()}
    total_kw = sum(caps.values())
    magnitude_kw = abs(request_kw)
    sign = 1.0 if request_kw >= 0 else -1.0
    if magnitude_kw == 0.0 or total_kw == 0.0:
        return Allocation({site: 0.0 for site in caps}, magnitude_kw * sign)
    served_kw = min(magnitude_kw, total_kw)
    ratio = served_kw / total_kw
    shares = {site: sign * min(cap, cap * ratio) for site, cap in caps.items()}
    return Allocation(shares, sign * (magnitude_kw - served_kw))


def battery_flexibility_intervals(
    state: BatteryState, intervals_h: tuple[float, ...], efficiency: float = 0.95
) -> tuple[float, float, list[tuple[float, float]]]:
    """``battery_flexibility`` for several intervals at once: (energy_up_kwh, energy_down_kwh,
    [(up_kw, down_kw) per interval]). Same formulas, computed once per sample for every interval
    aggregation maintains totals for."""
    if not state.online or state.capacity_kwh <= 0:
        return 0.0, 0.0, [(0.0, 0.0)] * len(intervals_h)
    soc = min(max(state.soc_pct, 0.0), 100.0)
    energy_up_kwh = max(0.0, (soc - state.soc_min_pct) / 100.0 * state.capacity_kwh) * efficiency
    energy_down_kwh = max(0.0, (state.soc_max_pct - soc) / 100.0 * state.capacity_kwh) / efficiency
    power_kw = state.battery_power_kw
    out = []
    for interval_h in intervals_h:
        if interval_h <= 0:
            out.append((0.0, 0.0))
            continue
        max_up_abs_kw = max(0.0, min(state.max_discharge_kw, energy_up_kwh / interval_h))
        max_down_abs_kw = max(0.0, min(state.max_charge_kw, energy_down_kwh / interval_h))
        out.append((max(0.0, max_up_abs_kw - power_kw), max(0.0, max_down_abs_kw + power_kw)))
    return energy_up_kwh, energy_down_kwh, out
