"""What an offer plan reads, over gRPC: each site's battery from aggregation (``GetSiteFlexibility``)
and its PV and load quantiles from the forecasting service (``GetForecast``, from the issue cycle's
cache: bidding never re-forecasts). The I/O edge of ``bidding.planner``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import pandas as pd
from vpp.v1 import (
    aggregation_pb2,
    aggregation_pb2_grpc,
    common_pb2,
    forecast_pb2,
    forecasting_pb2,
    forecasting_pb2_grpc,
)

from bidding.offers import SiteBattery
from bidding.planner import SiteInputs
from vpp_common.copula import GRID_QUANTILES

_CONCURRENCY = 32  # calls in flight per plan: enough for thousands of sites, gentle on the servers


@dataclass(frozen=True)
class Gathered:
    sites: list[SiteInputs]
    missing: dict[str, str]  # site -> why not in the plan (offline, stale, no forecast yet)
    notes: list[str]  # forecast fallback reasons


async def gather(
    site_ids: Sequence[str],
    aggregation: aggregation_pb2_grpc.AggregationServiceStub,
    forecasting: forecasting_pb2_grpc.ForecastingServiceStub,
    *,
    horizon_h: int,
    efficiency: float,
    max_state_age_s: float,
    timeout_s: float = 10.0,
) -> Gathered:
    semaphore = asyncio.Semaphore(_CONCURRENCY)

    async def one(site_id: str) -> SiteInputs | str | tuple[SiteInputs, list[str]]:
        async with semaphore:
            try:
                flex = await aggregation.GetSiteFlexibility(
                    aggregation_pb2.GetSiteFlexibilityRequest(site_id=site_id), timeout=timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                return f"no live state ({exc.code().name}: {exc.details()})"
            if not flex.online:
                return "offline"
            age_s = time.time() - flex.measured_at.ToSeconds()
            if age_s > max_state_age_s:
                return f"state {age_s:.0f} s old"
            frames: list[pd.DataFrame] = []
            notes: list[str] = []
            for stream in (common_pb2.FORECAST_STREAM_PV, common_pb2.FORECAST_STREAM_LOAD):
                try:
                    fc = await forecasting.GetForecast(
                        forecasting_pb2.GetForecastRequest(
                            site_id=site_id,
                            stream=stream,
                            horizon_minutes=horizon_h * 60,
                            quantiles=list(GRID_QUANTILES),
                        ),
                        timeout=timeout_s,
                    )
                except grpc.aio.AioRpcError as exc:
                    return f"no {common_pb2.ForecastStream.Name(stream)} forecast ({exc.code().name}: {exc.details()})"
                frames.append(forecast_frame(fc))
                if fc.fallback_reason:
                    notes.append(f"{site_id}: {fc.fallback_reason}")
            battery = SiteBattery(
                site_id,
                energy_kwh=max(0.0, flex.energy_up_kwh),
                min_energy_kwh=0.0,
                max_energy_kwh=max(0.0, flex.energy_up_kwh) + max(0.0, flex.energy_down_kwh),
                max_charge_kw=max(0.0, flex.max_charge_kw),
                max_discharge_kw=max(0.0, flex.max_discharge_kw),
                efficiency=efficiency,
            )
            return SiteInputs(battery, frames[0], frames[1]), notes

    results = await asyncio.gather(*(one(s) for s in site_ids))
    out = Gathered([], {}, [])
    for site_id, result in zip(site_ids, results, strict=True):
        if isinstance(result, str):
            out.missing[site_id] = result
        elif isinstance(result, tuple):
            out.sites.append(result[0])
            out.notes.extend(result[1])
    return out


def forecast_frame(fc: forecast_pb2.Forecast) -> pd.DataFrame:
    """A ``Forecast`` as rows = slot start (epoch s), columns = quantile levels, kW."""
    rows = {p.start.seconds: {v.quantile: v.power_kw for v in p.values} for p in fc.points}
    frame = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    frame.index.name = "slot_start_s"
    return frame
