"""``vpp.v1.ForecastingService`` over grpc.aio: validate with pydantic, compute on the model thread.

``GetForecast`` queues on the model thread (``forecasting.core.ModelThread``) behind whatever model work
is running there, at most one site of a scheduled refresh; ``ListModels`` answers from the loop at once.
"""

from __future__ import annotations

from typing import Annotated

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator
from vpp.v1 import common_pb2, forecast_pb2, forecasting_pb2, forecasting_pb2_grpc

from forecasting.core import DEFAULT_QUANTILES, MAX_HORIZON_MIN, ModelThread
from forecasting.selection import NoHistory
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
    def __init__(self, models: ModelThread) -> None:
        self._models = models
        self._request = request_model(frozenset(models.site_ids))

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
        try:
            return await self._models.forecast(req.site_id, req.stream, req.horizon_minutes, req.quantiles)
        except NoHistory as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise  # unreachable: abort raises

    async def ListModels(
        self, request: forecasting_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> forecasting_pb2.ListModelsResponse:
        return forecasting_pb2.ListModelsResponse(models=self._models.model_infos())
