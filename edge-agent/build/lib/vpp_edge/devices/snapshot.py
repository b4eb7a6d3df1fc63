"""The typed, frozen view of one device read: units are in the names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class DeviceSnapshot:
    """One cycle's measurements and the device's own limits (battery > 0 discharges, grid > 0 imports)."""

    measured_at: datetime
    pv_power_kw: float
    load_power_kw: float
    battery_power_kw: float
    grid_power_kw: float
    soc_pct: float
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    soc_min_pct: float
    soc_max_pct: float
    read_rtt_ms: float
