"""One portfolio's offer plan: its sites' live batteries and forecast quantiles, the products it bids
and the reservations awards hold, turned into offers (``bidding.offers``). Pure: the service gathers
the inputs (``bidding.inputs``) and keeps the result."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from vpp.v1 import market_pb2

from bidding.offers import DOWN, UP, OfferLine, ProductSlots, SiteBattery, plan_offers
from bidding.reservations import holdings_from
from vpp_common.copula import Marginal, correlation_matrix, joint_samples
from vpp_common.markets import Direction, Market, Portfolio, Product

SLOT_S = 900  # forecasts come in 15-minute slots


@dataclass(frozen=True)
class SiteInputs:
    """One site as the plan sees it: its battery now and its PV and load quantiles (rows: slot start in
    epoch seconds, columns: quantile levels, kW)."""

    battery: SiteBattery
    pv_kw: pd.DataFrame
    load_kw: pd.DataFrame


@dataclass(frozen=True)
class SamplingConfig:
    n_samples: int = 400
    seed: int = 20240601
    pv_pv: float = 0.8
    load_load: float = 0.1
    pv_load: float = 0.0


@dataclass(frozen=True)
class OfferPlan:
    portfolio_id: str
    market_id: str
    issued_at_s: float
    slot_start_s: int
    confidence: float
    lines: list[OfferLine]
    sites_used: tuple[str, ...]
    sites_missing: dict[str, str] = field(default_factory=dict)  # site -> why it is not in the plan
    notes: tuple[str, ...] = ()  # forecast fallback reasons the plan rests on


def product_slots(products: Sequence[Product], start_s: int, end_s: int) -> list[ProductSlots]:
    """Each product's blocks fully inside [start_s, end_s), in its market's wall clock."""
    start = datetime.fromtimestamp(start_s, UTC)
    end = datetime.fromtimestamp(end_s, UTC)
    out = []
    for p in products:
        starts = tuple(int(b.timestamp()) for b in p.blocks(start, end) if b.timestamp() + p.block_s <= end_s)
        directions = tuple(UP if d == Direction.UP else DOWN for d in p.directions)
        out.append(ProductSlots(p.product_id, directions, p.symmetric, p.sustain_s, starts, p.block_s))
    return out


def net_samples(sites: Sequence[SiteInputs], cfg: SamplingConfig) -> np.ndarray:
    """Joint samples of every site's load minus PV: (sites, slots, samples), from one Gaussian copula
    over all sites' PV and load forecasts (the correlations the forecasting service states)."""
    marginals: list[Marginal] = []
    groups: list[str] = []
    owners: list[str] = []
    for s in sites:
        marginals.append(Marginal(s.pv_kw, -1.0, "pv"))
        marginals.append(Marginal(s.load_kw, 1.0, "load"))
        groups += ["pv", "load"]
        owners += [s.battery.site_id] * 2
    corr = correlation_matrix(groups, owners, pv_load=cfg.pv_load, pv_pv=cfg.pv_pv, load_load=cfg.load_load)
    draws = joint_samples(marginals, corr, n_samples=cfg.n_samples, seed=cfg.seed)
    pv = np.maximum(draws[0::2], 0.0)
    load = np.maximum(draws[1::2], 0.0)
    return load - pv


def plan(
    portfolio: Portfolio,
    market: Market,
    sites: Sequence[SiteInputs],
    reservations: Iterable[market_pb2.Reservation],
    *,
    now_s: float,
    cfg: SamplingConfig,
    confidence: float | None = None,
    missing: dict[str, str] | None = None,
    notes: Sequence[str] = (),
) -> OfferPlan:
    """Offers over the portfolio's horizon from the first whole slot after ``now_s``."""
    conf = portfolio.confidence if confidence is None else confidence
    slot_start_s = int(now_s // SLOT_S + 1) * SLOT_S
    n_slots = portfolio.horizon_h * 3600 // SLOT_S
    products = [market.product(p) for p in portfolio.products]
    base = OfferPlan(portfolio.portfolio_id, market.market_id, now_s, slot_start_s, conf, [], (), dict(missing or {}))
    usable = [s for s in sites if _covers(s, slot_start_s, n_slots)]
    for s in sites:
        if s not in usable:
            base.sites_missing[s.battery.site_id] = "forecast does not cover the horizon"
    if not usable:
        return base
    aligned = [_aligned(s, slot_start_s, n_slots) for s in usable]
    net = net_samples(aligned, cfg)
    efficiency = float(np.mean([s.battery.efficiency for s in usable]))
    held = holdings_from(
        reservations,
        [s.battery.site_id for s in usable],
        slot_start_s=slot_start_s,
        slot_s=SLOT_S,
        n_slots=n_slots,
        sustain_s={p.product_id: p.sustain_s for p in products},
        efficiency=efficiency,
    )
    lines = plan_offers(
        [s.battery for s in usable],
        net,
        slot_start_s=slot_start_s,
        slot_s=SLOT_S,
        products=product_slots(products, slot_start_s, slot_start_s + n_slots * SLOT_S),
        confidence=conf,
        holdings=held,
    )
    return OfferPlan(
        portfolio.portfolio_id,
        market.market_id,
        now_s,
        slot_start_s,
        conf,
        lines,
        tuple(s.battery.site_id for s in usable),
        base.sites_missing,
        tuple(sorted(set(notes))),
    )


def _covers(s: SiteInputs, slot_start_s: int, n_slots: int) -> bool:
    need = slot_start_s + (n_slots - 1) * SLOT_S
    return all(len(f.index) and f.index.min() <= slot_start_s and f.index.max() >= need for f in (s.pv_kw, s.load_kw))


def _aligned(s: SiteInputs, slot_start_s: int, n_slots: int) -> SiteInputs:
    index = pd.Index(slot_start_s + SLOT_S * np.arange(n_slots), name="slot_start_s")
    return SiteInputs(s.battery, s.pv_kw.reindex(index).ffill(), s.load_kw.reindex(index).ffill())
