"""Site-load forecasting: LightGBM quantile regression with an honest fallback.

:class:`LoadForecaster` -- one LightGBM model per level of a quantile grid
on calendar features, lags that are available at the issue time (same slot
1-28 days back, masked when not yet measured) and recent means/volatility.
Training rows replay the intended use: issues at ``train_issue_hours``
(local time) for leads 0..36 h.  The last ``calib_days`` of the history are
held out to compute per-quantile conformal shifts (so the P10-P90 band covers
~80% out of sample); ``refit_after_calibration`` then refits on everything
(off by default: it doubles the cost for little gain, lags carry recent data).  With fewer than
``min_history_days`` of data it serves the seasonal-naive fallback
(:mod:`forecasting.models.seasonal_naive`).

The helpers it shares with the PV model and the service live in modules named for their role:
:mod:`~forecasting.models.quantile_boosting` (LightGBM quantile training),
:mod:`~forecasting.models.seasonal_naive` (the fallback) and
:mod:`~forecasting.models.validation` (day-ahead validation, ``choose_served_model``).

Public API::

    LoadForecaster(quantile_grid=..., timezone="UTC", ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from forecasting.models.base import (
    SLOT,
    SLOTS_PER_DAY,
    check_quantiles,
    check_slots,
    empirical_shift,
    interpolate_quantiles,
    issue_position,
    masked_take,
    monotone_frame,
    nanmean_rows,
    slot_positions,
    to_grid,
    window_sum,
)
from forecasting.models.quantile_boosting import QUANTILE_GRID, lgb_params, train_quantile_models
from forecasting.models.seasonal_naive import SeasonalNaiveForecaster

FEATURES = [
    "lead_slots",
    "slot_of_day",
    "day_of_week",
    "doy_sin",
    "doy_cos",
    "lag_1d",
    "lag_2d",
    "lag_3d",
    "lag_7d",
    "lag_14d",
    "same_slot_mean_weeks_1_4",
    "same_slot_mean_days_2_8",
    "last_slot",
    "mean_last_1h",
    "mean_last_24h",
    "mean_last_7d",
    "std_last_24h",
]


class _History:
    """Grid arrays and cumulative sums used by the feature builder."""

    def __init__(self, s: pd.Series) -> None:
        self.start: pd.Timestamp = s.index[0]
        self.y = s.to_numpy(dtype=float)
        ok = np.isfinite(self.y)
        v = np.where(ok, self.y, 0.0)
        self.csum = np.concatenate([[0.0], np.cumsum(v)])
        self.csq = np.concatenate([[0.0], np.cumsum(v * v)])
        self.ccount = np.concatenate([[0.0], np.cumsum(ok)])

    def window_mean(self, i: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std over the ``width`` slots before each issue position."""
        n = window_sum(self.ccount, i - width, i)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = window_sum(self.csum, i - width, i) / n
            var = window_sum(self.csq, i - width, i) / n - mean**2
        return mean, np.sqrt(np.clip(var, 0, None))


