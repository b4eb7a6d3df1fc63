"""The forecasting core without the network: fallback selection, telemetry handling, schedule bookkeeping."""

from __future__ import annotations

import asyncio
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client import REGISTRY
from vpp.v1 import envelope_pb2

from conftest import SITE_A, SITE_B, batch_envelope, sample, seed_store, small_settings, write_sites
from forecasting.core import CACHE_LEVELS, ForecastingCore
from forecasting.ingest import TelemetryIngest
from forecasting.mapping import LOAD, PV
from forecasting.selection import NoHistory
from forecasting.sites import load_sites
from forecasting.store import SLOT, HistoryStore
from vpp_common.kafka import Consumed
from vpp_common.topics import TELEMETRY

NOW = pd.Timestamp("2025-06-10 09:07", tz="UTC")
MEDIAN = CACHE_LEVELS.index(0.5)


class Clock:
    def __init__(self, now: pd.Timestamp) -> None:
        self.now = now

    def __call__(self) -> pd.Timestamp:
        return self.now


def make_core(
    tmp_path: Path, real: tuple[pd.Series, pd.Series], days: int, *, seeded: int = 2, clock: Clock | None = None
) -> ForecastingCore:
    settings = small_settings()
    sites = load_sites(write_sites(tmp_path / "sites.json", SITE_A, SITE_B))
    store = HistoryStore(settings.store_url)
    store.create_schema()
    seed_store(store, sites[:seeded], real, days, NOW)
    return ForecastingCore(settings, store, sites, clock=clock or Clock(NOW))


