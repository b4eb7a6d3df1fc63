"""Awards become reservations: the awarded kW held per site along the bid's site split, and those
holdings fed back into later offers. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vpp.v1 import common_pb2, market_pb2

from bidding.offers import BOTH, Holdings
from vpp_common.markets import Product


def reserve(
    award: market_pb2.Award, bid: market_pb2.Bid, product: Product, efficiency: float
) -> market_pb2.ReservationSet:
    """Split ``award.awarded_kw`` over the bid's sites pro rata to the bid's split (each site holds the
    share it offered, scaled down when the market took part of the bid)."""
    out = market_pb2.ReservationSet(award_id=award.award_id, portfolio_id=award.portfolio_id)
    total_kw = sum(bid.site_kw.values())
    if award.awarded_kw <= 0:
        return out
    if total_kw <= 0:
        out.unplaced_kw = award.awarded_kw
        return out
    sustain_h = product.sustain_s / 3600.0
    for site_id in sorted(bid.site_kw):
        kw = award.awarded_kw * bid.site_kw[site_id] / total_kw
        if kw <= 0:
            continue
        # the energy that sustains it: given out (up), room to take in (down), both for a symmetric product
        out_kwh, in_kwh = kw * sustain_h / efficiency, kw * sustain_h * efficiency
        energy_kwh = {common_pb2.DIRECTION_UP: out_kwh, common_pb2.DIRECTION_DOWN: in_kwh}.get(
            award.direction, out_kwh + in_kwh
        )
        r = market_pb2.Reservation(
            award_id=award.award_id,
            portfolio_id=award.portfolio_id,
            product=award.product,
            direction=award.direction,
            site_id=site_id,
            reserved_kw=kw,
            energy_kwh=energy_kwh,
        )
        r.interval_start.CopyFrom(award.interval_start)
        r.interval_end.CopyFrom(award.interval_end)
        out.reservations.append(r)
    return out


def holdings_from(
    reservations: Iterable[market_pb2.Reservation],
    site_ids: Sequence[str],
    *,
    slot_start_s: int,
    slot_s: int,
    n_slots: int,
    sustain_s: dict[str, int],
    efficiency: float,
) -> Holdings:
    """What the reservations hold at each site and slot of an offer horizon (``sustain_s``: per product)."""
    index = {site_id: i for i, site_id in enumerate(site_ids)}
    held = Holdings(len(site_ids), n_slots)
    for r in reservations:
        i = index.get(r.site_id)
        if i is None or r.reserved_kw <= 0:
            continue
        first = max(0, (r.interval_start.seconds - slot_start_s) // slot_s)
        last = min(n_slots, -(-(r.interval_end.seconds - slot_start_s) // slot_s))
        if last <= first:
            continue
        direction = BOTH if r.direction == common_pb2.DIRECTION_UNSPECIFIED else r.direction
        held.add(i, slice(first, last), direction, r.reserved_kw, sustain_s.get(r.product, slot_s) / 3600.0, efficiency)
    return held


def with_site_shares(
    settlement: market_pb2.Settlement,
    reserved_kw: dict[str, dict[str, float]],
    delivered: dict[str, dict[str, float]] | None = None,
) -> market_pb2.Settlement:
    """The market settles the portfolio; each site gets its share of every line: the capacity revenue
    pro rata to the kW it held for the award (``reserved_kw``: award -> site -> kW), the energy revenue
    and the penalty pro rata to what it delivered for the award (``delivered``: award -> site -> |kW|
    summed over dispatch's steps, from its run states), or to its reserved kW when nothing was measured.
    A site that reserved and did not deliver so carries the penalty. Shares sum to the line's net."""
    out = market_pb2.Settlement()
    out.CopyFrom(settlement)
    for line in out.lines:
        held = reserved_kw.get(line.award_id, {})
        measured = (delivered or {}).get(line.award_id, {})
        sites = sorted(set(held) | set(measured))
        cap_w = _weights(held, sites)
        energy_w = _weights(measured, sites) or cap_w
        cap_w = cap_w or energy_w
        del line.site_shares[:]
        for site_id in sites:
            revenue = line.capacity_revenue * cap_w.get(site_id, 0.0) + (
                line.energy_revenue - line.penalty
            ) * energy_w.get(site_id, 0.0)
            line.site_shares.append(
                market_pb2.SettlementShare(
                    site_id=site_id,
                    reserved_kw=held.get(site_id, 0.0),
                    delivered_kwh=line.delivered_kwh * energy_w.get(site_id, 0.0),
                    revenue=revenue,
                )
            )
    return out


def _weights(values: dict[str, float], sites: list[str]) -> dict[str, float]:
    """``values`` normalised to sum to 1 over ``sites`` (empty when they sum to 0)."""
    total = sum(abs(values.get(s, 0.0)) for s in sites)
    return {s: abs(values.get(s, 0.0)) / total for s in sites} if total > 0 else {}
