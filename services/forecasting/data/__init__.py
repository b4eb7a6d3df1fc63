"""Real data sets for forecasting (cached parsing) and replay profiles.

Public API::

    load_uci_household(path=None) -> pd.Series            # 15-min kW, NaN missing
    load_pvdaq_system50(path=None) -> (pd.Series, PvSite)  # kW, corrected UTC index
    estimate_capacity_kw(power_kw, site, start=None, end=None) -> float
    real_profile(kind: "pv" | "load", start, hours) -> pd.Series
"""

from forecasting.data.profiles import real_profile
from forecasting.data.pvdaq import (
    estimate_capacity_kw,
    load_pvdaq_psm3_weather,
    load_pvdaq_system50,
)
from forecasting.data.uci import load_uci_household

__all__ = [
    "estimate_capacity_kw",
    "load_pvdaq_psm3_weather",
    "load_pvdaq_system50",
    "load_uci_household",
    "real_profile",
]
