"""Reference forecasts for PV (what a skill score is measured against).

All three follow the :class:`~forecasting.models.base.QuantileForecaster`
protocol and are scored the way the field scores them:

* **Point** (``predict_point``; MAE and RMSE are computed on it): the
  baseline's own value -- the persistence value, the climatology mean, the
  smart-persistence value -- never a median shifted by its error distribution.
  0 kW at night (solar elevation <= 5 deg) and where the point is undefined.
* **Band** (``predict``; pinball loss and P10-P90 coverage): the point plus
  empirical quantiles of the baseline's *own past errors*, clear-sky scaled::

      P_q(t) = max(0, point(t) + P_clear(t) * Q_q(e)),  e = (y - point) / P_clear

  The errors ``e`` are those the baseline made on the daylight slots (solar
  elevation > 5 deg, clear-sky power > 1 % of kWp, measured) of the last
  ``error_window_days`` = 30 days before the issue time, each error
  recomputed as if issued then (smart persistence: issued the forecast's
  lead before its slot), from data before the issue time only.  Grouping: one error distribution per forecast for
  persistence and climatology (all daylight hours pooled; the clear-sky
  scaling carries the daily and seasonal shape), one per lead (15-minute
  step) for smart persistence, whose error grows with the lead.  With fewer
  than 50 errors the band collapses to the point.

* :class:`PvPersistenceForecaster` -- the same slot ``lag_days`` earlier (D-2 =
  the last complete day for a day-ahead issued at noon on D-1; 2 and 3 lags
  back if that slot is missing).
* :class:`PvClimatologyForecaster` -- per-slot mean of the measured days D-2 ..
  D-31 (``days`` = 30 days ending two days before the target).
* :class:`SmartPersistenceForecaster` -- the clear-sky index of the last hour
  before the issue (energy-weighted) times the clear-sky power of the target
  slot; if the last hour was dark, the index of the last 24 h.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from forecasting.models.base import (
    SLOT,
    SLOTS_PER_DAY,
    check_quantiles,
    check_slots,
    issue_position,
    masked_take,
    monotone_frame,
    to_grid,
)
from forecasting.models.pv import _nanmean_rows, _PvGrid
from forecasting.models.site import PvSite


class _PvBaseline:
    """Shared plumbing: the measurement grid and the error-quantile band."""

    is_fallback = True

    def __init__(self, site: PvSite, error_window_days: int = 30) -> None:
        self.site = site
        self.error_window_slots = error_window_days * SLOTS_PER_DAY
        self._grid: _PvGrid | None = None
        self.name = "baseline"

    def fit(self, history: pd.Series) -> None:
        """Nothing to learn: remember the history."""
        self.update(history)

    def update(self, history: pd.Series) -> None:
        """Replace the remembered measurements."""
        s = to_grid(history)
        self._grid = _PvGrid(self.site, s, None) if len(s) else None

    def point_kw(self, g: _PvGrid, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Point forecast for rows (issue position, target position)."""
        raise NotImplementedError

    def _error_quantiles(self, g: _PvGrid, i: int, lead: int, qs: list[float]) -> np.ndarray:
        t = np.arange(max(i - self.error_window_slots, 0), min(i, g.n))
        t = t[g.phys["usable"][t] & np.isfinite(g.p[t])]
        if len(t) < 50:
            return np.zeros(len(qs))
        point = self.point_kw(g, t - lead, t)
        ok = np.isfinite(point)
        if ok.sum() < 50:
            return np.zeros(len(qs))
        rel = (g.p[t][ok] - point[ok]) / g.phys["ac_clear_kw"][t][ok]
        return np.quantile(rel, qs)

    def _lead_key(self, lead: int) -> int:
        """Leads sharing an error distribution (overridden per baseline)."""
        return 0

    def _positions(
        self, g: _PvGrid, issue_time: pd.Timestamp, slots: pd.DatetimeIndex
    ) -> tuple[int, np.ndarray]:
        i = issue_position(g.start, issue_time)
        j = np.asarray((check_slots(slots) - g.start) // SLOT, dtype=np.int64)
        g.ensure(int(j.max()) + 1)
        return i, j

    def _point(self, g: _PvGrid, i: int, j: np.ndarray) -> np.ndarray:
        point = self.point_kw(g, np.full(len(j), i), j)
        return np.where(g.phys["usable"][j] & np.isfinite(point), np.clip(point, 0.0, None), 0.0)

    def predict_point(self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex) -> pd.Series:
        """The baseline's own point forecast (kW, >= 0, 0 at night): what MAE/RMSE score."""
        g = self._grid
        if g is None:
            return pd.Series(np.zeros(len(slots)), index=slots)
        i, j = self._positions(g, issue_time, slots)
        return pd.Series(self._point(g, i, j), index=slots)

    def predict(
        self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex, quantiles: Sequence[float]
    ) -> pd.DataFrame:
        """Point + clear-sky-scaled empirical error quantiles, >= 0, 0 at night."""
        qs = check_quantiles(quantiles)
        check_slots(slots)
        g = self._grid
        if g is None:
            return monotone_frame(np.zeros((len(slots), len(qs))), slots, qs)
        i, j = self._positions(g, issue_time, slots)
        pcs = g.phys["ac_clear_kw"][j]
        usable = g.phys["usable"][j]
        point = self._point(g, i, j)
        values = np.zeros((len(j), len(qs)))
        cache: dict[int, np.ndarray] = {}
        for r, lead in enumerate(j - i):
            key = self._lead_key(int(lead))
            if key not in cache:
                cache[key] = self._error_quantiles(g, i, max(key, 0), qs)
            values[r] = point[r] + pcs[r] * cache[key]
        values = np.where(usable[:, None], np.clip(values, 0.0, None), 0.0)
        return monotone_frame(values, slots, qs)


class PvPersistenceForecaster(_PvBaseline):
    """Same slot ``lag_days`` earlier (a later multiple if not yet measured)."""

    def __init__(self, site: PvSite, lag_days: int = 2, error_window_days: int = 30) -> None:
        super().__init__(site, error_window_days)
        self.lag_slots = lag_days * SLOTS_PER_DAY
        self.name = f"persistence_d{lag_days}"

    def point_kw(self, g: _PvGrid, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        out = np.full(j.shape, np.nan)
        for m in range(1, 4):
            cand = masked_take(g.p, j - m * self.lag_slots, i)
            out = np.where(np.isnan(out), cand, out)
        return out


class PvClimatologyForecaster(_PvBaseline):
    """Per-slot mean over the ``days`` days ending two days before the target."""

    def __init__(self, site: PvSite, days: int = 30, error_window_days: int = 30) -> None:
        super().__init__(site, error_window_days)
        self.days = days
        self.name = f"climatology_{days}d"

    def point_kw(self, g: _PvGrid, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        stack = np.stack(
            [masked_take(g.p, j - d * SLOTS_PER_DAY, i) for d in range(2, self.days + 2)]
        )
        return _nanmean_rows(stack)


class SmartPersistenceForecaster(_PvBaseline):
    """Last hour's clear-sky index times the target slot's clear-sky power."""

    def __init__(self, site: PvSite, window_slots: int = 4, error_window_days: int = 30) -> None:
        super().__init__(site, error_window_days)
        self.window_slots = window_slots
        self.name = "smart_persistence"

    def _lead_key(self, lead: int) -> int:
        return lead

    def point_kw(self, g: _PvGrid, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        i_c = np.minimum(i, g.n)
        k = g.ratio(i_c - self.window_slots, i_c)
        k = np.where(np.isnan(k), g.ratio(i_c - SLOTS_PER_DAY, i_c), k)
        g.ensure(int(j.max()) + 1 if len(j) else 0)
        return k * g.phys["ac_clear_kw"][j]
