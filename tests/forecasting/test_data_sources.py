"""Real data loaders: the 24 h-copy fix, the PV clock fix, capacity, replay profiles."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecasting.data import load_pvdaq_system50, load_uci_household, real_profile
from forecasting.data.pvdaq import (
    SYSTEM50_SITE,
    correct_dst_clock,
    daily_centroid_offsets_min,
    estimate_capacity_kw,
    load_pvdaq_system50_info,
    pvdaq_parquet_path,
)
from forecasting.data.uci import read_uci_minutes

COLS = ["Global_active_power", "Global_reactive_power", "Voltage", "Global_intensity",
        "Sub_metering_1", "Sub_metering_2", "Sub_metering_3"]


def test_copied_minutes_are_found_and_slots_need_8_valid_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VPP_FORECAST_CACHE", str(tmp_path / "cache"))
    idx = pd.date_range("2009-01-01", periods=3 * 1440, freq="1min")
    rng = np.random.default_rng(1)
    data = pd.DataFrame(rng.random((len(idx), 7)), index=idx, columns=COLS)
    copy = slice(2 * 1440 + 300, 2 * 1440 + 310)  # 10 minutes on day 3 copied from day 2
    data.iloc[copy] = data.iloc[1440 + 300 : 1440 + 310].to_numpy()
    data.index.name = "date_time"
    csv = tmp_path / "hh.csv"
    data.to_csv(csv)
    minutes = read_uci_minutes(csv)
    assert int(minutes["copied"].sum()) == 10
    assert minutes["Global_active_power"].iloc[copy].isna().all()
    series = load_uci_household(csv)
    # minutes 05:00..05:09 of day 3 are copies: 05:00 keeps 5 valid, 05:15 keeps 15
    slot = pd.Timestamp("2009-01-03 05:00", tz="UTC")
    assert np.isnan(series[slot])  # only 5 of 15 minutes valid
    assert np.isfinite(series[slot + pd.Timedelta(minutes=15)])


def test_uci_household_series_is_clean_and_cached() -> None:
    s = load_uci_household()
    t0 = time.perf_counter()
    s2 = load_uci_household()
    assert time.perf_counter() - t0 < 2.0
    assert s.equals(s2)
    assert str(s.index.tz) == "UTC" and (s.index[1:] - s.index[:-1] == "15min").all()
    assert 0.005 < s.isna().mean() < 0.03
    assert 0.5 < s.mean() < 2.0 and s.max() < 12
    # no day in the test year is an exact copy of the previous day any more
    y = s["2009-01-01":"2009-12-31 23:45"].to_numpy().reshape(-1, 96)
    same = [np.array_equal(y[d], y[d - 1]) and np.isfinite(y[d]).all() for d in range(1, len(y))]
    assert not any(same)


def test_pvdaq_clock_is_fixed_and_capacity_estimated() -> None:
    kw, site = load_pvdaq_system50()
    info = load_pvdaq_system50_info()
    assert info["corrected"] == 1.0
    assert info["dst_minus_std_offset_before_min"] > 45  # the raw file was an hour off
    off = daily_centroid_offsets_min(kw, site)
    med = off.groupby("dst")["offset_min"].median()
    assert abs(med[True] - med[False]) < 10
    assert abs(med[False]) < 10
    assert 3.0 < site.kwp < 4.5
    assert kw.max() < 1.05 * site.kwp
    assert str(kw.index.tz) == "UTC"


@pytest.mark.parametrize("kind", ["pv", "load"])
def test_real_profile_replays_measurements(kind: str) -> None:
    start = pd.Timestamp("2026-06-15 00:00", tz="UTC")
    p = real_profile(kind, start, 48)  # type: ignore[arg-type]
    assert len(p) == 192 and p.index[0] == start and p.notna().all()
    if kind == "pv":
        assert p.max() > 0.4 and p.max() < 1.3 and (p == 0).sum() > 40  # days and nights
    else:
        assert 0.05 < p.mean() < 5


def test_capacity_uses_only_data_before_its_end() -> None:
    """The effective capacity a forecast may use is estimated from data before a given time:
    perturbing everything after it changes nothing, and the estimate is what the loader and
    the backtest give for that time."""
    kw, site = load_pvdaq_system50()
    end = pd.Timestamp("2012-01-01", tz="America/Denver")
    perturbed = kw.copy()
    perturbed[perturbed.index >= end] *= 3.0
    kwp = estimate_capacity_kw(kw, site, end=end)
    assert kwp == estimate_capacity_kw(perturbed, site, end=end)
    assert 3.0 < kwp < 4.5
    assert load_pvdaq_system50(capacity_before=end)[1].kwp == round(kwp, 3)
    # the default window is the 365 days before the end
    later = pd.Timestamp("2013-06-01", tz="America/Denver")
    assert estimate_capacity_kw(kw, site, end=later) == estimate_capacity_kw(
        kw, site, start=later - pd.Timedelta(days=365), end=later)


def test_clock_fix_decision_needs_no_future_data() -> None:
    """The DST clock fix is a property of the file: its first 8 months (summer and winter
    time) alone give the same decision as the whole file."""
    raw = pd.read_parquet(pvdaq_parquet_path()).set_index("measured_on")["ac_power_2"]
    first = raw[raw.index < raw.index[0] + pd.Timedelta(days=240)].astype(float)
    _, info = correct_dst_clock(first, SYSTEM50_SITE)
    assert info["corrected"] == load_pvdaq_system50_info()["corrected"] == 1.0
