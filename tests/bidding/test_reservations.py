"""Awards become reservations along the bid's site split; settlements get each site's share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from vpp.v1 import common_pb2, market_pb2

from bidding import planner
from bidding.offers import SiteBattery
from bidding.reservations import holdings_from, reserve, with_site_shares
from vpp_common.markets import load_catalog

CATALOG = load_catalog()
SR2 = CATALOG.product("jp-eprx", "SR2")


def bid_and_award(site_kw: dict[str, float], awarded_kw: float, direction=common_pb2.DIRECTION_DOWN):
    bid = market_pb2.Bid(bid_id="b", product="SR2", direction=direction, capacity_kw=sum(site_kw.values()))
    for k, v in site_kw.items():
        bid.site_kw[k] = v
    award = market_pb2.Award(
        award_id="a", bid_id="b", product="SR2", direction=direction, awarded_kw=awarded_kw, portfolio_id="jp-kanto"
    )
    award.interval_start.FromSeconds(1_800_000_000)
    award.interval_end.FromSeconds(1_800_001_800)
    return bid, award


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(0.1, 100), min_size=1), st.floats(0, 1))
def test_reservations_sum_to_the_award_along_the_bid_split(site_kw: dict[str, float], share: float) -> None:
    bid, award = bid_and_award(site_kw, share * sum(site_kw.values()))
    rs = reserve(award, bid, SR2, 0.95)
    assert sum(r.reserved_kw for r in rs.reservations) == pytest.approx(award.awarded_kw)
    for r in rs.reservations:
        assert r.reserved_kw == pytest.approx(site_kw[r.site_id] * share)
        assert r.energy_kwh == pytest.approx(r.reserved_kw * SR2.sustain_s / 3600 * 0.95)  # down: room to take in


def test_held_reservations_enter_the_next_plan() -> None:
    bid, award = bid_and_award({"school-01": 20.0}, 20.0)
    rs = reserve(award, bid, SR2, 0.95)
    held = holdings_from(
        rs.reservations,
        ["school-01"],
        slot_start_s=1_800_000_000 - 900,
        slot_s=900,
        n_slots=8,
        sustain_s={"SR2": SR2.sustain_s},
        efficiency=0.95,
    )
    assert held.power_kw[common_pb2.DIRECTION_DOWN][0].tolist() == [0, 20, 20, 0, 0, 0, 0, 0]


def test_site_shares_follow_reserved_kw_for_capacity_and_delivery_for_energy_and_penalty() -> None:
    s = market_pb2.Settlement(settlement_id="s", portfolio_id="jp-kanto", currency="JPY")
    s.lines.add(award_id="a", capacity_revenue=6.0, energy_revenue=5.0, penalty=2.0, net_revenue=9.0)
    reserved = {"a": {"school-01": 1.0, "factory-01": 2.0}}
    by_reserved = with_site_shares(s, reserved)
    assert {x.site_id: x.revenue for x in by_reserved.lines[0].site_shares} == pytest.approx(
        {"school-01": 3.0, "factory-01": 6.0}
    )
    # school-01 reserved but delivered nothing: it keeps its capacity share, factory-01 earns the energy
    # and carries the penalty it made good on
    shared = with_site_shares(s, reserved, {"a": {"school-01": 0.0, "factory-01": 3.0}})
    assert {x.site_id: x.revenue for x in shared.lines[0].site_shares} == pytest.approx(
        {"school-01": 2.0, "factory-01": 7.0}
    )


@given(
    st.dictionaries(st.sampled_from("abcd"), st.floats(0, 50), min_size=1),
    st.dictionaries(st.sampled_from("abcde"), st.floats(-50, 50)),
    st.floats(0, 100),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_site_shares_always_sum_to_the_line_net(reserved, delivered, capacity, energy, penalty) -> None:
    s = market_pb2.Settlement(settlement_id="s")
    s.lines.add(
        award_id="a",
        capacity_revenue=capacity,
        energy_revenue=energy,
        penalty=penalty,
        net_revenue=capacity + energy - penalty,
    )
    shares = with_site_shares(s, {"a": reserved}, {"a": delivered}).lines[0].site_shares
    if sum(reserved.values()) > 0 or any(delivered.values()):
        assert sum(x.revenue for x in shares) == pytest.approx(capacity + energy - penalty, abs=1e-6)


def test_a_plan_from_forecast_quantiles_covers_every_product_of_the_portfolio() -> None:
    portfolio = CATALOG.portfolio("jp-kanto")
    market = CATALOG.market(portfolio.market_id)
    now_s = 1_800_000_000
    slots = (now_s // 900 + 1) * 900 + 900 * np.arange(portfolio.horizon_h * 4)
    levels = [0.05, 0.5, 0.95]

    def frame(center: float) -> pd.DataFrame:
        return pd.DataFrame({q: center * (0.5 + q) for q in levels}, index=slots)

    sites = [
        planner.SiteInputs(SiteBattery(s, 20.0, 0.0, 40.0, 10.0, 10.0), frame(2.0), frame(3.0)) for s in portfolio.sites
    ]
    plan = planner.plan(portfolio, market, sites, [], now_s=now_s, cfg=planner.SamplingConfig(n_samples=100))
    assert {line.product_id for line in plan.lines} == set(portfolio.products)
    assert all(0 <= line.offer_kw <= 2 * 2 * 10.0 + 1e-9 for line in plan.lines)  # 2 sites, rating + baseline
    assert plan.sites_used == portfolio.sites
