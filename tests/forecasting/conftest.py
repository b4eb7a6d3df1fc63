"""Fixtures of the forecasting service tests: real stores (SQLite and PostgreSQL), sites files, seeded
history from the real data sets, and settings that keep model fits small enough for a test run."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from vpp.v1 import envelope_pb2, telemetry_pb2

from forecasting.models.spec import ModelSpec
from forecasting.seed import real_series, site_frames
from forecasting.settings import ForecastingSettings
from forecasting.sites import SiteConfig, load_sites
from forecasting.store import SLOT, HistoryStore
from vpp_common.envelope import wrap

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_URL = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test"

SITE_A: dict[str, Any] = {
    "site_id": "site-a",
    "pv": {
        "latitude": 39.74,
        "longitude": -105.18,
        "altitude_m": 1800,
        "tilt_deg": 30,
        "azimuth_deg": 180,
        "kwp": 8.0,
        "timezone": "America/Denver",
    },
    "load_scale": 1.0,
}
SITE_B: dict[str, Any] = {
    "site_id": "site-b",
    "pv": {
        "latitude": 40.01,
        "longitude": -105.27,
        "altitude_m": 1650,
        "tilt_deg": 35,
        "azimuth_deg": 170,
        "kwp": 5.0,
        "timezone": "America/Denver",
    },
    "load_scale": 2.0,
}


def require_postgres() -> str:
    """The PostgreSQL URL, or a test FAILURE (not a skip) saying how to start the server."""
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2.0):
            pass
    except OSError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} ({exc}); these tests need a real server: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            pytrace=False,
        )
    return PG_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    """The same store code on SQLite (a file) and on the real PostgreSQL server, in tables of its own."""
    if request.param == "sqlite":
        s = HistoryStore(f"sqlite:///{tmp_path / 'history.sqlite'}")
    else:
        s = HistoryStore(require_postgres(), table_prefix=f"t{uuid.uuid4().hex[:10]}_")
    s.create_schema()
    try:
        yield s
    finally:
        s.drop_schema()
        s.close()


def write_sites(path: Path, *sites: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"sites": list(sites)}))
    return path


@pytest.fixture(scope="session")
def real() -> tuple[pd.Series, pd.Series]:
    """(UCI household load kW, PVDAQ system 50 kW per kWp): the real series, parsed once."""
    return real_series()


def seed_store(
    store: HistoryStore, sites: list[SiteConfig], real: tuple[pd.Series, pd.Series], days: int, end: pd.Timestamp
) -> None:
    load, pv_per_kwp = real
    for site_id, frame in site_frames(sites, load, pv_per_kwp, end.floor(SLOT), days).items():
        store.put_slot_means(site_id, frame)


def small_settings(**overrides: Any) -> ForecastingSettings:
    """Settings with small LightGBM models (seconds per fit on a shared 2-core box), nothing from the env."""
    values: dict[str, Any] = {
        "store_url": "sqlite://",
        "model": ModelSpec(
            load_n_estimators=20,
            pv_n_estimators=20,
            train_days=35,
            validation_days=3,
            load_calib_days=7,
            pv_calib_days=7,
        ),
        "predict_history_days": 35,
        "training_processes": 0,
        "model_process": False,
        "combine_samples": 1000,
        "grpc_port": 0,
        "metrics_port": 0,
        "grpc_host": "127.0.0.1",
        "log_level": "INFO",
        **overrides,
    }
    return ForecastingSettings(**values)


@pytest.fixture()
def sites_file(tmp_path: Path) -> Path:
    return write_sites(tmp_path / "sites.json", SITE_A, SITE_B)


@pytest.fixture()
def two_sites(sites_file: Path) -> list[SiteConfig]:
    return load_sites(sites_file)


def sample(
    site: str, at: pd.Timestamp, pv: float, load: float, message_id: str, *, available: bool = True
) -> telemetry_pb2.TelemetryRecord:
    """One telemetry sample as the gateway batches it (its own dedupe id, site id in the telemetry)."""
    t = telemetry_pb2.Telemetry(site_id=site, available=available, pv_power_kw=pv, load_power_kw=load)
    t.measured_at.FromNanoseconds(at.value)
    return telemetry_pb2.TelemetryRecord(message_id=message_id, telemetry=t)


def batch_envelope(*records: telemetry_pb2.TelemetryRecord) -> envelope_pb2.Envelope:
    """A ``telemetry_batch`` Envelope as the gateway writes to vpp.telemetry.v1 (no envelope site id)."""
    return wrap(telemetry_pb2.TelemetryBatch(records=list(records)), source="gateway/test")
