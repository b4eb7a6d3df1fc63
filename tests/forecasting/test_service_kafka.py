"""End to end through a real broker: telemetry batches in on vpp.telemetry.v1 land in the store (each
sample once), and forecasts come out on vpp.forecasts.v1; the service runs as ``python -m forecasting``
wires it. A store outage holds the record's offset until its samples are stored."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest
from kafka import KafkaAdminClient
from kafka.structs import TopicPartition
from prometheus_client import REGISTRY
from vpp.v1 import common_pb2, envelope_pb2, forecasting_pb2, forecasting_pb2_grpc

from conftest import SITE_A, batch_envelope, sample, small_settings, write_sites
from forecasting.mapping import LOAD, NET, PV
from forecasting.service import Built, build
from forecasting.settings import ForecastingSettings
from forecasting.store import SLOT, HistoryStore, Measurement
from kafka_helpers import producer
from vpp_common.app import ServiceApp
from vpp_common.kafka import read_topic
from vpp_common.topics import FORECASTS, TELEMETRY
from vpp_devtools.broker import EmbeddedBroker


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


def service_settings(broker: EmbeddedBroker, tmp_path: Path, **overrides: Any) -> ForecastingSettings:
    values: dict[str, Any] = {
        "store_url": f"sqlite:///{tmp_path / 'history.sqlite'}",
        "sites_file": write_sites(tmp_path / "sites.json", SITE_A),
        "kafka_bootstrap_servers": broker.bootstrap_servers,
        "kafka_session_timeout_ms": 6000,
        # A group of its own per test: no offsets or members left over from another test.
        "kafka_group_prefix": f"t{uuid.uuid4().hex[:8]}-",
        "refresh_interval_s": 3600,  # the test asks for the second refresh itself
        "instance_id": "test-forecasting",
        **overrides,
    }
    return small_settings(**values)


@pytest.fixture()
def service(broker: EmbeddedBroker, tmp_path: Path, clean_env: None) -> Iterator[Running]:
    # The service backfills the real series itself before its first refresh.
    # As in production: the models in a process of their own, fits in a (spawned, niced) worker process.
    runner = AppThread(
        service_settings(broker, tmp_path, seed_days_if_empty=35, training_processes=1, model_process=True)
    )
    running = runner.start()
    try:
        yield running
    finally:
        runner.stop()


@pytest.fixture()
def unseeded_service(broker: EmbeddedBroker, tmp_path: Path, clean_env: None) -> Iterator[Running]:
    """No history, so no model to fit: refreshes are instant and only the telemetry path is exercised."""
    runner = AppThread(service_settings(broker, tmp_path, seed_days_if_empty=0))
    running = runner.start()
    try:
        yield running
    finally:
        runner.stop()


def wait_positioned(running: Running, timeout_s: float = 30) -> None:
    """Until the telemetry consumer owns its partitions and knows where it reads them from: records
    produced from then on are consumed (the group starts at the end of the topic)."""
    consumer = running.built.consumer

    def positioned() -> bool:
        assignment = set(consumer.assignment)
        progress = dict(consumer.progress)
        return bool(assignment) and all(tp in progress and progress[tp].position >= 0 for tp in assignment)

    wait_for(positioned, timeout_s, "the telemetry consumer to join its group and position itself")


def forecasts_on_topic(bootstrap: str, at_least: int, timeout_s: float) -> list[tuple[str, envelope_pb2.Envelope]]:
    records = read_topic(bootstrap, FORECASTS.name, FORECASTS.partitions, timeout_s=timeout_s, min_records=at_least)
    out = []
    for r in records:
        env = envelope_pb2.Envelope()
        env.ParseFromString(r.value)
        out.append((r.key.decode(), env))
    return out


def batch_bytes(*samples: tuple[float, float, str, pd.Timestamp], site: str = "site-a") -> bytes:
    """One vpp.telemetry.v1 record value: a telemetry_batch of (pv, load, message id, measured at)."""
    return batch_envelope(*(sample(site, at, pv, load, mid) for pv, load, mid, at in samples)).SerializeToString()


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

    # Telemetry in: three samples of the slot in progress in two batches, one sample delivered twice.
    wait_positioned(service)
    slot = pd.Timestamp.now(tz="UTC").floor(SLOT)
    kp = producer(broker.bootstrap_servers)
    s10, s20 = slot + pd.Timedelta(seconds=10), slot + pd.Timedelta(seconds=20)
    kp.send(TELEMETRY.name, key=b"p", value=batch_bytes((1.0, 0.5, "t1", slot), (2.0, 1.5, "t2", s10)))
    kp.send(TELEMETRY.name, key=b"p", value=batch_bytes((3.0, 2.5, "t3", s20), (2.0, 1.5, "t2", s10)))
    kp.send(TELEMETRY.name, key=b"p", value=b"not an envelope")  # dead-lettered, not fatal
    kp.send(TELEMETRY.name, key=b"p", value=batch_bytes((7.0, 7.0, "t4", slot)))
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

        def fitted_in_the_worker() -> list[forecasting_pb2.ModelInfo] | None:
            models = stub.ListModels(forecasting_pb2.ListModelsRequest(), timeout=10).models
            served = [m for m in models if m.served]
            return served if len(served) == 2 and all(m.fit_cpu_s > 0 for m in served) else None

        served = wait_for(fitted_in_the_worker, 240, "both site streams fit by the training process")
        assert built.trainer.fits >= 2 and {m.stream for m in served} == {PV, LOAD}


class DatabaseDown:
    """The service's store behind a switch: while ``down`` is set every write fails like a lost database."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.down = threading.Event()
        self.failed_writes = 0

    def add_measurements(self, measurements: list[Measurement], **kw: Any) -> int:
        if self.down.is_set():
            self.failed_writes += 1
            raise ConnectionError("connection to the database refused")
        return self.store.add_measurements(measurements, **kw)


