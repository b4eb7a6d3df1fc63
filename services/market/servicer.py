"""``vpp.v1.MarketSimulator``: a TSO for the demo and tests. It takes bids until each block's gate
closes, clears every auction by merit order against a configured competing supply curve and demand
(``market.clearing``, ``market.competition``), publishes the awards, activates them during delivery
(``market.signals``) and settles them from dispatch's meter-based delivery record
(``market.settlement``). It also sends operator/test activations sized from the live portfolio."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, Field, field_validator
from vpp.v1 import (
    aggregation_pb2,
    aggregation_pb2_grpc,
    common_pb2,
    market_api_pb2,
    market_api_pb2_grpc,
    market_pb2,
)

from market import clearing, signals
from market.auctions import Auction, AuctionKey, check_bid, rejected, why_not
from market.competition import load_competition
from market.settings import MarketSettings
from market.settlement import DeliveryStep, PenaltyRule, settle_award, settlement
from vpp_common.grpc_server import timestamp_ns, validated
from vpp_common.kafka import Consumed, EventProducer
from vpp_common.logs import get_logger
from vpp_common.markets import ActivationKind, Product
from vpp_common.topics import ACTIVATIONS, AWARDS, SETTLEMENTS

log = get_logger(__name__)

SERVICE_NAME = "vpp.v1.MarketSimulator"

SETPOINT = Gauge("vpp_market_activation_setpoint_kw", "Setpoint of the latest activation step")
STEPS = Counter("vpp_market_activation_steps_total", "Activation steps sent")
AWARDS_OUT = Counter("vpp_market_awards_total", "Bids answered", ["outcome"])
AUCTIONS = Counter("vpp_market_auctions_cleared_total", "Auctions cleared", ["market", "product"])
SETTLED = Counter("vpp_market_settlement_lines_total", "Settlement lines published", ["market", "outcome"])

MIN_DELIVERY_STEP_S = 4  # dispatch's step: a compressed delivery never steps faster


class Phase(BaseModel):
    fraction: float = Field(ge=-1.0, le=1.0)
    duration_s: int = Field(ge=1, le=3600)


class ActivationRequest(BaseModel):
    product: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    phases: list[Phase] = Field(min_length=1, max_length=100)
    step_s: int = Field(ge=1, le=60)
    award_id: str = Field(default="", max_length=64)
    portfolio_id: str = Field(default="", max_length=40)

    @field_validator("phases")
    @classmethod
    def _total_bounded(cls, phases: list[Phase]) -> list[Phase]:
        if sum(p.duration_s for p in phases) > 4 * 3600:
            raise ValueError("phases last longer than 4 h in total")
        return phases


class BlockRequest(BaseModel):
    market_id: str = Field(min_length=1, max_length=32)
    product: str = Field(min_length=1, max_length=32)
    interval_start: int | None = Field(gt=0)  # ns; None: outside protobuf's Timestamp range
    duration_s: int = Field(default=0, ge=0, le=4 * 3600)
    seed: int = Field(default=0, ge=0)


@dataclass
class Delivery:
    """Dispatch's tracking samples of one activation the simulator sent."""

    started_s: float
    steps: dict[int, market_pb2.Activation]
    samples: dict[int, tuple[float, float, float]]  # step -> (at_s, requested_kw, delivered_kw)


