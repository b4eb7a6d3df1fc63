"""End to end through a real broker: telemetry Envelopes in on vpp.telemetry.v1 land in the store (once
each), and forecasts come out on vpp.forecasts.v1; the service runs as ``python -m forecasting`` wires it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest
from prometheus_client import REGISTRY
from vpp.v1 import common_pb2, envelope_pb2, forecasting_pb2, forecasting_pb2_grpc, telemetry_pb2

from conftest import SITE_A, small_settings, write_sites
from forecasting.service import LOAD, NET, PV, Built, build
from forecasting.settings import ForecastingSettings
from forecasting.store import SLOT
from kafka_helpers import producer
from vpp_common.app import ServiceApp
from vpp_common.broker import EmbeddedBroker
from vpp_common.envelope import wrap
from vpp_common.kafka import read_topic
from vpp_common.topics import FORECASTS, TELEMETRY


@dataclass
class Running:
    app: ServiceApp
    built: Built
    loop: asyncio.AbstractEventLoop
    settings: ForecastingSettings


class AppThread:
    """ServiceApp on its own event loop in a thread (``app.run`` wants signals, which only the main thread has)."""

    def __init__(self, settings: ForecastingSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.running: Running | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            app = ServiceApp(self.settings)
            built = build(app, self.settings)
            await app.start()
            self.running = Running(app, built, self.loop, self.settings)
        except BaseException as exc:  # surfaced to the test
            self._error = exc
            raise
        finally:
            self._ready.set()
        await app._stopping.wait()
        await app.stop()

    def start(self) -> Running:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None or self.running is None:
            raise RuntimeError("service did not start") from self._error
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            self.loop.call_soon_threadsafe(self.running.app.request_stop)
        self._thread.join(30)


@pytest.fixture()
def service(broker: EmbeddedBroker, tmp_path: Path, clean_env: None) -> Iterator[Running]:
    sites_file = write_sites(tmp_path / "sites.json", SITE_A)
    settings = small_settings(
        store_url=f"sqlite:///{tmp_path / 'history.sqlite'}",
        sites_file=sites_file,
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_session_timeout_ms=6000,
        refresh_interval_s=3600,  # the test asks for the second refresh itself
        instance_id="test-forecasting",
        seed_days_if_empty=35,  # the service backfills the real series itself before its first refresh
    )
    runner = AppThread(settings)
    running = runner.start()
    try:
        yield running
    finally:
        runner.stop()


def forecasts_on_topic(bootstrap: str, at_least: int, timeout_s: float) -> list[tuple[str, envelope_pb2.Envelope]]:
    records = read_topic(bootstrap, FORECASTS.name, FORECASTS.partitions, timeout_s=timeout_s, min_records=at_least)
    out = []
    for r in records:
        env = envelope_pb2.Envelope()
        env.ParseFromString(r.value)
        out.append((r.key.decode(), env))
    return out


def telemetry_env(site: str, at: pd.Timestamp, pv: float, load: float, message_id: str) -> bytes:
    t = telemetry_pb2.Telemetry(site_id=site, available=True, pv_power_kw=pv, load_power_kw=load)
    t.measured_at.FromNanoseconds(at.value)
    return wrap(t, source="test/agent", site_id=site, message_id=message_id).SerializeToString()


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_telemetry_lands_in_the_store_and_forecasts_are_published(
    service: Running, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    built = service.built
    published_before = REGISTRY.get_sample_value("vpp_forecasting_forecasts_published_total", {"stream": "net"}) or 0
    # The first refresh runs at start: a forecast per stream for the site and for the portfolio.
    first = forecasts_on_topic(broker.bootstrap_servers, 6, timeout_s=180)
    assert len(first) >= 6
    assert built.store.slot_count("site-a") > 30 * 96  # seeded at start
    keys = {(key, env.forecast.stream) for key, env in first}
    assert keys == {(k, s) for k in ("site-a", "portfolio") for s in (PV, LOAD, NET)}
    for key, env in first:
        assert env.WhichOneof("payload") == "forecast"
        assert env.site_id == ("" if key == "portfolio" else key) == env.forecast.site_id
        assert len(env.forecast.points) == 144 and env.forecast.resolution_s == 900
        assert env.source == "forecasting/test-forecasting"

    # Telemetry in: three samples of the slot in progress, one of them delivered twice.
    assert built.consumer.wait_assigned(30), "the telemetry consumer never joined its group"
    slot = pd.Timestamp.now(tz="UTC").floor(SLOT)
    kp = producer(broker.bootstrap_servers)
    samples = [(1.0, 0.5, "t1"), (2.0, 1.5, "t2"), (3.0, 2.5, "t3"), (2.0, 1.5, "t2")]
    for i, (pv, load, mid) in enumerate(samples):
        at = slot + pd.Timedelta(seconds=10 * min(i, 2))
        kp.send(TELEMETRY.name, key=b"site-a", value=telemetry_env("site-a", at, pv, load, mid))
    kp.send(TELEMETRY.name, key=b"site-a", value=b"not an envelope")  # dead-lettered, not fatal
    kp.send(TELEMETRY.name, key=b"site-a", value=telemetry_env("site-a", slot, 7.0, 7.0, "t4"))
    kp.flush(10)
    kp.close()

    def slot_mean() -> pd.Series | None:
        row = built.store.history("site-a", slot, slot + SLOT).iloc[0]
        return row if built.store.slot_count("site-a") and row.notna().all() and row["pv_kw"] > 2.0 else None

    row = wait_for(slot_mean, 30, "telemetry in the store")
    # (1 + 2 + 3 + 7) / 4: the re-delivered t2 was not counted, the record after the bad one was.
    assert row["pv_kw"] == pytest.approx(13.0 / 4)
    assert row["load_kw"] == pytest.approx(11.5 / 4)

    # On demand: a refresh publishes a new batch.
    service.loop.call_soon_threadsafe(built.scheduler.request_refresh)
    after = forecasts_on_topic(broker.bootstrap_servers, 12, timeout_s=120)
    assert len({env.forecast.forecast_id for _, env in after}) >= 12
    published = REGISTRY.get_sample_value("vpp_forecasting_forecasts_published_total", {"stream": "net"}) or 0
    assert published >= published_before + 4
    age = REGISTRY.get_sample_value("vpp_forecasting_forecast_age_seconds", {"site": "portfolio", "stream": "net"})
    assert age is not None and 0 <= age < 300

    # And the same service answers gRPC.
    with grpc.insecure_channel(f"127.0.0.1:{service.app.grpc.port}") as channel:
        stub = forecasting_pb2_grpc.ForecastingServiceStub(channel)
        req = forecasting_pb2.GetForecastRequest(
            site_id="site-a", stream=common_pb2.FORECAST_STREAM_LOAD, horizon_minutes=1440
        )
        fc = stub.GetForecast(req, timeout=60)
        assert len(fc.points) == 96
        assert any(m.served for m in stub.ListModels(forecasting_pb2.ListModelsRequest(), timeout=10).models)
