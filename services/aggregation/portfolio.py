"""Portfolio flexibility from site states: a pure function (the tests drive it directly)."""

from __future__ import annotations

from collections.abc import Iterable

from vpp.v1 import flexibility_pb2

from vpp_common.flexibility import BatteryState, battery_flexibility


def portfolio_flexibility(
    states: Iterable[BatteryState], *, interval_minutes: int, efficiency: float, portfolio_id: str
) -> flexibility_pb2.PortfolioFlexibility:
    interval_h = interval_minutes / 60.0
    out = flexibility_pb2.PortfolioFlexibility(portfolio_id=portfolio_id)
    for state in sorted(states, key=lambda s: s.site_id):
        flex = battery_flexibility(state, interval_h, efficiency)
        out.sites.add(
            site_id=state.site_id,
            online=state.online,
            up_kw=flex.up_kw,
            down_kw=flex.down_kw,
            energy_up_kwh=flex.energy_up_kwh,
            energy_down_kwh=flex.energy_down_kwh,
            soc_pct=state.soc_pct,
            battery_power_kw=state.battery_power_kw,
            max_discharge_kw=state.max_discharge_kw,
            max_charge_kw=state.max_charge_kw,
        )
        out.sites_total += 1
        if state.online:
            out.sites_online += 1
            out.up_kw += flex.up_kw
            out.down_kw += flex.down_kw
            out.energy_up_kwh += flex.energy_up_kwh
            out.energy_down_kwh += flex.energy_down_kwh
    return out
