"""PV forecasting: physics first (pvlib), learning second (LightGBM on the clear-sky index).

Model: ``P_q(t) = P_clear(t) * k_q(t)`` where ``P_clear`` is the PVWatts AC
power of the array under an Ineichen clear sky (see
:mod:`forecasting.models.physics`) and ``k_q`` is a quantile of the clear-sky
index ``k = P_measured / P_clear``, learned from the site's own measurements:

* *day-ahead* (leads >= 6 h, no weather): the empirical distribution of ``k``
  at the same time of day (+-1 h) over the last ``empirical_days`` days that
  are measured before the issue time.  It conditions on season, hour and the
  current weather regime, and in backtests beat a LightGBM model on these
  features (without a weather forecast there is little else to learn).
* *intraday* (leads < 6 h): LightGBM quantile regression (training weighted by
  ``P_clear``, so the loss equals the pinball loss in kW) on solar geometry,
  season, lead, the measured index over the last slot/hour/3 h/24 h/48 h/7
  days, its recent volatility, and the empirical day-ahead quantiles above --
  so it learns how fast the latest index should relax to climatology.  The
  last ``calib_days`` of history are held out for per-quantile conformal
  shifts of ``k`` (optionally the models are then refit on everything), so
  the P10-P90 band is calibrated out of sample.  Training rows are subsampled
  to ``max_train_rows`` because quantile boosting cost grows with rows.

Weather (optional, a forecast feed -- see :mod:`forecasting.models.physics`
for columns): when ``fit`` receives weather, extra models use the
weather-driven index ``k_nwp = P_weather / P_clear`` and air temperature as
features; ``predict(..., weather=...)`` then uses them.  Given weather but no
weather-trained model, the learned band is re-centred on ``k_nwp``.

No history (or < ``min_history_days``): physics times a default clear-sky
index distribution (``DEFAULT_K_QUANTILES``, mid-latitude, all seasons).

Public API::

    PvSite(latitude, longitude, altitude_m, tilt_deg, azimuth_deg, kwp, timezone)
    PvForecaster(site, ...).fit(history, weather=None)
    PvForecaster.update(history, weather=None)
    PvForecaster.predict(issue_time, slots, quantiles, weather=None) -> DataFrame
"""

from __future__ import annotations

import functools
import warnings
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
    to_grid,
    window_sum,
)
from forecasting.models.physics import pv_physics
from forecasting.models.quantile_boosting import QUANTILE_GRID, lgb_params, train_quantile_models
from forecasting.models.site import PvSite

__all__ = ["DEFAULT_K_QUANTILES", "PvForecaster", "PvSite"]

K_MAX = 1.5
MIN_CLEAR_FRACTION = 0.01  # P_clear below 1% of kWp: index undefined
# Clear-sky index quantiles used without history (grid level -> k).
DEFAULT_K_QUANTILES: dict[float, float] = {
    0.05: 0.05,
    0.1: 0.12,
    0.25: 0.4,
    0.5: 0.78,
    0.75: 0.93,
    0.9: 0.99,
    0.95: 1.02,
}

FEATURES = [
    "lead_h",
    "elevation_deg",
    "azimuth_deg",
    "cos_aoi",
    "clear_frac_kwp",
    "doy_sin",
    "doy_cos",
    "k_last_slot",
    "k_last_1h",
    "k_last_3h",
    "k_last_24h",
    "k_prev_24h",
    "k_last_7d",
    "k_same_slot_latest",
    "k_clim_30d",
    "clear_share_30d",
    "k_std_3h",
    "k_emp_q10",
    "k_emp_q50",
    "k_emp_q90",
]
WEATHER_FEATURES = ["k_nwp", "temp_air_c"]