class MarketSimulator(market_api_pb2_grpc.MarketSimulatorServicer):
    def __init__(self, settings: MarketSettings, producer: EventProducer) -> None:
        self._settings = settings
        self._catalog = settings.catalog
        self._competition = (
            load_competition(settings.competition_file) if settings.competition_file else load_competition()
        )
        self._producer = producer
        self._channel: grpc.aio.Channel | None = None
        self.activations: dict[str, market_api_pb2.GetActivationResponse] = {}
        self.auctions: dict[AuctionKey, Auction] = {}
        self.deliveries: dict[str, Delivery] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    def _aggregation(self) -> aggregation_pb2_grpc.AggregationServiceStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._settings.aggregation_target)
        return aggregation_pb2_grpc.AggregationServiceStub(self._channel)

    # -- bids and auctions -----------------------------------------------------------------------

    async def on_bid(self, item: Consumed) -> None:
        """A bid joins its auction while the gate is open; later ones are answered at once with a
        rejection saying why. Malformed bids go to the dead-letter topic (ValueError)."""
        bid = item.env.bid
        key, product = check_bid(bid, self._catalog)
        async with self._lock:
            auction = self._auction(key, product)
            if bid.bid_id in auction.bids:
                return  # re-delivered
            if auction.cleared or time.time() >= auction.gate_closure_s:
                award = rejected(bid, _award_id(), "after gate closure")
                AWARDS_OUT.labels("late").inc()
                await self._producer.publish(AWARDS, bid.portfolio_id, award)
                log.info("bid_after_gate", bid_id=bid.bid_id, product=bid.product, block_start_s=key.block_start_s)
                return
            auction.bids[bid.bid_id] = bid

    def _auction(self, key: AuctionKey, product: Product) -> Auction:
        auction = self.auctions.get(key)
        if auction is None:
            gate_s = product.gate_closure_at(datetime.fromtimestamp(key.block_start_s, UTC)).timestamp()
            auction = self.auctions[key] = Auction(key, key.block_start_s + product.block_s, gate_s)
        return auction

    async def gate_loop(self) -> None:
        """Clear every auction whose gate has closed; forget auctions whose block ended two days ago."""
        while True:
            now_s = time.time()
            due = [a.key for a in self.auctions.values() if not a.cleared and a.gate_closure_s <= now_s]
            for key in due:
                await self._clear(key)
            for key in [k for k, a in self.auctions.items() if a.cleared and a.block_end_s < now_s - 2 * 86400]:
                del self.auctions[key]
            await asyncio.sleep(self._settings.gate_check_s)

    async def _clear(self, key: AuctionKey) -> Auction:
        async with self._lock:
            auction = self.auctions[key]
            if auction.cleared:
                return auction
            product = self._catalog.product(key.market_id, key.product)
            bids = sorted(auction.bids.values(), key=lambda b: b.bid_id)
            try:
                competitors, demand_kw = self._competition.curve_at(
                    key.market_id, key.product, key.direction, key.block_start_s
                )
            except LookupError as exc:
                log.warning("auction_not_configured", market=key.market_id, product=key.product, error=str(exc))
                competitors, demand_kw = [], 0.0
            result = clearing.clear(
                bids,
                competitors,
                demand_kw,
                pricing=product.capacity_pricing.value,
                divisible=product.divisible,
                award_id=lambda _bid: _award_id(),
            )
            for bid, award in zip(bids, result.awards, strict=True):
                award.reason = why_not(award, bid)
            futures = [self._producer.publish(AWARDS, a.portfolio_id, a) for a in result.awards]
            await self._producer.settle(futures)
            auction.cleared = True
            auction.awards = list(result.awards)
            auction.clearing_price_per_mw_h = result.clearing_price_per_mw_h
            auction.demand_kw = result.demand_kw
            auction.accepted_kw = result.accepted_kw
            for a in result.awards:
                AWARDS_OUT.labels("won" if a.awarded_kw > 0 else "lost").inc()
            AUCTIONS.labels(key.market_id, key.product).inc()
            log.info(
                "auction_cleared",
                market=key.market_id,
                product=key.product,
                direction=common_pb2.Direction.Name(key.direction),  # type: ignore[arg-type]
                block_start_s=key.block_start_s,
                bids=len(bids),
                awarded_kw=round(sum(a.awarded_kw for a in result.awards), 3),
                clearing_price_per_mw_h=round(result.clearing_price_per_mw_h, 2),
            )
            return auction

    async def _block(
        self, request_fields: dict[str, object], context: grpc.aio.ServicerContext
    ) -> tuple[BlockRequest, Product, list[AuctionKey]]:
        req = await validated(BlockRequest, request_fields, context)
        if req.market_id not in self._catalog.markets:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"market_id: unknown market {req.market_id!r}")
        market = self._catalog.market(req.market_id)
        try:
            product = market.product(req.product)
        except KeyError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"product: {exc.args[0]}")
            raise
        assert req.interval_start is not None
        start_s = req.interval_start // 1_000_000_000
        directions = (
            (common_pb2.DIRECTION_UNSPECIFIED,)
            if product.symmetric
            else tuple(
                common_pb2.DIRECTION_UP if d.value == "up" else common_pb2.DIRECTION_DOWN for d in product.directions
            )
        )
        keys = [AuctionKey(req.market_id, req.product, int(d), start_s) for d in directions]
        for key in keys:
            self._auction(key, product)
        return req, product, keys

    async def ClearAuction(
        self, request: market_api_pb2.ClearAuctionRequest, context: grpc.aio.ServicerContext
    ) -> market_api_pb2.ClearAuctionResponse:
        _, _, keys = await self._block(
            {
                "market_id": request.market_id,
                "product": request.product,
                "interval_start": _ts_ns(request, "interval_start"),
            },
            context,
        )
        out = market_api_pb2.ClearAuctionResponse()
        for key in keys:
            auction = await self._clear(key)
            out.awards.extend(auction.awards)
            out.cleared.append(
                market_api_pb2.ClearedDirection(
                    direction=key.direction,  # type: ignore[arg-type]
                    demand_kw=auction.demand_kw,
                    accepted_kw=auction.accepted_kw,
                    clearing_price_per_mw_h=auction.clearing_price_per_mw_h,
                )
            )
        return out

    # -- delivery and settlement -----------------------------------------------------------------

    async def DeliverBlock(
        self, request: market_api_pb2.DeliverBlockRequest, context: grpc.aio.ServicerContext
    ) -> market_api_pb2.DeliverBlockResponse:
        req, product, keys = await self._block(
            {
                "market_id": request.market_id,
                "product": request.product,
                "interval_start": _ts_ns(request, "interval_start"),
                "duration_s": request.duration_s,
                "seed": request.seed,
            },
            context,
        )
        auctions = [self.auctions[k] for k in keys]
        if not all(a.cleared for a in auctions):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "interval_start: the block's auction is not cleared yet (ClearAuction)",
            )
        awards = [a for auction in auctions for a in auction.awards if a.awarded_kw > 0]
        if not awards:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "interval_start: nothing was awarded in this block"
            )
        duration_s = req.duration_s or product.block_s
        # In real time the product's own activation step (never under dispatch's 4 s); compressed, 4-s
        # steps, each standing for block_s / n_steps of block time.
        real_time = duration_s >= product.block_s
        step_s = max(MIN_DELIVERY_STEP_S, product.activation_step_s) if real_time else MIN_DELIVERY_STEP_S
        n_steps = max(1, duration_s // step_s)
        series = delivery_series(awards, product, n_steps, seed=req.seed)
        time_scale = product.block_s / (n_steps * step_s)  # block seconds per wall second
        ids = {a.award_id: f"act-{uuid.uuid4().hex[:12]}" for a in awards}
        started_s = time.time()
        for a in awards:
            self.deliveries[ids[a.award_id]] = Delivery(started_s, {}, {})
        log.info(
            "delivery_started", product=product.product_id, awards=len(awards), steps=n_steps, duration_s=duration_s
        )
        next_at = time.monotonic()
        for step in range(n_steps):
            futures = []
            for a in awards:
                act = market_pb2.Activation(
                    activation_id=ids[a.award_id],
                    step=step + 1,
                    product=a.product,
                    setpoint_kw=series[a.award_id][step],
                    award_id=a.award_id,
                    portfolio_id=a.portfolio_id,
                )
                act.issued_at.GetCurrentTime()
                act.valid_until.FromNanoseconds(act.issued_at.ToNanoseconds() + 2 * step_s * 1_000_000_000)
                act.block_time.FromNanoseconds(int((a.interval_start.seconds + step * step_s * time_scale) * 1e9))
                self.deliveries[ids[a.award_id]].steps[step + 1] = act
                futures.append(self._producer.publish(ACTIVATIONS, a.portfolio_id, act))
                STEPS.inc()
            await self._producer.settle(futures)
            next_at += step_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.sleep(self._settings.settle_wait_s)
        settled = await self._settle(awards, ids, product, step_s, time_scale)
        for activation_id in ids.values():
            self.deliveries.pop(activation_id, None)  # settled: its record is in the settlement
        return market_api_pb2.DeliverBlockResponse(
            activation_ids=list(ids.values()), settlement=settled[0] if settled else None
        )

    async def on_tracking(self, item: Consumed) -> None:
        """Dispatch's delivery record, measured at the meters: kept for the activations we sent."""
        sample = item.env.tracking
        delivery = self.deliveries.get(sample.activation_id)
        if delivery is None:
            return
        delivery.samples[int(sample.step)] = (
            sample.at.ToNanoseconds() / 1e9 - delivery.started_s,
            sample.requested_kw,
            sample.delivered_kw,
        )

    async def _settle(
        self, awards: Sequence[market_pb2.Award], ids: dict[str, str], product: Product, step_s: int, time_scale: float
    ) -> list[market_pb2.Settlement]:
        """Settle each award from its delivery record and publish one settlement per portfolio. A step
        dispatch never measured counts as requested and not delivered (the TSO's rule: no record, no
        delivery)."""
        rule = PenaltyRule(
            product.penalty.tolerance_pct,
            product.penalty.capacity_clawback_factor,
            product.penalty.undelivered_energy_price_per_mwh,
        )
        lines_by_portfolio: dict[str, list[market_pb2.SettlementLine]] = {}
        for a in awards:
            delivery = self.deliveries[ids[a.award_id]]
            steps = []
            for n, act in sorted(delivery.steps.items()):
                _, _, delivered = delivery.samples.get(n, (0.0, act.setpoint_kw, 0.0))
                steps.append(
                    DeliveryStep(
                        at_s=(n - 1) * step_s,
                        requested_kw=act.setpoint_kw,
                        delivered_kw=delivered if math.isfinite(delivered) else 0.0,
                        step_s=step_s,
                    )
                )
            lines = settle_award(a, steps, mtu_s=product.mtu_s, penalty=rule, reservations={}, time_scale=time_scale)
            for line in lines:
                SETTLED.labels(a.market_id, "under_delivered" if line.under_delivered else "ok").inc()
            lines_by_portfolio.setdefault(a.portfolio_id, []).extend(lines)
        out = []
        for portfolio_id, lines in lines_by_portfolio.items():
            first = min(a.interval_start.seconds for a in awards)
            last = max(a.interval_end.seconds for a in awards)
            market = self._catalog.market(self._catalog.portfolio(portfolio_id).market_id)
            s = settlement(
                lines,
                settlement_id=f"stl-{uuid.uuid4().hex[:12]}",
                portfolio_id=portfolio_id,
                market_id=market.market_id,
                currency=market.currency,
                period_start_s=first,
                period_end_s=last,
            )
            await self._producer.settle([self._producer.publish(SETTLEMENTS, portfolio_id, s)])
            log.info("block_settled", portfolio=portfolio_id, lines=len(lines), net=round(s.net_revenue, 2))
            out.append(s)
        return out

    # -- operator / test activations -------------------------------------------------------------

    async def StartActivation(
        self, request: market_api_pb2.StartActivationRequest, context: grpc.aio.ServicerContext
    ) -> market_api_pb2.StartActivationResponse:
        req = await validated(
            ActivationRequest,
            {
                "product": request.product or "aFRR",
                "phases": [{"fraction": p.fraction, "duration_s": p.duration_s} for p in request.phases],
                "step_s": request.step_s or 4,
                "award_id": request.award_id,
                "portfolio_id": request.portfolio_id,
            },
            context,
        )
        total_s = sum(p.duration_s for p in req.phases)
        award = self._award(req.award_id) if req.award_id else None
        if req.award_id and award is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"award_id: unknown award {req.award_id!r}")
        portfolio_id = award.portfolio_id if award is not None else (req.portfolio_id or self._settings.portfolio_id)
        if award is not None:
            up_kw = award.awarded_kw if award.direction != common_pb2.DIRECTION_DOWN else 0.0
            down_kw = award.awarded_kw if award.direction != common_pb2.DIRECTION_UP else 0.0
        else:
            try:
                flex = await self._aggregation().GetPortfolioFlexibility(
                    aggregation_pb2.GetPortfolioFlexibilityRequest(
                        portfolio_id=self._settings.portfolio_id, interval_minutes=max(1, -(-total_s // 60))
                    ),
                    timeout=5,
                )
            except grpc.aio.AioRpcError as exc:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"aggregation at {self._settings.aggregation_target}: {exc.details()}"
                )
                raise
            if flex.sites_online == 0:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "portfolio has no site online")
            up_kw, down_kw = flex.up_kw, flex.down_kw
        activation_id = f"act-{uuid.uuid4().hex[:12]}"
        self.activations[activation_id] = market_api_pb2.GetActivationResponse(activation_id=activation_id)
        task = asyncio.create_task(
            self._run(activation_id, req, up_kw, down_kw, award.award_id if award else "", portfolio_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info(
            "activation_accepted", activation_id=activation_id, up_kw=up_kw, down_kw=down_kw, award_id=req.award_id
        )
        return market_api_pb2.StartActivationResponse(
            activation_id=activation_id, up_capability_kw=up_kw, down_capability_kw=down_kw
        )

    def _award(self, award_id: str) -> market_pb2.Award | None:
        for auction in self.auctions.values():
            for a in auction.awards:
                if a.award_id == award_id:
                    return a
        return None

    async def _run(
        self, activation_id: str, req: ActivationRequest, up_kw: float, down_kw: float, award_id: str, portfolio_id: str
    ) -> None:
        """Send a setpoint every step on a drift-free schedule."""
        state = self.activations[activation_id]
        step = 0
        next_at = time.monotonic()
        for phase in req.phases:
            setpoint_kw = phase.fraction * (up_kw if phase.fraction >= 0 else down_kw)
            for _ in range(0, phase.duration_s, req.step_s):
                step += 1
                act = market_pb2.Activation(
                    activation_id=activation_id,
                    step=step,
                    product=req.product,
                    setpoint_kw=setpoint_kw,
                    award_id=award_id,
                    portfolio_id=portfolio_id if award_id or req.portfolio_id else "",
                )
                act.issued_at.GetCurrentTime()
                act.valid_until.FromNanoseconds(act.issued_at.ToNanoseconds() + 2 * req.step_s * 1_000_000_000)
                await self._producer.publish(ACTIVATIONS, portfolio_id, act)
                state.steps.append(act)
                SETPOINT.set(setpoint_kw)
                STEPS.inc()
                next_at += req.step_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        state.finished = True
        SETPOINT.set(0)
        log.info("activation_finished", activation_id=activation_id, steps=step)

    async def GetActivation(
        self, request: market_api_pb2.GetActivationRequest, context: grpc.aio.ServicerContext
    ) -> market_api_pb2.GetActivationResponse:
        state = self.activations.get(request.activation_id)
        if state is None:
            code = grpc.StatusCode.INVALID_ARGUMENT if not request.activation_id else grpc.StatusCode.NOT_FOUND
            await context.abort(code, f"activation_id: unknown activation {request.activation_id!r}")
        assert state is not None
        return state


def delivery_series(
    awards: Sequence[market_pb2.Award], product: Product, n_steps: int, *, seed: int
) -> dict[str, list[float]]:
    """The setpoint per step of each award over a delivery compressed into ``n_steps`` steps, made in
    the block's own time (full activation times hold in block time) and played back step by step.

    aFRR-like (setpoint): one area-control signal; its up part goes to the up awards, its down part to
    the down awards. FCR-like (frequency): proportional to a frequency deviation series. Schedule (mFRR,
    三次): a stepped schedule per award."""
    block_step_s = max(1, product.block_s // n_steps)
    up = sum(a.awarded_kw for a in awards if a.direction == common_pb2.DIRECTION_UP)
    down = sum(a.awarded_kw for a in awards if a.direction == common_pb2.DIRECTION_DOWN)
    out: dict[str, list[float]] = {}
    if product.activation == ActivationKind.SETPOINT:
        signal = signals.afrr_setpoints(
            up, down, n_steps * block_step_s, block_step_s, seed=seed, full_activation_s=product.full_activation_s
        )
        for a in awards:
            total = up if a.direction == common_pb2.DIRECTION_UP else down
            share = a.awarded_kw / total if total > 0 else 0.0
            if a.direction == common_pb2.DIRECTION_UP:
                out[a.award_id] = [max(0.0, v) * share for v in signal]
            else:
                out[a.award_id] = [min(0.0, v) * share for v in signal]
    elif product.activation == ActivationKind.FREQUENCY:
        frequency = signals.frequency_series(n_steps * block_step_s, block_step_s, seed=seed)
        for a in awards:
            out[a.award_id] = signals.fcr_power(a.awarded_kw, frequency)
    else:
        for i, a in enumerate(awards):
            sign = -1.0 if a.direction == common_pb2.DIRECTION_DOWN else 1.0
            out[a.award_id] = signals.mfrr_schedule(
                sign * a.awarded_kw,
                n_steps * block_step_s,
                block_step_s,
                seed=seed + i,
                full_activation_s=product.full_activation_s,
            )
    return {k: (v + [0.0] * n_steps)[:n_steps] for k, v in out.items()}


def _award_id() -> str:
    return f"awd-{uuid.uuid4().hex[:12]}"


def _ts_ns(request: object, field: str) -> int | None:
    if not request.HasField(field):  # type: ignore[attr-defined]
        return 0
    return timestamp_ns(getattr(request, field))
