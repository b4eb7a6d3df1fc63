"""The seasonal-naive forecaster: the honest fallback every candidate model must beat.

Point (``predict_point``, what MAE/RMSE score): the same slot ``season_days`` earlier (two, three, four
seasons back if that is missing; the median of the last season if all are). Band (``predict``): the point
plus empirical quantiles of its own past errors ``y(t) - y(t - season)`` over all slots (day and night,
no grouping by hour) of the last ``error_window_days`` (default 56) before the issue time, clipped at 0.

It is shared by the load model (its fallback on short history), the service's PV and load candidates
(yesterday's / last week's slot) and the day-ahead model choice (the default fallback), so it lives in
a module of its own rather than inside one of the models.

Public API::

    SeasonalNaiveForecaster(season_days=7, error_window_days=56)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from forecasting.models.base import (
    SLOTS_PER_DAY,
    check_quantiles,
    check_slots,
    issue_position,
    masked_take,
    monotone_frame,
    slot_positions,
    to_grid,
)


class SeasonalNaiveForecaster:
    """Same slot one week earlier plus empirical error quantiles (the fallback)."""

    is_fallback = True

    def __init__(self, season_days: int = 7, error_window_days: int = 56) -> None:
        self.name = "seasonal_naive"
        self.season_slots = season_days * SLOTS_PER_DAY
        self.error_window_slots = error_window_days * SLOTS_PER_DAY
        self._y = np.empty(0)
        self._start: pd.Timestamp | None = None

    def fit(self, history: pd.Series) -> None:
        """Nothing to learn: remember the history."""
        self.update(history)

    def update(self, history: pd.Series) -> None:
        """Replace the remembered measurements."""
        s = to_grid(history)
        self._start = s.index[0] if len(s) else None
        self._y = s.to_numpy(dtype=float)

    def point(self, i: int, j: np.ndarray) -> np.ndarray:
        """Seasonal-naive point forecast for target positions ``j`` issued at ``i``."""
        out = np.full(j.shape, np.nan)
        for m in range(1, 5):
            cand = masked_take(self._y, j - m * self.season_slots, i)
            fill = np.isnan(out)
            out[fill] = cand[fill]
        return out

    def _point_and_errors(
        self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self._start is not None
        utc = check_slots(slots)
        i = issue_position(self._start, issue_time)
        j = slot_positions(self._start, utc)
        point = self.point(i, j)
        t = np.arange(max(i - self.error_window_slots, 0), max(min(i, len(self._y)), 0))
        err = self._y[t] - masked_take(self._y, t - self.season_slots, i) if len(t) else t
        err = err[np.isfinite(err)] if len(t) else np.empty(0)
        recent = self._y[max(i - self.season_slots, 0) : max(min(i, len(self._y)), 0)]
        level = float(np.nanmedian(recent)) if np.isfinite(recent).any() else 0.0
        point = np.where(np.isnan(point), level, point)
        if len(err) < SLOTS_PER_DAY:  # too little to learn errors: spread of recent data
            err = recent[np.isfinite(recent)] - level if np.isfinite(recent).any() else np.zeros(1)
        return point, err

    def predict_point(self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex) -> pd.Series:
        """The seasonal-naive value itself (kW, >= 0): what MAE/RMSE score."""
        if self._start is None:
            return pd.Series(np.zeros(len(slots)), index=slots)
        point, _ = self._point_and_errors(issue_time, slots)
        return pd.Series(np.clip(point, 0.0, None), index=slots)

    def predict(
        self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex, quantiles: Sequence[float]
    ) -> pd.DataFrame:
        """Quantiles = point + empirical quantiles of past seasonal-naive errors, >= 0."""
        qs = check_quantiles(quantiles)
        check_slots(slots)
        if self._start is None:
            return monotone_frame(np.zeros((len(slots), len(qs))), slots, qs)
        point, err = self._point_and_errors(issue_time, slots)
        shifts = np.quantile(err, qs)
        values = np.clip(point[:, None] + shifts[None, :], 0.0, None)
        return monotone_frame(values, slots, qs)
