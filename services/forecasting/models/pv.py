"""PV forecasting: physics first (pvlib), learning second (LightGBM on the clear-sky index).

Model: ``P_q(t) = P_clear(t) * k_q(t)`` where ``P_clear`` is the PVWatts AC
power of the array under an Ineichen clear sky (see
:mod:`forecasting.models.physics`) and ``k_q`` is a quantile of the clear-sky
index ``k = P_measured / P_clear``, learned from the site's own measurements:

* *day-ahead* (leads >= 6 h, no weather): the empirical distribution of ``k``
  at the same time of day (+- ``empirical_half_width`` slots) over the last
  ``empirical_days`` days that are measured before the issue time.  It
  conditions on season, hour and the current weather regime; without a weather
  forecast nothing else we tried (the last day's, 3 days' or week's index, last
  year's season, 60/90-day windows, a linear blend of these) added information.
  A window of +-90 min (rather than +-60 or less) covers the clear-day tail
  better (P10-P90 coverage 0.76 instead of 0.75 and lower).  Optionally
  (``dayahead_calibration``, off by default) its levels are recalibrated per
  issue: the same forecasts issued on each of the last ``dayahead_calib_days``
  days are scored where already measured, and the levels at which its quantiles
  were actually exceeded replace the nominal ones (the median stays the median);
  in backtests this lowered coverage: miscalibration of the 30-day distribution
  does not persist from one month to the next.
* *intraday* (leads < 6 h): a linear base per lead slot (weighted least squares
  of ``k`` on the last slot's index, the last hour's index -- smart persistence --
  and the 30-day median index at the target's time of day), plus LightGBM
  quantile regression of the residual ``k - base`` (training weighted by
  ``P_clear``, so the loss equals the pinball loss in kW).  Features: solar
  geometry at the target and at the issue, season, lead, the measured index over
  the last slot/hour/3 h/24 h/48 h/7 days, its recent volatility, the empirical
  day-ahead quantiles above, the last hour's index relative to the "clear" level
  (P90 of the last 30 days) at that time of day, and the base itself.  The base
  carries the persistence the trees would otherwise approximate by steps; the
  trees learn how fast it relaxes to climatology and how wide the spread is.
  The last ``calib_days`` of history are held out for calibration: with
  ``calibration="levels"`` the quantile levels are remapped per hour of lead
  (probability integral transform on the hold-out, see :func:`calibrated_levels`),
  which widens a band in proportion to the spread the model predicts and so
  follows seasonal changes; ``calib_widen`` targets a slightly wider band on the
  hold-out (0.05: 84 % for P10-P90), because in use the model is further from
  its training data than on the hold-out and a band calibrated to exactly 80 %
  there covered 73-75 % later; ``"shift"`` adds per-quantile conformal shifts of
  ``k``.  Training rows are subsampled to ``max_train_rows`` because quantile
  boosting cost grows with rows.
* *point* (``predict_point``, what MAE/RMSE score): the median (``point="median"``,
  MAE-optimal) or the predictive mean (``"mean"``, RMSE-optimal).

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
    PvForecaster.predict_point(issue_time, slots, weather=None) -> Series
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
    "k_env_issue",
    "k_last_1h_rel_env",
    "elevation_issue_deg",
    "k_base_linear",
]
WEATHER_FEATURES = ["k_nwp", "temp_air_c"]


def nanquantile_columns(samples: np.ndarray, qs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-column quantiles ignoring NaN (numpy's "linear" method, vectorised: ``np.nanquantile``
    along an axis loops in Python) and the per-column sample counts."""
    srt = np.sort(samples, axis=0)  # NaN sort last
    count = np.isfinite(samples).sum(axis=0)
    cols = np.arange(samples.shape[1])
    out = np.full((samples.shape[1], len(qs)), np.nan)
    has = count > 0
    last = np.maximum(count - 1, 0)
    for c, q in enumerate(qs):
        pos = q * last
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, last)
        frac = pos - lo
        val = srt[lo, cols] + frac * (srt[hi, cols] - srt[lo, cols])
        out[:, c] = np.where(has, val, np.nan)
    return out, count


