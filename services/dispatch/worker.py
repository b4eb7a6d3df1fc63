"""The partition worker: this replica's share of the sites. The dispatch consumer group splits the
site partitions of the telemetry and acks topics between replicas (the range assignor gives a replica
the same partition numbers of both), so a site's state, commands and acks live in one replica.

For every plan it executes the shares of its partitions: freezes each partition's site baselines at the
activation's first step (``ActivationTracker``), splits the share over the partition's sites and writes
one command batch per partition. A step is measured at its end (the next step's issue time) from each
site's newest sample before it; agents send those samples with the next step's ack, so the step is
closed once every commanded site has reported past its end (or ``close_timeout_s`` later), and the
result goes out as a ``PartitionStep``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from kafka.structs import TopicPartition
from prometheus_client import Counter, Gauge, Histogram
from vpp.v1 import dispatch_pb2

from dispatch.settings import DispatchSettings
from dispatch.tracker import ActivationTracker, StepRecord, TrackerConfig
from vpp_common.kafka import Consumed, EventProducer
from vpp_common.logs import get_logger
from vpp_common.partials import PortfolioView
from vpp_common.sites import SiteTable
from vpp_common.topics import COMMANDS, PARTITION_STEPS, TELEMETRY

log = get_logger(__name__)

LATENCY = Histogram(
    "vpp_dispatch_activation_to_write_seconds",
    "Activation issued (market) to setpoint written over Modbus (agent ack)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 4),
)
COMMANDS_SENT = Counter("vpp_dispatch_commands_total", "Commands published")
ACKS_IN = Counter("vpp_dispatch_acks_total", "Acks received", ["status"])
REALLOCATIONS = Counter("vpp_dispatch_reallocations_total", "Sites whose headroom was cut after falling short")
SITES_OWNED = Gauge("vpp_dispatch_sites_owned", "Sites in the partitions this replica owns")


@dataclass
class PartitionRun:
    tracker: ActivationTracker
    partition: int
    last_step_s: float  # monotonic time of the latest plan
    last_issued_at_s: float = 0.0  # market issue time of the latest step
    step_period_s: float = 4.0  # spacing of the last two steps (to place the last step's end)
    pending: list[tuple[int, float]] = field(default_factory=list)  # (step, its end) awaiting telemetry
    reported_latencies: int = 0
    finished: bool = False


class PartitionWorker:
    def __init__(self, settings: DispatchSettings, producer: EventProducer, view: PortfolioView) -> None:
        self._settings = settings
        self._producer = producer
        self._view = view
        self.tables: dict[int, SiteTable] = {}
        self.runs: dict[tuple[str, int], PartitionRun] = {}
        self._run_of_command: dict[str, tuple[str, int]] = {}
        self._config = TrackerConfig(
            shortfall_abs_kw=settings.shortfall_abs_kw,
            shortfall_rel=settings.shortfall_rel,
            shortfall_strikes=settings.shortfall_strikes,
            efficiency=settings.efficiency,
            headroom_interval_h=settings.headroom_interval_minutes / 60,
        )
        self._acks = {s: ACKS_IN.labels(dispatch_pb2.AckStatus.Name(s)) for s in dispatch_pb2.AckStatus.values()}

    # -- site state (group consumer on telemetry + acks) ---------------------------------------

    async def on_site_record(self, item: Consumed) -> None:
        if item.env.HasField("telemetry_batch"):
            table = self.tables.get(item.partition)
            if table is None:
                return
            for record in item.env.telemetry_batch.records:
                if record.telemetry.site_id:
                    table.update(record.telemetry)
            return
        for record in item.env.ack_batch.records:
            self._on_ack(record.ack)

    def _on_ack(self, ack: dispatch_pb2.CommandAck) -> None:
        counter = self._acks.get(ack.status)
        if counter is not None:
            counter.inc()
        ref = self._run_of_command.get(ack.command_id)
        run = self.runs.get(ref) if ref else None
        if run is None:
            return
        latency_ms = run.tracker.on_ack(ack)
        if latency_ms is not None:
            LATENCY.observe(latency_ms / 1000)
        if ack.status == dispatch_pb2.ACK_STATUS_CLAMPED:
            log.info("setpoint_clamped", site_id=ack.site_id, requested_kw=ack.requested_kw, reason=ack.reason)

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        for partition in {tp.partition for tp in partitions}:
            self.tables.pop(partition, None)
            for key in [k for k in self.runs if k[1] == partition]:
                self._forget(key)
        SITES_OWNED.set(sum(len(t) for t in self.tables.values()))

    async def on_assigned(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """New partitions start from the newest samples inside the stale window (aggregation's partials
        say where that window starts), so an activation right after a rebalance sees every site."""
        seeks: dict[TopicPartition, int] = {}
        for tp in partitions:
            self.tables.setdefault(tp.partition, SiteTable(self._settings.stale_after_s))
            last = self._view.latest.get(tp.partition)
            if tp.topic != TELEMETRY.name or last is None:
                continue
            if 0 < last.replay_from_offset <= last.next_offset:
                seeks[tp] = last.replay_from_offset
        return seeks

    # -- plans (every replica reads every plan) -------------------------------------------------

    async def on_plan(self, plan: dispatch_pb2.StepPlan) -> None:
        issued_at_s = plan.issued_at.ToNanoseconds() / 1e9
        if plan.HasField("valid_until") and plan.valid_until.ToNanoseconds() / 1e9 < time.time():
            return  # re-read at start-up (the plans consumer starts near the end): never act on it
        for share in plan.shares:
            table = self.tables.get(share.partition)
            if table is None:
                continue  # another replica owns it
            key = (plan.activation_id, share.partition)
            run = self.runs.get(key)
            if run is None:
                now_s = time.time()
                states = [table.battery_state(r, now_s) for r in table.readings().values()]
                run = PartitionRun(ActivationTracker(plan.activation_id, states, self._config), share.partition, 0.0)
                self.runs[key] = run
                self._bound()
            elif plan.step in run.tracker.steps:
                continue  # a re-delivered plan
            else:
                for step in run.tracker.open_steps():
                    if all(step != s for s, _ in run.pending):
                        run.pending.append((step, issued_at_s))  # it ended when this one was issued
                if run.last_issued_at_s:
                    run.step_period_s = max(0.5, issued_at_s - run.last_issued_at_s)
            commands = run.tracker.plan_step(plan.step, share.share_kw, issued_at_s)
            run.last_step_s = time.monotonic()
            run.last_issued_at_s = issued_at_s
            run.finished = False
            if not commands:
                continue
            for cmd in commands:
                cmd.issued_at.GetCurrentTime()
                if plan.HasField("valid_until"):
                    cmd.valid_until.CopyFrom(plan.valid_until)
                self._run_of_command[cmd.command_id] = key
            batch = dispatch_pb2.DispatchCommandBatch(commands=commands)
            self._producer.publish(COMMANDS, "", batch, partition=share.partition)
            COMMANDS_SENT.inc(len(commands))

    def _covered(self, run: PartitionRun, step: int, end_s: float) -> bool:
        """Every site commanded in ``step`` has reported a sample from the step's last poll cycle or later."""
        table = self.tables.get(run.partition)
        if table is None:
            return True
        record = run.tracker.steps[step]
        for site in record.commanded_kw:
            latest = table.get(site)
            if latest is None or latest.measured_at_s < end_s - self._settings.sample_period_s:
                return False
        return True

    def _close_step(self, run: PartitionRun, step: int, end_s: float, *, final: bool) -> None:
        """Measure ``step`` at ``end_s``: each site's newest reading before it, online if fresh then."""
        table = self.tables.get(run.partition)
        if table is None:
            return
        actual: dict[str, float] = {}
        online: set[str] = set()
        for site in run.tracker.sites:
            reading = table.reading_at(site, end_s)
            if reading is None:
                continue
            actual[site] = reading.telemetry.battery_power_kw
            if reading.telemetry.available and end_s - reading.measured_at_s <= self._settings.stale_after_s:
                online.add(site)
        tracker = run.tracker
        before = tracker.reallocations
        record = tracker.close_step(actual, online, step)
        REALLOCATIONS.inc(tracker.reallocations - before)
        self._report(run, record, final)

    def _report(self, run: PartitionRun, record: StepRecord | None, final: bool) -> None:
        tracker = run.tracker
        caps_up = sum(r.cap_up_kw for r in tracker.sites.values())
        caps_down = sum(r.cap_down_kw for r in tracker.sites.values())
        result = dispatch_pb2.PartitionStep(
            activation_id=tracker.activation_id,
            partition=run.partition,
            owner=self._settings.instance_id,
            cap_up_kw=caps_up,
            cap_down_kw=caps_down,
            acks_total=tracker.acks,
            clamped_total=tracker.clamped,
            reallocations_total=tracker.reallocations,
            commands_total=sum(r.commanded_sites for r in tracker.steps.values()),
            ack_latency_ms=tracker.latencies_ms[run.reported_latencies :],
            reallocated_sites=sorted(s for s, r in tracker.sites.items() if r.reallocated),
            final=final,
        )
        run.reported_latencies = len(tracker.latencies_ms)
        if record is not None and record.delivered_kw is not None:
            result.step = record.step
            result.requested_kw = record.requested_kw
            result.delivered_kw = record.delivered_kw
            result.unallocated_kw = record.unallocated_kw
            result.sites_commanded = record.commanded_sites
            result.sites_acked = len(record.acked_sites)
        result.closed_at.GetCurrentTime()
        self._producer.publish(PARTITION_STEPS, tracker.activation_id, result)

    async def close_loop(self) -> None:
        """Close steps once the telemetry covering their end is in (or at the timeout); end a run's last
        step once no new step has come for ``finalize_after_s``."""
        while True:
            await asyncio.sleep(0.2)
            now_s, now = time.time(), time.monotonic()
            for run in list(self.runs.values()):
                if not run.finished and now - run.last_step_s > self._settings.finalize_after_s:
                    run.finished = True
                    for step in run.tracker.open_steps():
                        if all(step != s for s, _ in run.pending):
                            run.pending.append((step, run.last_issued_at_s + run.step_period_s))
                while run.pending:
                    step, end_s = run.pending[0]
                    timed_out = now_s > end_s + self._settings.close_timeout_s
                    if not (timed_out or self._covered(run, step, end_s)):
                        break
                    run.pending.pop(0)
                    self._close_step(run, step, end_s, final=run.finished and not run.pending)
            await self._producer.settle()

    def _forget(self, key: tuple[str, int]) -> None:
        run = self.runs.pop(key, None)
        if run is not None:
            for command_id in run.tracker.commands:
                self._run_of_command.pop(command_id, None)

    def _bound(self) -> None:
        activations = list(dict.fromkeys(k[0] for k in self.runs))
        for old in activations[: max(0, len(activations) - self._settings.keep_activations)]:
            for key in [k for k in self.runs if k[0] == old]:
                self._forget(key)
