"""Settlement of an award from the meter-based delivery record: what the TSO pays per market time unit
(MTU), and each site's share of it. Pure functions, no I/O.

Per MTU of the award's block (the last one is shorter when ``mtu_s`` does not divide the block):

* **capacity revenue** = awarded MW x ``capacity_price_per_mw_h`` x MTU hours: paid for availability,
  whether the award was activated or not.
* **requested / delivered energy**: the delivery steps integrated over the part of each step inside the
  MTU (a step across an MTU boundary is split by time). ``requested_kwh`` and ``delivered_kwh`` on the
  line are signed net sums (up > 0).
* **useful energy**, per step: what was delivered in the requested direction, capped at the request
  (over-delivery is not paid, delivery the wrong way counts as none). **energy revenue** = useful MWh x
  ``energy_price_per_mwh``, for *both* directions: in this simulator the TSO pays the provider for down
  energy (the portfolio absorbs it) at the same price. Real markets settle down energy by the bid's
  sign convention (a provider may pay for it); here the award has one unsigned energy price.
* **shortfall** = gross ``|requested|`` energy - useful energy (>= 0, summed per step so a request that
  changes sign within the MTU, as aFRR and FCR do, is judged step by step). **under-delivered** when
  something was requested and the shortfall exceeds ``tolerance_pct`` of it; then
  **penalty** = ``capacity_clawback_factor`` x capacity revenue x shortfall / |requested|
  + shortfall MWh x ``undelivered_energy_price_per_mwh``, else 0.
* **net** = capacity + energy - penalty.

Time compression: a block can be delivered faster than real time (``duration`` wall seconds standing
for the whole block). ``DeliveryStep.at_s`` and ``step_s`` are wall seconds since delivery began;
``time_scale`` (block seconds per wall second) maps them onto the block, so a step covers
``step_s * time_scale`` block seconds and its energy is ``kW * step_s * time_scale / 3600`` kWh.

Site shares: the capacity revenue is split pro rata to the sites' reserved kW, the energy revenue and the
penalty pro rata to ``|site_delivered_kwh|`` (over the whole award: the same weights in every MTU; the
reserved kW when it is missing or all 0). The shares sum to ``net_revenue`` up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import timestamp_pb2
from vpp.v1 import market_pb2

_NS = 1_000_000_000


@dataclass(frozen=True)
class DeliveryStep:
    """One step of dispatch's tracking record (meter-based): kW held for ``step_s`` from ``at_s``.

    ``at_s``: wall seconds since the block's delivery began; powers relative to the baseline, > 0 up.
    """

    at_s: float
    requested_kw: float
    delivered_kw: float
    step_s: float


@dataclass(frozen=True)
class PenaltyRule:
    """A product's delivery rule: tolerated shortfall (% of the requested energy) and what a larger one costs."""

    tolerance_pct: float
    capacity_clawback_factor: float  # share of the capacity revenue forfeited per share of energy missed
    undelivered_energy_price_per_mwh: float  # charged per MWh missed, in the award's currency

    def __post_init__(self) -> None:
        for name in ("tolerance_pct", "capacity_clawback_factor", "undelivered_energy_price_per_mwh"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"PenaltyRule.{name} must be finite and >= 0, got {value}")


@dataclass
class _MtuEnergy:
    requested_kwh: float = 0.0  # signed
    delivered_kwh: float = 0.0  # signed
    gross_requested_kwh: float = 0.0  # sum of |requested|
    useful_kwh: float = 0.0  # delivered in the requested direction, capped at the request


