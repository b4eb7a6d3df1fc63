"""Bids from offers: sized to the product's minimum and increment, priced from opportunity cost plus
the portfolio's margin, only for blocks whose gate is still open. Pure."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from vpp.v1 import common_pb2, market_pb2

from bidding.offers import OfferLine
from vpp_common.markets import Market, Portfolio, Product

_SLACK = 1e-9


def bid_size_kw(offer_kw: float, *, min_kw: float, increment_kw: float, max_kw: float | None = None) -> float:
    """The largest multiple of the increment within the offer (and the product's maximum), or 0 below
    the minimum: a bid the portfolio cannot deliver at its confidence is never placed."""
    size_kw = math.floor(max(0.0, offer_kw) / increment_kw + _SLACK) * increment_kw
    if max_kw is not None:
        size_kw = min(size_kw, math.floor(max_kw / increment_kw + _SLACK) * increment_kw)
    return size_kw if size_kw >= min_kw - _SLACK else 0.0


@dataclass(frozen=True)
class Priced:
    price_per_mw_h: float
    opportunity_cost_per_mw_h: float
    energy_price_per_mwh: float = 0.0  # for products with energy bids


def build_bids(
    lines: Sequence[OfferLine],
    *,
    portfolio: Portfolio,
    market: Market,
    now_s: float,
    confidence: float,
    price: Callable[[Product, OfferLine], Priced],
    bid_id: Callable[[], str],
    products: Sequence[str] = (),
    block_start_s: int | None = None,
) -> tuple[list[market_pb2.Bid], int]:
    """Bids for the offers whose block's gate closes after ``now_s``; returns them and how many offer
    blocks were already past their gate. ``products``/``block_start_s`` narrow the selection."""
    bids: list[market_pb2.Bid] = []
    past_gate: set[tuple[str, int]] = set()
    for line in lines:
        if products and line.product_id not in products:
            continue
        if block_start_s is not None and line.block_start_s != block_start_s:
            continue
        product = market.product(line.product_id)
        gate_s = gate_closure_s(product, line.block_start_s)
        if gate_s <= now_s:
            past_gate.add((line.product_id, line.block_start_s))
            continue
        size_kw = bid_size_kw(
            line.offer_kw,
            min_kw=portfolio.min_bid_kw(product),
            increment_kw=portfolio.increment_kw(product),
            max_kw=product.max_bid_kw,
        )
        if size_kw <= 0:
            continue
        priced = price(product, line)
        bid = market_pb2.Bid(
            bid_id=bid_id(),
            product=line.product_id,
            direction=line.direction,
            capacity_kw=size_kw,
            capacity_price_per_mw_h=priced.price_per_mw_h,
            portfolio_id=portfolio.portfolio_id,
            market_id=market.market_id,
            currency=market.currency,
            confidence=confidence,
            opportunity_cost_per_mw_h=priced.opportunity_cost_per_mw_h,
            energy_price_per_mwh=priced.energy_price_per_mwh if product.energy_bids else 0.0,
            divisible=product.divisible,
        )
        bid.interval_start.FromSeconds(line.block_start_s)
        bid.interval_end.FromSeconds(line.block_end_s)
        bid.gate_closure.FromSeconds(int(gate_s))
        scale = size_kw / line.offer_kw if line.offer_kw > 0 else 0.0
        for site_id, kw in line.site_kw.items():
            bid.site_kw[site_id] = kw * scale
        bids.append(bid)
    return bids, len(past_gate)


def gate_closure_s(product: Product, block_start_s: int) -> float:
    """Epoch seconds when the block's capacity gate closes."""
    return product.gate_closure_at(datetime.fromtimestamp(block_start_s, UTC)).timestamp()


def direction_name(direction: int) -> str:
    """The direction as pricing and logs spell it: up, down, or both (a symmetric product)."""
    if direction == common_pb2.DIRECTION_UP:
        return "up"
    return "down" if direction == common_pb2.DIRECTION_DOWN else "both"
