"""Prometheus metrics of the forecasting service (module level: one process is one service)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TRAINING_SECONDS = Histogram(
    "vpp_forecasting_training_seconds",
    "Time to fit and validate the candidate models of one site stream",
    ["stream"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0),
)
FORECAST_AGE_SECONDS = Gauge(
    "vpp_forecasting_forecast_age_seconds",
    "Seconds since the latest published forecast was issued",
    ["site", "stream"],
)
LIVE_ABS_ERROR_KW = Histogram(
    "vpp_forecasting_live_abs_error_kw",
    "|P50 - measured| per 15-min slot, P50 from the latest published forecast issued before the slot",
    ["stream"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0),
)
LIVE_MAE_KW = Gauge(
    "vpp_forecasting_live_mae_kw",
    "Mean |P50 - measured| over the slots evaluated in the last 24 h (all sites)",
    ["stream"],
)
FORECASTS_PUBLISHED = Counter(
    "vpp_forecasting_forecasts_published_total", "Forecasts acknowledged by Kafka", ["stream"]
)
MEASUREMENTS = Counter(
    "vpp_forecasting_measurements_total",
    "Telemetry samples by outcome (stored, duplicate, unavailable, unknown_site, invalid)",
    ["outcome"],
)
STORE_ERRORS = Counter("vpp_forecasting_store_errors_total", "Failed history store writes (retried)")
REFRESH_SECONDS = Histogram(
    "vpp_forecasting_refresh_seconds",
    "Time to recompute every site's and the portfolio's forecasts",
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
