"""The gRPC contract of vpp.v1.ForecastingService against a real grpc.aio server on a loopback port,
backed by a core whose store holds real (seeded) history of two sites."""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest
from vpp.v1 import common_pb2, forecast_pb2, forecasting_pb2, forecasting_pb2_grpc

from conftest import SITE_A, SITE_B, seed_store, small_settings, write_sites
from forecasting.core import ForecastingCore
from forecasting.forecast_cache import ForecastCache
from forecasting.mapping import LOAD, NET, PV
from forecasting.model_worker import ModelWorker
from forecasting.models.spec import ModelSpec
from forecasting.selection import default_candidates
from forecasting.servicer import SERVICE_NAME, ForecastingServicer
from forecasting.sites import SiteConfig, load_sites
from forecasting.store import HistoryStore
from forecasting.training import Trainer
from vpp_common.grpc_server import GrpcServer

HISTORY_DAYS = 35


@dataclass
class Served:
    port: int
    core: ForecastingCore
    # Answers got while the first fits were held inside the candidate's fit (a request must not wait).
    during_fit: list[forecast_pb2.Forecast] = field(default_factory=list)
    fits_held: bool = False


class GatedCandidates:
    """The backtested candidates, whose fits wait for ``gate``: a fit provably in progress."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, site: SiteConfig, stream: int, spec: ModelSpec) -> list[Any]:
        pool = default_candidates(site, stream, spec)
        inner_fit = pool[0].fit

        def held_fit(history: pd.Series) -> None:
            self.entered.set()
            assert self.gate.wait(120), "the test never opened the gate"
            inner_fit(history)

        pool[0].fit = held_fit
        return pool


class ServerThread:
    """A grpc.aio server on its own event loop in a thread, so the test body can use blocking stubs."""

    def __init__(self, servicer: ForecastingServicer) -> None:
        self.servicer = servicer
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._server: GrpcServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> int:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self.port

    async def _start(self) -> None:
        self._server = GrpcServer("127.0.0.1", 0)
        self._server.add(forecasting_pb2_grpc.add_ForecastingServiceServicer_to_server, self.servicer, SERVICE_NAME)
        await self._server.start()
        self.port = self._server.port

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(0.5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, real: tuple[pd.Series, pd.Series]) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("grpc")
    settings = small_settings(store_url=f"sqlite:///{tmp / 'h.sqlite'}")
    sites = load_sites(write_sites(Path(tmp / "sites.json"), SITE_A, SITE_B))
    store = HistoryStore(settings.store_url)
    store.create_schema()
    seed_store(store, sites, real, HISTORY_DAYS, pd.Timestamp.now(tz="UTC"))
    gated = GatedCandidates()
    core = ForecastingCore(settings, store, sites, candidates=gated)
    models = ModelWorker(core)
    cache = ForecastCache()
    trainer = Trainer(settings, models, cache.put, candidates=gated)
    server = ServerThread(ForecastingServicer(models, cache, None))
    port = server.start()
    result = Served(port=port, core=core)

    async def first_cycle() -> None:
        cache.put(await models.refresh())

    asyncio.run_coroutine_threadsafe(first_cycle(), server.loop).result(120)

    async def fit_all() -> None:
        for sid, stream in await models.due_for_training(core.clock()):
            await trainer.fit_one(sid, stream)

    fits = asyncio.run_coroutine_threadsafe(fit_all(), server.loop)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = forecasting_pb2_grpc.ForecastingServiceStub(channel)
        assert gated.entered.wait(120), "no fit started"
        for site_id, stream in (("site-a", PV), ("site-b", LOAD), ("", NET)):
            result.during_fit.append(stub.GetForecast(request(site_id=site_id, stream=stream), timeout=30))
        result.fits_held = not fits.done() and not gated.gate.is_set()
        gated.gate.set()
        fits.result(300)
    # The trainer asks for an issue cycle after each round of fits, so the portfolio uses the new models.
    asyncio.run_coroutine_threadsafe(first_cycle(), server.loop).result(120)
    try:
        yield result
    finally:
        server.stop()
        trainer.close()
        models.close()
        store.close()


def request(
    *, site_id: str = "site-a", stream: int = LOAD, horizon_minutes: int = 1440, quantiles: tuple[float, ...] = ()
) -> forecasting_pb2.GetForecastRequest:
    return forecasting_pb2.GetForecastRequest(
        site_id=site_id,
        stream=stream,  # type: ignore[arg-type]
        horizon_minutes=horizon_minutes,
        quantiles=list(quantiles),
    )


@pytest.fixture()
def stub(served: Served) -> Iterator[forecasting_pb2_grpc.ForecastingServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        yield forecasting_pb2_grpc.ForecastingServiceStub(channel)


def check_forecast(fc: forecast_pb2.Forecast, slots: int, quantiles: list[float]) -> None:
    assert len(fc.points) == slots
    assert fc.resolution_s == 900
    issued = pd.Timestamp(fc.issued_at.ToNanoseconds(), unit="ns", tz="UTC")
    starts = [pd.Timestamp(p.start.ToNanoseconds(), unit="ns", tz="UTC") for p in fc.points]
    assert issued <= starts[0] < issued + pd.Timedelta(minutes=15)
    assert all(s.minute % 15 == 0 and s.second == 0 for s in starts)
    assert all(b - a == pd.Timedelta(minutes=15) for a, b in itertools.pairwise(starts))
    for point in fc.points:
        assert [v.quantile for v in point.values] == pytest.approx(quantiles)
        values = [v.power_kw for v in point.values]
        assert all(math.isfinite(v) for v in values)
        assert values == sorted(values), f"quantiles cross at {point.start.ToJsonString()}: {values}"


@pytest.mark.parametrize("stream", [PV, LOAD, NET])
@pytest.mark.parametrize("site_id", ["site-a", "site-b", ""])
def test_day_ahead_forecast_has_96_monotone_slots(
    stub: forecasting_pb2_grpc.ForecastingServiceStub, site_id: str, stream: int
) -> None:
    fc = stub.GetForecast(request(site_id=site_id, stream=stream), timeout=240)
    check_forecast(fc, 96, [0.1, 0.5, 0.9])
    assert fc.site_id == site_id and fc.stream == stream and fc.model
    p50 = [p.values[1].power_kw for p in fc.points]
    if stream == PV:
        assert min(p50) == 0.0  # 24 h always contain a night
        assert max(v.power_kw for p in fc.points for v in p.values) > 0.5  # and a day
    if stream == LOAD:
        assert min(p50) > 0.0
    if stream == NET:
        # Exporting around noon is possible: NET may be negative, it is not clipped at 0.
        assert max(p50) > 0.0


def test_custom_quantiles_and_the_full_horizon(stub: forecasting_pb2_grpc.ForecastingServiceStub) -> None:
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    fc = stub.GetForecast(request(stream=NET, horizon_minutes=2160, quantiles=tuple(qs)), timeout=240)
    check_forecast(fc, 144, qs)
    fc = stub.GetForecast(request(stream=LOAD, horizon_minutes=15, quantiles=(0.9, 0.1)), timeout=240)
    check_forecast(fc, 1, [0.1, 0.9])  # returned in ascending order


def test_portfolio_is_not_a_sum_of_quantiles(stub: forecasting_pb2_grpc.ForecastingServiceStub) -> None:
    sites = [stub.GetForecast(request(site_id=s, stream=LOAD), timeout=240) for s in ("site-a", "site-b")]
    portfolio = stub.GetForecast(request(site_id="", stream=LOAD), timeout=240)
    p10_sum = sum(fc.points[10].values[0].power_kw for fc in sites)
    p90_sum = sum(fc.points[10].values[2].power_kw for fc in sites)
    p10, _p50, p90 = (v.power_kw for v in portfolio.points[10].values)
    # Loads of two households are nearly independent, so the portfolio band is narrower than the summed one.
    assert p90 - p10 < p90_sum - p10_sum
    assert "portfolio" in portfolio.model


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request(horizon_minutes=0), "horizon_minutes"),
        (request(horizon_minutes=20), "horizon_minutes"),
        (request(horizon_minutes=2175), "horizon_minutes"),
        (request(stream=common_pb2.FORECAST_STREAM_UNSPECIFIED), "stream"),
        (request(quantiles=(0.5, 1.0)), "quantiles.1"),
        (request(quantiles=(0.0,)), "quantiles.0"),
        (request(quantiles=(-0.1,)), "quantiles.0"),
        (request(quantiles=(float("nan"),)), "quantiles.0"),
        (request(site_id="nowhere"), "site_id"),
    ],
)
def test_bad_requests_name_the_field(
    stub: forecasting_pb2_grpc.ForecastingServiceStub, req: forecasting_pb2.GetForecastRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.GetForecast(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:"), err.value.details()


def test_list_models_shows_scores_and_what_is_served(
    stub: forecasting_pb2_grpc.ForecastingServiceStub, served: Served
) -> None:
    models = stub.ListModels(forecasting_pb2.ListModelsRequest(), timeout=30).models
    keys = {(m.site_id, m.stream) for m in models}
    assert keys == {(s, st) for s in ("site-a", "site-b") for st in (PV, LOAD)}
    fingerprint = served.core.spec.fingerprint()
    for key in keys:
        group = [m for m in models if (m.site_id, m.stream) == key]
        assert sum(m.served for m in group) == 1, group
        assert len(group) >= 2  # a candidate and its fallback
        for m in group:
            assert m.model and m.trained_at.seconds > 0 and m.model_fingerprint == fingerprint
            assert m.validation_pinball_kw > 0.0
            assert m.validation_mae_kw > m.validation_pinball_kw  # pinball of P50 alone is MAE/2; P10/P90 are less
            assert 0.0 < m.validation_coverage_p10_p90 <= 1.0
            # This small test configuration was never backtested: no borrowed scores.
            assert m.backtest_task == "" and m.backtest_pinball_kw == 0.0
        served_model = next(m for m in group if m.served)
        assert served_model.fit_cpu_s > 0.0
        fallback = next(m for m in group if m.model.startswith("seasonal_naive"))
        # The rule: a model is served only if it beats the fallback on the validation days.
        assert served_model is fallback or served_model.validation_pinball_kw < fallback.validation_pinball_kw
        assert bool(served_model.fallback_reason) == (served_model is fallback)


def test_a_request_never_waits_for_a_fit(served: Served) -> None:
    """Answered while a fit was held open inside the candidate: the fallback, saying so."""
    assert served.fits_held and len(served.during_fit) == 3
    for fc in served.during_fit:
        assert len(fc.points) == 96 and fc.fallback_reason, fc.model
    assert "not fit yet" in served.during_fit[0].fallback_reason


def test_forecasts_say_which_model_made_them_after_the_fits(stub: forecasting_pb2_grpc.ForecastingServiceStub) -> None:
    fc = stub.GetForecast(request(site_id="site-a", stream=LOAD), timeout=30)
    assert "not fit yet" not in fc.fallback_reason
    assert fc.model_fingerprint


def test_undecodable_request_bytes_are_invalid_argument(served: Served) -> None:
    """As an outside client would send them: bytes that are no protobuf message at all."""
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        for method in ("GetForecast", "ListModels"):
            raw = channel.unary_unary(f"/{SERVICE_NAME}/{method}", request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as info:
                raw(b"\xff\xff\xff\xff", timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, info.value.details())
            assert info.value.details().startswith("request:")
