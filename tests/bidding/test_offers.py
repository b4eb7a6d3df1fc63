"""Offers from joint samples: never negative, never more than the parts, monotone in confidence, no kW
sold twice across products or overlapping blocks, and energy-limited when the battery is nearly empty."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidding.offers import BOTH, DOWN, UP, Holdings, ProductSlots, SiteBattery, baseline_paths, headroom_kw, plan_offers

SLOT_S = 900
T0 = 1_700_000_400 - 1_700_000_400 % 3600


def battery(site_id: str, rating_kw: float, capacity_kwh: float, soc: float) -> SiteBattery:
    return SiteBattery(
        site_id,
        energy_kwh=capacity_kwh * soc,
        min_energy_kwh=0.1 * capacity_kwh,
        max_energy_kwh=0.95 * capacity_kwh,
        max_charge_kw=rating_kw,
        max_discharge_kw=rating_kw,
    )


def afrr(n_blocks: int) -> ProductSlots:
    return ProductSlots("aFRR", (UP, DOWN), False, 900, tuple(T0 + i * 900 for i in range(n_blocks)), 900)


def fcr(n_blocks: int) -> ProductSlots:
    return ProductSlots("FCR", (UP, DOWN), True, 1800, tuple(T0 + i * 14400 for i in range(n_blocks)), 14400)


sites_st = st.lists(st.tuples(st.floats(1.0, 50.0), st.floats(2.0, 200.0), st.floats(0.0, 1.0)), min_size=1, max_size=5)


def fleet_and_samples(spec: list[tuple[float, float, float]], seed: int, n_slots: int = 32, n_samples: int = 64):
    rng = np.random.default_rng(seed)
    batteries = [battery(f"s{i}", r, c, soc) for i, (r, c, soc) in enumerate(spec)]
    # net load: a daily shape plus a per-sample persistent error plus noise, in kW of the site's size
    shape = np.sin(np.linspace(0, 2 * np.pi, n_slots))[None, :, None]
    scale = np.array([r for r, _, _ in spec])[:, None, None]
    net = scale * (0.5 * shape + 0.3 * rng.standard_normal((len(spec), 1, n_samples)))
    net = net + 0.1 * scale * rng.standard_normal((len(spec), n_slots, n_samples))
    return batteries, net


@settings(max_examples=40, deadline=None)
@given(spec=sites_st, seed=st.integers(0, 10_000), confidence=st.floats(0.5, 0.99))
def test_offers_are_never_negative_and_never_more_than_the_parts(spec, seed, confidence) -> None:
    batteries, net = fleet_and_samples(spec, seed)
    lines = plan_offers(batteries, net, slot_start_s=T0, slot_s=SLOT_S, products=[afrr(8)], confidence=confidence)
    power, energy = baseline_paths(batteries, net, SLOT_S / 3600)
    for line in lines:
        assert line.offer_kw >= 0.0
        assert sum(line.site_kw.values()) == pytest.approx(line.offer_kw, abs=1e-9)
        assert all(v >= 0 for v in line.site_kw.values())
        rating = sum(b.max_discharge_kw if line.direction == UP else b.max_charge_kw for b in batteries)
        # never more than the sum of the parts: each site's best sample, let alone its rating (+ the
        # baseline it can reverse)
        first = (line.block_start_s - T0) // SLOT_S
        h, _ = headroom_kw(batteries, power, energy, line.direction, 1, SLOT_S / 3600, Holdings(len(batteries), 32))
        best = h[:, first, :].max(axis=1).sum()
        assert line.offer_kw <= best + 1e-9
        assert line.offer_kw <= 2 * rating + 1e-9


@settings(max_examples=40, deadline=None)
@given(spec=sites_st, seed=st.integers(0, 10_000), low=st.floats(0.5, 0.98), delta=st.floats(0.001, 0.2))
def test_offers_are_monotone_in_confidence(spec, seed, low, delta) -> None:
    high = min(0.999, low + delta)
    batteries, net = fleet_and_samples(spec, seed)
    a = plan_offers(batteries, net, slot_start_s=T0, slot_s=SLOT_S, products=[afrr(8)], confidence=low)
    b = plan_offers(batteries, net, slot_start_s=T0, slot_s=SLOT_S, products=[afrr(8)], confidence=high)
    for x, y in zip(a, b, strict=True):
        assert (x.product_id, x.direction, x.block_start_s) == (y.product_id, y.direction, y.block_start_s)
        assert y.offer_kw <= x.offer_kw + 1e-9


@settings(max_examples=30, deadline=None)
@given(spec=sites_st, seed=st.integers(0, 10_000), confidence=st.floats(0.5, 0.99))
def test_no_kw_is_sold_twice_across_products_and_overlapping_blocks(spec, seed, confidence) -> None:
    batteries, net = fleet_and_samples(spec, seed)
    holdings = Holdings(len(batteries), 32)
    plan_offers(
        batteries,
        net,
        slot_start_s=T0,
        slot_s=SLOT_S,
        products=[afrr(32), fcr(2)],
        confidence=confidence,
        holdings=holdings,
    )
    power, energy = baseline_paths(batteries, net, SLOT_S / 3600)
    for d in (UP, DOWN):
        _, by_power = headroom_kw(batteries, power, energy, d, 1, SLOT_S / 3600, Holdings(len(batteries), 32))
        # what every product holds at a site and slot fits the site's power headroom in its median sample
        assert np.all(holdings.power_kw[d] <= np.median(by_power, axis=2) + 1e-6)
    for i, b in enumerate(batteries):
        # the energy held for up and down at once never exceeds what the battery can move
        assert np.all(holdings.energy_kwh[UP][i] <= (b.max_energy_kwh - b.min_energy_kwh) / b.efficiency + 1e-6)
        assert np.all(holdings.energy_kwh[DOWN][i] <= (b.max_energy_kwh - b.min_energy_kwh) + 1e-6)


def test_a_second_product_gets_only_what_the_first_left() -> None:
    batteries = [battery("a", 10.0, 100.0, 0.5), battery("b", 10.0, 100.0, 0.5)]
    net = np.zeros((2, 16, 8))  # no load, no PV: the full rating is free both ways
    alone = plan_offers(batteries, net, slot_start_s=T0, slot_s=SLOT_S, products=[afrr(16)], confidence=0.9)
    both = plan_offers(batteries, net, slot_start_s=T0, slot_s=SLOT_S, products=[afrr(16), fcr(1)], confidence=0.9)
    assert all(o.offer_kw == pytest.approx(20.0) for o in alone)
    fcr_line = next(o for o in both if o.product_id == "FCR")
    assert fcr_line.direction == BOTH and fcr_line.offer_kw == pytest.approx(20.0)  # the longer block first
    assert all(o.offer_kw == pytest.approx(0.0) for o in both if o.product_id == "aFRR")


def test_awards_already_held_shrink_later_offers() -> None:
    batteries = [battery("a", 10.0, 100.0, 0.5)]
    net = np.zeros((1, 16, 8))
    holdings = Holdings(1, 16)
    holdings.add(0, slice(4, 8), UP, 6.0, 0.25, 0.95)  # an award holds 6 kW up in slots 4-7
    lines = plan_offers(
        batteries, net, slot_start_s=T0, slot_s=SLOT_S, products=[afrr(16)], confidence=0.9, holdings=holdings
    )
    up = {o.block_start_s: o for o in lines if o.direction == UP}
    assert up[T0 + 5 * 900].offer_kw == pytest.approx(4.0) and up[T0 + 5 * 900].reserved_kw == pytest.approx(6.0)
    assert up[T0].offer_kw == pytest.approx(10.0) and up[T0].reserved_kw == 0.0


def test_a_nearly_empty_battery_is_energy_limited_not_power_limited() -> None:
    b = battery("a", 50.0, 20.0, 0.2)  # 2 kWh above its floor: 50 kW for 15 min would need 13 kWh
    net = np.zeros((1, 8, 4))
    (up, down) = sorted(
        plan_offers([b], net, slot_start_s=T0, slot_s=SLOT_S, products=[afrr(1)], confidence=0.9),
        key=lambda o: o.direction,
    )
    assert up.direction == UP and up.energy_limited
    assert up.offer_kw == pytest.approx(2.0 * 0.95 / 0.25)  # the energy sustains 7.6 kW for 15 min
    assert down.offer_kw == pytest.approx(50.0) and not down.energy_limited


def test_forecast_uncertainty_lowers_the_offer_at_high_confidence() -> None:
    """A site whose PV may or may not charge the battery: a 95 % offer covers the bad samples."""
    b = battery("a", 10.0, 10.0, 0.15)
    rng = np.random.default_rng(1)
    surplus = rng.uniform(0.0, 8.0, size=(1, 1, 400)) * np.ones((1, 16, 1))  # PV surplus, persistent per sample
    lines = plan_offers([b], -surplus, slot_start_s=T0, slot_s=SLOT_S, products=[afrr(16)], confidence=0.95)
    late_up = next(o for o in lines if o.direction == UP and o.block_start_s == T0 + 12 * 900)
    assert late_up.offer_kw < late_up.p50_kw  # the sunny samples fill the battery, the dull ones do not
