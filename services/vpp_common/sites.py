"""Latest telemetry per site (dispatch keeps every site's, each replica its own table): the live site
state dispatch allocates from and measures steps with.

Lives on the replica's event loop; no locks.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from vpp.v1 import telemetry_pb2

from vpp_common.flexibility import BatteryState


def battery_state(t: telemetry_pb2.Telemetry, online: bool) -> BatteryState:
    """What the flexibility maths needs from one telemetry sample."""
    return BatteryState(
        site_id=t.site_id,
        online=online,
        battery_power_kw=t.battery_power_kw,
        soc_pct=t.soc_pct,
        capacity_kwh=t.battery_capacity_kwh,
        max_charge_kw=t.max_charge_kw,
        max_discharge_kw=t.max_discharge_kw,
        soc_min_pct=t.soc_min_pct,
        soc_max_pct=t.soc_max_pct,
    )


@dataclass(frozen=True)
class SiteReading:
    telemetry: telemetry_pb2.Telemetry
    measured_at_s: float


class SiteTable:
    """The newest reading per site, plus the last ``history`` readings so a step can be measured at its
    end even when the samples covering it arrive later (agents batch them)."""

    def __init__(self, stale_after_s: float = 10.0, history: int = 16) -> None:
        self._latest: dict[str, SiteReading] = {}
        self._history: dict[str, deque[SiteReading]] = {}
        self._keep = history
        self.stale_after_s = stale_after_s

    def update(self, telemetry: telemetry_pb2.Telemetry) -> bool:
        """Keep the newest reading per site; False for an out-of-order or replayed one."""
        if not telemetry.site_id:
            raise ValueError("telemetry.site_id is empty")
        measured_at_s = telemetry.measured_at.seconds + telemetry.measured_at.nanos / 1e9
        current = self._latest.get(telemetry.site_id)
        if current is not None and current.measured_at_s >= measured_at_s:
            return False
        reading = SiteReading(telemetry, measured_at_s)
        self._latest[telemetry.site_id] = reading
        history = self._history.get(telemetry.site_id)
        if history is None:
            history = self._history[telemetry.site_id] = deque(maxlen=self._keep)
        history.append(reading)
        return True

    def reading_at(self, site_id: str, at_s: float) -> SiteReading | None:
        """The newest reading measured at or before ``at_s``."""
        for reading in reversed(self._history.get(site_id, ())):
            if reading.measured_at_s <= at_s:
                return reading
        return None

    def history(self, site_id: str) -> tuple[SiteReading, ...]:
        """The site's last readings, oldest first."""
        return tuple(self._history.get(site_id, ()))

    def readings(self) -> dict[str, SiteReading]:
        return self._latest

    def get(self, site_id: str) -> SiteReading | None:
        return self._latest.get(site_id)

    def __len__(self) -> int:
        return len(self._latest)

    def is_online(self, reading: SiteReading, now_s: float | None = None) -> bool:
        now_s = time.time() if now_s is None else now_s
        return reading.telemetry.available and now_s - reading.measured_at_s <= self.stale_after_s

