"""The one model configuration: what the backtest scores is what the service serves.

Both ``forecasting.backtest.runner`` and ``forecasting.selection`` build their models only through the
factories below, from one ``ModelSpec``. The spec's ``fingerprint`` is written into the backtest
results; the service shows the backtest scores in ``ListModels`` only for the fingerprint it runs, so a
changed configuration can never borrow the scores of another.

Public API::

    ModelSpec(...)                       # pydantic, frozen; defaults = the backtested configuration
    ModelSpec.fingerprint() -> str
    load_candidate(spec, timezone) / load_fallback(spec)
    pv_candidate(spec, site) / pv_fallback(spec)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forecasting.models.load import LoadForecaster
from forecasting.models.pv import PvForecaster
from forecasting.models.seasonal_naive import SeasonalNaiveForecaster
from forecasting.models.site import PvSite


class ModelSpec(BaseModel):
    """Sizes and windows of the served models (LightGBM threads do not change a forecast: not hashed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Days of history a fit sees (expanding window capped here) and of the calibration hold-out.
    train_days: int = Field(default=730, ge=28, le=3650)
    load_calib_days: int = Field(default=42, ge=0, le=365)
    pv_calib_days: int = Field(default=30, ge=0, le=365)
    load_n_estimators: int = Field(default=200, ge=10, le=5000)
    pv_n_estimators: int = Field(default=150, ge=10, le=5000)
    load_max_rows: int = Field(default=60_000, ge=1000, le=2_000_000)
    pv_max_rows: int = Field(default=30_000, ge=1000, le=2_000_000)
    # PV model (see forecasting.models.pv): intraday LightGBM learns quantiles of the clear-sky index
    # around a linear base (smart persistence + 30-day median, per lead); calibration of the band on the
    # last pv_calib_days: "levels" = quantile-level recalibration per lead hour (follows seasonal changes
    # in spread; pv_calib_widen = margin: P10-P90 calibrated to 80 % * (1 + widen) of the hold-out),
    # "shift" = additive conformal shifts.  Day-ahead (no weather) = empirical index distribution of the
    # last 30 days within +- pv_empirical_half_width slots of the time of day, optionally recalibrated
    # per issue on its own forecasts of the last pv_dayahead_calib_days (off: it did not help).  The
    # point forecast (MAE/RMSE) is the median or the predictive mean.
    pv_intraday_linear_base: bool = True
    pv_calibration: Literal["levels", "shift"] = "levels"
    pv_calib_widen: float = Field(default=0.05, ge=0.0, le=0.5)
    pv_dayahead_calibration: bool = False
    pv_dayahead_calib_days: int = Field(default=30, ge=7, le=120)
    pv_empirical_half_width: int = Field(default=6, ge=0, le=16)
    pv_point: Literal["median", "mean"] = "median"
    # Latest days on which a candidate must beat its fallback to be served (day-ahead validation).
    validation_days: int = Field(default=7, ge=1, le=60)
    seed: int = 0
    num_threads: int = Field(default=1, ge=1, le=64)

    def fingerprint(self) -> str:
        """Short hash of everything that changes a forecast (threads excluded)."""
        payload = self.model_dump(exclude={"num_threads"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def history_days(self) -> int:
        """Days of history a fit reads: the training window (the calibration hold-out lies inside it)."""
        return self.train_days

    @classmethod
    def from_file(cls, path: Path) -> ModelSpec:
        """A spec from a JSON file (raises ``pydantic.ValidationError`` naming the bad field)."""
        return cls.model_validate_json(path.read_text())


def load_candidate(spec: ModelSpec, timezone: str) -> LoadForecaster:
    return LoadForecaster(
        timezone=timezone,
        n_estimators=spec.load_n_estimators,
        num_threads=spec.num_threads,
        seed=spec.seed,
        train_days=spec.train_days,
        calib_days=spec.load_calib_days,
        max_train_rows=spec.load_max_rows,
    )


def load_fallback(spec: ModelSpec) -> SeasonalNaiveForecaster:
    """Last week's slot: load follows the week."""
    return SeasonalNaiveForecaster(season_days=7)


def pv_candidate(spec: ModelSpec, site: PvSite) -> PvForecaster:
    return PvForecaster(
        site,
        n_estimators=spec.pv_n_estimators,
        num_threads=spec.num_threads,
        seed=spec.seed,
        train_days=spec.train_days,
        calib_days=spec.pv_calib_days,
        max_train_rows=spec.pv_max_rows,
        intraday_linear_base=spec.pv_intraday_linear_base,
        calibration=spec.pv_calibration,
        dayahead_calibration=spec.pv_dayahead_calibration,
        dayahead_calib_days=spec.pv_dayahead_calib_days,
        empirical_half_width=spec.pv_empirical_half_width,
        calib_widen=spec.pv_calib_widen,
        point=spec.pv_point,
    )


def pv_fallback(spec: ModelSpec) -> SeasonalNaiveForecaster:
    """Yesterday's slot: cloudiness persists for days, not weeks."""
    return SeasonalNaiveForecaster(season_days=1)
