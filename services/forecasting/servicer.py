"""``vpp.v1.ForecastingService`` over grpc.aio: validate with pydantic, answer from the forecast cache.

Both methods answer on the event loop from immutable snapshots (the latest issue cycle's forecasts, the
latest model summaries): no model, store or fit is ever on a request's path.
"""

from __future__ import annotations

from typing import Annotated

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator
from vpp.v1 import common_pb2, forecast_pb2, forecasting_pb2, forecasting_pb2_grpc

from forecasting.backtest_scores import BacktestScores
from forecasting.core import DEFAULT_QUANTILES, MAX_HORIZON_MIN
from forecasting.forecast_cache import ForecastCache
from forecasting.mapping import STREAM_LABEL, forecast_from_cache, model_infos
from forecasting.model_worker import ModelWorker
from forecasting.store import SLOT
from vpp_common.grpc_server import validated
from vpp_common.logs import get_logger

log = get_logger(__name__)

SERVICE_NAME = "vpp.v1.ForecastingService"
SLOT_NS = int(SLOT.value)
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
    def __init__(self, models: ModelWorker, cache: ForecastCache, backtest: BacktestScores | None) -> None:
        self._models = models
        self._cache = cache
        self._backtest = backtest
        self._fingerprint = models.core.spec.fingerprint()
        self._clock = models.core.clock
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
        entry = self._cache.get(req.site_id, req.stream)
        if entry is None:
            what = f"site {req.site_id!r}" if req.site_id else "the portfolio"
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"no {STREAM_LABEL[req.stream]} forecast for {what} yet: the first issue cycle is still running "
                "or the site has no measurements; retry in a few seconds",
            )
        assert entry is not None  # abort raised otherwise
        now_ns = int(self._clock().value)
        start_ns = -(-now_ns // SLOT_NS) * SLOT_NS  # first_slot(now), in integers: this path is hot
        levels = sorted({float(q) for q in req.quantiles})
        points = self._cache.points(entry, levels)
        return forecast_from_cache(entry, start_ns, req.horizon_minutes // 15, levels, points)

    async def ListModels(
        self, request: forecasting_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> forecasting_pb2.ListModelsResponse:
        infos = model_infos(self._models.summaries(), self._backtest, self._fingerprint)
        return forecasting_pb2.ListModelsResponse(models=infos)
