"""``vpp.v1.MarketSimulator``: a TSO that sizes activations from the portfolio's live flexibility and
sends an aFRR-style setpoint every step, and a capacity auction that clears bids into awards."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, Field, field_validator
from vpp.v1 import aggregation_pb2, aggregation_pb2_grpc, market_api_pb2, market_api_pb2_grpc, market_pb2

from market.settings import MarketSettings
from vpp_common.grpc_server import validated
from vpp_common.kafka import Consumed, EventProducer
from vpp_common.logs import get_logger
from vpp_common.topics import ACTIVATIONS, AWARDS

log = get_logger(__name__)

SERVICE_NAME = "vpp.v1.MarketSimulator"

SETPOINT = Gauge("vpp_market_activation_setpoint_kw", "Setpoint of the latest activation step")
STEPS = Counter("vpp_market_activation_steps_total", "Activation steps sent")
AWARDS_OUT = Counter("vpp_market_awards_total", "Bids cleared", ["outcome"])


class Phase(BaseModel):
    fraction: float = Field(ge=-1.0, le=1.0)
    duration_s: int = Field(ge=1, le=3600)


class ActivationRequest(BaseModel):
    product: str = Field(pattern=r"^(aFRR|mFRR)$")
    phases: list[Phase] = Field(min_length=1, max_length=100)
    step_s: int = Field(ge=1, le=60)

    @field_validator("phases")
    @classmethod
    def _total_bounded(cls, phases: list[Phase]) -> list[Phase]:
        if sum(p.duration_s for p in phases) > 4 * 3600:
            raise ValueError("phases last longer than 4 h in total")
        return phases


class MarketSimulator(market_api_pb2_grpc.MarketSimulatorServicer):
    def __init__(self, settings: MarketSettings, producer: EventProducer) -> None:
        self._settings = settings
        self._producer = producer
        self._channel: grpc.aio.Channel | None = None
        self.activations: dict[str, market_api_pb2.GetActivationResponse] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _aggregation(self) -> aggregation_pb2_grpc.AggregationServiceStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._settings.aggregation_target)
        return aggregation_pb2_grpc.AggregationServiceStub(self._channel)

    async def StartActivation(
        self, request: market_api_pb2.StartActivationRequest, context: grpc.aio.ServicerContext
    ) -> market_api_pb2.StartActivationResponse:
        req = await validated(
            ActivationRequest,
            {
                "product": request.product or "aFRR",
                "phases": [{"fraction": p.fraction, "duration_s": p.duration_s} for p in request.phases],
                "step_s": request.step_s or 4,
            },
            context,
        )
        total_s = sum(p.duration_s for p in req.phases)
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
        activation_id = f"act-{uuid.uuid4().hex[:12]}"
        self.activations[activation_id] = market_api_pb2.GetActivationResponse(activation_id=activation_id)
        task = asyncio.create_task(self._run(activation_id, req, flex.up_kw, flex.down_kw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("activation_accepted", activation_id=activation_id, up_kw=flex.up_kw, down_kw=flex.down_kw)
        return market_api_pb2.StartActivationResponse(
            activation_id=activation_id, up_capability_kw=flex.up_kw, down_capability_kw=flex.down_kw
        )

    async def _run(self, activation_id: str, req: ActivationRequest, up_kw: float, down_kw: float) -> None:
        """Send a setpoint every step on a drift-free schedule."""
        state = self.activations[activation_id]
        step = 0
        next_at = time.monotonic()
        for phase in req.phases:
            setpoint_kw = phase.fraction * (up_kw if phase.fraction >= 0 else down_kw)
            for _ in range(0, phase.duration_s, req.step_s):
                step += 1
                act = market_pb2.Activation(
                    activation_id=activation_id, step=step, product=req.product, setpoint_kw=setpoint_kw
                )
                act.issued_at.GetCurrentTime()
                act.valid_until.FromNanoseconds(act.issued_at.ToNanoseconds() + 2 * req.step_s * 1_000_000_000)
                await self._producer.publish(ACTIVATIONS, self._settings.portfolio_id, act)
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

    async def on_bid(self, item: Consumed) -> None:
        """Capacity auction, pay-as-cleared: every bid priced at or below the clearing price wins. The
        award is durable before the bid's offset is committed (the consumer settles it)."""
        bid = item.env.bid
        if bid.capacity_kw <= 0 or not bid.bid_id:
            raise ValueError(f"bid {bid.bid_id!r}: capacity_kw must be > 0 and bid_id set")
        won = bid.capacity_price_eur_per_mw <= self._settings.clearing_price_eur_per_mw
        AWARDS_OUT.labels("won" if won else "lost").inc()
        award = market_pb2.Award(
            award_id=f"awd-{uuid.uuid4().hex[:12]}",
            bid_id=bid.bid_id,
            product=bid.product,
            direction=bid.direction,
            awarded_kw=bid.capacity_kw if won else 0.0,
            clearing_price_eur_per_mw=self._settings.clearing_price_eur_per_mw,
        )
        award.interval_start.CopyFrom(bid.interval_start)
        award.interval_end.CopyFrom(bid.interval_end)
        self._producer.publish(AWARDS, bid.portfolio_id or self._settings.portfolio_id, award)
