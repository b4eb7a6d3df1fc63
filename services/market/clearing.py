"""Merit-order clearing of one auction: one block of one product in one direction (a symmetric product
such as FCR is one auction for both directions).

The TSO buys ``demand_kw`` of capacity. Every offer -- the portfolio's bids and the competitors' supply
steps -- is sorted by capacity price and accepted, cheapest first, until the demand is met.

Rules (chosen for the simulator, and pinned by the property tests):

* **Ties**: at the same price the competitors' offers come before ours (conservative: a portfolio never
  wins a tie it might lose on a real market). Competitors among themselves are ordered by size, smaller
  first, our bids by ``bid_id`` then by their position: the result does not depend on input order.
* **Divisibility**: the offer that meets the demand (the marginal offer) is accepted in part when it is
  divisible. Competitors' steps are divisible when the product is (``divisible``); one of our bids only
  when the product is divisible *and* the bid says so (``Bid.divisible``: "the market may accept part of
  it"). An indivisible offer that would overshoot the remaining demand is skipped, and the pass goes on:
  a dearer offer that still fits may be accepted after it. So no offer is ever accepted beyond the
  demand, and a skipped indivisible bid may be cheaper than the clearing price.
* **Clearing price**: the price of the last (dearest) accepted offer; 0 when nothing is accepted.
* **Payment**: ``pay_as_bid`` pays each award its own price, ``pay_as_cleared`` pays every award the
  clearing price (rejected awards carry the same price field; they are paid nothing as they hold 0 kW).

Raising one of our bids' price never increases what that bid is awarded: it only moves the bid later in
the order, where at most the same demand is left (the tests check this).

Units: capacity in kW, prices in the market's currency per MW per hour of the block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from vpp.v1 import market_pb2

Pricing = Literal["pay_as_bid", "pay_as_cleared"]
PRICINGS: tuple[Pricing, ...] = ("pay_as_bid", "pay_as_cleared")


@dataclass(frozen=True)
class SupplyStep:
    """A competitor's capacity offer: ``kw`` at ``price_per_mw_h`` (currency per MW per hour)."""

    price_per_mw_h: float
    kw: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.price_per_mw_h) or not math.isfinite(self.kw) or self.kw < 0:
            raise ValueError(f"supply step needs a finite price and kw >= 0, got {self}")


@dataclass(frozen=True)
class ClearingResult:
    """One award per bid, in the bids' order, and the auction's outcome."""

    awards: list[market_pb2.Award]
    clearing_price_per_mw_h: float
    demand_kw: float
    accepted_kw: float  # ours and the competitors' together: <= demand_kw


@dataclass(frozen=True)
class _Offer:
    price_per_mw_h: float
    kw: float
    partial_ok: bool
    bid_index: int | None  # position in `bids`; None for a competitor's step
    sort_key: tuple[float, int, float, str, int]


def clear(
    bids: Sequence[market_pb2.Bid],
    competitors: Sequence[SupplyStep],
    demand_kw: float,
    *,
    pricing: Pricing,
    divisible: bool,
    award_id: Callable[[market_pb2.Bid], str],
) -> ClearingResult:
    """Clear one auction by merit order (rules in the module docstring); deterministic.

    ``bids`` must all be for the same product, direction, block and market (one auction); ``divisible``
    is the product's rule (may the market accept part of an offer); ``award_id`` names each bid's award.
    """
    if pricing not in PRICINGS:
        raise ValueError(f"pricing must be one of {PRICINGS}, got {pricing!r}")
    if not math.isfinite(demand_kw) or demand_kw < 0:
        raise ValueError(f"demand_kw must be finite and >= 0, got {demand_kw}")
    _check_one_auction(bids)

    offers: list[_Offer] = []
    for i, step in enumerate(competitors):
        key = (step.price_per_mw_h, 0, step.kw, "", i)
        offers.append(_Offer(step.price_per_mw_h, step.kw, divisible, None, key))
    for i, bid in enumerate(bids):
        if not math.isfinite(bid.capacity_price_per_mw_h) or not math.isfinite(bid.capacity_kw) or bid.capacity_kw < 0:
            raise ValueError(f"bid {bid.bid_id!r}: capacity_kw must be finite and >= 0 and the price finite")
        key = (bid.capacity_price_per_mw_h, 1, 0.0, bid.bid_id, i)
        offers.append(_Offer(bid.capacity_price_per_mw_h, bid.capacity_kw, divisible and bid.divisible, i, key))
    offers.sort(key=lambda o: o.sort_key)

    # A relative slack so that float sums (0.1 + 0.2 kW against 0.3 kW of demand) do not make an exact
    # fit look like an overshoot.
    eps_kw = 1e-9 * max(1.0, demand_kw)
    remaining_kw = demand_kw
    taken_kw: list[float] = []
    awarded_kw = [0.0] * len(bids)
    clearing_price = 0.0
    for offer in offers:
        if remaining_kw <= eps_kw:
            break
        if offer.kw <= 0:
            continue
        if offer.kw <= remaining_kw + eps_kw:
            take_kw = offer.kw
        elif offer.partial_ok:
            take_kw = remaining_kw
        else:
            continue  # indivisible and too big for what is left: skipped, a later offer may fit
        remaining_kw = max(0.0, remaining_kw - take_kw)
        taken_kw.append(take_kw)
        clearing_price = offer.price_per_mw_h
        if offer.bid_index is not None:
            awarded_kw[offer.bid_index] = take_kw

    awards = [
        _award(
            bid,
            award_id(bid),
            awarded_kw[i],
            bid.capacity_price_per_mw_h if pricing == "pay_as_bid" else clearing_price,
            clearing_price,
        )
        for i, bid in enumerate(bids)
    ]
    return ClearingResult(awards, clearing_price, demand_kw, min(demand_kw, math.fsum(taken_kw)))


def _check_one_auction(bids: Sequence[market_pb2.Bid]) -> None:
    """Bids of different products, directions, blocks or markets cannot meet in one merit order."""
    if not bids:
        return

    def auction(b: market_pb2.Bid) -> tuple[str, int, int, int, str]:
        return (
            b.product,
            b.direction,
            b.interval_start.ToNanoseconds(),
            b.interval_end.ToNanoseconds(),
            b.market_id,
        )

    first = auction(bids[0])
    for bid in bids[1:]:
        if auction(bid) != first:
            raise ValueError(
                f"bid {bid.bid_id!r} is for another auction than bid {bids[0].bid_id!r}: "
                "one clearing takes one product, direction, block and market"
            )


def _award(
    bid: market_pb2.Bid, award_id: str, awarded_kw: float, paid_per_mw_h: float, clearing_per_mw_h: float
) -> market_pb2.Award:
    award = market_pb2.Award(
        award_id=award_id,
        bid_id=bid.bid_id,
        product=bid.product,
        direction=bid.direction,
        awarded_kw=awarded_kw,
        capacity_price_per_mw_h=paid_per_mw_h,
        portfolio_id=bid.portfolio_id,
        market_id=bid.market_id,
        currency=bid.currency,
        energy_price_per_mwh=bid.energy_price_per_mwh,
        clearing_price_per_mw_h=clearing_per_mw_h,
    )
    if bid.HasField("interval_start"):
        award.interval_start.CopyFrom(bid.interval_start)
    if bid.HasField("interval_end"):
        award.interval_end.CopyFrom(bid.interval_end)
    return award
