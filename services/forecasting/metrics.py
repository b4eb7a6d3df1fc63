"""Prometheus metrics of the forecasting service (module level: one process is one service)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Updates made in the model process (forecasting.model_worker) are recorded here and applied by the
# service process, the one whose /metrics Prometheus scrapes. None: apply at once (this is that process).
_deferred: list[tuple[str, tuple[str, ...], str, float]] | None = None

TRAINING_SECONDS = Histogram(
    "vpp_forecasting_training_seconds",
    "Time to fit and validate the candidate models of one site stream",
    ["stream"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0),
)
TRAINING_CPU_SECONDS = Counter(
    "vpp_forecasting_training_cpu_seconds_total",
    "CPU seconds spent fitting and validating models (in the training workers)",
    ["stream"],
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
CACHED_SITES = Gauge("vpp_forecasting_cached_sites", "Sites whose forecasts of the latest issue cycle are kept")
FALLBACK_STREAMS = Gauge(
    "vpp_forecasting_fallback_streams",
    "Site streams (PV, load) served by their fallback: not fit yet, or the candidate lost its validation",
)


def record(metric: Any, labels: tuple[str, ...], op: str, value: float) -> None:
    """``metric.labels(*labels).<op>(value)`` here, or later in the service process if this is the model process."""
    if _deferred is not None:
        _deferred.append((metric._name, labels, op, value))
        return
    target = metric.labels(*labels) if labels else metric
    getattr(target, op)(value)


def defer() -> None:
    """Called once in the model process: record updates for the service process instead of applying them."""
    global _deferred
    _deferred = []


def drain() -> list[tuple[str, tuple[str, ...], str, float]]:
    global _deferred
    if _deferred is None:
        return []
    out, _deferred = _deferred, []
    return out


def apply(events: list[tuple[str, tuple[str, ...], str, float]]) -> None:
    """The model process's updates, applied here (the service process)."""
    for name, labels, op, value in events:
        metric = _FROM_MODEL_PROCESS.get(name)
        if metric is not None:
            target = metric.labels(*labels) if labels else metric
            getattr(target, op)(value)


# The metrics the model process updates (see ``record``), by name.
_FROM_MODEL_PROCESS: dict[str, Any] = {m._name: m for m in (LIVE_ABS_ERROR_KW, LIVE_MAE_KW, REFRESH_SECONDS)}
