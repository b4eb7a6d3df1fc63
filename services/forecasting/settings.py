"""Settings of the forecasting service: built once in ``__main__`` and passed down (STYLE.md section 4)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator, model_validator

from forecasting.models.spec import ModelSpec
from vpp_common.settings import ServiceSettings
from vpp_common.validation import normalise_store_url

DEFAULT_SITES_FILE = Path(__file__).with_name("sites.example.json")
DEFAULT_SCORES_FILE = Path(__file__).with_name("backtest_scores.json")


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
    # Models older than this are refit in the background (missing ones first); until a site stream's
    # model is fit, its seasonal-naive fallback serves and every forecast says so.
    retrain_interval_s: float = Field(default=86_400.0, ge=60.0, le=30 * 86_400.0)
    # The model configuration: the backtested one (forecasting.models.spec) unless a JSON file names
    # another; ListModels shows backtest scores only when the fingerprints match.
    model_spec_file: Path | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    # Where the backtest's scores of each configuration are (written by `make bench-forecast`).
    backtest_scores_file: Path = DEFAULT_SCORES_FILE
    # Days of history read to *predict* (features look back at most ~61 days: the baselines' error
    # window plus their lag); fits read the spec's training window plus this look-back.
    predict_history_days: int = Field(default=70, ge=8, le=400)
    # Fits run in this many worker processes (niced, so the platform keeps its CPU); 0 = a thread of
    # this process (tests, tiny deployments).
    training_processes: int = Field(default=1, ge=0, le=16)
    training_nice: int = Field(default=10, ge=0, le=19)
    # The models (updates, predictions, the issue cycle) live in a process of their own, so their numpy
    # work never holds this process's GIL between a request and its answer (forecasting.model_worker).
    # false = a thread of this process (tests; required for an in-memory store).
    model_process: bool = True
    # A re-delivered Kafka record is recognised by its message id for this long (see store.py). Kafka
    # re-delivers what was not committed when a consumer restarts: minutes, so 6 h is ample.
    dedupe_window_s: float = Field(default=6 * 3600.0, ge=60.0, le=30 * 86_400.0)

    # Dependence assumed when quantile sets are combined by sampling (NET stream and the portfolio):
    # correlation of the forecast errors in a Gaussian copula (see core.py, vpp_common/copula.py).
    pv_load_error_corr: float = Field(default=0.0, ge=-0.99, le=0.99)
    pv_inter_site_error_corr: float = Field(default=0.8, ge=0.0, le=0.99)
    load_inter_site_error_corr: float = Field(default=0.1, ge=0.0, le=0.99)
    combine_samples: int = Field(default=2000, ge=200, le=100_000)
    # Telemetry stamped further ahead of this service's clock is refused (counted as invalid and logged;
    # the good samples of its batch are kept): a slot in the future would be read as history by every
    # later fit.
    max_clock_skew_s: float = Field(default=300.0, ge=0.0, le=86_400.0)

    @model_validator(mode="after")
    def _spec_from_file(self) -> ForecastingSettings:
        """A spec file replaces the default configuration (its bad field is named at start-up)."""
        if self.model_spec_file is not None:
            self.model = ModelSpec.from_file(self.model_spec_file)
        if self.model_process and self.store_url.rstrip("/") in ("sqlite:", "sqlite:/"):
            raise ValueError(
                "an in-memory store cannot be opened by the model process: use a file or PostgreSQL "
                "(VPP_STORE_URL) or set VPP_MODEL_PROCESS=false"
            )
        return self

    @field_validator("store_url")
    @classmethod
    def _url_or_path(cls, value: str) -> str:
        return normalise_store_url(value)
