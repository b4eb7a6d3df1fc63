"""``vpp.v1.ForecastingService`` over grpc.aio: validate with pydantic, compute in a worker thread."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from typing import Annotated

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator
from vpp.v1 import common_pb2, forecast_pb2, forecasting_pb2, forecasting_pb2_grpc

from forecasting.service import DEFAULT_QUANTILES, MAX_HORIZON_MIN, ForecastingCore, NoHistory
from vpp_common.grpc_server import validated
from vpp_common.logs import get_logger

log = get_logger(__name__)

SERVICE_NAME = "vpp.v1.ForecastingService"
_STREAMS = {
    common_pb2.FORECAST_STREAM_PV,
    common_pb2.FORECAST_STREAM_LOAD,
    common_pb2.FORECAST_STREAM_NET,
}


class ForecastRequest(BaseModel):
    """GetForecastRequest's rules; ``known_sites`` is bound per servicer by ``request_model``."""

    model_config = ConfigDict(extra="forbid")

    site_id: str = ""
    stream: int
    horizon_minutes: int = Field(ge=15, le=MAX_HORIZON_MIN, multiple_of=15)
    quantiles: list[Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]] = Field(max_length=99)

    @field_validator("stream")
    @classmethod
    def _stream_set(cls, value: int) -> int:
        if value not in _STREAMS:
            raise ValueError("must be FORECAST_STREAM_PV, FORECAST_STREAM_LOAD or FORECAST_STREAM_NET")
        return value


def request_model(site_ids: frozenset[str]) -> type[ForecastRequest]:
    """A request model that also refuses site ids the service does not forecast."""

    class KnownSiteRequest(ForecastRequest):
        @field_validator("site_id")
        @classmethod
        def _known_site(cls, value: str) -> str:
            if value and value not in site_ids:
                raise ValueError(f"unknown site {value!r} (empty for the portfolio)")
            return value

    return KnownSiteRequest


class ForecastingServicer(forecasting_pb2_grpc.ForecastingServiceServicer):
    def __init__(self, core: ForecastingCore, executor: Executor) -> None:
        self._core = core
        self._executor = executor
        self._request = request_model(frozenset(core.sites))

    async def GetForecast(
        self, request: forecasting_pb2.GetForecastRequest, context: grpc.aio.ServicerContext
    ) -> forecast_pb2.Forecast:
        req = await validated(
            self._request,
            {
                "site_id": request.site_id,
                "stream": request.stream,
                "horizon_minutes": request.horizon_minutes,
                "quantiles": list(request.quantiles) or list(DEFAULT_QUANTILES),
            },
            context,
        )
        loop = asyncio.get_running_loop()
        call = functools.partial(self._core.forecast, req.site_id, req.stream, req.horizon_minutes, req.quantiles)
        try:
            return await loop.run_in_executor(self._executor, call)
        except NoHistory as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise  # unreachable: abort raises

    async def ListModels(
        self, request: forecasting_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> forecasting_pb2.ListModelsResponse:
        return forecasting_pb2.ListModelsResponse(models=self._core.model_infos())
