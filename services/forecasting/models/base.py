"""The forecaster interface every model in this package implements.

Conventions (shared with the forecasting service):

* A *history* is a ``pd.Series`` of kW on a 15-minute grid, tz-aware index in
  UTC holding each slot's **start**, NaN = missing.  Irregular input is put on
  the grid by :func:`to_grid`.
* ``fit(history)`` trains on everything it is given and remembers it.
  ``update(history)`` only replaces the remembered measurements (no
  retraining), so a service can feed new data every few minutes and retrain
  e.g. nightly.  (``update`` is an addition to the minimal protocol.)
* ``predict(issue_time, slots, quantiles)`` returns a DataFrame indexed by
  ``slots`` with one float column per quantile (column label = the quantile
  float, e.g. ``0.1``), kW, non-decreasing across quantiles.  It uses only slots
  that *end* at or before ``issue_time``: measurements at/after the issue time
  never change the forecast (tested by perturbing them).
* PV models also accept ``weather=`` (a DataFrame, see
  :mod:`forecasting.models.physics`) in ``fit`` and ``predict``.
* ``predict_point(issue_time, slots)`` (optional, :class:`PointForecaster`)
  returns the model's own single-valued forecast (kW) -- what MAE and RMSE are
  scored on.  Reference forecasts have one (persistence value, climatology
  mean, ...) that differs from the median of their band; a model without it is
  scored on its median (:func:`point_forecast`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

SLOT = pd.Timedelta(minutes=15)
SLOTS_PER_DAY = 96
DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)


@runtime_checkable
class QuantileForecaster(Protocol):
    """A probabilistic forecaster of one 15-minute kW stream."""

    name: str

    def fit(self, history: pd.Series) -> None:
        """Train on ``history`` (15-min kW, UTC slot-start index, NaN missing)."""

    def update(self, history: pd.Series) -> None:
        """Replace the measurements used for features, without retraining."""

    def predict(
        self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex, quantiles: Sequence[float]
    ) -> pd.DataFrame:
        """Quantile forecasts (kW) for ``slots`` using data before ``issue_time`` only."""


@runtime_checkable
class PointForecaster(Protocol):
    """A forecaster that also states its own point forecast (optional extension)."""

    def predict_point(self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex) -> pd.Series:
        """Point forecast (kW) for ``slots`` using data before ``issue_time`` only."""


def point_forecast(
    model: QuantileForecaster, issue_time: pd.Timestamp, slots: pd.DatetimeIndex,
    quantiles: pd.DataFrame | None = None,
) -> pd.Series:
    """``model.predict_point`` if it has one, else its median (from ``quantiles`` if given)."""
    if isinstance(model, PointForecaster):
        return model.predict_point(issue_time, slots)
    fc = quantiles if quantiles is not None else model.predict(issue_time, slots, [0.5])
    cols = [float(c) for c in fc.columns]
    if 0.5 in cols:
        return fc[0.5]
    return pd.Series(interpolate_quantiles(cols, fc.to_numpy(), [0.5])[:, 0], index=slots)


def to_grid(history: pd.Series) -> pd.Series:
    """Validate a history and put it on a regular 15-minute UTC grid (float, NaN gaps)."""
    if not isinstance(history.index, pd.DatetimeIndex) or history.index.tz is None:
        raise ValueError("history needs a tz-aware DatetimeIndex")
    s = history.astype(float)
    s.index = s.index.tz_convert("UTC")
    s = s[~s.index.duplicated(keep="last")].sort_index()
    if s.empty:
        return s
    if not (s.index == s.index.floor(SLOT)).all():
        raise ValueError("history index must be 15-minute slot starts")
    grid = pd.date_range(s.index[0], s.index[-1], freq=SLOT)
    return s.reindex(grid)


def check_slots(slots: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Slots must be tz-aware 15-minute slot starts; returned in UTC."""
    if slots.tz is None:
        raise ValueError("slots must be tz-aware")
    utc = slots.tz_convert("UTC")
    if not (utc == utc.floor(SLOT)).all():
        raise ValueError("slots must be 15-minute slot starts")
    return utc


def check_quantiles(quantiles: Sequence[float]) -> list[float]:
    """Quantiles as floats in (0, 1)."""
    qs = [float(q) for q in quantiles]
    if not qs or any(not 0.0 < q < 1.0 for q in qs):
        raise ValueError("quantiles must lie in (0, 1)")
    return qs


