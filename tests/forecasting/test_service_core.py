"""The forecasting core without the network: fallback selection, telemetry handling, schedule bookkeeping."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client import REGISTRY
from vpp.v1 import envelope_pb2, telemetry_pb2

from conftest import SITE_A, SITE_B, seed_store, small_settings, write_sites
from forecasting.service import LOAD, NET, PV, ForecastingCore, NoHistory
from forecasting.sites import load_sites
from forecasting.store import SLOT, HistoryStore
from vpp_common.envelope import wrap

NOW = pd.Timestamp("2025-06-10 09:07", tz="UTC")


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


def sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_fallback_is_served_when_history_is_short(tmp_path: Path, real: tuple[pd.Series, pd.Series]) -> None:
    core = make_core(tmp_path, real, days=8)
    forecasts = core.refresh()
    assert len(forecasts) == 2 * 3 + 3  # PV, LOAD, NET per site and for the portfolio
    load_model = core.served("site-a", LOAD)
    assert load_model is not None and load_model.name == "seasonal_naive"
    infos = [i for i in core.model_infos() if i.site_id == "site-a" and i.stream == LOAD]
    assert {i.model: i.served for i in infos} == {"lightgbm_quantile": False, "seasonal_naive": True}
    for fc in forecasts:
        assert len(fc.points) == 144
        if fc.site_id and fc.stream == LOAD:
            assert fc.model == "seasonal_naive"


def test_site_without_history_is_skipped_not_guessed(tmp_path: Path, real: tuple[pd.Series, pd.Series]) -> None:
    core = make_core(tmp_path, real, days=8, seeded=1)  # site-b has no measurement at all
    forecasts = core.refresh()
    assert {fc.site_id for fc in forecasts} == {"site-a"}  # no portfolio without all its sites
    with pytest.raises(NoHistory, match="site-b"):
        core.forecast("site-b", LOAD, 60)
    with pytest.raises(NoHistory, match="site-b"):
        core.forecast("", NET, 60)


def test_models_refit_daily_and_are_fed_new_data_between_fits(
    tmp_path: Path, real: tuple[pd.Series, pd.Series]
) -> None:
    core = make_core(tmp_path, real, days=8)
    core.refresh(NOW)
    first = core.served("site-a", PV)
    assert first is not None
    core.refresh(NOW + pd.Timedelta(hours=1))
    assert core.served("site-a", PV) is first  # updated, not refit
    core.refresh(NOW + pd.Timedelta(seconds=core.settings.retrain_interval_s + 60))
    again = core.served("site-a", PV)
    assert again is not None and again is not first and again.trained_at > first.trained_at


def telemetry(site: str, at: pd.Timestamp, pv: float, load: float, *, message_id: str) -> envelope_pb2.Envelope:
    t = telemetry_pb2.Telemetry(site_id=site, available=True, pv_power_kw=pv, load_power_kw=load)
    t.measured_at.FromNanoseconds(at.value)
    return wrap(t, source="test", site_id=site, message_id=message_id)


def test_telemetry_handler(tmp_path: Path, real: tuple[pd.Series, pd.Series]) -> None:
    core = make_core(tmp_path, real, days=1)
    at = NOW.floor(SLOT) + pd.Timedelta(minutes=1)
    stored = sample("vpp_forecasting_measurements_total", {"outcome": "stored"})
    core.on_telemetry(telemetry("site-a", at, 2.0, 1.0, message_id="m1"))
    core.on_telemetry(telemetry("site-a", at, 4.0, 3.0, message_id="m2"))
    core.on_telemetry(telemetry("site-a", at, 4.0, 3.0, message_id="m2"))  # re-delivered
    core.on_telemetry(telemetry("elsewhere", at, 9.0, 9.0, message_id="m3"))  # not our site: ignored
    off = telemetry("site-a", at, 0.0, 0.0, message_id="m4")
    off.telemetry.available = False  # powers are unset (0), not measured zeros
    core.on_telemetry(off)
    got = core.store.history("site-a", at.floor(SLOT), at.floor(SLOT) + SLOT)
    assert got["pv_kw"].iloc[0] == pytest.approx(3.0) and got["load_kw"].iloc[0] == pytest.approx(2.0)
    assert sample("vpp_forecasting_measurements_total", {"outcome": "stored"}) == stored + 2
    no_time = telemetry("site-a", at, 1.0, 1.0, message_id="m5")
    no_time.telemetry.ClearField("measured_at")
    with pytest.raises(ValueError, match="measured_at"):  # the consumer dead-letters ValueErrors
        core.on_telemetry(no_time)
    with pytest.raises(ValueError, match="pv_power_kw"):
        core.on_telemetry(telemetry("site-a", at, math.nan, 1.0, message_id="m6"))
    with pytest.raises(ValueError, match="in the future"):
        core.on_telemetry(telemetry("site-a", NOW + pd.Timedelta(hours=1), 1.0, 1.0, message_id="m7"))


def test_live_error_of_the_p50_is_scored_once_measured(tmp_path: Path, real: tuple[pd.Series, pd.Series]) -> None:
    clock = Clock(NOW)
    core = make_core(tmp_path, real, days=8, clock=clock)
    count = sample("vpp_forecasting_live_abs_error_kw_count", {"stream": "load"})
    published = core.refresh()
    p50 = next(fc for fc in published if fc.site_id == "site-a" and fc.stream == LOAD).points[0].values[1].power_kw
    slot = NOW.ceil(SLOT)
    clock.now = NOW + pd.Timedelta(minutes=30)
    for i, load in enumerate((p50 + 1.0, p50 + 3.0)):  # slot mean = P50 + 2 kW
        msg = telemetry("site-a", slot + pd.Timedelta(minutes=3 * i), 0.0, load, message_id=f"live{i}")
        core.on_telemetry(msg)
    core.refresh()
    assert sample("vpp_forecasting_live_abs_error_kw_count", {"stream": "load"}) == count + 1
    # Only site-a's first slot was measured since: the MAE is that slot's error, 2 kW.
    assert sample("vpp_forecasting_live_mae_kw", {"stream": "load"}) == pytest.approx(2.0, abs=1e-3)
