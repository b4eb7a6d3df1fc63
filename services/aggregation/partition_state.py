"""One site partition's live state with its totals maintained on every sample, so a portfolio query
never scans sites.

Each online site contributes, per maintained interval, its up/down flexibility (in integer milliwatts:
adding and removing a contribution is exact). A sample replaces the site's contribution; a site whose
newest sample is older than ``stale_after_s`` is taken out by ``expire`` (a wheel of one-second
buckets, so that is O(sites expiring), not O(sites)). No I/O: the aggregator feeds it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from vpp.v1 import telemetry_pb2

from vpp_common.flexibility import battery_flexibility_intervals
from vpp_common.partials import MILLI, PartitionTotals
from vpp_common.sites import battery_state


@dataclass(slots=True)
class SiteEntry:
    telemetry: telemetry_pb2.Telemetry
    measured_at_s: float
    online: bool
    up_mw: tuple[int, ...]
    down_mw: tuple[int, ...]
    energy_up_mwh: int
    energy_down_mwh: int
    bucket: int  # expiry second; -1 when offline


class PartitionState:
    def __init__(
        self, partition: int, intervals_minutes: tuple[int, ...], efficiency: float, stale_after_s: float
    ) -> None:
        self.partition = partition
        self.intervals_minutes = intervals_minutes
        self._intervals_h = tuple(m / 60.0 for m in intervals_minutes)
        self._zero = (0,) * len(intervals_minutes)
        self.efficiency = efficiency
        self.stale_after_s = stale_after_s
        self.sites: dict[str, SiteEntry] = {}
        self.up_mw = [0] * len(intervals_minutes)
        self.down_mw = [0] * len(intervals_minutes)
        self.energy_up_mwh = 0
        self.energy_down_mwh = 0
        self.sites_online = 0
        self.newest_measured_at_s = 0.0
        self._wheel: dict[int, set[str]] = {}
        self._swept_to = -1
        self._records: deque[tuple[float, int]] = deque()  # (record time, offset) inside the stale window
        self.samples_applied = 0

    # -- samples ---------------------------------------------------------------------------------

    def apply(self, t: telemetry_pb2.Telemetry, now_s: float) -> bool:
        """Take the site's sample if it is its newest; False for an older or replayed one."""
        measured_at_s = t.measured_at.seconds + t.measured_at.nanos / 1e9
        entry = self.sites.get(t.site_id)
        if entry is not None and entry.measured_at_s >= measured_at_s:
            return False
        online = t.available and now_s - measured_at_s <= self.stale_after_s
        if online:
            e_up, e_down, per_interval = battery_flexibility_intervals(
                battery_state(t, True), self._intervals_h, self.efficiency
            )
            up = tuple(round(u * MILLI) for u, _ in per_interval)
            down = tuple(round(d * MILLI) for _, d in per_interval)
            e_up_mwh, e_down_mwh = round(e_up * MILLI), round(e_down * MILLI)
            bucket = math.floor(measured_at_s + self.stale_after_s) + 1
        else:
            up = down = self._zero
            e_up_mwh = e_down_mwh = 0
            bucket = -1
        if entry is None:
            entry = SiteEntry(t, measured_at_s, False, self._zero, self._zero, 0, 0, -1)
            self.sites[t.site_id] = entry
        self._remove(t.site_id, entry)
        entry.telemetry = t
        entry.measured_at_s = measured_at_s
        if online:
            entry.online = True
            entry.up_mw, entry.down_mw = up, down
            entry.energy_up_mwh, entry.energy_down_mwh = e_up_mwh, e_down_mwh
            entry.bucket = bucket
            self._add(t.site_id, entry)
        if measured_at_s > self.newest_measured_at_s:
            self.newest_measured_at_s = measured_at_s
        self.samples_applied += 1
        return True

    def _add(self, site_id: str, entry: SiteEntry) -> None:
        for i, value in enumerate(entry.up_mw):
            self.up_mw[i] += value
        for i, value in enumerate(entry.down_mw):
            self.down_mw[i] += value
        self.energy_up_mwh += entry.energy_up_mwh
        self.energy_down_mwh += entry.energy_down_mwh
        self.sites_online += 1
        self._wheel.setdefault(entry.bucket, set()).add(site_id)

    def _remove(self, site_id: str, entry: SiteEntry) -> None:
        if not entry.online:
            return
        for i, value in enumerate(entry.up_mw):
            self.up_mw[i] -= value
        for i, value in enumerate(entry.down_mw):
            self.down_mw[i] -= value
        self.energy_up_mwh -= entry.energy_up_mwh
        self.energy_down_mwh -= entry.energy_down_mwh
        self.sites_online -= 1
        bucket = self._wheel.get(entry.bucket)
        if bucket is not None:
            bucket.discard(site_id)
        entry.online = False
        entry.up_mw = entry.down_mw = self._zero
        entry.energy_up_mwh = entry.energy_down_mwh = 0
        entry.bucket = -1

    def expire(self, now_s: float) -> int:
        """Take out every site whose newest sample has gone stale; returns how many."""
        until = math.floor(now_s)
        if self._swept_to < 0:
            self._swept_to = min(self._wheel, default=until) - 1
        expired = 0
        if self._wheel:
            for second in sorted(k for k in self._wheel if k <= until):
                for site_id in self._wheel.pop(second):
                    entry = self.sites[site_id]
                    if entry.online and entry.bucket == second:
                        self._remove(site_id, entry)
                        expired += 1
        self._swept_to = until
        return expired

    # -- replay window -----------------------------------------------------------------------------

    def note_record(self, record_time_s: float, offset: int, now_s: float) -> None:
        """Remember where each record lies, to tell the next owner where to replay from."""
        self._records.append((record_time_s, offset))
        horizon = now_s - self.stale_after_s
        while len(self._records) > 1 and self._records[0][0] < horizon:
            self._records.popleft()

    def replay_from_offset(self, next_offset: int, now_s: float) -> int:
        """The first offset whose record may hold a sample still inside the stale window."""
        horizon = now_s - self.stale_after_s
        for record_time_s, offset in self._records:
            if record_time_s >= horizon:
                return offset
        return next_offset

    # -- totals ------------------------------------------------------------------------------------

    def totals(
        self, *, owner: str, owner_target: str, generation: int, now_s: float, as_of_s: float, next_offset: int
    ) -> PartitionTotals:
        return PartitionTotals(
            partition=self.partition,
            owner=owner,
            owner_target=owner_target,
            generation=generation,
            published_at_s=now_s,
            as_of_s=as_of_s,
            sites_total=len(self.sites),
            sites_online=self.sites_online,
            energy_up_mwh=self.energy_up_mwh,
            energy_down_mwh=self.energy_down_mwh,
            up_mw=dict(zip(self.intervals_minutes, self.up_mw, strict=True)),
            down_mw=dict(zip(self.intervals_minutes, self.down_mw, strict=True)),
            newest_measured_at_s=self.newest_measured_at_s,
            replay_from_offset=self.replay_from_offset(next_offset, now_s),
            next_offset=next_offset,
        )
