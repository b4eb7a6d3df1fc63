from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vpp.v1 import common_pb2, flexibility_pb2

from bidding.bids import BidPolicy, bid_size_kw, build_bids

POLICY = BidPolicy(safety_margin=0.2, min_bid_kw=1.0, increment_kw=0.5)


@pytest.mark.parametrize(
    ("available_kw", "expected_kw"),
    [(0.0, 0.0), (1.0, 0.0), (1.25, 1.0), (10.0, 8.0), (10.4, 8.0), (10.7, 8.5), (-3.0, 0.0)],
)
def test_bid_size_table(available_kw: float, expected_kw: float) -> None:
    assert bid_size_kw(available_kw, POLICY) == pytest.approx(expected_kw)


@given(st.floats(0, 1e5), st.floats(0, 0.9), st.floats(0.1, 10), st.floats(0.1, 50))
def test_bid_never_exceeds_margin_reduced_flexibility(avail: float, margin: float, inc: float, min_kw: float) -> None:
    policy = BidPolicy(margin, min_kw, inc)
    size = bid_size_kw(avail, policy)
    assert size == 0 or size >= min_kw
    assert size <= avail * (1 - margin) + 1e-6


def test_build_bids_one_per_direction_with_interval() -> None:
    flex = flexibility_pb2.PortfolioFlexibility(portfolio_id="p", up_kw=100.0, down_kw=0.4)
    bids = build_bids(
        flex,
        product="aFRR",
        interval_start_ns=900 * 10**9,
        interval_minutes=15,
        capacity_price_eur_per_mw=12.0,
        policy=POLICY,
    )
    assert len(bids) == 1
    assert bids[0].direction == common_pb2.DIRECTION_UP
    assert bids[0].capacity_kw == pytest.approx(80.0)
    assert bids[0].interval_end.ToNanoseconds() - bids[0].interval_start.ToNanoseconds() == 900 * 10**9
