from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpp_common.flexibility import BatteryState, allocate_proportional, battery_flexibility


def state(**kw: float) -> BatteryState:
    base = dict(
        site_id="s",
        online=True,
        battery_power_kw=0.0,
        soc_pct=50.0,
        capacity_kwh=10.0,
        max_charge_kw=5.0,
        max_discharge_kw=5.0,
        soc_min_pct=10.0,
        soc_max_pct=90.0,
    )
    base.update(kw)
    return BatteryState(**base)  # type: ignore[arg-type]


def test_power_limited_by_inverter_for_short_interval() -> None:
    flex = battery_flexibility(state(), interval_h=0.25, efficiency=1.0)
    assert flex.up_kw == pytest.approx(5.0)
    assert flex.down_kw == pytest.approx(5.0)
    assert flex.energy_up_kwh == pytest.approx(4.0)
    assert flex.energy_down_kwh == pytest.approx(4.0)


def test_power_limited_by_energy_for_long_interval() -> None:
    flex = battery_flexibility(state(soc_pct=20.0), interval_h=2.0, efficiency=1.0)
    assert flex.up_kw == pytest.approx(0.5)  # 1 kWh above the reserve over 2 h


def test_relative_to_current_operating_point() -> None:
    flex = battery_flexibility(state(battery_power_kw=2.0), interval_h=0.25, efficiency=1.0)
    assert flex.up_kw == pytest.approx(3.0)
    assert flex.down_kw == pytest.approx(7.0)


def test_offline_site_offers_nothing() -> None:
    flex = battery_flexibility(state(online=False), interval_h=0.25)
    assert (flex.up_kw, flex.down_kw, flex.energy_up_kwh) == (0.0, 0.0, 0.0)


def test_at_reserve_no_up_flexibility() -> None:
    flex = battery_flexibility(state(soc_pct=10.0), interval_h=0.25)
    assert flex.up_kw == 0.0
    assert flex.down_kw > 0.0


@given(
    soc=st.floats(0, 100),
    power=st.floats(-10, 10),
    interval_h=st.floats(0.01, 4),
    eff=st.floats(0.5, 1.0),
)
def test_flexibility_never_negative_nor_beyond_inverter(
    soc: float, power: float, interval_h: float, eff: float
) -> None:
    s = state(soc_pct=soc, battery_power_kw=power)
    flex = battery_flexibility(s, interval_h, eff)
    assert flex.up_kw >= 0 and flex.down_kw >= 0
    assert flex.max_up_abs_kw <= s.max_discharge_kw + 1e-9
    assert flex.max_down_abs_kw <= s.max_charge_kw + 1e-9
    # the offered up power can be held for the whole interval
    assert flex.max_up_abs_kw * interval_h <= flex.energy_up_kwh + 1e-9


caps_st = st.dictionaries(st.sampled_from(list("abcdefgh")), st.floats(0, 100), min_size=1)


@given(request=st.floats(-500, 500), caps=caps_st)
def test_allocation_respects_caps_and_conserves(request: float, caps: dict[str, float]) -> None:
    alloc = allocate_proportional(request, caps)
    assert set(alloc.per_site_kw) == set(caps)
    for site, share in alloc.per_site_kw.items():
        assert abs(share) <= caps[site] + 1e-9
        assert share == 0 or (share > 0) == (request > 0)
    total = sum(alloc.per_site_kw.values()) + alloc.unallocated_kw
    assert total == pytest.approx(request, abs=1e-6)
    assert abs(sum(alloc.per_site_kw.values())) == pytest.approx(min(abs(request), sum(caps.values())), abs=1e-6)


def test_allocation_is_proportional_to_headroom() -> None:
    alloc = allocate_proportional(6.0, {"a": 10.0, "b": 5.0, "c": 0.0})
    assert alloc.per_site_kw == pytest.approx({"a": 4.0, "b": 2.0, "c": 0.0})
    assert alloc.unallocated_kw == 0.0


def test_allocation_reports_shortfall() -> None:
    alloc = allocate_proportional(-20.0, {"a": 10.0, "b": 5.0})
    assert alloc.per_site_kw == pytest.approx({"a": -10.0, "b": -5.0})
    assert alloc.unallocated_kw == pytest.approx(-5.0)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=6),
        st.tuples(st.integers(0, 7), st.floats(0, 500)),
        min_size=1,
        max_size=40,
    ),
    st.floats(-5000, 5000),
)
def test_splitting_by_partition_then_by_site_is_the_same_as_one_split(
    sites: dict[str, tuple[int, float]], request_kw: float
) -> None:
    """Dispatch's planner splits each step over partitions (by their summed headroom), the owner of each
    partition over its sites: proportional allocation is separable, so that is the fleet-wide split."""
    whole = allocate_proportional(request_kw, {s: cap for s, (_, cap) in sites.items()})
    partitions: dict[int, dict[str, float]] = {}
    for site, (partition, cap) in sites.items():
        partitions.setdefault(partition, {})[site] = cap
    plan = allocate_proportional(request_kw, {p: sum(caps.values()) for p, caps in partitions.items()})
    assert plan.unallocated_kw == pytest.approx(whole.unallocated_kw, abs=1e-6)
    for partition, caps in partitions.items():
        share = allocate_proportional(plan.per_site_kw[partition], caps)
        assert share.unallocated_kw == pytest.approx(0.0, abs=1e-6)
        for site, kw in share.per_site_kw.items():
            assert kw == pytest.approx(whole.per_site_kw[site], rel=1e-9, abs=1e-6)
