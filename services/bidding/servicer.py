"""``vpp.v1.BiddingService``: keeps the latest flexibility and the awards, builds and publishes bids."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import grpc
from prometheus_client import Counter
from pydantic import BaseModel, Field
from vpp.v1 import bidding_pb2, bidding_pb2_grpc, flexibility_pb2

from bidding.bids import BidPolicy, build_bids
from bidding.settings import BiddingSettings
from vpp_common.grpc_server import timestamp_ns, validated
from vpp_common.kafka import Consumed, EventProducer
from vpp_common.topics import BIDS

SERVICE_NAME = "vpp.v1.BiddingService"

BIDS_OUT = Counter("vpp_bidding_bids_total", "Bids published", ["direction"])
AWARDS_IN = Counter("vpp_bidding_awards_total", "Awards received", ["outcome"])

QUARTER_NS = 15 * 60 * 1_000_000_000


class BuildRequest(BaseModel):
    product: str = Field(pattern=r"^(aFRR|mFRR)$")
    interval_minutes: int = Field(ge=15, le=240, multiple_of=15)
    capacity_price_eur_per_mw: float = Field(ge=0, le=100_000, allow_inf_nan=False)
    # None: the request's Timestamp was outside protobuf's range (0001-01-01..9999-12-31).
    interval_start: int | None = Field(ge=0)


class BiddingServicer(bidding_pb2_grpc.BiddingServiceServicer):
    def __init__(self, settings: BiddingSettings, producer: EventProducer) -> None:
        self._settings = settings
        self._producer = producer
        self._flex: flexibility_pb2.PortfolioFlexibility | None = None
        self._flex_at_s = 0.0
        self.awards: deque[Any] = deque(maxlen=1000)  # the latest awards, for ListAwards

    async def on_flexibility(self, item: Consumed) -> None:
        self._flex = item.env.flexibility
        self._flex_at_s = time.time()

    async def on_award(self, item: Consumed) -> None:
        AWARDS_IN.labels("won" if item.env.award.awarded_kw > 0 else "lost").inc()
        self.awards.append(item.env.award)

    async def BuildBids(
        self, request: bidding_pb2.BuildBidsRequest, context: grpc.aio.ServicerContext
    ) -> bidding_pb2.BuildBidsResponse:
        now_ns = time.time_ns()
        next_quarter_ns = (now_ns // QUARTER_NS + 1) * QUARTER_NS
        start_ns = timestamp_ns(request.interval_start) if request.HasField("interval_start") else next_quarter_ns
        if start_ns is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "interval_start: outside protobuf's Timestamp range (0001-01-01T00:00:00Z..9999-12-31T23:59:59Z)",
            )
        req = await validated(
            BuildRequest,
            {
                "product": request.product or "aFRR",
                "interval_minutes": request.interval_minutes or 15,
                "capacity_price_eur_per_mw": request.capacity_price_eur_per_mw,
                "interval_start": start_ns,
            },
            context,
        )
        assert req.interval_start is not None
        if req.interval_start < now_ns:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "interval_start: must not be in the past")
        flex, age_s = self._flex, time.time() - self._flex_at_s
        if flex is None or age_s > self._settings.max_flexibility_age_s:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "no fresh portfolio flexibility yet: is aggregation running?"
            )
        assert flex is not None
        bids = build_bids(
            flex,
            product=req.product,
            interval_start_ns=req.interval_start,
            interval_minutes=req.interval_minutes,
            capacity_price_eur_per_mw=req.capacity_price_eur_per_mw,
            policy=BidPolicy(self._settings.safety_margin, self._settings.min_bid_kw, self._settings.bid_increment_kw),
        )
        if request.publish:
            for bid in bids:
                await self._producer.publish(BIDS, bid.portfolio_id or self._settings.portfolio_id, bid)
                BIDS_OUT.labels("up" if bid.direction == 1 else "down").inc()
        return bidding_pb2.BuildBidsResponse(bids=bids)

    async def ListAwards(
        self, request: bidding_pb2.ListAwardsRequest, context: grpc.aio.ServicerContext
    ) -> bidding_pb2.ListAwardsResponse:
        return bidding_pb2.ListAwardsResponse(awards=list(self.awards))
