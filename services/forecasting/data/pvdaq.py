"""NREL PVDAQ system 50 (Golden, CO) measured AC power as a 15-minute kW series.

Source: ``pvanalytics/data/system_50_ac_power_2_full_DST.parquet`` shipped in the
``pvanalytics`` wheel (15-minute, 2011-04 to 2013-12, watts).  Reading it needs
a parquet engine (``pyarrow``).

Clock fix: the timestamps are tagged UTC-7 but are local *clock* time with
daylight saving.  On clear days the production centroid sits ~+2 min from the
pvlib clear-sky model in winter and ~+40..60 min in summer.  The loader measures
this (``daily_centroid_offsets_min``), and when DST days are late by more than
30 min it re-reads the wall clock as ``America/Denver`` and converts to UTC.
After the fix both seasons agree within a few minutes, and the small residual
offset is consistent with labels at the *start* of each 15-minute interval.

Capacity: the nameplate is unknown, so ``estimate_capacity_kw`` fits an
effective PVWatts kWp (90th percentile of daily measured/modelled energy
ratios, i.e. the clear days) from a window of data given by the caller.
Forecasting code must pass a window that ends at (or before) its training end /
issue time: ``load_pvdaq_system50(capacity_before=T)`` and the backtest
(``forecasting.backtest.runner.run_pv``) use the 365 days before ``T``.  Without
``capacity_before`` the site's kWp comes from the first data year; that is only
for replaying the measurements as kW per kWp (demo profiles, seeding), never for
scoring forecasts.

The clock fix is a property of the file (its timestamps are DST wall-clock
times), not a forecast quantity; it is measured on the whole file, and the file's
first 8 months alone give the same decision (``tests/forecasting/test_data_sources.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from forecasting.data.cache import cached
from forecasting.models.physics import pv_physics
from forecasting.models.site import PvSite

_VERSION = "pvdaq50-v1"
SYSTEM50_SITE = PvSite(
    latitude=39.7406,
    longitude=-105.1775,
    altitude_m=1800.0,
    tilt_deg=45.0,
    azimuth_deg=158.0,
    kwp=1.0,  # replaced by the estimate
    timezone="America/Denver",
)


def pvdaq_parquet_path() -> Path:
    """Path of the system-50 parquet inside the installed ``pvanalytics`` package."""
    import pvanalytics  # type: ignore[import-untyped]

    return Path(pvanalytics.__file__).resolve().parent / "data" / (
        "system_50_ac_power_2_full_DST.parquet"
    )


def pvdaq_psm3_path() -> Path:
    """PSM3 satellite *actual* weather next to the power file (not a forecast)."""
    return pvdaq_parquet_path().with_name("system_50_ac_power_2_full_DST_psm3.parquet")


def _regular(series: pd.Series) -> pd.Series:
    series = series[~series.index.duplicated(keep="first")].sort_index()
    grid = pd.date_range(series.index[0], series.index[-1], freq="15min")
    return series.reindex(grid)


def daily_centroid_offsets_min(
    power_kw: pd.Series, site: PvSite, max_tv_ratio: float = 1.1
) -> pd.DataFrame:
    """Per local day: production centroid minus clear-sky model centroid (minutes).

    Only clear days are returned: smooth single-hump production (total variation
    at most ``max_tv_ratio`` times twice the peak), judged without the model so a
    clock shift cannot hide them.  Columns: ``offset_min``, ``dst`` (bool).
    """
    phys = pv_physics(site.model_copy(update={"kwp": 1.0}), power_kw.index)
    minutes = (power_kw.index - power_kw.index[0]).total_seconds().to_numpy() / 60.0
    df = pd.DataFrame(
        {
            "p": power_kw.to_numpy(dtype=float),
            "m": phys["ac_clear_kw"].to_numpy(),
            "t": minutes,
        },
        index=power_kw.index,
    )
    local = power_kw.index.tz_convert(site.timezone)
    df["day"] = local.normalize().tz_localize(None)
    df["dst"] = [bool(ts.dst()) for ts in local]
    rows = []
    for day, g in df.groupby("day"):
        g = g[g["m"] > 0]
        if len(g) < 20 or g["p"].isna().mean() > 0.1:
            continue
        g = g.dropna()
        peak = g["p"].max()
        if peak <= 0 or g["p"].diff().abs().sum() > max_tv_ratio * 2 * peak:
            continue
        wp, wm = g["p"].clip(lower=0), g["m"]
        off = (wp * g["t"]).sum() / wp.sum() - (wm * g["t"]).sum() / wm.sum()
        rows.append((day, off, bool(g["dst"].iloc[len(g) // 2])))
    return pd.DataFrame(rows, columns=["day", "offset_min", "dst"]).set_index("day")


def correct_dst_clock(raw_w: pd.Series, site: PvSite) -> tuple[pd.Series, dict[str, float]]:
    """Return the kW series on a corrected UTC grid and the offsets measured.

    ``raw_w``: watts, index as stored (local clock tagged with a fixed offset).
    """
    as_tagged = _regular(pd.Series(raw_w.to_numpy(), index=raw_w.index.tz_convert("UTC")))
    off = daily_centroid_offsets_min(as_tagged / 1000.0, site)
    before = off.groupby("dst")["offset_min"].median()
    shift = float(before.get(True, 0.0) - before.get(False, 0.0))
    info = {
        "dst_minus_std_offset_before_min": shift,
        "std_offset_before_min": float(before.get(False, np.nan)),
    }
    if shift > 30.0:
        wall = raw_w.index.tz_localize(None)
        local = wall.tz_localize(site.timezone, ambiguous="NaT", nonexistent="NaT")
        keep = ~local.isna()
        fixed = pd.Series(raw_w.to_numpy()[keep], index=local[keep].tz_convert("UTC"))
        series = _regular(fixed)
        info["corrected"] = 1.0
    else:
        series = as_tagged
        info["corrected"] = 0.0
    kw = (series.astype(float) / 1000.0).clip(lower=0.0)
    kw.index.name = "slot_start"
    kw.name = "pv_kw"
    return kw, info


def estimate_capacity_kw(
    power_kw: pd.Series,
    site: PvSite,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    quantile: float = 0.9,
) -> float:
    """Effective kWp: ``quantile`` of daily measured/PVWatts-per-kWp energy ratios.

    Uses only ``[start, end)``.  Default ``start``: 365 days before ``end`` when
    ``end`` is given, else the first measurement; default ``end``: ``start`` +
    365 days.  A forecast may only use a capacity whose ``end`` is at or before
    its training end / issue time.
    """
    valid = power_kw.dropna()
    if end is not None:
        valid = valid[valid.index < end]
    if valid.empty:
        raise ValueError("no measurements")
    if start is None:
        start = max(valid.index[0], end - pd.Timedelta(days=365)) if end is not None \
            else valid.index[0]
    end = end if end is not None else start + pd.Timedelta(days=365)
    part = power_kw[(power_kw.index >= start) & (power_kw.index < end)]
    phys = pv_physics(site.model_copy(update={"kwp": 1.0}), part.index)
    use = phys["elevation_deg"] > 15
    df = pd.DataFrame({"p": part[use], "m": phys.loc[use, "ac_clear_kw"]})
    df["day"] = df.index.tz_convert(site.timezone).normalize()
    daily = df.groupby("day").agg(p=("p", "sum"), m=("m", "sum"), n=("p", "count"), k=("m", "size"))
    daily = daily[(daily["n"] >= 0.9 * daily["k"]) & (daily["m"] > 0)]
    if len(daily) < 10:
        raise ValueError("fewer than 10 complete days to estimate capacity")
    return float(np.quantile(daily["p"] / daily["m"], quantile))


def _build(path: Path) -> tuple[pd.Series, PvSite, dict[str, float]]:
    raw = pd.read_parquet(path)
    raw_w = raw.set_index("measured_on")["ac_power_2"].astype(float)
    kw, info = correct_dst_clock(raw_w, SYSTEM50_SITE)
    kwp = estimate_capacity_kw(kw, SYSTEM50_SITE)
    info["kwp_estimate"] = kwp
    return kw, SYSTEM50_SITE.model_copy(update={"kwp": round(kwp, 3)}), info


def load_pvdaq_system50_info(path: Path | str | None = None) -> dict[str, float]:
    """Diagnostics of the clock fix and capacity estimate (minutes, kW)."""
    src = Path(path) if path is not None else pvdaq_parquet_path()
    return cached("pvdaq_system50", src, _VERSION, lambda: _build(src))[2]


def site_with_capacity_before(power_kw: pd.Series, site: PvSite, before: pd.Timestamp) -> PvSite:
    """``site`` with its kWp estimated from the 365 days of ``power_kw`` before ``before``."""
    kwp = estimate_capacity_kw(power_kw, site, end=before)
    return site.model_copy(update={"kwp": round(kwp, 3)})


def load_pvdaq_system50(
    path: Path | str | None = None, capacity_before: pd.Timestamp | None = None
) -> tuple[pd.Series, PvSite]:
    """Measured AC power (kW, 15-min, corrected UTC slot-start index) and the site.

    The site's ``kwp`` is the effective capacity estimated from the 365 days
    before ``capacity_before`` (tz-aware) -- what a forecast issued from then on
    may use -- or, without it, from the first data year (replay/normalisation
    only, see the module docstring).
    """
    src = Path(path) if path is not None else pvdaq_parquet_path()
    kw, site, _ = cached("pvdaq_system50", src, _VERSION, lambda: _build(src))
    if capacity_before is not None:
        site = site_with_capacity_before(kw, site, capacity_before)
    return kw, site


def load_pvdaq_psm3_weather(path: Path | str | None = None) -> pd.DataFrame:
    """PSM3 weather (ghi, temp_air; 30-min, UTC index) for system 50.

    Satellite-derived *actual* weather: using it as a forecast input is
    look-ahead.  Only for exercising the weather-input code path in tests.
    """
    src = Path(path) if path is not None else pvdaq_psm3_path()
    raw = pd.read_parquet(src)
    idx_col = "index" if "index" in raw.columns else raw.columns[0]
    df = raw.set_index(idx_col)[["ghi", "temp_air"]].astype(float)
    df.index = pd.DatetimeIndex(df.index).tz_convert("UTC")
    # PSM3 values describe the half hour starting at the label; move to its middle
    df.index = df.index + pd.Timedelta(minutes=15)
    return df