def load_features(hist: _History, i: np.ndarray, j: np.ndarray, tz: str) -> np.ndarray:
    """Feature matrix (rows = (issue position i, target position j)), see ``FEATURES``."""
    y = hist.y
    ts = pd.DatetimeIndex(hist.start + j * SLOT).tz_convert(tz)
    lag = {k: masked_take(y, j - k * SLOTS_PER_DAY, i) for k in (1, 2, 3, 7, 14)}
    weeks = np.stack([masked_take(y, j - 7 * w * SLOTS_PER_DAY, i) for w in range(1, 5)])
    days = np.stack([masked_take(y, j - d * SLOTS_PER_DAY, i) for d in range(2, 9)])
    m1h, _ = hist.window_mean(i, 4)
    m24, s24 = hist.window_mean(i, SLOTS_PER_DAY)
    m7d, _ = hist.window_mean(i, 7 * SLOTS_PER_DAY)
    doy = 2 * np.pi * (ts.dayofyear.to_numpy() - 1) / 365.25
    cols = [
        (j - i).astype(float),
        (ts.hour.to_numpy() * 4 + ts.minute.to_numpy() // 15).astype(float),
        ts.dayofweek.to_numpy().astype(float),
        np.sin(doy),
        np.cos(doy),
        lag[1],
        lag[2],
        lag[3],
        lag[7],
        lag[14],
        nanmean_rows(weeks),
        nanmean_rows(days),
        masked_take(y, i - 1, i),
        m1h,
        m24,
        m7d,
        s24,
    ]
    return np.column_stack(cols)


class LoadForecaster:
    """LightGBM quantile regression for site load, conformally calibrated."""

    is_fallback = False

    def __init__(
        self,
        quantile_grid: Sequence[float] = QUANTILE_GRID,
        timezone: str = "UTC",
        train_issue_hours: Sequence[int] = (12,),
        max_lead_slots: int = 144,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_data_in_leaf: int = 50,
        calib_days: int = 42,
        refit_after_calibration: bool = False,
        min_history_days: int = 28,
        train_days: int | None = 730,
        max_train_rows: int = 60_000,
        num_threads: int = 1,
        seed: int = 0,
    ) -> None:
        self.max_train_rows = max_train_rows
        self.seed = seed
        self.name = "lightgbm_quantile"
        self.quantile_grid = tuple(sorted(float(q) for q in quantile_grid))
        self.timezone = timezone
        self.train_issue_hours = tuple(train_issue_hours)
        self.max_lead_slots = max_lead_slots
        self.calib_days = calib_days
        self.refit_after_calibration = refit_after_calibration
        self.min_history_days = min_history_days
        self.train_days = train_days
        self.n_estimators = n_estimators
        self.params: dict[str, Any] = lgb_params(
            learning_rate, num_leaves, min_data_in_leaf, num_threads, seed
        )
        self._hist: _History | None = None
        self._models: dict[float, lgb.Booster] = {}
        self.shifts_kw: dict[float, float] = {}
        self.fallback: SeasonalNaiveForecaster | None = None

    # -- training -------------------------------------------------------
    def _rows(self, hist: _History, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(i, j) pairs with issue in [lo, hi) at a training hour and a measured target < hi."""
        n = len(hist.y)
        times = pd.DatetimeIndex(hist.start + np.arange(n) * SLOT).tz_convert(self.timezone)
        is_issue = np.isin(times.hour, self.train_issue_hours) & (times.minute == 0)
        issues = np.flatnonzero(is_issue)
        issues = issues[(issues >= max(lo, 8 * SLOTS_PER_DAY)) & (issues < hi)]
        i = np.repeat(issues, self.max_lead_slots)
        j = i + np.tile(np.arange(self.max_lead_slots), len(issues))
        keep = j < hi
        i, j = i[keep], j[keep]
        keep = np.isfinite(hist.y[j])
        i, j = i[keep], j[keep]
        if len(i) > self.max_train_rows:  # neighbouring leads are near-duplicates
            # Seeded by the absolute time of the window end, not its position in the grid: the service
            # (a window read from its store) and the backtest (a longer series) pick the same rows.
            rng = np.random.default_rng([self.seed, int((hist.start + hi * SLOT).value // SLOT.value)])
            pick = np.sort(rng.choice(len(i), self.max_train_rows, replace=False))
            i, j = i[pick], j[pick]
        return i, j

    def _train(self, X: np.ndarray, y: np.ndarray) -> dict[float, lgb.Booster]:
        return train_quantile_models(X, y, None, self.quantile_grid, self.params,
                                     self.n_estimators)

    def _raw_predict(self, models: dict[float, lgb.Booster], X: np.ndarray) -> np.ndarray:
        return np.column_stack([models[q].predict(X, num_threads=1) for q in self.quantile_grid])

    def fit(self, history: pd.Series) -> None:
        """Train (or switch to the fallback when history is short) and remember history."""
        s = to_grid(history)
        valid_days = float(s.notna().sum()) / SLOTS_PER_DAY
        self._models, self.shifts_kw = {}, {}
        if valid_days < self.min_history_days:
            self.fallback = SeasonalNaiveForecaster()
            self.fallback.fit(s if len(s) else history)
            self._hist = _History(s) if len(s) else None
            return
        self.fallback = None
        hist = _History(s)
        n = len(hist.y)
        lo = 0 if self.train_days is None else max(0, n - self.train_days * SLOTS_PER_DAY)
        i_all, j_all = self._rows(hist, lo, n)
        cut = n - self.calib_days * SLOTS_PER_DAY
        i_tr, j_tr = self._rows(hist, lo, cut) if self.calib_days > 0 else (i_all, j_all)
        calib = (i_all >= cut) if self.calib_days > 0 else np.zeros(len(i_all), bool)
        if self.calib_days > 0 and len(i_tr) > 1000 and calib.sum() > 200:
            models = self._train(load_features(hist, i_tr, j_tr, self.timezone), hist.y[j_tr])
            Xc = load_features(hist, i_all[calib], j_all[calib], self.timezone)
            pc = self._raw_predict(models, Xc)
            yc = hist.y[j_all[calib]]
            self.shifts_kw = {
                q: empirical_shift(yc - pc[:, c], q) for c, q in enumerate(self.quantile_grid)
            }
            if not self.refit_after_calibration:
                self._models = models
        if not self._models:
            X = load_features(hist, i_all, j_all, self.timezone)
            self._models = self._train(X, hist.y[j_all])
        self._hist = hist

    def update(self, history: pd.Series) -> None:
        """Replace the measurements used for lag features (no retraining)."""
        s = to_grid(history)
        if self.fallback is not None:
            self.fallback.update(s)
        self._hist = _History(s) if len(s) else None

    # -- inference ------------------------------------------------------
    def predict(
        self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex, quantiles: Sequence[float]
    ) -> pd.DataFrame:
        """Calibrated quantiles (kW, >= 0) for ``slots``; data before ``issue_time`` only."""
        qs = check_quantiles(quantiles)
        utc = check_slots(slots)
        if self.fallback is not None or self._hist is None:
            if self.fallback is None:
                raise RuntimeError("fit() first")
            return self.fallback.predict(issue_time, slots, qs)
        hist = self._hist
        i = issue_position(hist.start, issue_time)
        j = slot_positions(hist.start, utc)
        X = load_features(hist, np.full(len(j), i), j, self.timezone)
        raw = self._raw_predict(self._models, X)
        raw += np.array([self.shifts_kw.get(q, 0.0) for q in self.quantile_grid])[None, :]
        values = np.clip(interpolate_quantiles(self.quantile_grid, raw, qs), 0.0, None)
        return monotone_frame(values, slots, qs)
