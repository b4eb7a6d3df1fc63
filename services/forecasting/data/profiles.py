"""Real measured profiles for the demo's simulated sites.

``real_profile("pv", start, hours)`` replays PVDAQ system 50 normalised to kW
per kWp of its estimated capacity; ``real_profile("load", start, hours)`` replays
the UCI household in kW.  A ``start`` outside the data's years is moved by
whole 52-week steps (keeps weekday and season) into the recorded range, and
the result is re-indexed to the requested times.  Gaps are filled (time
interpolation up to 2 h, then 0 kW for PV / the median for load) so a replay
never hands NaN to a simulator.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from forecasting.data.pvdaq import load_pvdaq_system50
from forecasting.data.uci import load_uci_household

SLOT = pd.Timedelta(minutes=15)
_STEP = pd.Timedelta(weeks=52)


def _source(kind: str) -> pd.Series:
    if kind == "pv":
        kw, site = load_pvdaq_system50()
        return kw / site.kwp
    if kind == "load":
        return load_uci_household()
    raise ValueError(f"kind must be 'pv' or 'load', not {kind!r}")


def real_profile(kind: Literal["pv", "load"], start: pd.Timestamp, hours: float) -> pd.Series:
    """Measured 15-minute profile: PV in kW/kWp, load in kW; index = requested slot starts (UTC).

    ``start`` may be naive (taken as UTC); it is floored to the 15-minute grid.
    """
    if hours <= 0:
        raise ValueError("hours must be positive")
    src = _source(kind)
    t0 = pd.Timestamp(start)
    t0 = (t0.tz_localize("UTC") if t0.tz is None else t0.tz_convert("UTC")).floor(SLOT)
    n = int(np.ceil(hours * 4))
    span = n * SLOT
    lo, hi = src.index[0], src.index[-1] - span
    if hi < lo:
        raise ValueError("requested span longer than the recorded data")
    shifted = t0
    while shifted < lo:
        shifted += _STEP
    while shifted > hi:
        shifted -= _STEP
    if shifted < lo:  # the 52-week step overshot a short record: clamp
        shifted = lo + (t0 - lo) % SLOT
    idx = pd.date_range(shifted, periods=n, freq=SLOT)
    pad = pd.Timedelta(hours=2)
    window = src[(src.index >= idx[0] - pad) & (src.index <= idx[-1] + pad)]
    filled = window.interpolate("time", limit=8, limit_area="inside").reindex(idx)
    fill_value = 0.0 if kind == "pv" else float(src.median())
    out = filled.fillna(fill_value).clip(lower=0.0)
    out.index = pd.date_range(t0, periods=n, freq=SLOT)
    out.name = "pv_kw_per_kwp" if kind == "pv" else "load_kw"
    return out
