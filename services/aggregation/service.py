"""Aggregation service: consumes telemetry, serves and publishes portfolio flexibility."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from prometheus_client import Gauge
from pydantic import BaseModel, Field
from vpp.v1 import aggregation_pb2, aggregation_pb2_grpc, envelope_pb2, flexibility_pb2

from aggregation.portfolio import portfolio_flexibility
from aggregation.settings import AggregationSettings
from vpp_common.app import ServiceApp
from vpp_common.grpc_server import validated
from vpp_common.logs import get_logger
from vpp_common.sites import SiteTable
from vpp_common.topics import FLEXIBILITY, TELEMETRY

log = get_logger(__name__)

SITES_ONLINE = Gauge("vpp_aggregation_sites_online", "Sites with fresh telemetry")
SITES_KNOWN = Gauge("vpp_aggregation_sites_known", "Sites ever seen")
PORTFOLIO_KW = Gauge("vpp_aggregation_portfolio_flexibility_kw", "Portfolio flexibility", ["direction"])
TELEMETRY_AGE = Gauge("vpp_aggregation_newest_telemetry_age_seconds", "Age of the newest telemetry when published")


class PortfolioRequest(BaseModel):
    portfolio_id: str = Field(default="", max_length=64)
    interval_minutes: int = Field(ge=0, le=240)


class SiteRequest(BaseModel):
    site_id: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]*$")


class AggregationServicer(aggregation_pb2_grpc.AggregationServiceServicer):
    def __init__(self, settings: AggregationSettings, table: SiteTable) -> None:
        self._settings = settings
        self.table = table

    def on_telemetry(self, env: envelope_pb2.Envelope, record: Any) -> None:
        if env.telemetry.site_id != env.site_id:
            raise ValueError(f"telemetry.site_id {env.telemetry.site_id!r} != envelope site {env.site_id!r}")
        self.table.update(env.telemetry)

    def snapshot(self, interval_minutes: int) -> flexibility_pb2.PortfolioFlexibility:
        now_s = time.time()
        readings = self.table.readings()
        flex = portfolio_flexibility(
            (self.table.battery_state(r, now_s) for r in readings.values()),
            interval_minutes=interval_minutes,
            efficiency=self._settings.efficiency,
            portfolio_id=self._settings.portfolio_id,
        )
        flex.computed_at.FromNanoseconds(int(now_s * 1e9))
        flex.interval_start.FromNanoseconds(int(now_s * 1e9))
        flex.interval_end.FromNanoseconds(int((now_s + interval_minutes * 60) * 1e9))
        for site in flex.sites:
            site.measured_at.CopyFrom(readings[site.site_id].telemetry.measured_at)
        return flex

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
        return self.snapshot(req.interval_minutes or self._settings.default_interval_minutes)

    async def GetSiteFlexibility(
        self, request: aggregation_pb2.GetSiteFlexibilityRequest, context: grpc.aio.ServicerContext
    ) -> flexibility_pb2.SiteFlexibility:
        req = await validated(SiteRequest, {"site_id": request.site_id}, context)
        reading = self.table.get(req.site_id)
        if reading is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"site_id: no telemetry from site {req.site_id!r} yet")
        assert reading is not None
        site = portfolio_flexibility(
            [self.table.battery_state(reading)],
            interval_minutes=self._settings.default_interval_minutes,
            efficiency=self._settings.efficiency,
            portfolio_id=self._settings.portfolio_id,
        ).sites[0]
        site.measured_at.CopyFrom(reading.telemetry.measured_at)
        return site

    async def publish_loop(self, app: ServiceApp) -> None:
        """Publish the portfolio's flexibility for the next interval on a fixed period."""
        while True:
            flex = self.snapshot(self._settings.default_interval_minutes)
            SITES_ONLINE.set(flex.sites_online)
            SITES_KNOWN.set(flex.sites_total)
            PORTFOLIO_KW.labels("up").set(flex.up_kw)
            PORTFOLIO_KW.labels("down").set(flex.down_kw)
            if flex.sites:
                newest = max(s.measured_at.ToNanoseconds() for s in flex.sites) / 1e9
                TELEMETRY_AGE.set(time.time() - newest)
            if flex.sites_total:
                await app.producer.publish_async(FLEXIBILITY, self._settings.portfolio_id, flex)
            await asyncio.sleep(self._settings.publish_interval_s)


def build(app: ServiceApp, settings: AggregationSettings) -> AggregationServicer:
    servicer = AggregationServicer(settings, SiteTable(settings.stale_after_s))
    app.add_servicer(
        aggregation_pb2_grpc.add_AggregationServiceServicer_to_server, servicer, "vpp.v1.AggregationService"
    )
    # Every replica keeps the full site table: its own group, so replicas are interchangeable.
    app.add_consumer(
        {TELEMETRY: "telemetry"}, servicer.on_telemetry, group_id=f"aggregation-{settings.instance_id}"
    )
    app.add_task(lambda: servicer.publish_loop(app))
    return servicer