def metric(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def measured(outcome: str) -> float:
    return metric("vpp_forecasting_measurements_total", {"outcome": outcome})


_offsets = itertools.count()


def consumed(env: envelope_pb2.Envelope) -> Consumed:
    """The record as the consumer hands it to the handler."""
    return Consumed(env, TELEMETRY.name, 0, next(_offsets), b"p0", 0)


def make_ingest(core: ForecastingCore, writer: ThreadPoolExecutor) -> TelemetryIngest:
    return TelemetryIngest(core.settings, core.store, core.sites, writer, clock=core.clock)


def ingest_batch(ingest: TelemetryIngest, env: envelope_pb2.Envelope) -> None:
    asyncio.run(ingest.on_telemetry_batch(consumed(env)))


def test_fallback_serves_until_the_fit_and_when_history_is_short(
    tmp_path: Path, real: tuple[pd.Series, pd.Series]
) -> None:
    core = make_core(tmp_path, real, days=8)
    forecasts = core.refresh()  # no fit yet: every site stream's fallback serves at once, and says so
    assert len(forecasts) == 2 * 3 + 3  # PV, LOAD, NET per site and for the portfolio
    for fc in forecasts:
        assert len(fc.slots_ns) >= 144
        assert fc.fallback_reason, fc
        assert "not fit yet" in fc.fallback_reason if fc.site_id else fc.fallback_reason.startswith("4 of 4"), fc
    assert set(core.due_for_training(NOW)) == {(s, st) for s in ("site-a", "site-b") for st in (PV, LOAD)}
    served = core.train("site-a", LOAD)  # 8 days: the candidate cannot beat last week's slot
    assert served.name == "seasonal_naive" and served.summary.fallback_reason
    infos = [i for i in core.model_infos() if i.site_id == "site-a" and i.stream == LOAD]
    assert {i.model: i.served for i in infos} == {"lightgbm_quantile": False, "seasonal_naive": True}
    assert ("site-a", LOAD) not in core.due_for_training(NOW)
    load = next(fc for fc in core.refresh() if fc.site_id == "site-a" and fc.stream == LOAD)
    assert load.model == "seasonal_naive" and "not fit yet" not in load.fallback_reason


def test_site_without_history_is_skipped_not_guessed(tmp_path: Path, real: tuple[pd.Series, pd.Series]) -> None:
    core = make_core(tmp_path, real, days=8, seeded=1)  # site-b has no measurement at all
    forecasts = core.refresh()
    assert {fc.site_id for fc in forecasts} == {"site-a"}  # no portfolio without all its sites
    with pytest.raises(NoHistory, match="site-b"):
        core.train("site-b", LOAD)


def test_models_refit_daily_in_the_background_and_are_fed_new_data_between_fits(
    tmp_path: Path, real: tuple[pd.Series, pd.Series]
) -> None:
    core = make_core(tmp_path, real, days=8)
    first = core.train("site-a", PV, NOW)
    core.refresh(NOW + pd.Timedelta(hours=1))
    assert core.served("site-a", PV) is first  # updated, not refit: an issue cycle never fits
    later = NOW + pd.Timedelta(seconds=core.settings.retrain_interval_s + 60)
    core.refresh(later)
    assert core.served("site-a", PV) is first
    assert ("site-a", PV) in core.due_for_training(later)  # the trainer's turn
    again = core.train("site-a", PV, later)
    assert again is not first and again.trained_at > first.trained_at


def test_telemetry_handler(tmp_path: Path, real: tuple[pd.Series, pd.Series]) -> None:
    core = make_core(tmp_path, real, days=1)
    at = NOW.floor(SLOT) + pd.Timedelta(minutes=1)
    before = {o: measured(o) for o in ("stored", "duplicate", "unknown_site", "unavailable", "invalid")}
    with ThreadPoolExecutor(max_workers=1) as writer:
        ingest = make_ingest(core, writer)
        ingest_batch(ingest, batch_envelope(sample("site-a", at, 2.0, 1.0, "m1"), sample("site-a", at, 4.0, 3.0, "m2")))
        ingest_batch(ingest, batch_envelope(sample("site-a", at, 4.0, 3.0, "m2")))  # re-delivered
        ingest_batch(
            ingest,
            batch_envelope(
                sample("elsewhere", at, 9.0, 9.0, "m3"),  # not our site: ignored
                sample("site-a", at, 0.0, 0.0, "m4", available=False),  # powers are unset (0), not measured zeros
            ),
        )
        # Nothing usable and nothing legitimately skipped: the whole record is refused (the consumer
        # dead-letters ValueErrors), and so is an empty one.
        no_time = sample("site-a", at, 1.0, 1.0, "m5")
        no_time.telemetry.ClearField("measured_at")
        with pytest.raises(ValueError, match="measured_at is missing"):
            ingest_batch(ingest, batch_envelope(no_time))
        with pytest.raises(ValueError, match="pv_power_kw is not finite"):
            ingest_batch(ingest, batch_envelope(sample("site-a", at, math.nan, 1.0, "m6")))
        with pytest.raises(ValueError, match="in the future"):
            ingest_batch(ingest, batch_envelope(sample("site-a", NOW + pd.Timedelta(hours=1), 1.0, 1.0, "m7")))
        with pytest.raises(ValueError, match="no message_id"):
            ingest_batch(ingest, batch_envelope(sample("site-a", at, 1.0, 1.0, "")))
        with pytest.raises(ValueError, match="no samples"):
            ingest_batch(ingest, batch_envelope())
    got = core.store.history("site-a", at.floor(SLOT), at.floor(SLOT) + SLOT)
    assert got["pv_kw"].iloc[0] == pytest.approx(3.0) and got["load_kw"].iloc[0] == pytest.approx(2.0)
    assert measured("stored") == before["stored"] + 2
    assert measured("duplicate") == before["duplicate"] + 1
    assert measured("unknown_site") == before["unknown_site"] + 1
    assert measured("unavailable") == before["unavailable"] + 1
    assert measured("invalid") == before["invalid"] + 4


def test_a_bad_sample_does_not_cost_the_good_ones_of_its_batch(
    tmp_path: Path, real: tuple[pd.Series, pd.Series], caplog: pytest.LogCaptureFixture
) -> None:
    core = make_core(tmp_path, real, days=1)
    at = NOW.floor(SLOT) + pd.Timedelta(minutes=2)
    no_time = sample("site-a", at, 50.0, 50.0, "b-no-time")
    no_time.telemetry.ClearField("measured_at")
    batch = batch_envelope(
        sample("site-a", at, 1.0, 2.0, "b1"),
        sample("site-a", at, math.inf, 1.0, "b-inf"),
        sample("site-b", at, 5.0, 6.0, "b2"),
        no_time,
        sample("site-a", NOW + pd.Timedelta(hours=2), 50.0, 50.0, "b-future"),
        sample("site-a", at, 3.0, 4.0, "b3"),
        sample("site-a", at, 3.0, 4.0, "b3"),  # the same sample twice in one record: counted once
    )
    invalid, stored = measured("invalid"), measured("stored")
    with ThreadPoolExecutor(max_workers=1) as writer:
        ingest_batch(make_ingest(core, writer), batch)  # no ValueError: the record is not dead-lettered
    both = core.store.history_many(["site-a", "site-b"], at.floor(SLOT), at.floor(SLOT) + SLOT)
    assert both["site-a"]["pv_kw"].iloc[0] == pytest.approx(2.0)  # (1 + 3) / 2: no NaN, inf or 50 in it
    assert both["site-a"]["load_kw"].iloc[0] == pytest.approx(3.0)
    assert both["site-b"]["pv_kw"].iloc[0] == pytest.approx(5.0)
    assert measured("invalid") == invalid + 3
    assert measured("stored") == stored + 3
    refused = [r for r in caplog.records if r.getMessage() == "telemetry_sample_refused"]
    reasons = {r.fields["message_id"]: r.fields["reason"] for r in refused}  # type: ignore[attr-defined]
    assert set(reasons) == {"b-inf", "b-no-time", "b-future"}
    assert "pv_power_kw is not finite" in reasons["b-inf"]
    assert "measured_at is missing" in reasons["b-no-time"]
    assert "in the future" in reasons["b-future"]


class FlakyStore:
    """The real store behind a database that is down for the first ``failures`` writes."""

    def __init__(self, store: HistoryStore, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.attempts = 0

    def add_measurements(self, measurements: list[object], **kw: object) -> int:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("database is down")
        return self.store.add_measurements(measurements, **kw)  # type: ignore[arg-type]


def test_store_outage_holds_the_record_until_it_is_stored(
    tmp_path: Path, real: tuple[pd.Series, pd.Series], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler returns (so the consumer may commit) only once the samples are stored; the retry waits
    with asyncio.sleep and ends at once when the service stops (the consumer task is cancelled)."""
    import forecasting.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "RETRY_FIRST_S", 0.05)
    core = make_core(tmp_path, real, days=1)
    at = NOW.floor(SLOT) + pd.Timedelta(minutes=3)
    errors = metric("vpp_forecasting_store_errors_total", {})
    with ThreadPoolExecutor(max_workers=1) as writer:
        ingest = make_ingest(core, writer)
        flaky = FlakyStore(core.store, failures=3)
        ingest.store = flaky  # type: ignore[assignment]

        record = consumed(batch_envelope(sample("site-a", at, 1.0, 2.0, "o1"), sample("site-a", at, 3.0, 4.0, "o2")))

        async def outage() -> bool:
            handled = asyncio.create_task(ingest.on_telemetry_batch(record))
            await asyncio.sleep(0.1)
            done_during_outage = handled.done()
            await asyncio.wait_for(handled, 5)
            return done_during_outage

        assert asyncio.run(outage()) is False  # still retrying, so nothing could have been committed
        assert flaky.attempts == 4
        got = core.store.history("site-a", at.floor(SLOT), at.floor(SLOT) + SLOT)
        assert got["pv_kw"].iloc[0] == pytest.approx(2.0) and got["load_kw"].iloc[0] == pytest.approx(3.0)
        assert metric("vpp_forecasting_store_errors_total", {}) == errors + 3

        # Stopping during an outage: cancelled in its sleep, promptly, having stored nothing.
        ingest.store = FlakyStore(core.store, failures=10**6)  # type: ignore[assignment]

        late = consumed(batch_envelope(sample("site-a", at, 100.0, 100.0, "o3")))

        async def stop_during_outage() -> None:
            handled = asyncio.create_task(ingest.on_telemetry_batch(late))
            await asyncio.sleep(0.2)
            handled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(handled, 1)

        asyncio.run(stop_during_outage())
    assert core.store.history("site-a", at.floor(SLOT), at.floor(SLOT) + SLOT)["pv_kw"].iloc[0] == pytest.approx(2.0)


def test_live_error_of_the_p50_is_scored_once_measured(tmp_path: Path, real: tuple[pd.Series, pd.Series]) -> None:
    clock = Clock(NOW)
    core = make_core(tmp_path, real, days=8, clock=clock)
    count = metric("vpp_forecasting_live_abs_error_kw_count", {"stream": "load"})
    published = core.refresh()
    p50 = float(next(fc for fc in published if fc.site_id == "site-a" and fc.stream == LOAD).values_kw[0, MEDIAN])
    slot = NOW.ceil(SLOT)
    clock.now = NOW + pd.Timedelta(minutes=30)
    # slot mean = P50 + 2 kW
    samples = [sample("site-a", slot + pd.Timedelta(minutes=3 * i), 0.0, p50 + 1.0 + 2 * i, f"live{i}") for i in (0, 1)]
    with ThreadPoolExecutor(max_workers=1) as writer:
        ingest_batch(make_ingest(core, writer), batch_envelope(*samples))
    core.refresh()
    assert metric("vpp_forecasting_live_abs_error_kw_count", {"stream": "load"}) == count + 1
    # Only site-a's first slot was measured since: the MAE is that slot's error, 2 kW.
    assert metric("vpp_forecasting_live_mae_kw", {"stream": "load"}) == pytest.approx(2.0, abs=1e-3)
