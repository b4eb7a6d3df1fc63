"""Site physics: PV, house load and a battery that follows its setpoint, behind one grid meter.

Signs follow protos/vpp/v1/common.proto: battery > 0 discharges, grid > 0 imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BatteryParams:
    """The device's OWN limits; the battery honours them whatever it is told."""

    capacity_kwh: float = 10.0
    max_charge_kw: float = 5.0
    max_discharge_kw: float = 5.0
    soc_min_pct: float = 5.0
    soc_max_pct: float = 95.0
    round_trip_efficiency: float = 0.9
    tau_s: float = 0.7
    # Share of the rated power the hardware really delivers (a hot inverter, a weak string). The
    # registers still advertise the rating, so the platform only finds out from the measurements.
    derate_pct: float = 100.0

    def __post_init__(self) -> None:
        if self.capacity_kwh <= 0 or self.max_charge_kw < 0 or self.max_discharge_kw < 0:
            raise ValueError("capacity must be > 0 and power limits >= 0")
        if not 0 <= self.soc_min_pct < self.soc_max_pct <= 100:
            raise ValueError("need 0 <= soc_min_pct < soc_max_pct <= 100")
        if not 0 < self.round_trip_efficiency <= 1 or self.tau_s < 0:
            raise ValueError("round_trip_efficiency in (0, 1], tau_s >= 0")
        if not 0 <= self.derate_pct <= 100:
            raise ValueError("derate_pct in [0, 100]")


class SitePhysics:
    """State of the simulated site, advanced by `step` once per tick."""

    def __init__(self, params: BatteryParams, soc_pct: float) -> None:
        self.params = params
        self.soc_pct = min(100.0, max(0.0, soc_pct))
        self.battery_kw = 0.0
        self.command_kw = 0.0
        self.pv_kw = 0.0
        self.load_kw = 0.0
        self.grid_kw = 0.0
        self.grid_import_kwh = 0.0
        self.grid_export_kwh = 0.0
        self.pv_kwh = 0.0

    def target_kw(self) -> float:
        """Command limited by the device's max power and by its SoC window."""
        p = self.params
        derate = p.derate_pct / 100.0
        target = min(p.max_discharge_kw * derate, max(-p.max_charge_kw * derate, self.command_kw))
        if target > 0 and self.soc_pct <= p.soc_min_pct:
            return 0.0
        if target < 0 and self.soc_pct >= p.soc_max_pct:
            return 0.0
        return target

    def step(self, dt_s: float, pv_kw: float, load_kw: float) -> None:
        """Advance by dt_s: lag the battery toward its target, integrate SoC, balance the meter."""
        if dt_s <= 0:
            return
        p = self.params
        target = self.target_kw()
        alpha = 1.0 if p.tau_s == 0 else 1.0 - math.exp(-dt_s / p.tau_s)
        self.battery_kw += (target - self.battery_kw) * alpha
        if abs(self.battery_kw) < 1e-6:
            self.battery_kw = 0.0
        leg_eff = math.sqrt(p.round_trip_efficiency)
        dt_h = dt_s / 3600.0
        delta_kwh = -self.battery_kw * dt_h / leg_eff if self.battery_kw > 0 else -self.battery_kw * dt_h * leg_eff
        soc = self.soc_pct + delta_kwh / p.capacity_kwh * 100.0
        if self.battery_kw > 0 and soc <= p.soc_min_pct:
            # Reached the floor inside this tick: stop there (never push an already-low SoC up).
            soc = min(self.soc_pct, p.soc_min_pct)
            self.battery_kw = 0.0
        elif self.battery_kw < 0 and soc >= p.soc_max_pct:
            soc = max(self.soc_pct, p.soc_max_pct)
            self.battery_kw = 0.0
        self.soc_pct = min(100.0, max(0.0, soc))
        self.pv_kw = pv_kw
        self.load_kw = load_kw
        self.grid_kw = load_kw - pv_kw - self.battery_kw
        if self.grid_kw > 0:
            self.grid_import_kwh += self.grid_kw * dt_h
        else:
            self.grid_export_kwh += -self.grid_kw * dt_h
        self.pv_kwh += pv_kw * dt_h
