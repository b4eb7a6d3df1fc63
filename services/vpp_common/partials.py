"""The portfolio view every replica can answer from: the latest ``PartitionFlexibility`` of every site
partition, merged.

Aggregation replicas own the telemetry partitions of a consumer group and publish one partial per
owned partition every ``partial_interval_s`` to ``vpp.aggregation.partials.v1`` (partitioned and keyed
by site partition). Every replica (and dispatch's planner) reads that topic from its last record on,
so it holds the newest partial of every partition: a portfolio query is a sum over partitions, never a
scan over sites. For each partition the partial with the highest (generation, published_at) wins, so a
partition that moved is counted once, by its new owner, as soon as that one has restored it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vpp.v1 import flexibility_pb2

MILLI = 1_000_000  # totals are kept as integers in milliwatts (kW * 1e6): exact, no drift


@dataclass
class PartitionTotals:
    """One partition's contribution to the portfolio."""

    partition: int
    owner: str
    owner_target: str
    generation: int
    published_at_s: float
    as_of_s: float
    sites_total: int
    sites_online: int
    energy_up_mwh: int  # milliwatt-hours
    energy_down_mwh: int
    up_mw: dict[int, int] = field(default_factory=dict)  # interval minutes -> milliwatts
    down_mw: dict[int, int] = field(default_factory=dict)
    newest_measured_at_s: float = 0.0
    replay_from_offset: int = 0
    next_offset: int = 0

    @classmethod
    def from_proto(cls, p: flexibility_pb2.PartitionFlexibility) -> PartitionTotals:
        return cls(
            partition=p.partition,
            owner=p.owner,
            owner_target=p.owner_target,
            generation=p.generation,
            published_at_s=p.published_at.ToNanoseconds() / 1e9,
            as_of_s=p.as_of.ToNanoseconds() / 1e9,
            sites_total=p.sites_total,
            sites_online=p.sites_online,
            energy_up_mwh=round(p.energy_up_kwh * MILLI),
            energy_down_mwh=round(p.energy_down_kwh * MILLI),
            up_mw={i.interval_minutes: round(i.up_kw * MILLI) for i in p.intervals},
            down_mw={i.interval_minutes: round(i.down_kw * MILLI) for i in p.intervals},
            newest_measured_at_s=p.newest_measured_at.ToNanoseconds() / 1e9,
            replay_from_offset=p.replay_from_offset,
            next_offset=p.next_offset,
        )

    def to_proto(self, portfolio_id: str) -> flexibility_pb2.PartitionFlexibility:
        p = flexibility_pb2.PartitionFlexibility(
            portfolio_id=portfolio_id,
            partition=self.partition,
            owner=self.owner,
            owner_target=self.owner_target,
            generation=self.generation,
            replay_from_offset=self.replay_from_offset,
            next_offset=self.next_offset,
            sites_total=self.sites_total,
            sites_online=self.sites_online,
            energy_up_kwh=self.energy_up_mwh / MILLI,
            energy_down_kwh=self.energy_down_mwh / MILLI,
        )
        for minutes in sorted(self.up_mw):
            p.intervals.add(
                interval_minutes=minutes, up_kw=self.up_mw[minutes] / MILLI, down_kw=self.down_mw[minutes] / MILLI
            )
        p.published_at.FromNanoseconds(int(self.published_at_s * 1e9))
        p.as_of.FromNanoseconds(int(self.as_of_s * 1e9))
        p.newest_measured_at.FromNanoseconds(int(self.newest_measured_at_s * 1e9))
        return p


def maintained_interval(intervals: tuple[int, ...], asked_minutes: int) -> int:
    """The smallest maintained interval at least as long as the one asked for (never more flexibility
    than asked for: sustainable power only falls as the interval grows); the longest if none is."""
    for minutes in sorted(intervals):
        if minutes >= asked_minutes:
            return minutes
    return max(intervals)


class PortfolioView:
    def __init__(self, *, partial_stale_after_s: float, site_stale_after_s: float) -> None:
        self.partial_stale_after_s = partial_stale_after_s
        self.site_stale_after_s = site_stale_after_s
        self.latest: dict[int, PartitionTotals] = {}

    def offer(self, totals: PartitionTotals) -> bool:
        """Keep ``totals`` if it is the newest of its partition."""
        current = self.latest.get(totals.partition)
        if current is not None and (current.generation, current.published_at_s) > (
            totals.generation,
            totals.published_at_s,
        ):
            return False
        self.latest[totals.partition] = totals
        return True

    def merged(
        self,
        interval_minutes: int,
        portfolio_id: str,
        local: dict[int, PartitionTotals] | None = None,
        now_s: float | None = None,
    ) -> flexibility_pb2.PortfolioFlexibility:
        """Sum every partition (``local`` ones, live, over the published ones)."""
        now_s = time.time() if now_s is None else now_s
        parts = dict(self.latest)
        if local:
            parts.update(local)
        out = flexibility_pb2.PortfolioFlexibility(portfolio_id=portfolio_id, interval_minutes=interval_minutes)
        up = down = e_up = e_down = 0
        oldest_as_of = now_s
        for partition, t in parts.items():
            out.partitions += 1
            out.sites_total += t.sites_total
            oldest_as_of = min(oldest_as_of, t.as_of_s)
            is_local = local is not None and partition in local
            age_s = now_s - t.published_at_s
            if not is_local and age_s > self.partial_stale_after_s:
                out.partitions_stale += 1
                if age_s > self.site_stale_after_s:
                    continue  # its owner is gone for longer than a site stays online: count it offline
            out.sites_online += t.sites_online
            up += t.up_mw.get(interval_minutes, 0)
            down += t.down_mw.get(interval_minutes, 0)
            e_up += t.energy_up_mwh
            e_down += t.energy_down_mwh
        out.up_kw = up / MILLI
        out.down_kw = down / MILLI
        out.energy_up_kwh = e_up / MILLI
        out.energy_down_kwh = e_down / MILLI
        out.computed_at.FromNanoseconds(int(now_s * 1e9))
        out.interval_start.FromNanoseconds(int(now_s * 1e9))
        out.interval_end.FromNanoseconds(int((now_s + interval_minutes * 60) * 1e9))
        out.as_of.FromNanoseconds(int(oldest_as_of * 1e9))
        return out