def pit_values(values: np.ndarray, levels: Sequence[float], y: np.ndarray) -> np.ndarray:
    """Probability integral transform of ``y`` under piecewise-linear quantile functions.

    ``values``: (n, L) sorted quantile values at ``levels``; outside the outermost levels the
    outermost segment is extended linearly.  Result clipped to [0.001, 0.999].
    """
    lv = np.asarray(levels, dtype=float)
    n_lv = len(lv)
    idx = np.clip((values < y[:, None]).sum(axis=1), 1, n_lv - 1)
    rows = np.arange(len(y))
    v0, v1 = values[rows, idx - 1], values[rows, idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(v1 > v0, (y - v0) / (v1 - v0), 0.5)
    u = lv[idx - 1] + frac * (lv[idx] - lv[idx - 1])
    return np.clip(u, 0.001, 0.999)


def calibrated_levels(
    values: np.ndarray, y: np.ndarray, levels: Sequence[float], groups: np.ndarray,
    min_group: int = 300, widen: float = 0.0,
) -> dict[int, np.ndarray]:
    """Quantile-level recalibration (Kuleshov et al. 2018) on a calibration sample.

    For each nominal level ``q`` the level ``q'`` at which the model's quantile was
    exceeded a fraction ``1 - q`` of the time (the ``q``-quantile of the PIT values), per
    group (groups with fewer than ``min_group`` rows use the pooled map, key -1).  A band
    that was too narrow is widened in proportion to the band the model predicts, so the
    correction follows seasonal changes in spread instead of lagging them.  ``widen`` > 0
    targets levels pushed away from the median by that fraction (0.05: P10-P90 covers 84 %
    of the calibration sample) -- a margin for a model that is staler in use than on its
    hold-out.
    """
    u = pit_values(values, levels, y)
    ok = np.isfinite(u) & np.isfinite(y)
    target = np.clip(0.5 + (np.asarray(levels, dtype=float) - 0.5) * (1.0 + widen), 0.0, 1.0)
    out = {-1: np.clip(np.quantile(u[ok], target), 0.001, 0.999)}
    for grp in np.unique(groups[ok]):
        r = ok & (groups == grp)
        if r.sum() >= min_group:
            out[int(grp)] = np.clip(np.quantile(u[r], target), 0.001, 0.999)
    return out


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
        samples = self.k_samples(i, j, days, half_width)
        return nanquantile_columns(samples, qs)

    def k_samples(
        self, i: np.ndarray, j: np.ndarray, days: int = 30, half_width: int = 4
    ) -> np.ndarray:
        """Measured indices at the time of day of ``j`` +- ``half_width`` slots on each of
        the last ``days`` days (before ``i``): shape (days * (2 * half_width + 1), len(j))."""
        offsets = np.array([d * SLOTS_PER_DAY - o for d in range(1, days + 1)
                            for o in range(-half_width, half_width + 1)])
        idx = np.asarray(j)[None, :] - offsets[:, None]
        return masked_take(self.k, idx, np.broadcast_to(np.asarray(i)[None, :], idx.shape))

    def k_base(self, i: np.ndarray) -> np.ndarray:
        """Smart-persistence index at issue ``i``: last hour, else last 24 h (NaN if dark)."""
        i_c = np.minimum(i, self.n)
        k = self.ratio(i_c - 4, i_c)
        return np.where(np.isnan(k), self.ratio(i_c - SLOTS_PER_DAY, i_c), k)

    def k_std(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        n = window_sum(self.cn, lo, hi)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = window_sum(self.ck, lo, hi) / n
            v = window_sum(self.ck2, lo, hi) / n - m * m
        return np.where(n > 1, np.sqrt(np.clip(v, 0, None)), np.nan)


def pv_features(
    g: _PvGrid, i: np.ndarray, j: np.ndarray, weather_cols: dict[str, np.ndarray] | None = None,
    base: np.ndarray | None = None, emp: np.ndarray | None = None,
) -> np.ndarray:
    """Feature matrix for rows (issue position ``i``, target position ``j``).

    History is read only through ``masked_take``/window sums ending at ``i``.
    ``weather_cols`` (``k_nwp``, ``temp_air_c`` per row) adds the weather features;
    ``base`` is the linear base forecast of the index (feature ``k_base_linear``), ``emp``
    the 30-day empirical index quantiles (0.1, 0.5, 0.9) of the rows when already computed.
    """
    g.ensure(int(j.max()) + 1 if len(j) else 0)
    ph = g.phys
    i_c = np.minimum(i, g.n)  # windows beyond the data are just empty
    ts = pd.DatetimeIndex(g.start + j * SLOT)
    doy = 2 * np.pi * (ts.dayofyear.to_numpy() - 1) / 365.25
    back = np.arange(1, 31)[:, None] * SLOTS_PER_DAY
    clim = masked_take(g.k, j[None, :] - back, np.broadcast_to(i[None, :], (30, len(j))))
    with np.errstate(invalid="ignore"):
        clear_share = _nanmean_rows(np.where(np.isnan(clim), np.nan, clim > 0.8))
    if emp is None:
        emp = g.k_empirical(i, j, (0.1, 0.5, 0.9))[0]
    # "clear" level (P90 of the last 30 days) at the time of day of the last hour: the
    # measured index relative to it says how cloudy the last hour was, whatever the
    # clear-sky model's bias at that hour.  (One value per issue.)
    ui, inv = np.unique(i, return_inverse=True)
    env_issue = g.k_empirical(ui, np.maximum(ui - 2, 0), (0.9,), half_width=2)[0][inv, 0]
    k1h = g.ratio(i_c - 4, i_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        k1h_rel = k1h / env_issue
    if base is None:
        base = np.full(len(i), np.nan)
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
        *emp.T,
        env_issue,
        k1h_rel,
        ph["elevation_deg"][np.maximum(i - 2, 0)],
        base,
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
        calib_days: int = 30,
        refit_after_calibration: bool = False,
        min_history_days: int = 21,
        train_days: int | None = 730,
        max_train_rows: int = 30_000,
        empirical_days: int = 30,
        empirical_half_width: int = 6,
        min_empirical_samples: int = 60,
        num_threads: int = 1,
        seed: int = 0,
        intraday_linear_base: bool = True,
        calibration: str = "levels",
        dayahead_calibration: bool = False,
        dayahead_calib_days: int = 30,
        point: str = "median",
        calib_widen: float = 0.05,
    ) -> None:
        if calibration not in ("levels", "shift"):
            raise ValueError("calibration must be 'levels' or 'shift'")
        if point not in ("median", "mean"):
            raise ValueError("point must be 'median' or 'mean'")
        self.intraday_linear_base = intraday_linear_base
        self.calibration = calibration
        self.dayahead_calibration = dayahead_calibration
        self.dayahead_calib_days = dayahead_calib_days
        self.calib_widen = calib_widen
        self.point = point
        self.name = "pv_physics_lgbm"
        self.empirical_days = empirical_days
        self.empirical_half_width = empirical_half_width
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
        # (horizon, with_weather) -> linear base coefficients per lead slot (intraday)
        self._base: dict[tuple[str, bool], np.ndarray] = {}
        # (horizon, with_weather) -> {lead group: calibrated levels, one per grid level}
        self._levels: dict[tuple[str, bool], dict[int, np.ndarray]] = {}
        self._memo: tuple[Any, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

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
            # Seeded by the absolute time of the window end, not its position in the grid: the service
            # (a window read from its store) and the backtest (a longer series) pick the same rows.
            rng = np.random.default_rng([self.seed, int((g.start + hi * SLOT).value // SLOT.value)])
            pick = np.sort(rng.choice(len(i), self.max_train_rows, replace=False))
            i, j = i[pick], j[pick]
        return i, j

    def _weather_cols(self, g: _PvGrid, j: np.ndarray) -> dict[str, np.ndarray]:
        return {"k_nwp": g.phys["k_nwp"][j], "temp_air_c": g.phys["temp_air_c"][j]}

    def _base_design(self, g: _PvGrid, i: np.ndarray, emp50: np.ndarray) -> np.ndarray:
        """Inputs of the linear base: 1, last slot's index, smart-persistence index (last
        hour), 30-day median index at the target's time of day (missing ones filled from
        the next in that order)."""
        clim = np.where(np.isfinite(emp50), emp50, DEFAULT_K_QUANTILES[0.5])
        kb = g.k_base(i)
        kb = np.where(np.isfinite(kb), kb, clim)
        k1 = masked_take(g.k, i - 1, i)
        k1 = np.where(np.isfinite(k1), k1, kb)
        return np.column_stack([np.ones(len(i)), k1, kb, clim])

    def _fit_base(self, g: _PvGrid, i: np.ndarray, j: np.ndarray,
                  emp50: np.ndarray) -> np.ndarray:
        """Weighted (clear-sky kW) least squares of the index on the base inputs, per lead."""
        X = self._base_design(g, i, emp50)
        y, w, lead = g.k[j], g.phys["ac_clear_kw"][j], j - i
        coef = np.zeros((self.max_lead_slots, X.shape[1]))
        coef[:, 2:4] = 0.5
        for lead_slot in range(self.max_lead_slots):
            r = lead == lead_slot
            if r.sum() < 50:
                continue
            Xw = X[r] * w[r, None]
            A = X[r].T @ Xw + 1e-3 * np.eye(X.shape[1])
            coef[lead_slot] = np.linalg.solve(A, Xw.T @ y[r])
        return coef

    def _base_value(self, key: tuple[str, bool], g: _PvGrid, i: np.ndarray,
                    j: np.ndarray, emp50: np.ndarray) -> np.ndarray:
        coef = self._base.get(key)
        if coef is None:
            return np.zeros(len(i))
        lead = np.clip(j - i, 0, len(coef) - 1)
        return np.clip((self._base_design(g, i, emp50) * coef[lead]).sum(axis=1), 0.0, K_MAX)

    def _lead_group(self, horizon: str, lead: np.ndarray) -> np.ndarray:
        """Calibration groups: each hour of lead for intraday, one group day-ahead."""
        return lead // 4 if horizon == "intraday" else np.zeros(len(lead), dtype=np.int64)

    def _raw_k(self, key: tuple[str, bool], models: dict[float, lgb.Booster], X: np.ndarray,
               base: np.ndarray) -> np.ndarray:
        raw = np.column_stack(
            [np.asarray(models[q].predict(X, num_threads=1)) for q in self.quantile_grid]
        )
        return np.sort(raw + base[:, None], axis=1)

    def _train_one(
        self, g: _PvGrid, horizon: str, with_weather: bool, lo: int, n: int
    ) -> None:
        key = (horizon, with_weather)
        use_base = self.intraday_linear_base and horizon == "intraday"

        def design(i: np.ndarray, j: np.ndarray,
                   emp: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            if emp is None:
                g.ensure(int(j.max()) + 1)
                emp = g.k_empirical(i, j, (0.1, 0.5, 0.9))[0]
            base = self._base_value(key, g, i, j, emp[:, 1]) if use_base else np.zeros(len(i))
            X = pv_features(g, i, j, self._weather_cols(g, j) if with_weather else None,
                            base if use_base else None, emp)
            return X, base

        def train(i: np.ndarray, j: np.ndarray) -> dict[float, lgb.Booster]:
            emp = g.k_empirical(i, j, (0.1, 0.5, 0.9))[0]
            if use_base:
                self._base[key] = self._fit_base(g, i, j, emp[:, 1])
            X, base = design(i, j, emp)
            return train_quantile_models(
                X, g.k[j] - base, g.phys["ac_clear_kw"][j], self.quantile_grid,
                self.params, self.n_estimators,
            )

        i_all, j_all = self._rows(g, horizon, lo, n)
        if len(i_all) < 500:
            return
        cut = n - self.calib_days * SLOTS_PER_DAY
        models: dict[float, lgb.Booster] = {}
        shifts = {q: 0.0 for q in self.quantile_grid}
        levels: dict[int, np.ndarray] = {}
        if self.calib_days > 0:
            i_tr, j_tr = self._rows(g, horizon, lo, cut)
            calib = i_all >= cut  # (subsampled rows; the calibration sample stays large)
            if len(i_tr) >= 500 and calib.sum() >= 100:
                models = train(i_tr, j_tr)
                ic, jc = i_all[calib], j_all[calib]
                X, base = design(ic, jc)
                raw = self._raw_k(key, models, X, base)
                if self.calibration == "levels":
                    levels = calibrated_levels(raw, g.k[jc], self.quantile_grid,
                                               self._lead_group(horizon, jc - ic),
                                               widen=self.calib_widen)
                else:
                    for c, q in enumerate(self.quantile_grid):
                        pred = np.clip(raw[:, c], 0, K_MAX)
                        shifts[q] = empirical_shift(g.k[jc] - pred, q, g.phys["ac_clear_kw"][jc])
                if self.refit_after_calibration:
                    models = {}
        if not models:
            models = train(i_all, j_all)
        self._models[key] = models
        self.shifts_k[key] = shifts
        self._levels[key] = levels

    def _dayahead_levels(self, g: _PvGrid, i: int, leads: np.ndarray) -> np.ndarray | None:
        """Levels that would have calibrated the empirical day-ahead distribution over the
        last ``dayahead_calib_days`` days: the same forecasts (same issue time of day, same
        leads) issued on each of those days, scored where measured before ``i``
        (probability integral transform).  The median level is kept at 0.5."""
        if not self.dayahead_calibration:
            return None
        days = np.arange(1, self.dayahead_calib_days + 1)
        ic = np.repeat(i - days * SLOTS_PER_DAY, len(leads))
        jc = ic + np.tile(leads, len(days))
        jc_ok = (jc >= 0) & (jc < min(i, g.n))
        ic, jc = ic[jc_ok], jc[jc_ok]
        ic, jc = ic[np.isfinite(g.k[jc])], jc[np.isfinite(g.k[jc])]
        if len(jc) < 200:
            return None
        samples = g.k_samples(ic, jc, self.empirical_days, self.empirical_half_width)
        count = np.isfinite(samples).sum(axis=0)
        ok = count >= self.min_empirical_samples
        if ok.sum() < 200:
            return None
        y = g.k[jc][ok]
        smp = samples[:, ok]
        pit = ((smp < y[None, :]).sum(axis=0) + 0.5 * (smp == y[None, :]).sum(axis=0)) / count[ok]
        levels = np.clip(np.quantile(pit, self.quantile_grid), 0.001, 0.999)
        levels[np.isclose(self.quantile_grid, 0.5)] = 0.5
        return np.maximum.accumulate(levels)

    def fit(self, history: pd.Series, weather: pd.DataFrame | None = None) -> None:
        """Learn the clear-sky-index distribution from measured kW (and optional weather)."""
        s = to_grid(history)
        self._models, self.shifts_k, self._base, self._levels = {}, {}, {}, {}
        self._memo = None
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
        self._memo = None
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
                lv = self._dayahead_levels(g, i, np.unique(lead[rows]))
                levels = grid if lv is None else tuple(float(v) for v in lv)
                emp, count = g.k_empirical(np.full(rows.sum(), i), j[rows], levels,
                                           self.empirical_days, self.empirical_half_width)
                enough = count >= self.min_empirical_samples
                sub_out = out[rows]
                sub_out[enough] = emp[enough]
                out[rows] = sub_out
                continue
            sub = {k: v[rows] for k, v in wcols.items()} if with_weather and wcols else None
            ii, jj = np.full(rows.sum(), i), j[rows]
            use_base = key in self._base
            emp = g.k_empirical(ii, jj, (0.1, 0.5, 0.9))[0]
            base = self._base_value(key, g, ii, jj, emp[:, 1]) if use_base else np.zeros(len(ii))
            X = pv_features(g, ii, jj, sub, base if use_base else None, emp)
            raw = self._raw_k(key, self._models[key], X, base)
            levels_by_group = self._levels.get(key) or {}
            if levels_by_group:
                groups = self._lead_group(horizon, jj - ii)
                cal = np.empty_like(raw)
                for grp in np.unique(groups):
                    r = groups == grp
                    lv = levels_by_group.get(int(grp), levels_by_group.get(-1))
                    cal[r] = raw[r] if lv is None else interpolate_quantiles(grid, raw[r],
                                                                             list(lv))
                raw = cal
            shifts = self.shifts_k[key]
            out[rows] = raw + np.array([shifts[q] for q in grid])[None, :]
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
        k, pcs, usable = self._k_grid(issue_time, slots, weather)
        kq = np.clip(interpolate_quantiles(self.quantile_grid, k, qs), 0.0, K_MAX)
        values = np.where(usable[:, None], kq * pcs[:, None], 0.0)
        return monotone_frame(values, slots, qs)

    def _k_grid(
        self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex, weather: pd.DataFrame | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index at the grid levels, clear-sky kW, usable) per slot; the last call without
        weather is memoised (``predict`` then ``predict_point`` for one issue)."""
        utc = check_slots(slots)
        memo_key = (issue_time.value, utc.asi8.tobytes())
        if weather is None and self._memo is not None and self._memo[0] == memo_key:
            return self._memo[1]
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
        if weather is None:
            self._memo = (memo_key, (k, pcs, usable))
        return k, pcs, usable

    def predict_point(
        self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex,
        weather: pd.DataFrame | None = None,
    ) -> pd.Series:
        """The point forecast (kW): the median, or with ``point="mean"`` the mean of the
        predictive distribution (midpoint rule over levels 0.05, 0.15, ..., 0.95)."""
        if self.point == "median":
            return self.predict(issue_time, slots, [0.5], weather=weather)[0.5]
        return self.predict_mean(issue_time, slots, weather=weather)

    def predict_mean(
        self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex,
        weather: pd.DataFrame | None = None,
    ) -> pd.Series:
        """Mean of the predictive distribution (kW; midpoint rule over levels 0.05 .. 0.95)."""
        levels = [round(0.05 + 0.1 * m, 2) for m in range(10)]
        fc = self.predict(issue_time, slots, levels, weather=weather)
        return pd.Series(fc.to_numpy().mean(axis=1), index=slots)
