"""The replica's share of the portfolio: the site partitions this replica owns in the consumer group,
restored on assignment, published as partials, merged with the other replicas' partials on query.

Restore: a partition's state is the newest sample of each of its sites within the stale window, so the
telemetry topic itself is the changelog. The previous owner's partial says from which offset that
window starts (``replay_from_offset``); the new owner replays from there and publishes the partition
only once it has caught up, so until then the view keeps the previous owner's last partial: no site
counted twice, none dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka.structs import TopicPartition
from prometheus_client import Counter, Gauge
from vpp.v1 import flexibility_pb2

from aggregation.partition_state import PartitionState
from aggregation.settings import AggregationSettings
from vpp_common.kafka import Consumed, EventConsumer, EventProducer
from vpp_common.logs import get_logger
from vpp_common.partials import PartitionTotals, PortfolioView
from vpp_common.partitioning import site_partition
from vpp_common.topics import FLEXIBILITY, PARTIALS, TELEMETRY

log = get_logger(__name__)

SAMPLES = Counter("vpp_aggregation_samples_total", "Telemetry samples by outcome", ["outcome"])
SITES_ONLINE = Gauge("vpp_aggregation_sites_online", "Sites with fresh telemetry (whole portfolio, merged)")
SITES_KNOWN = Gauge("vpp_aggregation_sites_known", "Sites ever seen (whole portfolio, merged)")
SITES_OWNED = Gauge("vpp_aggregation_sites_owned", "Sites in the partitions this replica owns")
PORTFOLIO_KW = Gauge("vpp_aggregation_portfolio_flexibility_kw", "Portfolio flexibility", ["direction"])
VIEW_AGE = Gauge(
    "vpp_aggregation_view_age_seconds", "Now minus the oldest partition's as-of in the merged view (freshness)"
)
PARTITIONS_RESTORING = Gauge("vpp_aggregation_partitions_restoring", "Owned partitions still replaying their window")
PARTITIONS_STALE = Gauge("vpp_aggregation_partitions_stale", "Partitions whose owner has not published recently")
RESTORES = Counter("vpp_aggregation_partition_restores_total", "Partitions restored after assignment", ["source"])


@dataclass
class Owned:
    state: PartitionState
    restoring: bool
    assigned_at_s: float


class Aggregator:
    def __init__(self, settings: AggregationSettings, producer: EventProducer) -> None:
        self.settings = settings
        self._producer = producer
        self.intervals = tuple(sorted(set(settings.flex_intervals_minutes)))
        self.view = PortfolioView(
            partial_stale_after_s=settings.partial_stale_after_s, site_stale_after_s=settings.stale_after_s
        )
        self.owned: dict[int, Owned] = {}
        self.telemetry: EventConsumer | None = None  # set by build(): progress and generation
        self.partitions = settings.site_partitions  # the broker's count, set at start
        self.owner_target = ""
        self._samples = {k: SAMPLES.labels(k) for k in ("applied", "older", "foreign_partition", "no_site")}

    # -- telemetry (group consumer: this replica's partitions) ----------------------------------

    async def on_telemetry_batch(self, item: Consumed) -> None:
        owned = self.owned.get(item.partition)
        if owned is None:
            return  # not ours (any more): the owner handles it
        now_s = time.time()
        state = owned.state
        state.note_record(item.timestamp_ms / 1000.0, item.offset, now_s)
        newest: dict[str, object] = {}
        foreign = no_site = 0
        for record in item.env.telemetry_batch.records:
            t = record.telemetry
            site_id = t.site_id
            if not site_id:
                no_site += 1
                detail = f"{record.message_id}: telemetry.site_id is empty"
                item.dead_letter("no_site", detail, record.SerializeToString())
                continue
            if site_partition(site_id, self.partitions) != item.partition:
                # Not written by a gateway of ours (they partition by site): the owner of the site's
                # partition would count it too, so it is never counted here.
                foreign += 1
                detail = f"{record.message_id}: site {site_id} belongs to partition {self.partition_of(site_id)}"
                item.dead_letter("foreign_partition", detail, record.SerializeToString())
                continue
            previous = newest.get(site_id)
            if previous is None or _measured_ns(t) >= _measured_ns(previous):
                newest[site_id] = t
        applied = older = 0
        for t in newest.values():
            if state.apply(t, now_s):  # type: ignore[arg-type]
                applied += 1
            else:
                older += 1
        batch_size = len(item.env.telemetry_batch.records)
        older += batch_size - len(newest) - foreign - no_site
        outcomes = (("applied", applied), ("older", older), ("foreign_partition", foreign), ("no_site", no_site))
        for outcome, n in outcomes:
            if n:
                self._samples[outcome].inc(n)

    # -- rebalances ------------------------------------------------------------------------------

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.owned.pop(tp.partition, None)
        self._gauges()

    async def on_assigned(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        now_s = time.time()
        seeks: dict[TopicPartition, int] = {}
        for tp in partitions:
            state = PartitionState(
                tp.partition, self.intervals, self.settings.efficiency, self.settings.stale_after_s
            )
            self.owned[tp.partition] = Owned(state, restoring=True, assigned_at_s=now_s)
            last = self.view.latest.get(tp.partition)
            if last is None or last.next_offset == 0:
                RESTORES.labels("none").inc()  # nothing known: sites appear with their next samples
                continue
            if last.replay_from_offset > last.next_offset:
                # An impossible state (the window starts after the end the owner had reached): do not guess.
                log.error(
                    "partition_restore_refused",
                    partition=tp.partition,
                    replay_from=last.replay_from_offset,
                    next_offset=last.next_offset,
                )
                RESTORES.labels("refused").inc()
                continue
            seeks[tp] = last.replay_from_offset
            RESTORES.labels("replay").inc()
            log.info(
                "partition_restoring",
                partition=tp.partition,
                replay_from=last.replay_from_offset,
                previous_owner=last.owner,
                previous_next_offset=last.next_offset,
            )
        self._gauges()
        return seeks

    # -- partials ----------------------------------------------------------------------------------

    def _local_totals(self, now_s: float) -> dict[int, PartitionTotals]:
        """Live totals of the owned partitions that are restored (others are left to the last partial)."""
        consumer = self.telemetry
        generation = consumer.generation if consumer is not None else 0
        out: dict[int, PartitionTotals] = {}
        for partition, owned in self.owned.items():
            progress = consumer.progress.get(TopicPartition(TELEMETRY.name, partition)) if consumer else None
            if owned.restoring:
                if progress is None or progress.caught_up_at_s < owned.assigned_at_s:
                    continue
                owned.restoring = False
                log.info("partition_restored", partition=partition, sites=len(owned.state.sites))
            owned.state.expire(now_s)
            out[partition] = owned.state.totals(
                owner=self.settings.instance_id,
                owner_target=self.owner_target,
                generation=generation,
                now_s=now_s,
                as_of_s=progress.as_of_s() if progress is not None else 0.0,
                next_offset=max(progress.position, 0) if progress is not None else 0,
            )
        return out

    async def on_partial(self, item: Consumed) -> None:
        """Every replica keeps every partition's newest partial (its own included)."""
        self.view.offer(PartitionTotals.from_proto(item.env.partition_flexibility))

    async def publish_loop(self) -> None:
        """Publish the owned partitions' partials; the owner of partition 0 also publishes the portfolio."""
        import asyncio

        ticks = 0
        while True:
            await asyncio.sleep(self.settings.partial_interval_s)
            ticks += 1
            now_s = time.time()
            local = self._local_totals(now_s)
            for partition, totals in local.items():
                self.view.offer(totals)
                self._producer.publish(
                    PARTIALS, str(partition), totals.to_proto(self.settings.portfolio_id), partition=partition
                )
            flex = self.portfolio(self.settings.default_interval_minutes, local, now_s)
            self._gauges(flex, local)
            every = max(1, round(self.settings.publish_interval_s / self.settings.partial_interval_s))
            if 0 in local and ticks % every == 0 and flex.sites_total:
                await self._producer.publish(FLEXIBILITY, self.settings.portfolio_id, flex)
            await self._producer.settle()

    def portfolio(
        self, interval_minutes: int, local: dict[int, PartitionTotals] | None = None, now_s: float | None = None
    ) -> flexibility_pb2.PortfolioFlexibility:
        now_s = time.time() if now_s is None else now_s
        if local is None:
            local = self._local_totals(now_s)
        return self.view.merged(interval_minutes, self.settings.portfolio_id, local, now_s)

    def _gauges(
        self, flex: flexibility_pb2.PortfolioFlexibility | None = None, local: dict[int, PartitionTotals] | None = None
    ) -> None:
        PARTITIONS_RESTORING.set(sum(1 for o in self.owned.values() if o.restoring))
        SITES_OWNED.set(sum(len(o.state.sites) for o in self.owned.values()))
        if flex is None:
            return
        SITES_ONLINE.set(flex.sites_online)
        SITES_KNOWN.set(flex.sites_total)
        PORTFOLIO_KW.labels("up").set(flex.up_kw)
        PORTFOLIO_KW.labels("down").set(flex.down_kw)
        PARTITIONS_STALE.set(flex.partitions_stale)
        if flex.partitions:
            VIEW_AGE.set(time.time() - flex.as_of.ToNanoseconds() / 1e9)

    # -- sites -------------------------------------------------------------------------------------

    def partition_of(self, site_id: str) -> int:
        return site_partition(site_id, self.partitions)

    def local_site(self, site_id: str) -> tuple[bool, object | None]:
        """(owned here, the site's entry if known)."""
        owned = self.owned.get(self.partition_of(site_id))
        if owned is None or owned.restoring:
            return False, None
        return True, owned.state.sites.get(site_id)


def _measured_ns(t: object) -> int:
    ts = t.measured_at  # type: ignore[attr-defined]
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)