def committed(bootstrap: str, group: str, tp: TopicPartition) -> int:
    """The group's committed offset of ``tp`` as the broker has it (-1: none)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        meta = admin.list_group_offsets({group: [tp]}).get(group, {}).get(tp)
    finally:
        admin.close()
    return -1 if meta is None or meta.offset is None else int(meta.offset)


def test_store_outage_delays_the_commit_and_loses_nothing(unseeded_service: Running, broker: EmbeddedBroker) -> None:
    running = unseeded_service
    built = running.built
    group = running.settings.group_id("forecasting-history")
    db = DatabaseDown(built.store)
    built.ingest.store = db  # type: ignore[assignment]
    wait_positioned(running)
    slot = pd.Timestamp.now(tz="UTC").floor(SLOT) - pd.Timedelta(hours=1)  # a slot no other test writes
    tag = uuid.uuid4().hex[:8]

    db.down.set()
    kp = producer(broker.bootstrap_servers)
    first = kp.send(
        TELEMETRY.name, key=b"p", value=batch_bytes((2.0, 1.0, f"{tag}-1", slot), (4.0, 3.0, f"{tag}-2", slot))
    ).get(10)
    tp = TopicPartition(TELEMETRY.name, first.partition)
    wait_for(lambda: db.failed_writes >= 3, 30, "the write to be retried")
    # Still retrying: the record's offset is not committed, so a crash now would deliver it again.
    assert committed(broker.bootstrap_servers, group, tp) <= first.offset
    assert built.store.history("site-a", slot, slot + SLOT).isna().all().all()

    # The database is back: the samples are stored once, and only then is the offset committed.
    second = kp.send(
        TELEMETRY.name, key=b"p", value=batch_bytes((6.0, 5.0, f"{tag}-3", slot), (2.0, 1.0, f"{tag}-1", slot))
    ).get(10)
    kp.close()
    db.down.clear()
    assert second.partition == first.partition  # same key
    wait_for(lambda: committed(broker.bootstrap_servers, group, tp) > second.offset, 30, "the offsets to be committed")
    row = built.store.history("site-a", slot, slot + SLOT).iloc[0]
    assert row["pv_kw"] == pytest.approx(4.0)  # (2 + 4 + 6) / 3: nothing lost, the repeated sample once
    assert row["load_kw"] == pytest.approx(3.0)
    assert db.failed_writes >= 3