def _nanmean_rows(stack: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(stack, axis=0)


def _physics_block(
    site: PvSite, start: pd.Timestamp, lo: int, hi: int, weather: pd.DataFrame | None
) -> dict[str, np.ndarray]:
    """Physics arrays for grid positions ``[lo, hi)``."""
    idx = pd.DatetimeIndex(start + np.arange(lo, hi) * SLOT)
    ph = pv_physics(site, idx, weather)
    cols = {
        "ac_clear_kw": ph["ac_clear_kw"].to_numpy(),
        "elevation_deg": ph["elevation_deg"].to_numpy(),
        "azimuth_deg": ph["azimuth_deg"].to_numpy(),
        "cos_aoi": ph["cos_aoi"].to_numpy(),
        "daylight": ph["daylight"].to_numpy(dtype=bool),
    }
    cols["usable"] = cols["daylight"] & (cols["ac_clear_kw"] > MIN_CLEAR_FRACTION * site.kwp)
    if weather is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["k_nwp"] = np.where(
                cols["usable"], ph["ac_weather_kw"].to_numpy() / cols["ac_clear_kw"], np.nan
            )
        cols["temp_air_c"] = ph["temp_air_c"].to_numpy(dtype=float)
    return cols


@functools.lru_cache(maxsize=16)
def _clear_block_cached(
    site: PvSite, start: pd.Timestamp, lo: int, hi: int
) -> tuple[tuple[str, np.ndarray], ...]:
    cols = _physics_block(site, start, lo, hi, None)
    for arr in cols.values():
        arr.setflags(write=False)  # shared between grids: never mutate
    return tuple(cols.items())


def _clear_block(
    site: PvSite, start: pd.Timestamp, lo: int, hi: int
) -> tuple[tuple[str, np.ndarray], ...]:
    """Clear-sky physics for ``[lo, hi)``, memoised: every model/baseline rebuilding a
    grid over the same history shares one pvlib run."""
    return _clear_block_cached(site, start, lo, hi)


class _PvGrid:
    """Measurements and physics on one 15-minute UTC grid (physics extends past the data)."""

    def __init__(self, site: PvSite, s: pd.Series, weather: pd.DataFrame | None) -> None:
        self.site = site
        self.start: pd.Timestamp = s.index[0]
        self.p = s.to_numpy(dtype=float)
        self.n = len(self.p)
        self.weather = weather
        self.n_ext = 0
        self.phys: dict[str, np.ndarray] = {}
        self.ensure(self.n + 3 * SLOTS_PER_DAY)
        pcs = self.phys["ac_clear_kw"][: self.n]
        usable = self.phys["usable"][: self.n]
        valid = usable & np.isfinite(self.p)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.k = np.where(valid, np.clip(self.p / pcs, 0, K_MAX), np.nan)
        self.cp = np.concatenate([[0.0], np.cumsum(np.where(valid, self.p, 0.0))])
        self.cc = np.concatenate([[0.0], np.cumsum(np.where(valid, pcs, 0.0))])
        kk = np.where(valid, self.k, 0.0)
        self.ck = np.concatenate([[0.0], np.cumsum(kk)])
        self.ck2 = np.concatenate([[0.0], np.cumsum(kk * kk)])
        self.cn = np.concatenate([[0.0], np.cumsum(valid)])

    def ensure(self, n_needed: int) -> None:
        """Extend the physics arrays to cover grid positions ``[0, n_needed)``."""
        if n_needed <= self.n_ext:
            return
        n_new = max(n_needed, self.n_ext + SLOTS_PER_DAY)
        weather = self.weather
        if weather is None:
            cols = dict(_clear_block(self.site, self.start, self.n_ext, n_new))
        else:
            cols = _physics_block(self.site, self.start, self.n_ext, n_new, weather)
        for key, arr in cols.items():
            self.phys[key] = np.concatenate([self.phys[key], arr]) if key in self.phys else arr
        self.n_ext = n_new

    def ratio(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Energy-weighted clear-sky index over positions ``[lo, hi)`` (NaN if no daylight)."""
        den = window_sum(self.cc, lo, hi)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, window_sum(self.cp, lo, hi) / den, np.nan)

    def k_empirical(
        self, i: np.ndarray, j: np.ndarray, qs: Sequence[float], days: int = 30,
        half_width: int = 4,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Empirical clear-sky-index quantiles for targets ``j`` from the last ``days``
        days at the same time of day +- ``half_width`` slots (measured before ``i``).

        Returns (quantiles of shape (len(j), len(qs)), sample counts).
        """
        samples = np.stack(
            [
                masked_take(self.k, j - d * SLOTS_PER_DAY + o, i)
                for d in range(1, days + 1)
                for o in range(-half_width, half_width + 1)
            ]
        )
        count = np.isfinite(samples).sum(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            q = np.nanquantile(samples, list(qs), axis=0).T
        return q, count

    def k_std(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        n = window_sum(self.cn, lo, hi)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = window_sum(self.ck, lo, hi) / n
            v = window_sum(self.ck2, lo, hi) / n - m * m
        return np.where(n > 1, np.sqrt(np.clip(v, 0, None)), np.nan)


def pv_features(
    g: _PvGrid, i: np.ndarray, j: np.ndarray, weather_cols: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Feature matrix for rows (issue position ``i``, target position ``j``).

    History is read only through ``masked_take``/window sums ending at ``i``.
    ``weather_cols`` (``k_nwp``, ``temp_air_c`` per row) adds the weather features.
    """
    g.ensure(int(j.max()) + 1 if len(j) else 0)
    ph = g.phys
    i_c = np.minimum(i, g.n)  # windows beyond the data are just empty
    ts = pd.DatetimeIndex(g.start + j * SLOT)
    doy = 2 * np.pi * (ts.dayofyear.to_numpy() - 1) / 365.25
    clim = np.stack([masked_take(g.k, j - d * SLOTS_PER_DAY, i) for d in range(1, 31)])
    with np.errstate(invalid="ignore"):
        clear_share = _nanmean_rows(np.where(np.isnan(clim), np.nan, clim > 0.8))
    same = masked_take(g.k, j - SLOTS_PER_DAY, i)
    same = np.where(np.isnan(same), masked_take(g.k, j - 2 * SLOTS_PER_DAY, i), same)
    cols = [
        (j - i) / 4.0,
        ph["elevation_deg"][j],
        ph["azimuth_deg"][j],
        ph["cos_aoi"][j],
        ph["ac_clear_kw"][j] / g.site.kwp,
        np.sin(doy),
        np.cos(doy),
        masked_take(g.k, i - 1, i),
        g.ratio(i_c - 4, i_c),
        g.ratio(i_c - 12, i_c),
        g.ratio(i_c - SLOTS_PER_DAY, i_c),
        g.ratio(i_c - 2 * SLOTS_PER_DAY, i_c - SLOTS_PER_DAY),
        g.ratio(i_c - 7 * SLOTS_PER_DAY, i_c),
        same,
        _nanmean_rows(clim),
        clear_share,
        g.k_std(i_c - 12, i_c),
        *g.k_empirical(i, j, (0.1, 0.5, 0.9))[0].T,
    ]
    if weather_cols is not None:
        cols += [weather_cols["k_nwp"], weather_cols["temp_air_c"]]
    return np.column_stack(cols)


class PvForecaster:
    """Quantile PV forecaster for one site: pvlib physics x learned clear-sky index."""

    is_fallback = False

    def __init__(
        self,
        site: PvSite,
        quantile_grid: Sequence[float] = QUANTILE_GRID,
        intraday_max_lead_slots: int = 24,
        max_lead_slots: int = 144,
        dayahead_issue_hours: Sequence[int] = (12,),
        n_estimators: int = 150,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_data_in_leaf: int = 100,
        calib_days: int = 60,
        refit_after_calibration: bool = False,
        min_history_days: int = 21,
        train_days: int | None = 730,
        max_train_rows: int = 30_000,
        empirical_days: int = 30,
        min_empirical_samples: int = 60,
        num_threads: int = 1,
        seed: int = 0,
    ) -> None:
        self.name = "pv_physics_lgbm"
        self.empirical_days = empirical_days
        self.min_empirical_samples = min_empirical_samples
        self.max_train_rows = max_train_rows
        self.seed = seed
        self.site = site
        self.quantile_grid = tuple(sorted(float(q) for q in quantile_grid))
        self.intraday_max_lead_slots = intraday_max_lead_slots
        self.max_lead_slots = max_lead_slots
        self.dayahead_issue_hours = tuple(dayahead_issue_hours)
        self.calib_days = calib_days
        self.refit_after_calibration = refit_after_calibration
        self.min_history_days = min_history_days
        self.train_days = train_days
        self.n_estimators = n_estimators
        self.params: dict[str, Any] = lgb_params(
            learning_rate, num_leaves, min_data_in_leaf, num_threads, seed
        )
        self._grid: _PvGrid | None = None
        # (horizon, with_weather) -> boosters per grid level; shifts in k units
        self._models: dict[tuple[str, bool], dict[float, lgb.Booster]] = {}
        self.shifts_k: dict[tuple[str, bool], dict[float, float]] = {}

    # -- training -------------------------------------------------------
    def _rows(self, g: _PvGrid, horizon: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Training pairs (i, j): issues in [lo, hi), measured daylight targets < hi."""
        times = pd.DatetimeIndex(g.start + np.arange(g.n) * SLOT)
        if horizon == "intraday":
            is_issue = times.minute == 0
            leads = np.arange(0, self.intraday_max_lead_slots)
        else:
            local = times.tz_convert(self.site.timezone)
            is_issue = np.isin(local.hour, self.dayahead_issue_hours) & (local.minute == 0)
            leads = np.arange(self.intraday_max_lead_slots, self.max_lead_slots)
        issues = np.flatnonzero(is_issue)
        issues = issues[(issues >= max(lo, 2 * SLOTS_PER_DAY)) & (issues < hi)]
        i = np.repeat(issues, len(leads))
        j = i + np.tile(leads, len(issues))
        keep = j < hi
        i, j = i[keep], j[keep]
        keep = np.isfinite(g.k[j])
        i, j = i[keep], j[keep]
        if len(i) > self.max_train_rows:  # quantile boosting cost grows with rows
            rng = np.random.default_rng(self.seed + hi)
            pick = np.sort(rng.choice(len(i), self.max_train_rows, replace=False))
            i, j = i[pick], j[pick]
        return i, j

    def _weather_cols(self, g: _PvGrid, j: np.ndarray) -> dict[str, np.ndarray]:
        return {"k_nwp": g.phys["k_nwp"][j], "temp_air_c": g.phys["temp_air_c"][j]}

    def _train_one(
        self, g: _PvGrid, horizon: str, with_weather: bool, lo: int, n: int
    ) -> None:
        key = (horizon, with_weather)

        def design(i: np.ndarray, j: np.ndarray) -> np.ndarray:
            return pv_features(g, i, j, self._weather_cols(g, j) if with_weather else None)

        def train(i: np.ndarray, j: np.ndarray) -> dict[float, lgb.Booster]:
            return train_quantile_models(
                design(i, j), g.k[j], g.phys["ac_clear_kw"][j], self.quantile_grid,
                self.params, self.n_estimators,
            )

        i_all, j_all = self._rows(g, horizon, lo, n)
        if len(i_all) < 500:
            return
        cut = n - self.calib_days * SLOTS_PER_DAY
        models: dict[float, lgb.Booster] = {}
        shifts = {q: 0.0 for q in self.quantile_grid}
        if self.calib_days > 0:
            i_tr, j_tr = self._rows(g, horizon, lo, cut)
            calib = i_all >= cut  # (subsampled rows; the calibration sample stays large)
            if len(i_tr) >= 500 and calib.sum() >= 100:
                models = train(i_tr, j_tr)
                ic, jc = i_all[calib], j_all[calib]
                X = design(ic, jc)
                for q in self.quantile_grid:
                    pred = np.clip(models[q].predict(X, num_threads=1), 0, K_MAX)
                    shifts[q] = empirical_shift(g.k[jc] - pred, q, g.phys["ac_clear_kw"][jc])
                if self.refit_after_calibration:
                    models = {}
        if not models:
            models = train(i_all, j_all)
        self._models[key] = models
        self.shifts_k[key] = shifts

    def fit(self, history: pd.Series, weather: pd.DataFrame | None = None) -> None:
        """Learn the clear-sky-index distribution from measured kW (and optional weather)."""
        s = to_grid(history)
        self._models, self.shifts_k = {}, {}
        self._grid = _PvGrid(self.site, s, weather) if len(s) else None
        g = self._grid
        if g is None or np.isfinite(g.k).sum() < self.min_history_days * 30:
            return
        lo = 0 if self.train_days is None else max(0, g.n - self.train_days * SLOTS_PER_DAY)
        self._train_one(g, "intraday", False, lo, g.n)
        if weather is not None:
            for horizon in ("intraday", "dayahead"):
                self._train_one(g, horizon, True, lo, g.n)

    def update(self, history: pd.Series, weather: pd.DataFrame | None = None) -> None:
        """Replace the measurements (and weather) used for features, no retraining."""
        s = to_grid(history)
        self._grid = _PvGrid(self.site, s, weather) if len(s) else None

    # -- inference ------------------------------------------------------
    def _k_quantiles(
        self, g: _PvGrid | None, i: int, j: np.ndarray, wcols: dict[str, np.ndarray] | None
    ) -> np.ndarray:
        """Clear-sky-index values at the grid levels, shape (len(j), len(grid))."""
        grid = self.quantile_grid
        default = np.array([DEFAULT_K_QUANTILES.get(q, np.nan) for q in grid])
        if np.isnan(default).any():
            keys = sorted(DEFAULT_K_QUANTILES)
            default = interpolate_quantiles(
                keys, np.array([[DEFAULT_K_QUANTILES[q] for q in keys]]), grid
            )[0]
        out = np.tile(default, (len(j), 1))
        if g is None:
            return out
        lead = j - i
        for horizon, rows in (
            ("intraday", lead < self.intraday_max_lead_slots),
            ("dayahead", lead >= self.intraday_max_lead_slots),
        ):
            if not rows.any():
                continue
            with_weather = wcols is not None and (horizon, True) in self._models
            key = (horizon, with_weather)
            if key not in self._models:
                emp, count = g.k_empirical(np.full(rows.sum(), i), j[rows], grid,
                                           self.empirical_days)
                enough = count >= self.min_empirical_samples
                sub_out = out[rows]
                sub_out[enough] = emp[enough]
                out[rows] = sub_out
                continue
            sub = {k: v[rows] for k, v in wcols.items()} if with_weather and wcols else None
            X = pv_features(g, np.full(rows.sum(), i), j[rows], sub)
            shifts = self.shifts_k[key]
            out[rows] = np.column_stack(
                [np.asarray(self._models[key][q].predict(X, num_threads=1)) + shifts[q] for q in grid]
            )
        return out

    def predict(
        self,
        issue_time: pd.Timestamp,
        slots: pd.DatetimeIndex,
        quantiles: Sequence[float],
        weather: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Quantiles of mean AC power (kW) per slot, using data before ``issue_time`` only."""
        qs = check_quantiles(quantiles)
        utc = check_slots(slots)
        g = self._grid
        if g is None:
            phys = pv_physics(self.site, utc, weather)
            pcs = phys["ac_clear_kw"].to_numpy()
            usable = phys["daylight"].to_numpy(bool) & (pcs > MIN_CLEAR_FRACTION * self.site.kwp)
            k = self._k_quantiles(None, 0, np.zeros(len(utc), dtype=np.int64), None)
            k_nwp = phys["ac_weather_kw"].to_numpy() / np.where(pcs > 0, pcs, 1.0) \
                if weather is not None else None
        else:
            i = issue_position(g.start, issue_time)
            j = np.asarray((utc - g.start) // SLOT, dtype=np.int64)
            if (j < 0).any():
                raise ValueError("slots before the start of the history")
            g.ensure(int(j.max()) + 1)
            pcs = g.phys["ac_clear_kw"][j]
            usable = g.phys["usable"][j]
            wcols = None
            k_nwp = None
            if weather is not None:
                phys = pv_physics(self.site, utc, weather)
                with np.errstate(invalid="ignore", divide="ignore"):
                    k_nwp = np.where(usable, phys["ac_weather_kw"].to_numpy() / pcs, np.nan)
                wcols = {"k_nwp": k_nwp, "temp_air_c": phys["temp_air_c"].to_numpy(float)}
            k = self._k_quantiles(g, i, j, wcols)
            has_weather_model = any(key[1] for key in self._models)
            if k_nwp is not None and has_weather_model:
                k_nwp = None  # already used as a feature
        if k_nwp is not None:  # weather but no weather-trained model: re-centre the band
            mid = int(np.argmin(np.abs(np.array(self.quantile_grid) - 0.5)))
            k = k - k[:, [mid]] + np.nan_to_num(k_nwp, nan=0.0)[:, None]
        k = np.clip(np.sort(k, axis=1), 0.0, K_MAX)
        kq = np.clip(interpolate_quantiles(self.quantile_grid, k, qs), 0.0, K_MAX)
        values = np.where(usable[:, None], kq * pcs[:, None], 0.0)
        return monotone_frame(values, slots, qs)
