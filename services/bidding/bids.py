"""Bid sizing: a pure function from portfolio flexibility to capacity bids."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from vpp.v1 import common_pb2, flexibility_pb2, market_pb2


@dataclass(frozen=True)
class BidPolicy:
    safety_margin: float
    min_bid_kw: float
    increment_kw: float


def bid_size_kw(available_kw: float, policy: BidPolicy) -> float:
    """Largest multiple of the increment within the margin-reduced flexibility, or 0 below the minimum."""
    offered_kw = max(0.0, available_kw) * (1.0 - policy.safety_margin)
    size_kw = math.floor(offered_kw / policy.increment_kw + 1e-9) * policy.increment_kw
    return size_kw if size_kw >= policy.min_bid_kw else 0.0


def build_bids(
    flex: flexibility_pb2.PortfolioFlexibility,
    *,
    product: str,
    interval_start_ns: int,
    interval_minutes: int,
    capacity_price_eur_per_mw: float,
    policy: BidPolicy,
) -> list[market_pb2.Bid]:
    bids = []
    for direction, available_kw in (
        (common_pb2.DIRECTION_UP, flex.up_kw),
        (common_pb2.DIRECTION_DOWN, flex.down_kw),
    ):
        size_kw = bid_size_kw(available_kw, policy)
        if size_kw <= 0:
            continue
        bid = market_pb2.Bid(
            bid_id=f"bid-{uuid.uuid4().hex[:12]}",
            product=product,
            direction=direction,
            capacity_kw=size_kw,
            capacity_price_eur_per_mw=capacity_price_eur_per_mw,
            portfolio_id=flex.portfolio_id,
        )
        bid.interval_start.FromNanoseconds(interval_start_ns)
        bid.interval_end.FromNanoseconds(interval_start_ns + interval_minutes * 60 * 1_000_000_000)
        bids.append(bid)
    return bids
