"""``make bench-market``: a simulated week of day-ahead aFRR capacity bidding for a 200-site portfolio.

What it answers: how much of what the fleet could have earned with perfect foresight does the platform's
bidding (forecasts -> joint samples -> offers at 95 % confidence -> bids -> clearing -> delivery ->
settlement) earn, how often does it fail to deliver, and does the confidence level pay against naive
bids of the median flexibility. Writes ``out/bench/market.{json,md,png}``.

The loop, per delivery day D (the capacity market is day-ahead: the aFRR gate is 09:00 Berlin on D-1):

1. **Forecasts at the gate.** Truth is real data (below). Each site's P50 = truth - a forecast residual
   of the backtested model configuration (``forecasting.models.spec.ModelSpec``), drawn as a whole
   backtest day (so the error keeps its shape over the hours) matched by stream and time of day; its
   band at ``GRID_QUANTILES`` = P50 + the residual pool's empirical quantiles for that hour of day
   (minus their median). PV residual days are shared across sites with probability 0.9 (pairwise error
   correlation ~0.81, the 0.8 the copula assumes), load residual days with probability sqrt(0.1).
2. **Offers.** ``bidding.planner.net_samples`` (the bidding service's copula sampling, PV-PV 0.8,
   load-load 0.1) -> ``bidding.offers.plan_offers`` from each battery's state at the gate, with the
   awards of D-1 still running held (``bidding.reservations``), at the portfolio's confidence.
3. **Bids.** ``bidding.bids.build_bids``: pooled per block and direction, floored to the product's
   increment, none below its minimum; price = ``bidding.pricing.bid_price_rule``, fed as the bidding
   service feeds it (``BiddingServicer._price``): the floor is the opportunity cost of the product's
   sustain time + the margin; aFRR capacity is pay-as-bid, so the bid is 0.95 x the median of the last
   7 clearing prices of the auctions this portfolio bid in on earlier days (same product and direction,
   same hour of day of the block start, Berlin), never below the floor. Day 1 has no history: cost plus
   margin. The cost's price forecast is D-1's day-ahead prices: D's are published after the capacity gate.
4. **Clearing.** ``market.clearing.clear`` against ``market.competition``'s demo curves, whose kW
   (demand and competitors' steps) are scaled to this portfolio: x (portfolio battery kW / 150 kW, the
   size of the demo portfolio the curves were drawn for). Prices are as in the file.
5. **Delivery** in 1-minute steps on the TRUE PV and load: ``market.signals.afrr_setpoints`` at 4 s,
   averaged per minute (the battery model has no sub-minute dynamics), split over the sites each minute
   by the platform's allocator (``dispatch.allocation``: SoC-balancing shares within each battery's
   power and energy limits that minute) on top of self-consumption. Delivered = baseline grid power
   minus actual grid power = the battery's power minus what self-consumption alone would have done
   from the same state.
6. **Settlement** per MTU with ``market.settlement.settle_award`` and the product's penalty rule from the
   catalog (``vpp_common.markets``).

Revenue = capacity + energy - penalties. Energy bids are priced 0 (the aFRR energy market, PICASSO, is
not modelled), so the energy revenue is 0 and revenue = capacity - penalties.

Baselines (same week, same prices and activations):

* **perfect foresight**: a HiGHS LP over the week knowing the true PV and load: per block and
  direction the capacity to sell and per site the battery schedule, maximising capacity revenue at the
  clearing prices our run saw, price-taker, each block's volume capped at what the market accepted at
  that price (demand minus cheaper competitors). Constraints: every site's power and energy limits,
  the same deliverability rule as ``plan_offers`` (an activation starting at any slot of the block and
  lasting up to the sustain time fits the energy the schedule leaves), and a self-consumption-
  compatible schedule (charge only from the site's own PV surplus, discharge only into its own load;
  the battery may hold back). No penalties, and volumes are continuous (no minimum or increment): an
  upper bound. Its volumes floored to the increment (still feasible) are reported as a lower bound of
  the best revenue in increments.
* **oracle**: our loop fed perfect PV and load forecasts: what forecast errors cost, all else equal.
* **naive**: the same loop bidding the P50 flexibility (confidence 0.5), penalties included.

All three price their bids with the same rule, each from the clearing prices of its own past auctions.

Sites: homes, farms, schools, factories (``SITE_KINDS``); PV = NREL PVDAQ system 50 (kW per kWp,
Golden CO, 2011-2013) x the site's kWp; load = the UCI household (Sceaux, 2006-2010) scaled to the
site's mean load. Data years differ from 2018: PV is taken on the same day of year (season) in one of
the PV years, shifted by a site-specific number of days (different weather per site), read by local
clock time (Denver) onto Berlin local time; load is taken on the same ISO week and weekday (weekly
pattern) in one of the load years, shifted by whole weeks. So every site is real data, but no two
sites see the same day. Limitations: one PV system and one household's load shape for all sites
(schools and factories have a household's shape, scaled); truth errors are the backtest's, not of
the live service on these days.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from vpp.v1 import market_pb2

from bidding.bids import Priced, build_bids, direction_name
from bidding.offers import DOWN, UP, Holdings, OfferLine, SiteBattery, plan_offers
from bidding.planner import SamplingConfig, SiteInputs, net_samples, product_slots
from bidding.pricing import (
    bid_price_rule,
    capacity_opportunity_cost_per_mw_h,
    day_ahead_prices,
    expected_clearing_price,
)
from bidding.reservations import holdings_from, reserve
from dispatch.allocation import allocate, make_problem
from forecasting.backtest.runner import run_load, run_pv
from forecasting.data import load_pvdaq_system50, load_uci_household
from forecasting.data.cache import REPO_ROOT, cache_dir
from forecasting.models.spec import ModelSpec
from market.clearing import SupplyStep, clear
from market.competition import Competition, load_competition
from market.settlement import DeliveryStep, PenaltyRule, settle_award
from market.signals import afrr_setpoints
from vpp_common.copula import GRID_QUANTILES
from vpp_common.markets import Market, Portfolio, Product, load_catalog

MARKET_ID = "entsoe"
PRODUCT_ID = "aFRR"
SLOT_S = 900
STEP_S = 60  # delivery simulated per minute
SIGNAL_STEP_S = 4  # aFRR setpoint cycle, averaged to STEP_S
DEMO_PORTFOLIO_KW = 150.0  # battery kW the demo competition curves were drawn for (competition.toml)
PV_SHARED_P = 0.9  # a site uses the day's common PV residual day with this probability (corr ~ 0.81)
LOAD_SHARED_P = math.sqrt(0.1)  # ... load (corr ~ 0.1)
PV_YEARS = (2011, 2012, 2013)
LOAD_YEARS = (2007, 2008, 2009, 2010)
RESIDUAL_LOAD_YEAR, RESIDUAL_PV_YEAR = 2009, 2013  # backtest test periods (the default split's years)
UP_DOWN = (UP, DOWN)
# The price rule's parameters as the bidding service uses them (its defaults), for the report only.
PRICE_SHADE = float(inspect.signature(bid_price_rule).parameters["shade"].default)
PRICE_WINDOW = int(inspect.signature(expected_clearing_price).parameters["window"].default)

Progress = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class SiteKind:
    """A kind of site: share of the portfolio and uniform ranges of its sizes."""

    name: str
    share: float
    battery_kw: tuple[float, float]
    hours: float  # battery kWh per kW
    pv_kwp: tuple[float, float]
    mean_load_kw: tuple[float, float]


SITE_KINDS: tuple[SiteKind, ...] = (
    SiteKind("home", 0.60, (3.0, 10.0), 2.0, (4.0, 10.0), (0.4, 1.2)),
    SiteKind("farm", 0.15, (20.0, 60.0), 2.0, (30.0, 100.0), (3.0, 10.0)),
    SiteKind("school", 0.15, (30.0, 100.0), 2.0, (40.0, 150.0), (8.0, 25.0)),
    SiteKind("factory", 0.10, (100.0, 500.0), 2.0, (100.0, 500.0), (50.0, 250.0)),
)
SOC_MIN, SOC_MAX, SOC_START = 0.10, 0.95, 0.50
EFFICIENCY = 0.95  # one way


@dataclass(frozen=True)
class Site:
    site_id: str
    kind: str
    battery_kw: float
    battery_kwh: float
    pv_kwp: float
    mean_load_kw: float
    pv_year: int
    pv_shift_days: int
    load_year: int
    load_shift_weeks: int

    @property
    def min_kwh(self) -> float:
        return SOC_MIN * self.battery_kwh

    @property
    def max_kwh(self) -> float:
        return SOC_MAX * self.battery_kwh


def make_sites(n: int, seed: int) -> list[Site]:
    """``n`` sites in the kinds' shares (largest remainder), sizes and data shifts drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    raw = [k.share * n for k in SITE_KINDS]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: n - sum(counts)]:
        counts[i] += 1
    sites: list[Site] = []
    for kind, count in zip(SITE_KINDS, counts, strict=True):
        for _ in range(count):
            kw = round(float(rng.uniform(*kind.battery_kw)), 1)
            sites.append(
                Site(
                    site_id=f"{kind.name}-{len(sites) + 1:03d}",
                    kind=kind.name,
                    battery_kw=kw,
                    battery_kwh=round(kw * kind.hours, 1),
                    pv_kwp=round(float(rng.uniform(*kind.pv_kwp)), 1),
                    mean_load_kw=round(float(rng.uniform(*kind.mean_load_kw)), 2),
                    pv_year=int(rng.choice(PV_YEARS)),
                    pv_shift_days=int(rng.integers(-15, 16)),
                    load_year=int(rng.choice(LOAD_YEARS)),
                    load_shift_weeks=int(rng.integers(-3, 4)),
                )
            )
    return sites


