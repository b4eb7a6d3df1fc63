"""``vpp.v1.BiddingService``: offers per portfolio from forecasts and live state, bids priced from
opportunity cost and submitted through the market adapter before gate closure, awards turned into
reservations, settlements kept. Every call names its portfolio; bids, awards, reservations and
settlements are durable in the market store."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import grpc
import pandas as pd
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, Field
from vpp.v1 import (
    aggregation_pb2_grpc,
    bidding_pb2,
    bidding_pb2_grpc,
    forecasting_pb2_grpc,
    market_pb2,
)

from bidding import inputs, planner
from bidding.bids import Priced, build_bids, direction_name, gate_closure_s
from bidding.market_adapter import MarketAdapter
from bidding.offers import OfferLine
from bidding.pricing import (
    bid_price_rule,
    capacity_opportunity_cost_per_mw_h,
    day_ahead_prices,
    expected_clearing_price,
)
from bidding.reservations import reserve, with_site_shares
from bidding.settings import BiddingSettings
from bidding.store import MarketStore
from vpp_common.grpc_server import timestamp_ns, validated
from vpp_common.kafka import Consumed, EventProducer
from vpp_common.logs import get_logger
from vpp_common.markets import Portfolio, Product
from vpp_common.topics import RESERVATIONS

log = get_logger(__name__)

SERVICE_NAME = "vpp.v1.BiddingService"

BIDS_OUT = Counter("vpp_bidding_bids_total", "Bids submitted", ["portfolio", "product"])
AWARDS_IN = Counter("vpp_bidding_awards_total", "Awards received", ["portfolio", "outcome"])
RESERVED = Counter("vpp_bidding_reserved_kw_total", "kW reserved at sites by awards", ["portfolio"])
SETTLED = Counter("vpp_bidding_settled_net_revenue_total", "Net revenue settled (market currency)", ["portfolio"])
PLAN_SECONDS = Histogram(
    "vpp_bidding_offer_plan_seconds", "Gathering inputs and planning one portfolio's offers", ["portfolio"]
)
_KEEP_AWARDS = 2000  # awards whose per-site delivery is kept for their settlement

PLAN_SITES = Gauge("vpp_bidding_offer_plan_sites", "Sites in the latest offer plan", ["portfolio", "state"])


class PortfolioRequest(BaseModel):
    portfolio_id: str = Field(min_length=1, max_length=40)


class OffersRequest(PortfolioRequest):
    product: str = Field(default="", max_length=32)
    horizon_h: int = Field(ge=0, le=48)
    confidence: float = Field(ge=0.0, lt=1.0, allow_inf_nan=False)


class BidsRequest(PortfolioRequest):
    product: str = Field(default="", max_length=32)
    # None: the request's Timestamp was outside protobuf's range (0001-01-01..9999-12-31).
    interval_start: int | None = Field(default=0, ge=0)


class BiddingServicer(bidding_pb2_grpc.BiddingServiceServicer):
    def __init__(self, settings: BiddingSettings, producer: EventProducer, adapter: MarketAdapter) -> None:
        self._settings = settings
        self._catalog = settings.catalog
        self._producer = producer
        self._adapter = adapter
        self.store = MarketStore(settings.store_url)
        self._plans: dict[tuple[str, float], planner.OfferPlan] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._prices: dict[str, pd.Series] = {}
        self._channels: list[grpc.aio.Channel] = []
        # What each site delivered for each award (|kW| summed over dispatch's steps, from its run states):
        # the weights of the settlement's energy and penalty shares. Bounded: the newest awards only.
        self._delivered: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._steps_seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._aggregation: aggregation_pb2_grpc.AggregationServiceStub | None = None
        self._forecasting: forecasting_pb2_grpc.ForecastingServiceStub | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.store.create_schema)
        for currency in {p.currency for p in self._catalog.portfolios.values()}:
            # read once at start: a missing price file stops the service here, saying what to do
            self._prices[currency] = await asyncio.to_thread(day_ahead_prices, self._settings.price_year, currency)
        agg = grpc.aio.insecure_channel(self._settings.aggregation_target)
        fc = grpc.aio.insecure_channel(self._settings.forecasting_target)
        self._channels = [agg, fc]
        self._aggregation = aggregation_pb2_grpc.AggregationServiceStub(agg)
        self._forecasting = forecasting_pb2_grpc.ForecastingServiceStub(fc)

    async def stop(self) -> None:
        for channel in self._channels:
            await channel.close()
        await asyncio.to_thread(self.store.close)

    async def refresh_loop(self) -> None:
        """Re-plan every portfolio's offers on a schedule; submit bids by themselves when configured."""
        while True:
            for portfolio_id in sorted(self._catalog.portfolios):
                try:
                    plan = await self._plan(portfolio_id, None, force=True)
                    if self._settings.auto_bid_lead_s > 0:
                        await self._auto_bid(plan)
                except grpc.aio.AioRpcError as exc:
                    log.warning(
                        "offer_plan_failed", portfolio=portfolio_id, error=f"{exc.code().name}: {exc.details()}"
                    )
            await asyncio.sleep(self._settings.offer_refresh_s)

    # -- planning --------------------------------------------------------------------------------

    async def _plan(self, portfolio_id: str, confidence: float | None, *, force: bool = False) -> planner.OfferPlan:
        portfolio = self._catalog.portfolio(portfolio_id)
        conf = portfolio.confidence if confidence is None else confidence
        key = (portfolio_id, conf)
        lock = self._locks.setdefault(portfolio_id, asyncio.Lock())
        async with lock:
            cached = self._plans.get(key)
            # a plan that lacks sites (warming up, a site offline) is kept only briefly
            max_age_s = self._settings.offer_refresh_s if not cached or not cached.sites_missing else 10.0
            if cached is not None and not force and time.time() - cached.issued_at_s < max_age_s:
                return cached
            assert self._aggregation is not None and self._forecasting is not None, "start() first"
            started = time.perf_counter()
            gathered = await inputs.gather(
                portfolio.sites,
                self._aggregation,
                self._forecasting,
                horizon_h=portfolio.horizon_h,
                efficiency=self._settings.battery_efficiency,
                max_state_age_s=self._settings.max_site_state_age_s,
            )
            now_s = time.time()
            reservations = await asyncio.to_thread(
                self.store.reservations, portfolio_id, start_s=int(now_s), end_s=int(now_s) + portfolio.horizon_h * 3600
            )
            plan = await asyncio.to_thread(
                planner.plan,
                portfolio,
                self._catalog.market(portfolio.market_id),
                gathered.sites,
                reservations,
                now_s=now_s,
                cfg=planner.SamplingConfig(
                    self._settings.offer_samples,
                    self._settings.offer_seed,
                    self._settings.pv_pv_error_corr,
                    self._settings.load_load_error_corr,
                    self._settings.pv_load_error_corr,
                ),
                confidence=conf,
                missing=gathered.missing,
                notes=gathered.notes,
            )
            PLAN_SECONDS.labels(portfolio_id).observe(time.perf_counter() - started)
            PLAN_SITES.labels(portfolio_id, "used").set(len(plan.sites_used))
            PLAN_SITES.labels(portfolio_id, "missing").set(len(plan.sites_missing))
            if conf != portfolio.confidence:  # keep one plan at a caller's own confidence per portfolio
                for other in [k for k in self._plans if k[0] == portfolio_id and k[1] != portfolio.confidence]:
                    del self._plans[other]
            self._plans[key] = plan
            if plan.sites_missing:
                log.info(
                    "offer_plan_sites_missing",
                    portfolio=portfolio_id,
                    missing=dict(list(plan.sites_missing.items())[:5]),
                )
            return plan

    def _price(
        self, portfolio: Portfolio, awards: Sequence[market_pb2.Award]
    ) -> Callable[[Product, OfferLine], Priced]:
        """The price rule of ``bidding.pricing.bid_price_rule``, with the clearing prices of the
        portfolio's past auctions (``awards``) as the expectation in pay-as-bid products."""
        prices = self._prices[portfolio.currency]
        year = self._settings.price_year
        round_trip = self._settings.battery_efficiency**2
        tz = self._catalog.market(portfolio.market_id).tz
        history: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for a in sorted(awards, key=lambda a: a.interval_start.seconds):
            if a.clearing_price_per_mw_h > 0:
                hour = datetime.fromtimestamp(a.interval_start.seconds, UTC).astimezone(tz).hour
                history.setdefault((a.product, int(a.direction)), []).append((hour, a.clearing_price_per_mw_h))

        def price(product: Product, line: OfferLine) -> Priced:
            day = _same_day_in(datetime.fromtimestamp(line.block_start_s, UTC), year)
            day_prices = prices[(prices.index >= day) & (prices.index < day + timedelta(days=1))]
            cost = capacity_opportunity_cost_per_mw_h(
                day_prices,
                sustain_h=product.sustain_s / 3600.0,
                efficiency=round_trip,
                direction=direction_name(line.direction),
            )
            # Energy is offered at the day's mean day-ahead price plus the margin: what the battery's
            # energy is worth on that day (activated energy is paid apart from the capacity).
            mean_price = float(day_prices.mean()) if len(day_prices) else 0.0
            energy = max(0.0, mean_price) * (1.0 + portfolio.price_margin_pct / 100.0)
            hour = datetime.fromtimestamp(line.block_start_s, UTC).astimezone(tz).hour
            expected = expected_clearing_price(history.get((line.product_id, int(line.direction)), []), hour=hour)
            capacity = bid_price_rule(
                cost, portfolio.price_margin_pct, pricing=product.capacity_pricing.value, expected_clearing=expected
            )
            return Priced(capacity, cost, energy)

        return price

    async def _bids(
        self, portfolio_id: str, products: Sequence[str], block_start_s: int | None
    ) -> tuple[list[market_pb2.Bid], int]:
        plan = await self._plan(portfolio_id, None)
        portfolio = self._catalog.portfolio(portfolio_id)
        past = await asyncio.to_thread(self.store.awards, portfolio_id, end_s=int(time.time()) + 3 * 86400)
        return build_bids(
            plan.lines,
            portfolio=portfolio,
            market=self._catalog.market(portfolio.market_id),
            now_s=time.time(),
            confidence=plan.confidence,
            price=self._price(portfolio, past),
            bid_id=lambda: f"bid-{uuid.uuid4().hex[:12]}",
            products=products,
            block_start_s=block_start_s,
        )

    async def _submit(self, bids: list[market_pb2.Bid]) -> list[market_pb2.Bid]:
        """Record, then submit: a bid the market has is always in our store. One bid per block and
        product direction: blocks already bid are skipped (re-planning never doubles a bid)."""
        if not bids:
            return []
        # one read of what is already bid over the span of these blocks, not one per bid
        existing = await asyncio.to_thread(
            self.store.bids,
            bids[0].portfolio_id,
            start_s=min(b.interval_start.seconds for b in bids),
            end_s=max(b.interval_end.seconds for b in bids),
        )
        already = {(b.product, b.direction, b.interval_start.seconds) for b in existing}
        fresh = [b for b in bids if (b.product, b.direction, b.interval_start.seconds) not in already]
        if fresh:
            await asyncio.to_thread(self.store.record_bids, fresh)
            await self._adapter.submit(fresh)
            for bid in fresh:
                BIDS_OUT.labels(bid.portfolio_id, bid.product).inc()
        return fresh

    async def _auto_bid(self, plan: planner.OfferPlan) -> None:
        now_s = time.time()
        bids, _ = await self._bids(plan.portfolio_id, (), None)
        due = [b for b in bids if b.gate_closure.seconds - now_s <= self._settings.auto_bid_lead_s]
        submitted = await self._submit(due)
        if submitted:
            log.info("bids_submitted", portfolio=plan.portfolio_id, bids=len(submitted))

    # -- gRPC ------------------------------------------------------------------------------------

    async def _named_portfolio(self, portfolio_id: str, context: grpc.aio.ServicerContext) -> Portfolio:
        """The request's ``portfolio_id``, validated and known, or INVALID_ARGUMENT naming it."""
        await validated(PortfolioRequest, {"portfolio_id": portfolio_id}, context)
        return await self._portfolio(portfolio_id, context)

    async def _portfolio(self, portfolio_id: str, context: grpc.aio.ServicerContext) -> Portfolio:
        if portfolio_id not in self._catalog.portfolios:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"portfolio_id: unknown portfolio {portfolio_id!r} "
                f"(known: {', '.join(sorted(self._catalog.portfolios))})",
            )
        return self._catalog.portfolio(portfolio_id)

    async def _product(self, portfolio: Portfolio, product: str, context: grpc.aio.ServicerContext) -> None:
        if product and product not in portfolio.products:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"product: {product!r} is not bid by portfolio {portfolio.portfolio_id!r} "
                f"(it bids: {', '.join(portfolio.products)})",
            )

    async def GetOffers(
        self, request: bidding_pb2.GetOffersRequest, context: grpc.aio.ServicerContext
    ) -> bidding_pb2.GetOffersResponse:
        req = await validated(
            OffersRequest,
            {
                "portfolio_id": request.portfolio_id,
                "product": request.product,
                "horizon_h": request.horizon_h,
                "confidence": request.confidence,
            },
            context,
        )
        portfolio = await self._portfolio(req.portfolio_id, context)
        await self._product(portfolio, req.product, context)
        if req.confidence and req.confidence < 0.5:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "confidence: must be 0 (the portfolio's) or in [0.5, 1)"
            )
        plan = await self._plan_or_unavailable(req.portfolio_id, req.confidence or None, context)
        horizon_end_s = plan.slot_start_s + (req.horizon_h or portfolio.horizon_h) * 3600
        market = self._catalog.market(portfolio.market_id)
        out = bidding_pb2.GetOffersResponse(
            portfolio_id=portfolio.portfolio_id, market_id=market.market_id, forecast_notes=list(plan.notes)
        )
        out.issued_at.FromNanoseconds(int(plan.issued_at_s * 1e9))
        for line in plan.lines:
            if (req.product and line.product_id != req.product) or line.block_end_s > horizon_end_s:
                continue
            offer = bidding_pb2.Offer(
                product=line.product_id,
                direction=line.direction,
                offer_kw=line.offer_kw,
                p50_kw=line.p50_kw,
                confidence=plan.confidence,
                reserved_kw=line.reserved_kw,
                energy_limited=line.energy_limited,
            )
            offer.interval_start.FromSeconds(line.block_start_s)
            offer.interval_end.FromSeconds(line.block_end_s)
            offer.gate_closure.FromSeconds(int(gate_closure_s(market.product(line.product_id), line.block_start_s)))
            out.offers.append(offer)
        return out

    async def _plan_or_unavailable(
        self, portfolio_id: str, confidence: float | None, context: grpc.aio.ServicerContext
    ) -> planner.OfferPlan:
        try:
            plan = await self._plan(portfolio_id, confidence)
        except grpc.aio.AioRpcError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"offer inputs: {exc.code().name}: {exc.details()}")
            raise
        if not plan.sites_used:
            why = "; ".join(f"{s}: {r}" for s, r in list(plan.sites_missing.items())[:5])
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"no site of portfolio {portfolio_id!r} has live state and a forecast yet ({why}); retry shortly",
            )
        return plan

    async def BuildBids(
        self, request: bidding_pb2.BuildBidsRequest, context: grpc.aio.ServicerContext
    ) -> bidding_pb2.BuildBidsResponse:
        start_ns = timestamp_ns(request.interval_start) if request.HasField("interval_start") else 0
        if start_ns is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "interval_start: outside protobuf's Timestamp range (0001-01-01T00:00:00Z..9999-12-31T23:59:59Z)",
            )
        req = await validated(
            BidsRequest,
            {"portfolio_id": request.portfolio_id, "product": request.product, "interval_start": start_ns},
            context,
        )
        portfolio = await self._portfolio(req.portfolio_id, context)
        await self._product(portfolio, req.product, context)
        block_start_s = (req.interval_start or 0) // 1_000_000_000 or None
        if block_start_s is not None and block_start_s < time.time():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "interval_start: must not be in the past")
        await self._plan_or_unavailable(req.portfolio_id, None, context)
        bids, past_gate = await self._bids(req.portfolio_id, (req.product,) if req.product else (), block_start_s)
        if request.publish:
            bids = await self._submit(bids)
        return bidding_pb2.BuildBidsResponse(bids=bids, blocks_past_gate=past_gate)

    async def ListBids(
        self, request: bidding_pb2.ListBidsRequest, context: grpc.aio.ServicerContext
    ) -> bidding_pb2.ListBidsResponse:
        await self._named_portfolio(request.portfolio_id, context)
        return bidding_pb2.ListBidsResponse(bids=await asyncio.to_thread(self.store.bids, request.portfolio_id))

    async def ListAwards(
        self, request: bidding_pb2.ListAwardsRequest, context: grpc.aio.ServicerContext
    ) -> bidding_pb2.ListAwardsResponse:
        await self._named_portfolio(request.portfolio_id, context)
        return bidding_pb2.ListAwardsResponse(awards=await asyncio.to_thread(self.store.awards, request.portfolio_id))

    async def ListReservations(
        self, request: bidding_pb2.ListReservationsRequest, context: grpc.aio.ServicerContext
    ) -> bidding_pb2.ListReservationsResponse:
        await self._named_portfolio(request.portfolio_id, context)
        at_s = request.at.seconds if request.HasField("at") else None
        rows = await asyncio.to_thread(self.store.reservations, request.portfolio_id, at_s=at_s)
        return bidding_pb2.ListReservationsResponse(reservations=rows)

    async def GetSettlement(
        self, request: bidding_pb2.GetSettlementRequest, context: grpc.aio.ServicerContext
    ) -> bidding_pb2.GetSettlementResponse:
        portfolio = await self._named_portfolio(request.portfolio_id, context)
        start_s = request.period_start.seconds if request.HasField("period_start") else None
        end_s = request.period_end.seconds if request.HasField("period_end") else None
        if start_s is not None and end_s is not None and end_s <= start_s:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "period_end: must be after period_start")
        lines = await asyncio.to_thread(self.store.settlement_lines, request.portfolio_id, start_s=start_s, end_s=end_s)
        return bidding_pb2.GetSettlementResponse(
            portfolio_id=portfolio.portfolio_id,
            currency=portfolio.currency,
            lines=lines,
            capacity_revenue=sum(line.capacity_revenue for line in lines),
            energy_revenue=sum(line.energy_revenue for line in lines),
            penalties=sum(line.penalty for line in lines),
            net_revenue=sum(line.net_revenue for line in lines),
        )

    # -- Kafka -----------------------------------------------------------------------------------

    async def on_award(self, item: Consumed) -> None:
        """An award becomes durable, then its reservations are held and published (before the offset is
        committed: a restart re-reads the award and finds both already done)."""
        award = item.env.award
        if not award.award_id or not award.bid_id:
            raise ValueError("award: award_id and bid_id are required")
        bid = await asyncio.to_thread(self.store.bid, award.bid_id)
        if bid is None:
            return  # another aggregator's bid, or one this store never recorded: not ours to reserve
        await asyncio.to_thread(self.store.record_award, award)
        AWARDS_IN.labels(award.portfolio_id, "won" if award.awarded_kw > 0 else "lost").inc()
        if award.awarded_kw <= 0:
            return
        if await asyncio.to_thread(self.store.reservation_set, award.award_id) is None:
            portfolio = self._catalog.portfolio(bid.portfolio_id)
            product = self._catalog.product(portfolio.market_id, bid.product)
            rs = reserve(award, bid, product, self._settings.battery_efficiency)
            await asyncio.to_thread(self.store.record_reservations, rs)
            RESERVED.labels(award.portfolio_id).inc(award.awarded_kw - rs.unplaced_kw)
        stored = await asyncio.to_thread(self.store.reservation_set, award.award_id)
        assert stored is not None
        await self._producer.publish(RESERVATIONS, award.award_id, stored)
        # the plans of this portfolio now hold less: re-plan on the next request
        for key in [k for k in self._plans if k[0] == award.portfolio_id]:
            del self._plans[key]
        log.info(
            "award_reserved",
            award_id=award.award_id,
            portfolio=award.portfolio_id,
            awarded_kw=award.awarded_kw,
            sites=len(stored.reservations),
        )

    async def on_run_state(self, item: Consumed) -> None:
        """Dispatch's state after each step of an awarded activation: each site's part of the delivery
        measured at its meter (for the step before), added up per award."""
        state = item.env.activation_run
        if not state.award_id or (state.activation_id, state.step) in self._steps_seen:
            return  # an unawarded activation, or a step already counted (a standby's or a re-delivery)
        self._steps_seen[(state.activation_id, state.step)] = None
        per_site = self._delivered.setdefault(state.award_id, {})
        self._delivered.move_to_end(state.award_id)
        for site in state.sites:
            per_site[site.site_id] = per_site.get(site.site_id, 0.0) + abs(site.delivered_kw)
        while len(self._delivered) > _KEEP_AWARDS:
            self._delivered.popitem(last=False)
        while len(self._steps_seen) > 50 * _KEEP_AWARDS:
            self._steps_seen.popitem(last=False)

    async def on_settlement(self, item: Consumed) -> None:
        """The market's settlement, with each site's share (capacity by reserved kW, energy and penalty by
        its measured delivery: ``reservations.with_site_shares``), kept durably."""
        settlement = item.env.settlement
        if not settlement.settlement_id or settlement.portfolio_id not in self._catalog.portfolios:
            raise ValueError(f"settlement {settlement.settlement_id!r}: unknown portfolio {settlement.portfolio_id!r}")
        reserved: dict[str, dict[str, float]] = {}
        for line in settlement.lines:
            if line.award_id not in reserved:
                held = await asyncio.to_thread(self.store.reservation_set, line.award_id)
                reserved[line.award_id] = {r.site_id: r.reserved_kw for r in held.reservations} if held else {}
        shared = with_site_shares(settlement, reserved, {a: dict(self._delivered.get(a, {})) for a in reserved})
        if await asyncio.to_thread(self.store.record_settlement, shared):
            SETTLED.labels(shared.portfolio_id).inc(shared.net_revenue)
            log.info(
                "settled",
                portfolio=shared.portfolio_id,
                lines=len(shared.lines),
                net=round(shared.net_revenue, 2),
                currency=shared.currency,
            )


def _same_day_in(at: datetime, year: int) -> datetime:
    """Midnight UTC of the same calendar day in ``year`` (28 Feb for 29 Feb): the price day to value a
    delivery day by, since only 2015 and 2018 prices ship."""
    day = at.date()
    try:
        return datetime(year, day.month, day.day, tzinfo=UTC)
    except ValueError:
        return datetime(year, day.month, 28, tzinfo=UTC)