def issue_position(grid_start: pd.Timestamp, issue_time: pd.Timestamp) -> int:
    """Number of grid slots that end at or before ``issue_time`` (may be <= 0).

    Slot ``k`` covers ``[start + k*15min, start + (k+1)*15min)``; it is usable
    for a forecast issued at ``issue_time`` iff ``k < issue_position``.
    """
    if issue_time.tz is None:
        raise ValueError("issue_time must be tz-aware")
    delta = (issue_time.tz_convert("UTC") - grid_start) // SLOT
    return int(delta)


def interpolate_quantiles(
    grid_q: Sequence[float], values: np.ndarray, wanted: Sequence[float]
) -> np.ndarray:
    """Quantile values at ``wanted`` levels from values at ``grid_q`` levels.

    ``values`` has shape (n, len(grid_q)) and is sorted along axis 1 first.
    Inside the grid: linear in the level; outside: linear extrapolation from
    the two outermost levels (callers clip to physical bounds).
    """
    g = np.asarray(grid_q, dtype=float)
    v = np.sort(np.asarray(values, dtype=float), axis=1)
    out = np.empty((v.shape[0], len(wanted)))
    for c, q in enumerate(wanted):
        hit = np.isclose(g, q)
        if hit.any():
            out[:, c] = v[:, int(np.argmax(hit))]
            continue
        hi = int(np.searchsorted(g, q))
        hi = min(max(hi, 1), len(g) - 1)
        lo = hi - 1
        w = (q - g[lo]) / (g[hi] - g[lo])
        out[:, c] = v[:, lo] + w * (v[:, hi] - v[:, lo])
    return out


def monotone_frame(
    values: np.ndarray, slots: pd.DatetimeIndex, quantiles: Sequence[float]
) -> pd.DataFrame:
    """DataFrame with quantile columns, made non-decreasing across quantiles."""
    order = np.argsort(quantiles, kind="stable")
    v = np.asarray(values, dtype=float).copy()
    v[:, order] = np.sort(v[:, order], axis=1)
    return pd.DataFrame(v, index=slots, columns=[float(q) for q in quantiles])


def pinball_loss(y: np.ndarray, pred: np.ndarray, q: float) -> np.ndarray:
    """Elementwise pinball (quantile) loss, same units as ``y``."""
    d = y - pred
    return np.maximum(q * d, (q - 1.0) * d)


def empirical_shift(residuals: np.ndarray, q: float, weights: np.ndarray | None = None) -> float:
    """(Weighted) ``q``-quantile of residuals ``y - pred_q``: the conformal shift.

    Adding it to a quantile forecast makes its empirical coverage ``q`` on the
    calibration sample (split-conformal / CQR-style per-quantile correction).
    """
    r = np.asarray(residuals, dtype=float)
    ok = np.isfinite(r)
    if weights is None:
        return float(np.quantile(r[ok], q)) if ok.any() else 0.0
    w = np.asarray(weights, dtype=float)
    ok &= np.isfinite(w) & (w > 0)
    if not ok.any():
        return 0.0
    r, w = r[ok], w[ok]
    order = np.argsort(r)
    cw = np.cumsum(w[order])
    return float(r[order][int(np.searchsorted(cw, q * cw[-1]))])


def window_sum(cumsum: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Sum over ``[start, end)`` from a cumulative sum with a leading zero (clipped)."""
    n = len(cumsum) - 1
    s = np.clip(start, 0, n)
    e = np.clip(end, 0, n)
    return cumsum[e] - cumsum[np.minimum(s, e)]


def masked_take(values: np.ndarray, idx: np.ndarray, limit: np.ndarray | int) -> np.ndarray:
    """``values[idx]`` where ``0 <= idx < limit`` (and inside the array), else NaN.

    The single gate through which all features read history: ``limit`` is the
    issue position, so nothing at/after the issue time can be read.
    """
    idx = np.asarray(idx)
    ok = (idx >= 0) & (idx < limit) & (idx < len(values))
    out = np.full(idx.shape, np.nan)
    out[ok] = values[idx[ok]]
    return out


def slot_positions(grid_start: pd.Timestamp, slots: pd.DatetimeIndex) -> np.ndarray:
    """Grid positions of ``slots`` on a grid starting at ``grid_start``."""
    return np.asarray((slots - grid_start) // SLOT, dtype=np.int64)


def nanmean_rows(stack: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; an all-NaN column is NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(stack, axis=0)
