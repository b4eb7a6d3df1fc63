"""Reference forecasts for PV (what a skill score is measured against).

All three follow the :class:`~forecasting.models.base.QuantileForecaster`
protocol.  Their bands come from the empirical distribution of their own past
errors, scaled by the clear-sky power so night and winter are not over-wide:
``P_q = point + P_clear * Q_q((y - point) / P_clear)`` over the last
``error_window_days`` before the issue time (daylight slots only), clipped at 0.

* :class:`PvPersistenceForecaster` -- the same slot ``lag_days`` earlier (D-2 =
  the last complete day for a day-ahead issued at noon on D-1).
* :class:`PvClimatologyForecaster` -- per-slot mean of days D-2 .. D-31.
* :class:`SmartPersistenceForecaster` -- the clear-sky index of the last hour
  before the issue (energy-weighted) times the clear-sky power of the target
  slot; if the last hour was dark, the index of the last 24 h.  Error
  quantiles are computed per lead.
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

    def predict(
        self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex, quantiles: Sequence[float]
    ) -> pd.DataFrame:
        """Point + clear-sky-scaled empirical error quantiles, >= 0, 0 at night."""
        qs = check_quantiles(quantiles)
        utc = check_slots(slots)
        g = self._grid
        if g is None:
            return monotone_frame(np.zeros((len(slots), len(qs))), slots, qs)
        i = issue_position(g.start, issue_time)
        j = np.asarray((utc - g.start) // SLOT, dtype=np.int64)
        g.ensure(int(j.max()) + 1)
        pcs = g.phys["ac_clear_kw"][j]
        usable = g.phys["usable"][j]
        point = self.point_kw(g, np.full(len(j), i), j)
        point = np.where(np.isfinite(point), point, 0.0)
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
