"""Bidding service: keeps the latest flexibility and the awards, builds and publishes bids on request."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import grpc
from prometheus_client import Counter
from pydantic import BaseModel, Field
from vpp.v1 import bidding_pb2, bidding_pb2_grpc, envelope_pb2, flexibility_pb2

from bidding.bids import BidPolicy, build_bids
from bidding.settings import BiddingSettings
from vpp_common.app import ServiceApp
from vpp_common.grpc_server import validated
from vpp_common.kafka import EventProducer
from vpp_common.topics import AWARDS, BIDS, FLEXIBILITY

BIDS_OUT = Counter("vpp_bidding_bids_total", "Bids published", ["direction"])
AWARDS_IN = Counter("vpp_bidding_awards_total", "Awards received", ["outcome"])

QUARTER_NS = 15 * 60 * 1_000_000_000


class BuildRequest(BaseModel):
    product: str = Field(pattern=r"^(aFRR|mFRR)$")
    interval_minutes: int = Field(ge=15, le=240, multiple_of=15)
    capacity_price_eur_per_mw: float = Field(ge=0, le=100_000)
    interval_start_ns: int = Field(ge=0)


class BiddingServicer(bidding_pb2_grpc.BiddingServiceServicer):
    def __init__(self, settings: BiddingSettings, producer: EventProducer) -> None:
        self._settings = settings
        self._producer = producer
        self._lock = threading.Lock()
        self._flex: flexibility_pb2.PortfolioFlexibility | None = None
        self._flex_at_s = 0.0
        self.awards: deque[Any] = deque(maxlen=1000)  # the latest awards, for ListAwards

    def on_flexibility(self, env: envelope_pb2.Envelope, record: Any) -> None:
        with self._lock:
            self._flex = env.flexibility
            self._flex_at_s = time.time()

    def on_award(self, env: envelope_pb2.Envelope, record: Any) -> None:
        AWARDS_IN.labels("won" if env.award.awarded_kw > 0 else "lost").inc()
        with self._lock:
            self.awards.append(env.award)

    async def BuildBids(
        self, request: bidding_pb2.BuildBidsRequest, context: grpc.aio.ServicerContext
    ) -> bidding_pb2.BuildBidsResponse:
        now_ns = time.time_ns()
        next_quarter_ns = (now_ns // QUARTER_NS + 1) * QUARTER_NS
        start_ns = request.interval_start.ToNanoseconds() if request.HasField("interval_start") else next_quarter_ns
        req = await validated(
            BuildRequest,
            {
                "product": request.product or "aFRR",
                "interval_minutes": request.interval_minutes or 15,
                "capacity_price_eur_per_mw": request.capacity_price_eur_per_mw,
                "interval_start_ns": start_ns,
            },
            context,
        )
        if req.interval_start_ns < now_ns:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "interval_start: must not be in the past")
        with self._lock:
            flex, age_s = self._flex, time.time() - self._flex_at_s
        if flex is None or age_s > self._settings.max_flexibility_age_s:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "no fresh portfolio flexibility yet: is aggregation running?"
            )
        assert flex is not None
        bids = build_bids(
            flex,
            product=req.product,
            interval_start_ns=req.interval_start_ns,
            interval_minutes=req.interval_minutes,
            capacity_price_eur_per_mw=req.capacity_price_eur_per_mw,
            policy=BidPolicy(self._settings.safety_margin, self._settings.min_bid_kw, self._settings.bid_increment_kw),
        )
        if request.publish:
            for bid in bids:
                await self._producer.publish_async(BIDS, bid.portfolio_id or self._settings.portfolio_id, bid)
                BIDS_OUT.labels("up" if bid.direction == 1 else "down").inc()
        return bidding_pb2.BuildBidsResponse(bids=bids)

    async def ListAwards(
        self, request: bidding_pb2.ListAwardsRequest, context: grpc.aio.ServicerContext
    ) -> bidding_pb2.ListAwardsResponse:
        with self._lock:
            return bidding_pb2.ListAwardsResponse(awards=list(self.awards))


def build(app: ServiceApp, settings: BiddingSettings) -> BiddingServicer:
    servicer = BiddingServicer(settings, app.producer)
    app.add_servicer(bidding_pb2_grpc.add_BiddingServiceServicer_to_server, servicer, "vpp.v1.BiddingService")
    app.add_consumer({FLEXIBILITY: "flexibility"}, servicer.on_flexibility, group_id=f"bidding-{settings.instance_id}")
    app.add_consumer({AWARDS: "award"}, servicer.on_award, group_id="bidding", from_beginning=True)
    return servicer
