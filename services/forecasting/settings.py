"""Settings of the forecasting service: built once in ``__main__`` and passed down (STYLE.md section 4)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator

from forecasting.store import normalise_store_url
from vpp_common.settings import ServiceSettings

DEFAULT_SITES_FILE = Path(__file__).with_name("sites.example.json")


class ForecastingSettings(ServiceSettings):
    service_name: str = "forecasting"
    grpc_port: int = Field(default=50055, ge=0, le=65535)
    metrics_port: int = Field(default=9105, ge=0, le=65535)

    # SQLAlchemy URL of the history store. SQLite (embedded) by default; production uses
    # postgresql+psycopg://user@host:5432/db. A bare file path or ":memory:" is accepted too.
    store_url: str = Field(
        default="sqlite:///forecasting-history.sqlite",
        validation_alias=AliasChoices("VPP_STORE_URL", "VPP_FORECAST_STORE_URL", "store_url"),
    )
    sites_file: Path = DEFAULT_SITES_FILE

    # Demo convenience: at start, backfill this many days of the real series (forecasting.seed) for every
    # site that has no history at all. 0 (default) never writes anything the service did not measure.
    seed_days_if_empty: int = Field(default=0, ge=0, le=365)

    # How often every site's forecasts are recomputed and published (also on demand via gRPC).
    refresh_interval_s: float = Field(default=900.0, ge=1.0, le=86_400.0)
    # Models older than this are refit on the next refresh; missing models are fit at once.
    retrain_interval_s: float = Field(default=86_400.0, ge=60.0, le=30 * 86_400.0)
    # Days of 15-min history each fit sees, and how many of the latest days decide which model is served.
    train_history_days: int = Field(default=56, ge=1, le=730)
    validation_days: int = Field(default=7, ge=1, le=60)
    # A re-delivered Kafka record is recognised by its message id for this long (see store.py). Kafka
    # re-delivers what was not committed when a consumer restarts: minutes, so 6 h is ample.
    dedupe_window_s: float = Field(default=6 * 3600.0, ge=60.0, le=30 * 86_400.0)

    # Dependence assumed when quantile sets are combined by sampling (NET stream and the portfolio):
    # correlation of the forecast errors in a Gaussian copula (see core.py, combine.py).
    pv_load_error_corr: float = Field(default=0.0, ge=-0.99, le=0.99)
    pv_inter_site_error_corr: float = Field(default=0.8, ge=0.0, le=0.99)
    load_inter_site_error_corr: float = Field(default=0.1, ge=0.0, le=0.99)
    combine_samples: int = Field(default=2000, ge=200, le=100_000)
    # Boosting rounds per quantile of the LightGBM models (fit cost grows linearly).
    load_n_estimators: int = Field(default=250, ge=10, le=5000)
    pv_n_estimators: int = Field(default=200, ge=10, le=5000)
    # LightGBM threads per fit. 1 by default: OpenMP threads spinning on a busy 2-core host made a
    # 2-second fit take a minute (measured); parallelism comes from fitting sites one after another.
    model_threads: int = Field(default=1, ge=1, le=64)
    # Telemetry stamped further ahead of this service's clock is refused (counted as invalid and logged;
    # the good samples of its batch are kept): a slot in the future would be read as history by every
    # later fit.
    max_clock_skew_s: float = Field(default=300.0, ge=0.0, le=86_400.0)

    @field_validator("store_url")
    @classmethod
    def _url_or_path(cls, value: str) -> str:
        return normalise_store_url(value)
