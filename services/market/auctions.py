"""The simulator's order book: which auction a bid belongs to, whether its gate is still open, and
which bids each auction holds. Pure; the servicer drives it and publishes what it decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from vpp.v1 import common_pb2, market_pb2

from vpp_common.markets import Catalog, Product


@dataclass(frozen=True, order=True)
class AuctionKey:
    market_id: str
    product: str
    direction: int  # DIRECTION_UNSPECIFIED for a symmetric product's one auction
    block_start_s: int


@dataclass
class Auction:
    key: AuctionKey
    block_end_s: int
    gate_closure_s: float
    bids: dict[str, market_pb2.Bid] = field(default_factory=dict)
    cleared: bool = False
    awards: list[market_pb2.Award] = field(default_factory=list)
    clearing_price_per_mw_h: float = 0.0
    demand_kw: float = 0.0
    accepted_kw: float = 0.0


def check_bid(bid: market_pb2.Bid, catalog: Catalog) -> tuple[AuctionKey, Product]:
    """The auction ``bid`` belongs to; ValueError naming the field when the market could not take it."""
    if not bid.bid_id:
        raise ValueError("bid.bid_id: required")
    portfolio = catalog.portfolios.get(bid.portfolio_id)
    if portfolio is None:
        raise ValueError(f"bid.portfolio_id: unknown portfolio {bid.portfolio_id!r}")
    if bid.market_id != portfolio.market_id:
        raise ValueError(f"bid.market_id: {bid.market_id!r} is not the portfolio's market {portfolio.market_id!r}")
    market = catalog.market(bid.market_id)
    if bid.currency != market.currency:
        raise ValueError(f"bid.currency: {bid.currency!r}, the market settles in {market.currency}")
    try:
        product = market.product(bid.product)
    except KeyError as exc:
        raise ValueError(f"bid.product: {exc.args[0]}") from None
    if product.symmetric and bid.direction != common_pb2.DIRECTION_UNSPECIFIED:
        raise ValueError(f"bid.direction: {product.product_id} is symmetric: one bid covers both directions")
    if not product.symmetric and bid.direction == common_pb2.DIRECTION_UNSPECIFIED:
        raise ValueError(f"bid.direction: required for {product.product_id}")
    start_s = bid.interval_start.seconds
    blocks = product.blocks(datetime.fromtimestamp(start_s, UTC), datetime.fromtimestamp(start_s + 1, UTC))
    if not blocks or int(blocks[0].timestamp()) != start_s:
        raise ValueError(f"bid.interval_start: not the start of a {product.product_id} block")
    min_kw = portfolio.min_bid_kw(product)
    if not bid.capacity_kw >= min_kw - 1e-9:
        raise ValueError(f"bid.capacity_kw: {bid.capacity_kw} is below the minimum of {min_kw} kW")
    steps = bid.capacity_kw / portfolio.increment_kw(product)
    if abs(steps - round(steps)) > 1e-6:
        raise ValueError(f"bid.capacity_kw: not a multiple of the {portfolio.increment_kw(product)} kW increment")
    if not bid.capacity_price_per_mw_h >= 0:
        raise ValueError("bid.capacity_price_per_mw_h: must be >= 0")
    return AuctionKey(bid.market_id, bid.product, int(bid.direction), start_s), product


def rejected(bid: market_pb2.Bid, award_id: str, reason: str) -> market_pb2.Award:
    """The market's answer to a bid it did not take into an auction."""
    award = market_pb2.Award(
        award_id=award_id,
        bid_id=bid.bid_id,
        product=bid.product,
        direction=bid.direction,
        awarded_kw=0.0,
        portfolio_id=bid.portfolio_id,
        market_id=bid.market_id,
        currency=bid.currency,
        reason=reason,
    )
    award.interval_start.CopyFrom(bid.interval_start)
    award.interval_end.CopyFrom(bid.interval_end)
    return award


def why_not(award: market_pb2.Award, bid: market_pb2.Bid) -> str:
    """The reason an auction gives a bid it did not fully award."""
    if award.awarded_kw >= bid.capacity_kw - 1e-9:
        return ""
    if bid.capacity_price_per_mw_h > award.clearing_price_per_mw_h:
        return f"priced {bid.capacity_price_per_mw_h:.2f} above the clearing price {award.clearing_price_per_mw_h:.2f}"
    if award.awarded_kw > 0:
        return "partly awarded: marginal bid, demand met"
    return "not awarded at the clearing price (demand met by cheaper or earlier offers, or indivisible)"
