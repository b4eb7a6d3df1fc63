"""``vpp.v1.AggregationService``: portfolio queries from the merged partials (any replica answers), site
queries from the replica that owns the site's partition (forwarded there if it is not this one)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from pydantic import BaseModel, Field
from vpp.v1 import aggregation_pb2, aggregation_pb2_grpc, flexibility_pb2

from aggregation.aggregator import Aggregator
from aggregation.partition_state import SiteEntry
from aggregation.portfolio import portfolio_flexibility
from vpp_common.grpc_server import validated
from vpp_common.logs import get_logger
from vpp_common.partials import maintained_interval
from vpp_common.sites import battery_state

log = get_logger(__name__)

SERVICE_NAME = "vpp.v1.AggregationService"
FORWARDED = "x-vpp-forwarded"  # set on calls between replicas: answer from local state, never forward again
FORWARD_TIMEOUT_S = 2.0


class PortfolioRequest(BaseModel):
    portfolio_id: str = Field(default="", max_length=64)
    interval_minutes: int = Field(ge=0, le=240)


class SiteRequest(BaseModel):
    site_id: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]*$")


class AggregationServicer(aggregation_pb2_grpc.AggregationServiceServicer):
    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator
        self._settings = aggregator.settings
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, target: str) -> aggregation_pb2_grpc.AggregationServiceStub:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = grpc.aio.insecure_channel(target)
        return aggregation_pb2_grpc.AggregationServiceStub(channel)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()), return_exceptions=True)

    async def GetPortfolioFlexibility(
        self, request: aggregation_pb2.GetPortfolioFlexibilityRequest, context: grpc.aio.ServicerContext
    ) -> flexibility_pb2.PortfolioFlexibility:
        req = await validated(
            PortfolioRequest,
            {"portfolio_id": request.portfolio_id, "interval_minutes": request.interval_minutes},
            context,
        )
        if req.portfolio_id not in ("", self._settings.portfolio_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"portfolio_id: unknown portfolio {req.portfolio_id!r}")
        interval = maintained_interval(
            self.aggregator.intervals, req.interval_minutes or self._settings.default_interval_minutes
        )
        flex = self.aggregator.portfolio(interval)
        if request.include_sites:
            forwarded = _forwarded(context)
            rows = self._local_rows(interval)
            if not forwarded:
                rows.extend(await self._remote_rows(request, interval))
            if forwarded:
                flex = flexibility_pb2.PortfolioFlexibility(portfolio_id=flex.portfolio_id)
            flex.sites.extend(sorted(rows, key=lambda s: s.site_id))
        return flex

    def _local_rows(self, interval_minutes: int) -> list[flexibility_pb2.SiteFlexibility]:
        now_s = time.time()
        rows: list[flexibility_pb2.SiteFlexibility] = []
        for owned in self.aggregator.owned.values():
            if owned.restoring:
                continue
            owned.state.expire(now_s)
            rows.extend(self._row(entry, interval_minutes) for entry in owned.state.sites.values())
        return rows

    async def _remote_rows(
        self, request: aggregation_pb2.GetPortfolioFlexibilityRequest, interval_minutes: int
    ) -> list[flexibility_pb2.SiteFlexibility]:
        me = self.aggregator.owner_target
        targets = {
            t.owner_target for t in self.aggregator.view.latest.values() if t.owner_target and t.owner_target != me
        }
        ask = aggregation_pb2.GetPortfolioFlexibilityRequest(
            portfolio_id=request.portfolio_id, interval_minutes=interval_minutes, include_sites=True
        )
        calls = [
            self._stub(t).GetPortfolioFlexibility(ask, timeout=FORWARD_TIMEOUT_S, metadata=((FORWARDED, "1"),))
            for t in sorted(targets)
        ]
        rows: list[flexibility_pb2.SiteFlexibility] = []
        for target, result in zip(sorted(targets), await asyncio.gather(*calls, return_exceptions=True), strict=True):
            if isinstance(result, BaseException):
                log.warning("site_rows_unavailable", owner=target, error=repr(result)[:200])
                continue
            rows.extend(result.sites)
        return rows

    def _row(self, entry: SiteEntry, interval_minutes: int) -> flexibility_pb2.SiteFlexibility:
        state = battery_state(entry.telemetry, entry.online)
        site = portfolio_flexibility(
            [state],
            interval_minutes=interval_minutes,
            efficiency=self._settings.efficiency,
            portfolio_id=self._settings.portfolio_id,
        ).sites[0]
        site.measured_at.CopyFrom(entry.telemetry.measured_at)
        return site

    async def GetSiteFlexibility(
        self, request: aggregation_pb2.GetSiteFlexibilityRequest, context: grpc.aio.ServicerContext
    ) -> flexibility_pb2.SiteFlexibility:
        req = await validated(SiteRequest, {"site_id": request.site_id}, context)
        owned, entry = self.aggregator.local_site(req.site_id)
        if owned:
            if entry is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"site_id: no telemetry from site {req.site_id!r} yet")
            assert isinstance(entry, SiteEntry)
            self.aggregator.owned[self.aggregator.partition_of(req.site_id)].state.expire(time.time())
            return self._row(entry, self._settings.default_interval_minutes)
        partition = self.aggregator.partition_of(req.site_id)
        last = self.aggregator.view.latest.get(partition)
        no_owner = last is None or not last.owner_target or last.owner_target == self.aggregator.owner_target
        if _forwarded(context) or no_owner:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"site_id: partition {partition} of site {req.site_id!r} has no restored owner yet; retry",
            )
        assert last is not None
        try:
            return await self._stub(last.owner_target).GetSiteFlexibility(
                request, timeout=FORWARD_TIMEOUT_S, metadata=((FORWARDED, "1"),)
            )
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
            raise


def _forwarded(context: grpc.aio.ServicerContext) -> bool:
    md: Any = context.invocation_metadata() or ()
    return any(k == FORWARDED for k, _ in md)