# ------------------------------------------------------------------------------------------ real data


def _day_table(series: pd.Series, tz: str) -> pd.DataFrame:
    """Rows = local dates, columns = 96 wall-clock quarter hours: how profiles are moved between zones."""
    local = series.index.tz_convert(tz)
    frame = pd.DataFrame(
        {"v": series.to_numpy(dtype=float), "d": local.date, "q": local.hour * 4 + local.minute // 15}
    )
    return frame.pivot_table(index="d", columns="q", values="v", aggfunc="first", dropna=False).reindex(
        columns=range(96)
    )


def _usable(row: np.ndarray, max_missing: int = 4) -> np.ndarray | None:
    """A day with at most ``max_missing`` missing quarter hours, gaps interpolated; else None."""
    if np.isnan(row).sum() > max_missing:
        return None
    if np.isnan(row).any():
        idx = np.arange(row.size)
        ok = ~np.isnan(row)
        row = np.interp(idx, idx[ok], row[ok])
    return row


@dataclass
class RealData:
    """PV in kW per kWp (by local date) and load as a multiple of the household's mean (by file date)."""

    pv: pd.DataFrame
    load: pd.DataFrame
    pv_kwp_reference: float
    load_mean_kw: float

    @staticmethod
    def read() -> RealData:
        pv_kw, site = load_pvdaq_system50()
        load_kw = load_uci_household()
        mean = float(load_kw.mean())
        return RealData(_day_table(pv_kw / site.kwp, site.timezone), _day_table(load_kw / mean, "UTC"),
                        float(site.kwp), mean)

    def _pick(self, table: pd.DataFrame, first: date, step_days: int) -> np.ndarray:
        for k in range(60):  # 0, +1, -1, +2, ... steps until a complete day
            d = first + timedelta(days=step_days * ((k + 1) // 2) * (1 if k % 2 else -1))
            if d in table.index:
                row = _usable(table.loc[d].to_numpy(dtype=float))
                if row is not None:
                    return row
        raise LookupError(f"no complete day near {first}")

    def pv_day(self, site: Site, day: date) -> np.ndarray:
        """96 quarter hours (kW/kWp) for Berlin day ``day``: same day of year in the site's PV year, shifted."""
        base = _same_day_in(day, site.pv_year) + timedelta(days=site.pv_shift_days)
        return np.clip(self._pick(self.pv, base, 1), 0.0, None)

    def load_day(self, site: Site, day: date) -> np.ndarray:
        """96 quarter hours (x mean) for ``day``: same ISO week and weekday in the site's load year, shifted."""
        iso = day.isocalendar()
        base = date.fromisocalendar(site.load_year, min(iso.week, 52), iso.weekday)
        base += timedelta(weeks=site.load_shift_weeks)
        return np.clip(self._pick(self.load, base, 7), 0.0, None)


def _same_day_in(day: date, year: int) -> date:
    return date(year, day.month, min(day.day, 28) if day.month == 2 else day.day)


# ----------------------------------------------------------------------------------- forecast residuals


@dataclass
class ResidualPool:
    """Day-ahead residuals (truth - P50) of the backtested models, normalised (PV: kW per kWp; load: per
    household mean kW): whole days by stream, and each hour of day's quantile offsets from the median."""

    days: dict[str, np.ndarray]  # stream -> (n_days, 96)
    band: dict[str, np.ndarray]  # stream -> (24, len(GRID_QUANTILES)): quantile - median, by hour of day
    source: dict[str, Any]


def _pool_from_frame(frame: pd.DataFrame, model: str, tz: str, scale: float) -> np.ndarray:
    slots = pd.DatetimeIndex(frame["slot"]).tz_convert(tz)
    r = (frame["y"].to_numpy(dtype=float) - frame[f"{model}@0.5"].to_numpy(dtype=float)) / scale
    table = pd.DataFrame({"r": r, "d": slots.date, "q": slots.hour * 4 + slots.minute // 15}).pivot_table(
        index="d", columns="q", values="r", aggfunc="first", dropna=False).reindex(columns=range(96))
    values = table.to_numpy(dtype=float)
    keep = np.isnan(values).sum(axis=1) <= 8
    return np.nan_to_num(values[keep], nan=0.0)


def _band(days: np.ndarray) -> np.ndarray:
    levels = np.asarray(GRID_QUANTILES)
    out = np.empty((24, levels.size))
    for h in range(24):
        values = days[:, 4 * h : 4 * h + 4].ravel()
        q = np.quantile(values, levels)
        out[h] = q - np.median(values)
    return out


def backtest_residuals(month: int, weeks: int, data: RealData, progress: Progress) -> ResidualPool:
    """Residuals of a rolling-origin backtest (``forecasting.backtest.runner``, the served ModelSpec) over
    ``weeks`` weeks from the 1st of ``month`` (load 2009, PV 2013: the default split's test years), cached
    under the forecasting data cache keyed by the split and the model fingerprint."""
    spec = ModelSpec()
    load_start = pd.Timestamp(RESIDUAL_LOAD_YEAR, month, 1)
    pv_start = pd.Timestamp(RESIDUAL_PV_YEAR, month, 1)
    span = pd.Timedelta(weeks=weeks)
    key = f"{spec.fingerprint()}|{load_start.date()}|{pv_start.date()}|{weeks}|{data.pv_kwp_reference}|v1"
    path = cache_dir() / f"bench_market_residuals-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pkl"
    command = (
        "python -m forecasting.backtest.cli --tasks load pv_day_ahead "
        f"--load-train-end {load_start.date()} --load-test-start {load_start.date()} "
        f"--load-test-end {(load_start + span).date()} --pv-train-end {pv_start.date()} "
        f"--pv-test-start {pv_start.date()} --pv-test-end {(pv_start + span).date()}"
    )
    if path.exists():
        raw = pickle.loads(path.read_bytes())  # plain dicts and arrays: independent of how this module runs
        pool = ResidualPool(days=raw["days"], band=raw["band"], source=raw["source"])
        pool.source["cached"] = str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)
        progress(f"[residuals] cached backtest residuals: {path.name}")
        return pool
    progress(f"[residuals] running the backtest for residuals ({weeks} weeks per stream; equivalent: {command})")
    t0 = time.perf_counter()

    def quiet(msg: str) -> None:
        if msg.startswith("[fit]"):
            progress("[residuals] " + msg)

    load = run_load(load_uci_household(), load_start, load_start, load_start + span, spec, "monthly", quiet)[0]
    pv_kw, pv_site = load_pvdaq_system50()
    pv = run_pv(pv_kw, pv_site, pv_start, pv_start, pv_start + span, spec, "monthly", ("pv_day_ahead",), quiet,
                capacity_from_data=True, only_candidate=True)[0]
    days = {
        "pv": _pool_from_frame(pv.frame, "pv_physics_lgbm", pv.timezone, data.pv_kwp_reference),
        "load": _pool_from_frame(load.frame, "lightgbm_quantile", load.timezone, data.load_mean_kw),
    }
    pool = ResidualPool(
        days=days,
        band={k: _band(v) for k, v in days.items()},
        source={
            "runner": "forecasting.backtest.runner (run_load, run_pv day-ahead), rolling origin, monthly refit",
            "model_fingerprint": spec.fingerprint(),
            "load": f"UCI household, lightgbm_quantile P50, test {load_start.date()} + {weeks} weeks, "
                    f"issued 12:00 D-1; normalised by the household mean {data.load_mean_kw:.3f} kW",
            "pv": f"PVDAQ system 50, pv_physics_lgbm P50, test {pv_start.date()} + {weeks} weeks, issued 12:00 "
                  f"local D-1; normalised by {data.pv_kwp_reference:.3f} kWp (the replay kWp of the truth)",
            "equivalent_command": command,
            "days": {k: int(v.shape[0]) for k, v in days.items()},
            "wall_time_s": round(time.perf_counter() - t0, 1),
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"days": pool.days, "band": pool.band, "source": pool.source}))
    progress(f"[residuals] done in {pool.source['wall_time_s']} s: {pool.source['days']} days")
    return pool


# ---------------------------------------------------------------------------------------------- world


@dataclass
class World:
    """Everything both simulated portfolios share: sites, truth, market, prices, activation seeds."""

    sites: list[Site]
    start: date
    days: int
    tz: ZoneInfo
    grid_start_s: int  # local midnight of the day before ``start`` (the first gate's day)
    pv_kw: np.ndarray  # (sites, slots) true PV
    load_kw: np.ndarray  # (sites, slots) true load
    slot_day: np.ndarray  # (slots,) index of the Berlin day of each slot (0 = the day before start)
    slot_q: np.ndarray  # (slots,) wall-clock quarter hour of each slot
    pool: ResidualPool
    market: Market
    product: Product
    portfolio: Portfolio
    competition: Competition
    market_scale: float
    prices: pd.Series  # day-ahead, market currency per MWh, UTC hours
    seed: int
    n_samples: int

    @property
    def n_sites(self) -> int:
        return len(self.sites)

    def day_start_s(self, k: int) -> int:
        """Epoch seconds of local midnight of day ``k`` (0 = the day before ``start``)."""
        d = self.start + timedelta(days=k - 1)
        return int(datetime(d.year, d.month, d.day, tzinfo=self.tz).timestamp())

    def slot(self, at_s: int) -> int:
        return (at_s - self.grid_start_s) // SLOT_S


def build_world(args: argparse.Namespace, progress: Progress) -> World:
    tz = ZoneInfo("Europe/Berlin")
    start = date.fromisoformat(args.start)
    sites = make_sites(args.sites, args.seed)
    progress(f"[data] reading PVDAQ system 50 and the UCI household ({len(sites)} sites)")
    data = RealData.read()
    pool = backtest_residuals(start.month, args.residual_weeks, data, progress)
    first = datetime(start.year, start.month, start.day, tzinfo=tz) - timedelta(days=1)
    grid_start_s = int(first.timestamp())
    pv_cols: list[np.ndarray] = []
    load_cols: list[np.ndarray] = []
    slot_day: list[np.ndarray] = []
    slot_q: list[np.ndarray] = []
    for k in range(args.days + 1):
        day = start + timedelta(days=k - 1)
        a = datetime(day.year, day.month, day.day, tzinfo=tz)
        b = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=tz)
        stamps = pd.date_range(a, b, freq="15min", inclusive="left")  # 92/96/100 slots, wall clock in tz
        q = np.asarray(stamps.hour * 4 + stamps.minute // 15)
        pv_cols.append(np.stack([data.pv_day(s, day)[q] * s.pv_kwp for s in sites]))
        load_cols.append(np.stack([data.load_day(s, day)[q] * s.mean_load_kw for s in sites]))
        slot_day.append(np.full(q.size, k))
        slot_q.append(q)
    catalog = load_catalog()
    market = catalog.market(MARKET_ID)
    product = market.product(PRODUCT_ID)
    portfolio = Portfolio(
        portfolio_id="bench-market",
        name=f"bench-market: {len(sites)} homes, farms, schools, factories",
        market_id=MARKET_ID,
        currency=market.currency,
        products=(PRODUCT_ID,),
        sites=tuple(s.site_id for s in sites),
        confidence=args.confidence,
        price_margin_pct=args.margin_pct,
        horizon_h=48,
        min_bid_kw_override=args.min_bid_kw,
    )
    total_kw = sum(s.battery_kw for s in sites)
    return World(
        sites=sites,
        start=start,
        days=args.days,
        tz=tz,
        grid_start_s=grid_start_s,
        pv_kw=np.concatenate(pv_cols, axis=1),
        load_kw=np.concatenate(load_cols, axis=1),
        slot_day=np.concatenate(slot_day),
        slot_q=np.concatenate(slot_q),
        pool=pool,
        market=market,
        product=product,
        portfolio=portfolio,
        competition=load_competition(),
        market_scale=args.market_scale if args.market_scale else total_kw / DEMO_PORTFOLIO_KW,
        prices=day_ahead_prices(start.year, market.currency),
        seed=args.seed,
        n_samples=args.samples,
    )


def forecasts(world: World, first_slot: int, last_slot: int, rng: np.random.Generator,
              oracle: bool = False) -> tuple[np.ndarray, ...]:
    """P50 and GRID bands (sites, slots, levels) of PV and load over ``[first_slot, last_slot)``: truth
    minus a drawn residual day per site and Berlin day (shared across sites with PV_SHARED_P /
    LOAD_SHARED_P), band = the residual pool's quantile offsets for the hour of day. ``oracle``: every
    level is the truth (a perfect forecast)."""
    n = world.n_sites
    sl = slice(first_slot, last_slot)
    if oracle:
        levels = len(GRID_QUANTILES)
        return tuple(np.repeat(t[:, sl, None], levels, axis=2) for t in (world.pv_kw, world.load_kw))
    day_of = world.slot_day[sl]
    q = world.slot_q[sl]
    out = []
    for stream, truth, scale, shared_p in (
        ("pv", world.pv_kw, np.array([s.pv_kwp for s in world.sites]), PV_SHARED_P),
        ("load", world.load_kw, np.array([s.mean_load_kw for s in world.sites]), LOAD_SHARED_P),
    ):
        pool = world.pool.days[stream]
        days = np.unique(day_of)
        common = rng.integers(0, pool.shape[0], size=days.size)
        own = rng.integers(0, pool.shape[0], size=(n, days.size))
        use_common = rng.random((n, days.size)) < shared_p
        pick = np.where(use_common, common[None, :], own)  # (sites, days)
        pick_slot = pick[:, np.searchsorted(days, day_of)]  # (sites, slots)
        resid = pool[pick_slot, q[None, :]] * scale[:, None]
        p50 = np.maximum(truth[:, sl] - resid, 0.0)
        band = world.pool.band[stream][q // 4]  # (slots, levels)
        levels = np.maximum(p50[:, :, None] + band[None, :, :] * scale[:, None, None], 0.0)
        out.append(levels)
    return tuple(out)


def _prices_between(prices: pd.Series, start_s: int, end_s: int) -> pd.Series:
    lo, hi = pd.Timestamp(start_s, unit="s", tz="UTC"), pd.Timestamp(end_s, unit="s", tz="UTC")
    return prices[(prices.index >= lo) & (prices.index < hi)]


# ------------------------------------------------------------------------------------------ portfolio


@dataclass
class Auction:
    """One block and direction: what was offered, bid, awarded and at what clearing."""

    block_start_s: int
    direction: int
    offer_kw: float
    p50_kw: float
    bid_kw: float
    bid_price: float
    opportunity_cost: float
    awarded_kw: float
    paid_price: float
    clearing_price: float
    demand_kw: float
    price_taker_kw: float  # demand minus the competitors' kW cheaper than the clearing price


@dataclass
class Block:
    start_s: int
    end_s: int
    awards: dict[int, market_pb2.Award] = field(default_factory=dict)
    reservations: dict[int, dict[str, float]] = field(default_factory=dict)
    request_kw: np.ndarray = field(default_factory=lambda: np.zeros(0))
    delivered_kw: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class DayResult:
    day: str
    capacity: float = 0.0
    energy: float = 0.0
    penalties: float = 0.0
    mtus_requested: int = 0
    mtus_under: int = 0
    awarded_mwh: float = 0.0  # awarded MW x hours
    requested_mwh: float = 0.0  # activation energy asked for (both directions, magnitudes)
    delivered_mwh: float = 0.0  # delivered in the requested direction (signed per award)
    revenue_at_clearing: float = 0.0

    @property
    def net(self) -> float:
        return self.capacity + self.energy - self.penalties


class PortfolioSim:
    """One bidding strategy over the week: battery states, auctions, delivery and settlement."""

    def __init__(self, name: str, world: World, confidence: float, oracle: bool = False) -> None:
        self.name = name
        self.world = world
        self.confidence = confidence
        self.oracle = oracle  # bids from perfect forecasts: what forecast errors cost, all else equal
        self.energy_kwh = np.array([SOC_START * s.battery_kwh for s in world.sites])
        self.e_min = np.array([s.min_kwh for s in world.sites])
        self.e_max = np.array([s.max_kwh for s in world.sites])
        self.p_kw = np.array([s.battery_kw for s in world.sites])
        self.prev_offset_kw = np.zeros(world.n_sites)
        self.blocks: list[Block] = []
        self.auctions: list[Auction] = []
        self.days: list[DayResult] = []
        self.lines: list[market_pb2.SettlementLine] = []
        self.energy_at_start_kwh: np.ndarray | None = None
        self._bid_no = 0

    # -- auction at the gate -----------------------------------------------------------------------

    def auction(self, day_k: int, gate_s: int, rng: np.random.Generator) -> None:
        """Plan, bid and clear every block of day ``day_k`` at its gate (``gate_s``)."""
        w = self.world
        first, last = w.slot(gate_s), w.slot(w.day_start_s(day_k + 1))
        pv, load = forecasts(w, first, last, rng, self.oracle)
        index = pd.Index(gate_s + SLOT_S * np.arange(last - first), name="slot_start_s")
        batteries = [
            SiteBattery(s.site_id, float(e), s.min_kwh, s.max_kwh, s.battery_kw, s.battery_kw, EFFICIENCY)
            for s, e in zip(w.sites, self.energy_kwh, strict=True)
        ]
        inputs = [
            SiteInputs(b, pd.DataFrame(pv[i], index=index, columns=list(GRID_QUANTILES)),
                       pd.DataFrame(load[i], index=index, columns=list(GRID_QUANTILES)))
            for i, b in enumerate(batteries)
        ]
        n_samples = 2 if self.oracle else w.n_samples  # a perfect forecast: every sample is the truth
        net = net_samples(inputs, SamplingConfig(n_samples=n_samples, seed=w.seed * 1000 + day_k))
        held = self._holdings(gate_s, last - first)
        day_s, next_s = w.day_start_s(day_k), w.day_start_s(day_k + 1)
        lines = plan_offers(batteries, net, slot_start_s=gate_s, slot_s=SLOT_S,
                            products=product_slots([w.product], day_s, next_s), confidence=self.confidence,
                            holdings=held)
        prev = _prices_between(w.prices, w.day_start_s(day_k - 1), day_s)
        if prev.empty:  # D-1 outside the price year (1 January): D's own prices stand in
            prev = _prices_between(w.prices, day_s, next_s)

        history = self.clearing_history(day_s)  # taken before this gate's auctions are added

        def price(product: Product, line: OfferLine) -> Priced:
            # The bidding service's rule (``BiddingServicer._price``): cost plus margin, or in a pay-as-bid
            # product just under the median clearing price of this portfolio's past auctions at that hour.
            cost = capacity_opportunity_cost_per_mw_h(prev, sustain_h=product.sustain_s / 3600.0,
                                                      efficiency=EFFICIENCY**2,
                                                      direction=direction_name(line.direction))
            hour = datetime.fromtimestamp(line.block_start_s, UTC).astimezone(w.tz).hour
            expected = expected_clearing_price(history.get((line.product_id, int(line.direction)), []), hour=hour)
            capacity = bid_price_rule(cost, w.portfolio.price_margin_pct, pricing=product.capacity_pricing.value,
                                      expected_clearing=expected)
            return Priced(capacity, cost)

        def bid_id() -> str:
            self._bid_no += 1
            return f"{self.name}-{self._bid_no}"

        bids, _ = build_bids(lines, portfolio=w.portfolio, market=w.market, now_s=gate_s - 1,
                             confidence=self.confidence, price=price, bid_id=bid_id)
        by_key = {(b.interval_start.seconds, b.direction): b for b in bids}
        for line in lines:
            bid = by_key.get((line.block_start_s, line.direction))
            self._clear(line, bid, price(w.product, line))

    def clearing_history(self, before_s: int) -> dict[tuple[str, int], list[tuple[int, float]]]:
        """What the service's price rule is fed (``BiddingServicer._price``): per product and direction,
        (hour of day of the block start in the market's zone, clearing price) of every auction this
        portfolio bid in (awarded or not: the market returns an award either way) whose block starts
        before ``before_s``, oldest first; auctions that cleared at 0 are skipped, as in the service."""
        history: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for a in sorted(self.auctions, key=lambda a: a.block_start_s):
            if a.block_start_s < before_s and a.bid_kw > 0 and a.clearing_price > 0:
                hour = datetime.fromtimestamp(a.block_start_s, UTC).astimezone(self.world.tz).hour
                history.setdefault((PRODUCT_ID, int(a.direction)), []).append((hour, a.clearing_price))
        return history

    def _holdings(self, gate_s: int, n_slots: int) -> Holdings:
        reservations = []
        for block in self.blocks:
            if block.end_s <= gate_s:
                continue
            for d, sites in block.reservations.items():
                for site_id, kw in sites.items():
                    r = market_pb2.Reservation(product=PRODUCT_ID, site_id=site_id, reserved_kw=kw)
                    r.direction = d  # type: ignore[assignment]  # a vpp.v1.Direction value
                    r.interval_start.FromSeconds(block.start_s)
                    r.interval_end.FromSeconds(block.end_s)
                    reservations.append(r)
        return holdings_from(reservations, [s.site_id for s in self.world.sites], slot_start_s=gate_s,
                             slot_s=SLOT_S, n_slots=n_slots,
                             sustain_s={PRODUCT_ID: self.world.product.sustain_s}, efficiency=EFFICIENCY)

    def _clear(self, line: OfferLine, bid: market_pb2.Bid | None, priced: Priced) -> None:
        w = self.world
        steps, demand = w.competition.curve_at(MARKET_ID, PRODUCT_ID, line.direction, line.block_start_s)
        steps = [SupplyStep(s.price_per_mw_h, s.kw * w.market_scale) for s in steps]
        demand *= w.market_scale
        result = clear([bid] if bid else [], steps, demand, pricing=w.product.capacity_pricing.value,
                       divisible=w.product.divisible, award_id=lambda b: f"award-{b.bid_id}")
        cheaper = sum(s.kw for s in steps if s.price_per_mw_h < result.clearing_price_per_mw_h)
        award = result.awards[0] if bid else None
        awarded = award.awarded_kw if award else 0.0
        self.auctions.append(Auction(
            block_start_s=line.block_start_s, direction=line.direction, offer_kw=line.offer_kw, p50_kw=line.p50_kw,
            bid_kw=bid.capacity_kw if bid else 0.0, bid_price=priced.price_per_mw_h,
            opportunity_cost=priced.opportunity_cost_per_mw_h, awarded_kw=awarded,
            paid_price=award.capacity_price_per_mw_h if award else 0.0,
            clearing_price=result.clearing_price_per_mw_h, demand_kw=demand,
            price_taker_kw=max(0.0, demand - cheaper),
        ))
        block = next((b for b in self.blocks if b.start_s == line.block_start_s), None)
        if block is None:
            block = Block(line.block_start_s, line.block_end_s)
            self.blocks.append(block)
        if award is not None and bid is not None and awarded > 0:
            block.awards[line.direction] = award
            rs = reserve(award, bid, w.product, EFFICIENCY)
            block.reservations[line.direction] = {r.site_id: r.reserved_kw for r in rs.reservations}

    def prepare_signals(self, day_k: int) -> None:
        """The TSO's aFRR requests for every block of day ``day_k``, per minute (4-s setpoints averaged)."""
        w = self.world
        for b_no, block in enumerate(b for b in self.blocks if w.day_start_s(day_k) <= b.start_s
                                     < w.day_start_s(day_k + 1)):
            up = block.awards[UP].awarded_kw if UP in block.awards else 0.0
            down = block.awards[DOWN].awarded_kw if DOWN in block.awards else 0.0
            duration_s = block.end_s - block.start_s
            raw = np.asarray(afrr_setpoints(up, down, duration_s, SIGNAL_STEP_S,
                                            seed=w.seed * 10_000 + day_k * 100 + b_no,
                                            full_activation_s=w.product.full_activation_s))
            per = STEP_S // SIGNAL_STEP_S
            block.request_kw = raw[: raw.size // per * per].reshape(-1, per).mean(axis=1)
            block.delivered_kw = np.zeros(block.request_kw.size)

    # -- delivery ----------------------------------------------------------------------------------

    def step(self, at_s: int, request_kw: float) -> float:
        """One minute on the true PV and load: self-consumption plus the allocated request; returns the
        portfolio's delivered kW (battery power minus what self-consumption alone would have done)."""
        w = self.world
        slot = w.slot(at_s)
        dt_h = STEP_S / 3600.0
        net = w.load_kw[:, slot] - w.pv_kw[:, slot]
        p_hi = np.minimum(self.p_kw, (self.energy_kwh - self.e_min) * EFFICIENCY / dt_h)
        p_lo = -np.minimum(self.p_kw, (self.e_max - self.energy_kwh) / EFFICIENCY / dt_h)
        p_hi, p_lo = np.maximum(p_hi, 0.0), np.minimum(p_lo, 0.0)
        p_sc = np.clip(net, p_lo, p_hi)
        offset = np.zeros(w.n_sites)
        if request_kw != 0.0:
            problem = make_problem(request_kw, p_lo - p_sc, p_hi - p_sc,
                                   energy_up_kwh=self.energy_kwh - self.e_min,
                                   energy_down_kwh=self.e_max - self.energy_kwh,
                                   previous_kw=self.prev_offset_kw)
            offset = allocate(problem).offsets_kw
        self.prev_offset_kw = offset
        p = p_sc + offset
        self.energy_kwh = np.clip(
            self.energy_kwh - np.maximum(p, 0.0) * dt_h / EFFICIENCY + np.maximum(-p, 0.0) * dt_h * EFFICIENCY,
            self.e_min, self.e_max)
        return float(offset.sum())

    def settle_day(self, day_k: int) -> DayResult:
        """Settlement lines of every award delivered on day ``day_k`` (product penalty rule)."""
        w = self.world
        pen = w.product.penalty
        rule = PenaltyRule(pen.tolerance_pct, pen.capacity_clawback_factor, pen.undelivered_energy_price_per_mwh)
        out = DayResult(day=str(w.start + timedelta(days=day_k - 1)))
        for block in self.blocks:
            if not w.day_start_s(day_k) <= block.start_s < w.day_start_s(day_k + 1):
                continue
            for d, award in block.awards.items():
                sign = 1.0 if d == UP else -1.0
                mine = sign * block.request_kw > 0
                steps = [
                    DeliveryStep(k * STEP_S, float(block.request_kw[k]) if mine[k] else 0.0,
                                 float(block.delivered_kw[k]) if mine[k] else 0.0, STEP_S)
                    for k in range(block.request_kw.size)
                ]
                lines = settle_award(award, steps, mtu_s=w.product.mtu_s, penalty=rule,
                                     reservations=block.reservations.get(d, {}))
                self.lines += lines
                hours = (block.end_s - block.start_s) / 3600.0
                out.awarded_mwh += award.awarded_kw / 1000.0 * hours
                out.revenue_at_clearing += award.awarded_kw / 1000.0 * hours * award.clearing_price_per_mw_h
                for line in lines:
                    out.requested_mwh += abs(line.requested_kwh) / 1000.0
                    out.delivered_mwh += sign * line.delivered_kwh / 1000.0
                    out.capacity += line.capacity_revenue
                    out.energy += line.energy_revenue
                    out.penalties += line.penalty
                    if line.requested_kwh != 0.0:
                        out.mtus_requested += 1
                        out.mtus_under += int(line.under_delivered)
        self.days.append(out)
        return out


def simulate(world: World, sims: Sequence[PortfolioSim], progress: Progress) -> None:
    """Both portfolios minute by minute from the first gate to the end of the week (same truth and
    activation seeds), an auction at each day's gate, settlement at each day's end."""
    gates = {}
    for k in range(1, world.days + 1):
        first_block = world.product.blocks(datetime.fromtimestamp(world.day_start_s(k), UTC),
                                           datetime.fromtimestamp(world.day_start_s(k + 1), UTC))[0]
        gate_s = int(world.product.gate_closure_at(first_block).timestamp())
        gates[gate_s - gate_s % STEP_S] = k
    t = min(gates)
    end_s = world.day_start_s(world.days + 1)
    day_ends = {world.day_start_s(k + 1): k for k in range(1, world.days + 1)}
    t_wall = time.perf_counter()
    while t < end_s:
        if t in gates:
            k = gates[t]
            for sim in sims:
                sim.auction(k, t, np.random.default_rng([world.seed, k]))  # same forecasts for both
                sim.prepare_signals(k)
        if t == world.day_start_s(1):
            for sim in sims:
                sim.energy_at_start_kwh = sim.energy_kwh.copy()
        for sim in sims:
            request = 0.0
            blocks = [b for b in sim.blocks if b.start_s <= t < b.end_s and b.request_kw.size]
            for b in blocks:
                request += float(b.request_kw[(t - b.start_s) // STEP_S])
            delivered = sim.step(t, request)
            for b in blocks:  # one block at a time holds both directions' awards
                b.delivered_kw[(t - b.start_s) // STEP_S] = delivered
        t += STEP_S
        if t in day_ends:
            k = day_ends[t]
            parts = []
            for sim in sims:
                r = sim.settle_day(k)
                under = r.mtus_under / r.mtus_requested if r.mtus_requested else 0.0
                parts.append(f"{sim.name}: awarded {r.awarded_mwh:6.1f} MW·h, net {r.net:8.2f}, "
                             f"penalties {r.penalties:7.2f}, under-delivered MTUs {under:5.1%}")
            progress(f"[day {k}/{world.days} {world.start + timedelta(days=k - 1)}] " + " | ".join(parts)
                     + f" ({time.perf_counter() - t_wall:.0f}s)")


# ---------------------------------------------------------------------------------- perfect foresight


@dataclass
class ForesightResult:
    revenue: float  # the LP optimum: any volume, no increments
    revenue_in_increments: float  # the LP's volumes floored to the increment: feasible, a lower bound
    daily: list[float]
    status: str
    sold_mw_h: float
    seconds: float
    rows: int
    cols: int


def perfect_foresight(world: World, auctions: Sequence[Auction], energy0_kwh: np.ndarray,
                      time_limit_s: float, progress: Progress, solver: str = "ipm") -> ForesightResult:
    """The week's best capacity revenue knowing the true PV and load (module docstring): an LP over
    15-minute slots from the first delivery day's midnight (HiGHS, one thread).

    Its volumes are continuous; floored per block to the product's increment they stay feasible (less
    capacity only loosens every constraint), which bounds the best revenue in increments from below.
    (The MIP with integer increments did not find a solution in 15 minutes for 200 sites and a week.)"""
    import highspy
    import scipy.sparse as sp

    t_start = time.perf_counter()
    first = world.slot(world.day_start_s(1))
    last = world.slot(world.day_start_s(world.days + 1))
    n_t = last - first
    n_s = world.n_sites
    dt_h = SLOT_S / 3600.0
    sustain = max(1, -(-world.product.sustain_s // SLOT_S))
    blocks = sorted({a.block_start_s for a in auctions})
    block_index = {b: i for i, b in enumerate(blocks)}
    n_b = len(blocks)
    block_slots = [(world.slot(b) - first, world.slot(b + world.product.block_s) - first) for b in blocks]
    price = np.zeros((n_b, 2))
    cap_kw = np.zeros((n_b, 2))
    for a in auctions:
        j = UP_DOWN.index(a.direction)
        price[block_index[a.block_start_s], j] = a.clearing_price
        cap_kw[block_index[a.block_start_s], j] = a.price_taker_kw
    inc = world.portfolio.increment_kw(world.product)
    # columns: p (s, t) | e (s, t) = energy at the end of slot t | c (s, b, dir)
    p0, e0, c0 = 0, n_s * n_t, 2 * n_s * n_t
    n0 = c0 + n_s * n_b * 2
    n_cols = n0
    net = world.load_kw[:, first:last] - world.pv_kw[:, first:last]
    p_kw = np.array([s.battery_kw for s in world.sites])
    e_min = np.array([s.min_kwh for s in world.sites])
    e_max = np.array([s.max_kwh for s in world.sites])
    lower = np.zeros(n_cols)
    upper = np.zeros(n_cols)
    cost = np.zeros(n_cols)
    lower[p0:e0] = (-np.minimum(p_kw[:, None], np.maximum(-net, 0.0))).ravel()
    upper[p0:e0] = np.minimum(p_kw[:, None], np.maximum(net, 0.0)).ravel()
    lower[e0:c0] = np.repeat(e_min, n_t)
    upper[e0:c0] = np.repeat(e_max, n_t)
    upper[c0:n0] = np.repeat(p_kw, n_b * 2)
    block_h = world.product.block_s / 3600.0
    cost[c0:n0] = -np.tile((price * block_h / 1000.0).ravel(), n_s)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    row_lo: list[np.ndarray] = []
    row_hi: list[np.ndarray] = []
    n_rows = 0

    def add(r: np.ndarray, c: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray, count: int) -> None:
        nonlocal n_rows
        rows.append(r + n_rows)
        cols.append(c)
        vals.append(v)
        row_lo.append(lo)
        row_hi.append(hi)
        n_rows += count

    t_idx = np.arange(n_t)
    for s in range(n_s):
        k = np.where(net[s] > 0, 1.0 / EFFICIENCY, EFFICIENCY)  # stored kWh per AC kWh, by the slot's sign
        pc = p0 + s * n_t + t_idx
        ec = e0 + s * n_t + t_idx
        # e[t] - e[t-1] + k dt p[t] = 0 (e[-1] = the sim's energy at the week's start)
        r = np.concatenate([t_idx, t_idx[1:], t_idx])
        c = np.concatenate([ec, ec[:-1], pc])
        v = np.concatenate([np.ones(n_t), -np.ones(n_t - 1), k * dt_h])
        rhs = np.zeros(n_t)
        rhs[0] = energy0_kwh[s]
        add(r, c, v, rhs, rhs, n_t)
        for b, (bs, be) in enumerate(block_slots):
            cu = c0 + (s * n_b + b) * 2
            cd = cu + 1
            span = np.arange(bs, be)
            m = span.size
            # power: p + c_up <= P, -p + c_down <= P
            add(np.concatenate([np.arange(m), np.arange(m), m + np.arange(m), m + np.arange(m)]),
                np.concatenate([pc[span], np.full(m, cu), pc[span], np.full(m, cd)]),
                np.concatenate([np.ones(m), np.ones(m), -np.ones(m), np.ones(m)]),
                np.full(2 * m, -np.inf), np.full(2 * m, p_kw[s]), 2 * m)
            # energy: an activation from any slot of the block lasting up to the sustain time fits what the
            # schedule leaves at its end (as plan_offers): e[tau] - emin >= c_up k dt / eff, emax - e >= ...
            ends = np.arange(bs + 1, be + sustain)  # boundary tau = end of slot tau - 1
            factor = np.minimum(sustain, ends - bs).astype(float)
            beyond = ends > n_t
            factor[beyond] = sustain
            ends = np.minimum(ends, n_t)
            ecol = e0 + s * n_t + ends - 1
            q = ends.size
            add(np.concatenate([np.arange(q), np.arange(q), q + np.arange(q), q + np.arange(q)]),
                np.concatenate([ecol, np.full(q, cu), ecol, np.full(q, cd)]),
                np.concatenate([np.ones(q), -factor * dt_h / EFFICIENCY, -np.ones(q), -factor * dt_h * EFFICIENCY]),
                np.concatenate([np.full(q, e_min[s]), np.full(q, -e_max[s])]), np.full(2 * q, np.inf), 2 * q)
    # volume: sum_s c[s, b, d] <= what the market accepted at the clearing price
    for b in range(n_b):
        for j in range(2):
            sc = c0 + (np.arange(n_s) * n_b + b) * 2 + j
            add(np.zeros(n_s, dtype=int), sc, np.ones(n_s), np.full(1, -np.inf), np.full(1, cap_kw[b, j]), 1)
    matrix = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(n_rows, n_cols))
    lo_rows, hi_rows = np.concatenate(row_lo), np.concatenate(row_hi)
    progress(f"[foresight] LP with {n_cols} columns, {n_rows} rows, {matrix.nnz} non-zeros ({solver})")
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("solver", solver)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n_cols, n_rows
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, lower, upper
    lp.row_lower_, lp.row_upper_ = lo_rows, hi_rows
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n_cols, n_rows
    lp.a_matrix_.start_ = matrix.indptr.astype(np.int32)
    lp.a_matrix_.index_ = matrix.indices.astype(np.int32)
    lp.a_matrix_.value_ = matrix.data
    h.passModel(lp)
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    x = np.asarray(h.getSolution().col_value, dtype=float)
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal or x.size != n_cols:
        raise RuntimeError(f"perfect foresight: HiGHS did not solve the LP ({status}); raise --foresight-time-limit")
    revenue = -float(cost @ x)
    sold = np.maximum(x[c0:n0].reshape(n_s, n_b, 2).sum(axis=0), 0.0)  # (blocks, directions) kW
    in_increments = np.floor(sold / inc + 1e-6) * inc
    revenue_inc = float((in_increments * price).sum() * block_h / 1000.0)
    progress(f"[foresight] {status}: {revenue:.2f}, in {inc:.0f} kW increments >= {revenue_inc:.2f} "
             f"({time.perf_counter() - t_start:.0f}s)")
    daily = [0.0] * world.days
    for b, start_s in enumerate(blocks):
        day = next(k for k in range(1, world.days + 1) if start_s < world.day_start_s(k + 1))
        daily[day - 1] += float((sold[b] * price[b]).sum() * block_h / 1000.0)
    sold_mw_h = float(sold.sum()) / 1000.0 * block_h
    return ForesightResult(revenue, revenue_inc, daily, status, sold_mw_h, time.perf_counter() - t_start,
                           n_rows, n_cols)


# ------------------------------------------------------------------------------------------- reporting


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def summary(sim: PortfolioSim) -> dict[str, float]:
    requested = sum(d.mtus_requested for d in sim.days)
    return {
        "revenue": sum(d.net for d in sim.days),
        "capacity_revenue": sum(d.capacity for d in sim.days),
        "energy_revenue": sum(d.energy for d in sim.days),
        "penalties": sum(d.penalties for d in sim.days),
        "under_delivery_mtu_share": sum(d.mtus_under for d in sim.days) / requested if requested else 0.0,
        "mtus_requested": requested,
        "mtus_under_delivered": sum(d.mtus_under for d in sim.days),
        "awarded_mw_h": sum(d.awarded_mwh for d in sim.days),
        "requested_mwh": sum(d.requested_mwh for d in sim.days),
        "delivered_mwh": sum(d.delivered_mwh for d in sim.days),
        "revenue_at_clearing_prices": sum(d.revenue_at_clearing for d in sim.days),
        "bid_mw_h": sum(a.bid_kw for a in sim.auctions) / 1000.0 * sim.world.product.block_s / 3600.0,
        "offer_mw_h": sum(a.offer_kw for a in sim.auctions) / 1000.0 * sim.world.product.block_s / 3600.0,
    }


def build_report(world: World, ours: PortfolioSim, naive: PortfolioSim, oracle: PortfolioSim,
                 pf: ForesightResult, args: argparse.Namespace, run_s: float) -> dict[str, Any]:
    o, n, orc = summary(ours), summary(naive), summary(oracle)
    ratio_pf = _ratio(o["revenue"], pf.revenue)
    ratio_naive = _ratio(o["revenue"], n["revenue"])
    prices = [a.clearing_price for a in ours.auctions]
    bid_prices = [a.bid_price for a in ours.auctions if a.bid_kw > 0]
    kinds = {k.name: sum(1 for s in world.sites if s.kind == k.name) for k in SITE_KINDS}
    pen = world.product.penalty
    return {
        "revenue": o["revenue"],
        "penalties": o["penalties"],
        "under_delivery_mtu_share": o["under_delivery_mtu_share"],
        "perfect_foresight_revenue": pf.revenue,
        "naive_revenue": n["revenue"],
        "ratio_to_perfect_foresight": ratio_pf,
        "ratio_to_naive": ratio_naive,
        "sites": world.n_sites,
        "days": world.days,
        "start": world.start.isoformat(),
        "currency": world.market.currency,
        "confidence": ours.confidence,
        "targets": {
            "revenue_at_least_85pct_of_perfect_foresight": {
                "value": ratio_pf, "met": ratio_pf is not None and ratio_pf >= 0.85},
            "under_delivery_below_1pct_of_mtus": {
                "value": o["under_delivery_mtu_share"], "met": o["under_delivery_mtu_share"] < 0.01},
            "better_than_naive": {"value": ratio_naive, "met": o["revenue"] > n["revenue"]},
        },
        "run_time_s": round(run_s, 1),
        "residual_source": world.pool.source,
        "ours": o,
        "naive": {**n, "confidence": naive.confidence},
        "oracle": orc,
        "perfect_foresight": {
            "revenue": pf.revenue, "revenue_in_increments_at_least": pf.revenue_in_increments,
            "status": pf.status, "solver": args.foresight_solver, "solve_s": round(pf.seconds, 1),
            "rows": pf.rows, "columns": pf.cols,
            "sold_mw_h": pf.sold_mw_h,
        },
        "perfect_foresight_revenue_in_increments_at_least": pf.revenue_in_increments,
        "revenue_at_clearing_prices": o["revenue_at_clearing_prices"],
        "market": {
            "market_id": MARKET_ID, "product": PRODUCT_ID, "block_s": world.product.block_s,
            "sustain_s": world.product.sustain_s, "mtu_s": world.product.mtu_s,
            "capacity_pricing": world.product.capacity_pricing.value,
            "min_bid_kw": world.portfolio.min_bid_kw(world.product),
            "increment_kw": world.portfolio.increment_kw(world.product),
            "penalty": {"tolerance_pct": pen.tolerance_pct, "capacity_clawback_factor": pen.capacity_clawback_factor,
                        "undelivered_energy_price_per_mwh": pen.undelivered_energy_price_per_mwh},
            "competition_scale": world.market_scale,
            "clearing_price_mean": float(np.mean(prices)) if prices else 0.0,
            "price_margin_pct": world.portfolio.price_margin_pct,
            "opportunity_cost_mean": float(np.mean([a.opportunity_cost for a in ours.auctions])) if prices else 0.0,
            "bid_price_mean": float(np.mean(bid_prices)) if bid_prices else 0.0,
            "price_rule": "bidding.pricing.bid_price_rule, fed as BiddingServicer._price; day 1: cost + margin",
            "price_shade": PRICE_SHADE,
            "price_window": PRICE_WINDOW,
        },
        "portfolio": {
            "kinds": kinds,
            "battery_kw": sum(s.battery_kw for s in world.sites),
            "battery_kwh": sum(s.battery_kwh for s in world.sites),
            "pv_kwp": sum(s.pv_kwp for s in world.sites),
            "mean_load_kw": sum(s.mean_load_kw for s in world.sites),
        },
        "daily": [
            {"day": d.day, "revenue": d.net, "penalties": d.penalties, "naive_revenue": nd.net,
             "perfect_foresight_revenue": pf.daily[i],
             "under_delivery_mtu_share": d.mtus_under / d.mtus_requested if d.mtus_requested else 0.0,
             "naive_under_delivery_mtu_share": nd.mtus_under / nd.mtus_requested if nd.mtus_requested else 0.0,
             "awarded_mw_h": d.awarded_mwh}
            for i, (d, nd) in enumerate(zip(ours.days, naive.days, strict=True))
        ],
        "auctions": [asdict(a) for a in ours.auctions],
        "args": {k: v for k, v in vars(args).items() if k != "out"},
    }


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1%}" if pct else f"{v:,.2f}"


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole > 0 else "n/a"


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    cur = doc["currency"]
    t = doc["targets"]
    o, n, orc = doc["ours"], doc["naive"], doc["oracle"]
    block_h = doc["market"]["block_s"] / 3600.0
    cap_mw_h = sum(a["price_taker_kw"] for a in doc["auctions"]) / 1000.0 * block_h
    pf, m, pfo = doc["perfect_foresight"], doc["market"], doc["portfolio"]

    def mark(key: str) -> str:
        return "met" if t[key]["met"] else "**missed**"

    lines = [
        "# Market bench: a week of day-ahead aFRR capacity bidding",
        "",
        f"{doc['sites']} sites, {doc['days']} days from {doc['start']}, market `{m['market_id']}` product "
        f"`{m['product']}` ({m['capacity_pricing']}), 2018 German day-ahead prices, confidence "
        f"{doc['confidence']:.2f}. Run time {doc['run_time_s']:.0f} s. Written by `make bench-market` "
        "(`python -m vpp_demo.bench_market`); method in the module docstring of `services/vpp_demo/bench_market.py`.",
        "",
        "| | ours | naive (P50) | oracle | perfect foresight |",
        "|---|---:|---:|---:|---:|",
        f"| net revenue ({cur}) | {_fmt(o['revenue'])} | {_fmt(n['revenue'])} | {_fmt(orc['revenue'])} | "
        f"{_fmt(pf['revenue'])} |",
        f"| capacity revenue ({cur}) | {_fmt(o['capacity_revenue'])} | {_fmt(n['capacity_revenue'])} | "
        f"{_fmt(orc['capacity_revenue'])} | {_fmt(pf['revenue'])} |",
        f"| penalties ({cur}) | {_fmt(o['penalties'])} | {_fmt(n['penalties'])} | {_fmt(orc['penalties'])} | "
        "0 (by construction) |",
        f"| under-delivered MTUs (of MTUs with a request) | {_fmt(o['under_delivery_mtu_share'], True)} "
        f"({o['mtus_under_delivered']}/{o['mtus_requested']}) | {_fmt(n['under_delivery_mtu_share'], True)} "
        f"({n['mtus_under_delivered']}/{n['mtus_requested']}) | {_fmt(orc['under_delivery_mtu_share'], True)} "
        f"({orc['mtus_under_delivered']}/{orc['mtus_requested']}) | - |",
        f"| activation energy requested / delivered (MWh) | {o['requested_mwh']:.2f} / {o['delivered_mwh']:.2f} | "
        f"{n['requested_mwh']:.2f} / {n['delivered_mwh']:.2f} | {orc['requested_mwh']:.2f} / "
        f"{orc['delivered_mwh']:.2f} | - |",
        f"| capacity awarded (MW x h) | {o['awarded_mw_h']:.1f} | {n['awarded_mw_h']:.1f} | "
        f"{orc['awarded_mw_h']:.1f} | {pf['sold_mw_h']:.1f} |",
        f"| capacity bid (MW x h) / offered before flooring | {o['bid_mw_h']:.1f} / {o['offer_mw_h']:.1f} | "
        f"{n['bid_mw_h']:.1f} / {n['offer_mw_h']:.1f} | {orc['bid_mw_h']:.1f} / {orc['offer_mw_h']:.1f} | - |",
        f"| awards valued at the clearing price ({cur}) | {_fmt(o['revenue_at_clearing_prices'])} | "
        f"{_fmt(n['revenue_at_clearing_prices'])} | {_fmt(orc['revenue_at_clearing_prices'])} | "
        f"{_fmt(pf['revenue'])} |",
        "",
        "*oracle*: our bidding loop fed perfect PV and load forecasts (same offers logic, prices, activations): "
        "the difference to *ours* is what forecast errors cost. *perfect foresight*: the LP in the module "
        "docstring, which also chooses the battery schedule (holds energy back for reserve).",
        "",
        f"Perfect foresight (HiGHS LP, {pf['status']}, continuous volumes): {_fmt(pf['revenue'])} {cur}; its "
        f"volumes floored to the {m['increment_kw']:.0f} kW increment earn "
        f"{_fmt(pf['revenue_in_increments_at_least'])} {cur} (a lower bound of the best in increments). "
        f"Solved in {pf['solve_s']:.0f} s ({pf['rows']:,} rows, "
        f"{pf['columns']:,} columns).",
        "",
        "## Targets",
        "",
        "| target | value | |",
        "|---|---:|---|",
        f"| revenue >= 0.85 x perfect foresight | {_fmt(doc['ratio_to_perfect_foresight'])} | "
        f"{mark('revenue_at_least_85pct_of_perfect_foresight')} |",
        f"| under-delivery < 1 % of MTUs | {_fmt(doc['under_delivery_mtu_share'], True)} | "
        f"{mark('under_delivery_below_1pct_of_mtus')} |",
        f"| better than naive (ratio) | {_fmt(doc['ratio_to_naive'])} | {mark('better_than_naive')} |",
        "",
        "![daily revenue and under-delivery](market.png)",
        "",
        "## Per day",
        "",
        f"| day | ours ({cur}) | penalties | naive | perfect foresight | under-delivered MTUs ours / naive |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for d in doc["daily"]:
        lines.append(
            f"| {d['day']} | {_fmt(d['revenue'])} | {_fmt(d['penalties'])} | {_fmt(d['naive_revenue'])} | "
            f"{_fmt(d['perfect_foresight_revenue'])} | {_fmt(d['under_delivery_mtu_share'], True)} / "
            f"{_fmt(d['naive_under_delivery_mtu_share'], True)} |"
        )
    src = doc["residual_source"]
    lines += [
        "",
        "## Setup",
        "",
        f"* Portfolio: {', '.join(f'{v} {k}' for k, v in pfo['kinds'].items())} sites; batteries "
        f"{pfo['battery_kw']:,.0f} kW / {pfo['battery_kwh']:,.0f} kWh (SoC window {SOC_MIN:.0%}-{SOC_MAX:.0%}, "
        f"{EFFICIENCY:.0%} one way, {SOC_START:.0%} at the start), PV {pfo['pv_kwp']:,.0f} kWp, mean load "
        f"{pfo['mean_load_kw']:,.0f} kW.",
        "* Truth: PVDAQ system 50 (kW/kWp x kWp) and the UCI household (x mean load), moved onto the week "
        "by day of year (PV, site-specific shift of up to 15 days) and by ISO week and weekday (load, shift of "
        "up to 3 weeks), local clock to local clock.",
        f"* Forecast errors: residuals of the backtested model configuration (fingerprint "
        f"{src.get('model_fingerprint')}), {src.get('runner')}. Load: {src.get('load')}. PV: {src.get('pv')}. "
        f"Days in the pool: {src.get('days')}. Equivalent command: `{src.get('equivalent_command')}`.",
        f"* Product (catalog `vpp_common/markets/data/markets/entsoe.toml`): block {m['block_s'] // 3600} h, "
        f"sustain {m['sustain_s'] / 3600:g} h, MTU {m['mtu_s'] // 60} min, minimum bid {m['min_bid_kw']:.0f} kW, "
        f"increment {m['increment_kw']:.0f} kW; penalty: tolerance {m['penalty']['tolerance_pct']:g} %, capacity "
        f"clawback x{m['penalty']['capacity_clawback_factor']:g}, undelivered energy "
        f"{m['penalty']['undelivered_energy_price_per_mwh']:g} {cur}/MWh.",
        f"* Competition: `market/data/competition.toml` curves with kW scaled x{m['competition_scale']:.1f} "
        f"(portfolio battery kW / {DEMO_PORTFOLIO_KW:.0f} kW). Mean clearing price in our run "
        f"{m['clearing_price_mean']:.2f} {cur}/MW/h.",
        f"* Bid price (as the bidding service, `bidding.pricing.bid_price_rule`, same rule for ours, naive and "
        f"oracle): in a pay-as-bid product {m['price_shade']:g} x the median of the last {m['price_window']} clearing "
        "prices of the portfolio's own auctions on earlier days at the same hour of day and direction, never "
        f"below the opportunity cost (mean {m['opportunity_cost_mean']:.2f} {cur}/MW/h, D-1's day-ahead prices) "
        f"+ {m['price_margin_pct']:g} %; day 1 has no history, so it is bid at cost + margin. Mean bid price "
        f"{m['bid_price_mean']:.2f} {cur}/MW/h.",
        "",
        "## Reading the figures",
        "",
        "Where the gap to perfect foresight comes from:",
        "",
        f"1. Price asked: our awards valued at the clearing price would have earned "
        f"{_fmt(o['revenue_at_clearing_prices'])} {cur} instead of the {_fmt(o['capacity_revenue'])} paid at our bid "
        f"prices ({m['capacity_pricing']}).",
        f"2. Forecast errors: with perfect forecasts the same loop (oracle) would have been awarded "
        f"{orc['awarded_mw_h']:.1f} instead of {o['awarded_mw_h']:.1f} MW x h, worth "
        f"{_fmt(orc['revenue_at_clearing_prices'])} {cur} at clearing prices, with penalties {_fmt(orc['penalties'])}.",
        f"3. Battery schedule and offer logic: perfect foresight sells {pf['sold_mw_h']:.1f} MW x h for "
        f"{_fmt(pf['revenue'])} {cur} by holding energy and room back for reserve; our offers are headroom on "
        "top of a self-consumption baseline, which empties the batteries in the evening and fills them at "
        "midday.",
        f"4. Market size: perfect foresight sold {_share(pf['sold_mw_h'], cap_mw_h)} of all the volume the market "
        f"accepted at the clearing prices ({cap_mw_h:.1f} MW x h). The competition curves are the same every "
        "day, so where it sells everything its daily figure repeats.",
        f"5. Increments: the bids floor each block's offer to {m['increment_kw']:.0f} kW "
        f"({o['offer_mw_h']:.1f} MW x h offered, {o['bid_mw_h']:.1f} bid).",
        "",
        f"* Under-delivery: offers are sized so that a full activation could be held for the product's sustain "
        f"time ({m['sustain_s'] / 3600:g} h) from any slot of the block; the modelled requests "
        "(`market.signals.afrr_setpoints`) asked for "
        f"{_share(o['requested_mwh'], o['awarded_mw_h'])} of the awarded MW x h as energy, changing sign, and "
        "dispatch spreads each request over every site's headroom. So a shortfall needs a forecast far off and "
        "a long one-sided request together.",
        f"* Confidence: the naive P50 bids won {n['awarded_mw_h']:.1f} MW x h against our {o['awarded_mw_h']:.1f}, "
        f"with penalties {_fmt(n['penalties'])} against {_fmt(o['penalties'])} {cur} "
        f"(under-delivered MTUs {_fmt(n['under_delivery_mtu_share'], True)} against "
        f"{_fmt(o['under_delivery_mtu_share'], True)}).",
        f"* aFRR capacity is **{m['capacity_pricing']}**: our awards are paid our bid (the price rule in Setup), "
        "the perfect-foresight seller the clearing price. The row 'awards valued at the clearing price' separates "
        "the volume our offers won from the price we asked.",
        "* Energy bids are priced 0 (the aFRR energy market is not modelled): revenue = capacity - penalties.",
        "* Perfect foresight never pays penalties and may hold its batteries back for reserve (a self-consumption-"
        "compatible schedule it chooses); it sells at most what the market accepted at each clearing price.",
    ]
    path.write_text("\n".join(lines) + "\n")


def write_plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [d["day"][5:] for d in doc["daily"]]
    x = np.arange(len(days))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    w = 0.27
    ax1.bar(x - w, [d["perfect_foresight_revenue"] for d in doc["daily"]], w, label="perfect foresight", color="C2")
    ax1.bar(x, [d["revenue"] for d in doc["daily"]], w, label=f"ours (confidence {doc['confidence']:.2f})",
            color="C0")
    ax1.bar(x + w, [d["naive_revenue"] for d in doc["daily"]], w, label="naive (P50)", color="C1")
    ax1.axhline(0, color="black", lw=0.5)
    ax1.set_ylabel(f"net revenue per day ({doc['currency']})")
    top = max([d["perfect_foresight_revenue"] for d in doc["daily"]] + [d["revenue"] for d in doc["daily"]]
              + [d["naive_revenue"] for d in doc["daily"]] + [1.0])
    ax1.set_ylim(top=1.25 * top)
    ax1.legend(loc="upper center", ncol=3)
    ax1.set_title(f"aFRR capacity, {doc['sites']} sites, week from {doc['start']}")
    ax2.bar(x - w / 2, [100 * d["under_delivery_mtu_share"] for d in doc["daily"]], w, label="ours", color="C0")
    ax2.bar(x + w / 2, [100 * d["naive_under_delivery_mtu_share"] for d in doc["daily"]], w, label="naive",
            color="C1")
    ax2.axhline(1.0, color="red", lw=0.8, ls="--", label="target 1 %")
    ax2.set_ylim(0.0, max([1.5] + [100 * d["under_delivery_mtu_share"] for d in doc["daily"]]
                          + [100 * d["naive_under_delivery_mtu_share"] for d in doc["daily"]]) * 1.1)
    ax2.set_ylabel("under-delivered MTUs (%)")
    ax2.set_xticks(x, days)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpp_demo.bench_market", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=200, help="portfolio size (default 200)")
    p.add_argument("--days", type=int, default=7, help="delivery days simulated (default 7)")
    p.add_argument("--start", default="2018-06-04", help="first delivery day, Berlin (2018 or 2015)")
    p.add_argument("--seed", type=int, default=1, help="sites, forecast draws, activations (default 1)")
    p.add_argument("--confidence", type=float, default=0.95, help="offers deliverable with this probability")
    p.add_argument("--naive-confidence", type=float, default=0.5, help="the naive baseline's confidence")
    p.add_argument("--margin-pct", type=float, default=10.0, help="bid price margin over opportunity cost (%%)")
    p.add_argument("--samples", type=int, default=400, help="joint forecast samples per plan")
    p.add_argument("--residual-weeks", type=int, default=4, help="backtest test weeks for the residual pool")
    p.add_argument("--min-bid-kw", type=float, default=None,
                   help="replace the product's minimum bid (and cap its increment) for reduced runs")
    p.add_argument("--market-scale", type=float, default=None,
                   help="competition kW multiplier (default: portfolio battery kW / 150 kW)")
    p.add_argument("--foresight-time-limit", type=float, default=1800.0, help="HiGHS time limit (s)")
    p.add_argument("--foresight-solver", default="ipm", choices=["ipm", "simplex", "pdlp"],
                   help="HiGHS LP solver for perfect foresight (default ipm)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "bench")
    p.add_argument("--no-plot", action="store_true", help="skip market.png")
    return p


def run(args: argparse.Namespace, progress: Progress = _print) -> dict[str, Any]:
    t0 = time.perf_counter()
    world = build_world(args, progress)
    ours = PortfolioSim("ours", world, args.confidence)
    naive = PortfolioSim("naive", world, args.naive_confidence)
    oracle = PortfolioSim("oracle", world, args.confidence, oracle=True)
    progress(f"[market] {PRODUCT_ID} block {world.product.block_s // 3600} h, competition x{world.market_scale:.1f}; "
             f"simulating {world.days} days")
    simulate(world, (ours, naive, oracle), progress)
    assert ours.energy_at_start_kwh is not None
    pf = perfect_foresight(world, ours.auctions, ours.energy_at_start_kwh, args.foresight_time_limit, progress,
                           args.foresight_solver)
    doc = build_report(world, ours, naive, oracle, pf, args, time.perf_counter() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "market.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    write_markdown(doc, args.out / "market.md")
    if not args.no_plot:
        write_plot(doc, args.out / "market.png")
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    doc = run(args)
    t = doc["targets"]
    print(f"[done] wrote {args.out}/market.{{json,md}} in {doc['run_time_s']:.0f}s")
    print(f"  revenue {doc['revenue']:.2f} {doc['currency']} (penalties {doc['penalties']:.2f}), perfect foresight "
          f"{doc['perfect_foresight_revenue']:.2f}, naive {doc['naive_revenue']:.2f}")
    for name, v in t.items():
        print(f"  {'ok  ' if v['met'] else 'MISS'} {name}: {_fmt(v['value'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
