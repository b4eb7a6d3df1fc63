"""Latest telemetry per site, shared by the services that need live site state (aggregation,
dispatch). Written by a Kafka consumer thread, read by gRPC handlers: guarded by a lock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from vpp.v1 import telemetry_pb2

from vpp_common.flexibility import BatteryState


@dataclass(frozen=True)
class SiteReading:
    telemetry: telemetry_pb2.Telemetry
    measured_at_s: float


class SiteTable:
    def __init__(self, stale_after_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, SiteReading] = {}
        self.stale_after_s = stale_after_s

    def update(self, telemetry: telemetry_pb2.Telemetry) -> bool:
        """Keep the newest reading per site; False for an out-of-order or replayed one."""
        if not telemetry.site_id:
            raise ValueError("telemetry.site_id is empty")
        measured_at_s = telemetry.measured_at.ToNanoseconds() / 1e9
        with self._lock:
            current = self._latest.get(telemetry.site_id)
            if current is not None and current.measured_at_s >= measured_at_s:
                return False
            self._latest[telemetry.site_id] = SiteReading(telemetry, measured_at_s)
            return True

    def readings(self) -> dict[str, SiteReading]:
        with self._lock:
            return dict(self._latest)

    def get(self, site_id: str) -> SiteReading | None:
        with self._lock:
            return self._latest.get(site_id)

    def is_online(self, reading: SiteReading, now_s: float | None = None) -> bool:
        now_s = time.time() if now_s is None else now_s
        return reading.telemetry.available and now_s - reading.measured_at_s <= self.stale_after_s

    def battery_state(self, reading: SiteReading, now_s: float | None = None) -> BatteryState:
        t = reading.telemetry
        return BatteryState(
            site_id=t.site_id,
            online=self.is_online(reading, now_s),
            battery_power_kw=t.battery_power_kw,
            soc_pct=t.soc_pct,
            capacity_kwh=t.battery_capacity_kwh,
            max_charge_kw=t.max_charge_kw,
            max_discharge_kw=t.max_discharge_kw,
            soc_min_pct=t.soc_min_pct,
            soc_max_pct=t.soc_max_pct,
        )