def settle_award(
    award: market_pb2.Award,
    steps: Sequence[DeliveryStep],
    *,
    mtu_s: int,
    penalty: PenaltyRule,
    reservations: Mapping[str, float],
    site_delivered_kwh: Mapping[str, float] | None = None,
    time_scale: float = 1.0,
) -> list[market_pb2.SettlementLine]:
    """One settlement line per MTU of the award's block (rules in the module docstring).

    ``reservations``: site_id -> reserved kW of this award; ``site_delivered_kwh``: site_id -> energy the
    site delivered for it (weights of the energy shares). Steps outside the block are ignored.
    """
    if mtu_s <= 0:
        raise ValueError(f"mtu_s must be > 0, got {mtu_s}")
    if not math.isfinite(time_scale) or time_scale <= 0:
        raise ValueError(f"time_scale must be finite and > 0, got {time_scale}")
    start_ns = award.interval_start.ToNanoseconds()
    block_ns = award.interval_end.ToNanoseconds() - start_ns
    if block_ns <= 0:
        raise ValueError(f"award {award.award_id!r}: interval_end must be after interval_start")
    if any(not math.isfinite(kw) or kw < 0 for kw in reservations.values()):
        raise ValueError(f"award {award.award_id!r}: reserved kW must be finite and >= 0")
    block_s = block_ns / _NS
    mtu_ns = mtu_s * _NS
    n_mtu = -(-block_ns // mtu_ns)
    energies = [_MtuEnergy() for _ in range(n_mtu)]
    for step in steps:
        _add_step(energies, step, mtu_s=mtu_s, block_s=block_s, time_scale=time_scale)

    cap_w, energy_w = _share_weights(reservations, site_delivered_kwh)
    lines: list[market_pb2.SettlementLine] = []
    for k, e in enumerate(energies):
        mtu_start_ns = start_ns + k * mtu_ns
        mtu_end_ns = min(start_ns + block_ns, mtu_start_ns + mtu_ns)
        hours = (mtu_end_ns - mtu_start_ns) / _NS / 3600.0
        capacity = award.awarded_kw / 1000.0 * award.capacity_price_per_mw_h * hours
        energy = e.useful_kwh / 1000.0 * award.energy_price_per_mwh
        shortfall_kwh = max(0.0, e.gross_requested_kwh - e.useful_kwh)
        # A relative slack of 1e-9 so float noise cannot turn an exact delivery into a shortfall.
        allowed_kwh = e.gross_requested_kwh * max(penalty.tolerance_pct / 100.0, 1e-9)
        under = e.gross_requested_kwh > 0 and shortfall_kwh > allowed_kwh
        charge = 0.0
        if under:
            charge = (
                penalty.capacity_clawback_factor * capacity * (shortfall_kwh / e.gross_requested_kwh)
                + shortfall_kwh / 1000.0 * penalty.undelivered_energy_price_per_mwh
            )
        line = market_pb2.SettlementLine(
            portfolio_id=award.portfolio_id,
            market_id=award.market_id,
            product=award.product,
            direction=award.direction,
            mtu_start=_timestamp(mtu_start_ns),
            mtu_end=_timestamp(mtu_end_ns),
            award_id=award.award_id,
            currency=award.currency,
            awarded_kw=award.awarded_kw,
            requested_kwh=e.requested_kwh,
            delivered_kwh=e.delivered_kwh,
            capacity_revenue=capacity,
            energy_revenue=energy,
            penalty=charge,
            net_revenue=capacity + energy - charge,
            under_delivered=under,
        )
        for site_id in sorted(cap_w):
            line.site_shares.add(
                site_id=site_id,
                reserved_kw=reservations.get(site_id, 0.0),
                delivered_kwh=e.delivered_kwh * energy_w[site_id],
                revenue=capacity * cap_w[site_id] + (energy - charge) * energy_w[site_id],
            )
        lines.append(line)
    return lines


def _add_step(energies: list[_MtuEnergy], step: DeliveryStep, *, mtu_s: int, block_s: float, time_scale: float) -> None:
    """Spread one step's energies over the MTUs its block time overlaps (clipped to the block)."""
    values = (step.at_s, step.requested_kw, step.delivered_kw, step.step_s)
    if not all(math.isfinite(v) for v in values) or step.step_s < 0:
        raise ValueError(f"delivery step needs finite values and step_s >= 0, got {step}")
    begin_s = max(0.0, step.at_s * time_scale)
    end_s = min(block_s, (step.at_s + step.step_s) * time_scale)
    if end_s <= begin_s:
        return
    req, dlv = step.requested_kw, step.delivered_kw
    if req > 0:
        useful_kw = min(max(dlv, 0.0), req)
    elif req < 0:
        useful_kw = min(max(-dlv, 0.0), -req)
    else:
        useful_kw = 0.0
    k = min(len(energies) - 1, int(begin_s // mtu_s))
    while k < len(energies) and k * mtu_s < end_s:
        overlap_h = (min(end_s, (k + 1) * mtu_s) - max(begin_s, k * mtu_s)) / 3600.0
        if overlap_h > 0:
            e = energies[k]
            e.requested_kwh += req * overlap_h
            e.delivered_kwh += dlv * overlap_h
            e.gross_requested_kwh += abs(req) * overlap_h
            e.useful_kwh += useful_kw * overlap_h
        k += 1


def _share_weights(
    reservations: Mapping[str, float], site_delivered_kwh: Mapping[str, float] | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Capacity and energy weights per site, each summing to 1 (empty when there is no site).

    Capacity follows reserved kW; energy follows |delivered kWh|, else reserved kW. A basis that is all 0
    falls back to the other one, and with both all 0 the sites share equally.
    """
    delivered = site_delivered_kwh or {}
    sites = sorted(set(reservations) | set(delivered))
    if not sites:
        return {}, {}

    def normalised(values: Mapping[str, float]) -> dict[str, float] | None:
        total = math.fsum(abs(values.get(s, 0.0)) for s in sites)
        if not math.isfinite(total) or total <= 0:
            return None
        return {s: abs(values.get(s, 0.0)) / total for s in sites}

    by_reserved = normalised(reservations)
    by_delivered = normalised(delivered)
    equal = {s: 1.0 / len(sites) for s in sites}
    capacity_w = by_reserved or by_delivered or equal
    energy_w = by_delivered or by_reserved or equal
    return capacity_w, energy_w


def settlement(
    lines: Sequence[market_pb2.SettlementLine],
    *,
    settlement_id: str,
    portfolio_id: str,
    market_id: str,
    currency: str,
    period_start_s: float,
    period_end_s: float,
) -> market_pb2.Settlement:
    """One settlement run: the lines and their net total. Lines of another portfolio, market or currency
    are refused (their money cannot be added up)."""
    for line in lines:
        if (line.portfolio_id, line.market_id, line.currency) != (portfolio_id, market_id, currency):
            raise ValueError(
                f"line of award {line.award_id!r} is for {line.portfolio_id!r}/{line.market_id!r} in "
                f"{line.currency!r}, not {portfolio_id!r}/{market_id!r} in {currency!r}"
            )
    if period_end_s < period_start_s:
        raise ValueError("period_end_s must not be before period_start_s")
    return market_pb2.Settlement(
        settlement_id=settlement_id,
        portfolio_id=portfolio_id,
        market_id=market_id,
        currency=currency,
        period_start=_timestamp(round(period_start_s * _NS)),
        period_end=_timestamp(round(period_end_s * _NS)),
        lines=list(lines),
        net_revenue=math.fsum(line.net_revenue for line in lines),
    )


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts
