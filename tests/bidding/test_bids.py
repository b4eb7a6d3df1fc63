"""Bids from offers: sizes on the product's grid, never above the offer, only for blocks whose gate is
open, priced by the given rule, and the site split scaled to the bid."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vpp.v1 import common_pb2

from bidding.bids import Priced, bid_size_kw, build_bids, gate_closure_s
from bidding.offers import OfferLine
from vpp_common.markets import load_catalog

CATALOG = load_catalog()
PORTFOLIO = CATALOG.portfolio("eu-north")
MARKET = CATALOG.market(PORTFOLIO.market_id)


@pytest.mark.parametrize(
    ("offer_kw", "expected_kw"),
    [(0.0, 0.0), (0.9, 0.0), (1.0, 1.0), (7.99, 7.0), (-3.0, 0.0), (1e6, 1e6)],
)
def test_bid_size_table(offer_kw: float, expected_kw: float) -> None:
    assert bid_size_kw(offer_kw, min_kw=1.0, increment_kw=1.0) == pytest.approx(expected_kw)


@given(st.floats(0, 1e5), st.floats(0.1, 10), st.floats(0.1, 50), st.one_of(st.none(), st.floats(1, 1e4)))
def test_a_bid_is_on_the_grid_and_never_above_the_offer(offer: float, inc: float, min_kw: float, max_kw) -> None:
    size = bid_size_kw(offer, min_kw=min_kw, increment_kw=inc, max_kw=max_kw)
    assert size == 0 or size >= min_kw - 1e-9
    assert size <= offer + 1e-6
    assert max_kw is None or size <= max_kw + 1e-6
    assert abs(size / inc - round(size / inc)) < 1e-6


def line(product: str, start: datetime, offer_kw: float, direction=common_pb2.DIRECTION_UP) -> OfferLine:
    block_s = MARKET.product(product).block_s
    start_s = int(start.timestamp())
    return OfferLine(product, direction, start_s, start_s + block_s, offer_kw, offer_kw * 1.2, 0.0, False,
                     {"home-01": offer_kw * 0.25, "farm-01": offer_kw * 0.75})


def test_only_blocks_whose_gate_is_open_are_bid_with_the_split_scaled() -> None:
    tomorrow = datetime(2026, 6, 3, 0, 0, tzinfo=UTC)  # a block 00:00 UTC = 02:00 Berlin ... of aFRR
    lines = [line("aFRR", tomorrow.replace(hour=2), 7.6), line("aFRR", tomorrow.replace(hour=6), 0.4)]
    gate = gate_closure_s(MARKET.product("aFRR"), lines[0].block_start_s)
    assert datetime.fromtimestamp(gate, UTC) < tomorrow  # aFRR capacity closes the day before
    ids = iter(["b1", "b2", "b3"])
    bids, past = build_bids(lines, portfolio=PORTFOLIO, market=MARKET, now_s=gate - 60, confidence=0.95,
                            price=lambda p, o: Priced(12.5, 10.0), bid_id=lambda: next(ids))
    assert past == 0 and len(bids) == 1  # 0.4 kW is below the demo minimum of 1 kW
    bid = bids[0]
    assert bid.capacity_kw == pytest.approx(7.0) and bid.capacity_price_per_mw_h == 12.5
    assert bid.opportunity_cost_per_mw_h == 10.0 and bid.currency == "EUR" and bid.market_id == "entsoe"
    assert sum(bid.site_kw.values()) == pytest.approx(7.0)
    assert bid.site_kw["farm-01"] == pytest.approx(0.75 * 7.0)
    assert bid.gate_closure.seconds == int(gate)
    late, past = build_bids(lines, portfolio=PORTFOLIO, market=MARKET, now_s=gate + 1, confidence=0.95,
                            price=lambda p, o: Priced(12.5, 10.0), bid_id=lambda: "x")
    assert late == [] and past == 2
