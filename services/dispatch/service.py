"""Dispatch: activations in, one offset command per site out, delivery measured at the meter, tracking
and run state published per step. Every replica reads everything (telemetry, acks, activations, the
lease, the run states); the one holding the lease acts, the others stay hot and take over within one
step (docs/dispatch.md)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from vpp.v1 import dispatch_api_pb2_grpc, dispatch_pb2, market_pb2

from dispatch import control
from dispatch.awards import AwardBook, without_held
from dispatch.control import Run, SiteNow, StepRecord
from dispatch.lease import LeaseState
from dispatch.servicer import SERVICE_NAME, DispatchServicer
from dispatch.settings import DispatchSettings
from dispatch.tracking import TrackingView
from vpp_common.app import ServiceApp
from vpp_common.kafka import Consumed, EventProducer
from vpp_common.logs import get_logger
from vpp_common.partitioning import site_partition
from vpp_common.sites import SiteTable
from vpp_common.topics import ACKS, ACTIVATIONS, AWARDS, COMMANDS, LEASES, RESERVATIONS, RUNS, TELEMETRY, TRACKING

log = get_logger(__name__)

LATENCY = Histogram(
    "vpp_dispatch_activation_to_write_seconds",
    "Activation issued (market) to setpoint written over Modbus (agent ack)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 4),
)
ALLOCATION = Histogram(
    "vpp_dispatch_allocation_seconds",
    "One activation step: site ranges, exact allocation, commands built",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
COMMANDS_SENT = Counter("vpp_dispatch_commands_total", "Commands published")
ACKS_IN = Counter("vpp_dispatch_acks_total", "Acks received", ["status"])
REFUSED = Counter("vpp_dispatch_activations_refused_total", "Activation steps refused (e.g. larger than their award)")
REALLOCATIONS = Counter("vpp_dispatch_reallocations_total", "Sites dropped from an activation and their share moved")
STALE_ACTIVATIONS = Counter("vpp_dispatch_stale_activations_total", "Activation steps ignored as expired")
LATE_STEPS = Counter("vpp_dispatch_late_steps_total", "Steps executed later than late_after_s after issue")
TAKEOVERS = Counter("vpp_dispatch_takeovers_total", "Times this replica became the active dispatcher")
LEADER = Gauge("vpp_dispatch_leader", "1 while this replica holds the dispatch lease")
EPOCH = Gauge("vpp_dispatch_lease_epoch", "Current dispatch lease epoch")
REQUESTED = Gauge("vpp_dispatch_requested_kw", "Portfolio setpoint of the current step")
UNALLOCATED = Gauge("vpp_dispatch_unallocated_kw", "Part of the request no site had headroom for")
TRACKING_ERROR = Gauge("vpp_dispatch_tracking_error_kw", "Requested minus delivered at the last step end")
TRACKING_ABS_ERROR = Histogram(
    "vpp_dispatch_tracking_abs_error_kw", "Absolute tracking error per step", buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 25)
)
DELIVERED = Gauge("vpp_dispatch_delivered_kw", "Portfolio delivery at the last step end (at the meters)")
SITES_KNOWN = Gauge("vpp_dispatch_sites_known", "Sites with telemetry in this replica's table")


def _ts_s(ts: Any) -> float:
    return float(ts.seconds + ts.nanos / 1e9)


class Dispatcher:
    def __init__(self, settings: DispatchSettings, producer: EventProducer) -> None:
        self.settings = settings
        self.cfg = settings.control()
        self._producer = producer
        self.table = SiteTable(settings.stale_after_s, history=24)
        self.lease = LeaseState(settings.instance_id, settings.lease_term_s)
        self.runs: dict[str, Run] = {}
        self.latest: dict[str, market_pb2.Activation] = {}  # newest step seen per activation
        self.issued_at: dict[tuple[str, int], float] = {}  # (activation, step) -> market issue time
        self.tracking = TrackingView(settings.keep_activations)
        self.awards = AwardBook()
        self.catalog = settings.catalog
        self.seq: dict[str, int] = {}  # per-site command sequence in this epoch
        self.last_command_s: dict[str, float] = {}  # per site, when it was last commanded
        self.command_runs: dict[str, tuple[str, ...]] = {}  # command_id -> activations it carried
        self.commands_total: dict[str, int] = {}
        self._lock = asyncio.Lock()  # one step (or takeover) at a time
        self._acks = {s: ACKS_IN.labels(dispatch_pb2.AckStatus.Name(s)) for s in dispatch_pb2.AckStatus.values()}

    # -- inputs every replica reads -------------------------------------------------------------

    async def on_site_record(self, item: Consumed) -> None:
        env = item.env
        if env.HasField("telemetry_batch"):
            for record in env.telemetry_batch.records:
                if record.telemetry.site_id:
                    self.table.update(record.telemetry)
            SITES_KNOWN.set(len(self.table))
            return
        for record in env.ack_batch.records:
            self._on_ack(record.ack)

    def _on_ack(self, ack: dispatch_pb2.CommandAck) -> None:
        latency_ms = None
        issued = self.issued_at.get((ack.activation_id, ack.step))
        if (
            issued is not None
            and ack.HasField("written_at")
            and ack.status
            in (
                dispatch_pb2.ACK_STATUS_APPLIED,
                dispatch_pb2.ACK_STATUS_CLAMPED,
            )
        ):
            latency_ms = _ts_s(ack.written_at) * 1e3 - issued * 1e3
        self.tracking.on_ack(ack, latency_ms)
        if not self.lease.leading:
            return
        counter = self._acks.get(ack.status)
        if counter is not None:
            counter.inc()
        if latency_ms is not None:
            LATENCY.observe(max(0.0, latency_ms) / 1000)
        for activation_id in self.command_runs.pop(ack.command_id, ()):
            run = self.runs.get(activation_id)
            if run is None:
                continue
            before = run.dropped_count()
            total = sum(r.sites[ack.site_id].offset_kw for r in self.runs.values() if ack.site_id in r.sites)
            control.on_ack(run, ack.site_id, ack.status, ack.reason, total, self.cfg)
            if run.dropped_count() > before:
                REALLOCATIONS.inc()
                log.warning("site_dropped", activation_id=activation_id, site_id=ack.site_id, reason=ack.reason)

    async def on_award(self, item: Consumed) -> None:
        self.awards.on_award(item.env.award)

    async def on_reservations(self, item: Consumed) -> None:
        self.awards.on_reservations(item.env.reservation_set)

    async def on_lease(self, item: Consumed) -> None:
        was_leading = self.lease.leading
        self.lease.apply(item.env.dispatch_lease, time.monotonic())
        await self._leadership_changed(was_leading)

    async def on_run_state(self, item: Consumed) -> None:
        state = item.env.activation_run
        self.tracking.on_run(state)
        if self.lease.leading and state.leader_epoch == self.lease.epoch:
            return  # our own, already applied
        self._apply_run_state(state)

    async def on_tracking(self, item: Consumed) -> None:
        sample = item.env.tracking
        self.tracking.on_sample(sample)
        run = self.runs.get(sample.activation_id)
        record = run.history.get(sample.step) if run is not None else None
        if record is not None and not record.closed:  # measured by the holder: a takeover does not redo it
            record.closed = True

    async def on_activation(self, item: Consumed) -> None:
        act = item.env.activation
        if not act.activation_id:
            raise ValueError("activation.activation_id is empty")
        if not math.isfinite(act.setpoint_kw):
            raise ValueError("activation.setpoint_kw is not a finite number")
        self.issued_at[(act.activation_id, act.step)] = _ts_s(act.issued_at)
        if len(self.issued_at) > 50_000:
            self.issued_at.pop(next(iter(self.issued_at)))
        known = self.latest.get(act.activation_id)
        if known is None or act.step > known.step:
            self.latest[act.activation_id] = act
            while len(self.latest) > self.settings.keep_activations:
                self.latest.pop(next(iter(self.latest)))
        if not self.lease.leading:
            return
        if act.HasField("valid_until") and _ts_s(act.valid_until) < time.time():
            STALE_ACTIVATIONS.inc()  # replayed from before this replica started: never act on it
            return
        await self._execute(act)

    # -- acting ---------------------------------------------------------------------------------

    def _fleet(self, now_s: float) -> list[SiteNow]:
        return [
            control.site_now(r.telemetry, r.measured_at_s, self.table.is_online(r, now_s), self.cfg)
            for r in self.table.readings().values()
        ]

    def _fleet_for(self, act: market_pb2.Activation, now_s: float) -> list[SiteNow]:
        """The sites an activation may use: its portfolio's (the whole fleet for an activation of no
        known portfolio), each without the capacity other awards hold there now."""
        fleet = self._fleet(now_s)
        portfolio = self.catalog.portfolios.get(act.portfolio_id)
        if portfolio is not None:
            members = set(portfolio.sites)
            fleet = [s for s in fleet if s.site_id in members]
        active = {r.award_id for r in self.runs.values() if r.award_id and not r.finished}
        return without_held(fleet, self.awards.held_elsewhere(act.award_id, now_s, active))

    async def _refuse(self, act: market_pb2.Activation, run: Run | None, reason: str) -> None:
        """An activation step dispatch must not execute: nothing is commanded for it; the run state says
        why (GetActivationTracking), and so do a metric and a log line. A run already going keeps the
        offsets of its last executed step until the market sends a valid one."""
        REFUSED.inc()
        log.warning(
            "activation_refused", activation_id=act.activation_id, step=act.step, award_id=act.award_id, reason=reason
        )
        state = (
            self._run_state(run, act, False)
            if run is not None
            else dispatch_pb2.ActivationRun(
                activation_id=act.activation_id,
                product=act.product,
                portfolio_id=act.portfolio_id,
                finished=True,
                leader_epoch=self.lease.epoch,
            )
        )
        state.award_id = act.award_id
        state.refused_reason = f"step {act.step}: {reason}"
        await self._producer.settle([self._producer.publish(RUNS, act.activation_id, state)])

    async def _execute(self, act: market_pb2.Activation) -> None:
        """Plan one step, publish its commands and run state, and wait until the broker has them."""
        async with self._lock:
            if not self.lease.leading:
                return
            run = self.runs.get(act.activation_id)
            if run is not None and act.step <= run.step:
                return  # re-delivered, or already executed by the previous holder
            started = time.perf_counter()
            now_s = time.time()
            issued_s = _ts_s(act.issued_at)
            refusal = self.awards.refusal(act, now_s)
            if refusal:
                await self._refuse(act, run, refusal)
                return
            if run is None:
                run = Run(act.activation_id, act.product, act.portfolio_id, award_id=act.award_id)
                self.runs[act.activation_id] = run
                self._bound()
                log.info("activation_started", activation_id=act.activation_id, sites=len(self.table))
            elif run.history:
                last = run.history[max(run.history)]
                run.step_period_s = max(0.5, (issued_s - last.issued_at_s) / max(1, act.step - last.step))
            others = control.totals_by_site(self.runs.values(), exclude=run.activation_id)
            decision = control.plan(
                run, self._fleet_for(act, now_s), others, act.setpoint_kw, now_s, run.step_period_s, self.cfg
            )
            for site_id, reason in decision.dropped:
                REALLOCATIONS.inc()
                log.warning("site_dropped", activation_id=run.activation_id, site_id=site_id, reason=reason)
            if decision.late_acks:
                log.warning(
                    "acks_late_fleet_wide",
                    activation_id=run.activation_id,
                    sites=decision.late_acks,
                    hint="many sites past the ack timeout at once: not dropped; check gateway and broker lag",
                )
            late = now_s - issued_s > self.settings.late_after_s
            run.step, run.setpoint_kw, run.finished = act.step, act.setpoint_kw, False
            totals = dict(others)
            for site_id, offset in decision.offsets_kw.items():
                totals[site_id] = totals.get(site_id, 0.0) + offset
            futures = self._command(run, act, decision.changed, totals, now_s)
            run.history[act.step] = StepRecord(
                step=act.step,
                target_kw=act.setpoint_kw,
                issued_at_s=issued_s,
                offsets_kw={s: o for s, o in decision.offsets_kw.items() if abs(o) > 1e-9},
                totals_kw={s: t for s, t in totals.items() if abs(t) > 1e-9},
                unallocated_kw=decision.unallocated_kw,
                epoch=self.lease.epoch,
                late=late,
                commanded_at_s={s: run.sites[s].commanded_at_s for s in decision.offsets_kw if s in run.sites},
            )
            for old in sorted(run.history)[:-6]:
                if run.history[old].closed:
                    del run.history[old]
            futures.append(self._producer.publish(RUNS, run.activation_id, self._run_state(run, act, late)))
            ALLOCATION.observe(time.perf_counter() - started)
            REQUESTED.set(act.setpoint_kw)
            UNALLOCATED.set(abs(decision.unallocated_kw))
            if late:
                LATE_STEPS.inc()
                log.warning(
                    "step_late", activation_id=run.activation_id, step=act.step, late_s=round(now_s - issued_s, 2)
                )
        await self._producer.settle(futures)  # durable before the step counts as done (and before any commit)

    def _command(
        self, run: Run, act: market_pb2.Activation, changed: set[str], totals: dict[str, float], now_s: float
    ) -> list[asyncio.Future[Any]]:
        """One command per site whose total offset changed (or is due a refresh), batched per partition."""
        due = {
            s
            for s, t in totals.items()
            if abs(t) > 1e-9 and now_s - self.last_command_s.get(s, 0.0) > self.settings.command_refresh_s
        }
        batches: dict[int, dispatch_pb2.DispatchCommandBatch] = {}
        partitions = self.settings.site_partitions
        valid_ns = int((now_s + self.settings.command_valid_s) * 1e9)
        issued_ns = int(now_s * 1e9)
        for site_id in changed | due:
            seq = self.seq.get(site_id, 0) + 1
            self.seq[site_id] = seq
            shares = [
                (r.activation_id, r.sites[site_id].offset_kw)
                for r in self.runs.values()
                if not r.finished and site_id in r.sites and abs(r.sites[site_id].offset_kw) > 1e-9
            ]
            cmd = dispatch_pb2.DispatchCommand(
                command_id=uuid.uuid4().hex,
                site_id=site_id,
                activation_id=run.activation_id,
                step=act.step,
                offset_kw=totals.get(site_id, 0.0),
                leader_epoch=self.lease.epoch,
                seq=seq,
            )
            for activation_id, offset in shares:
                cmd.shares.add(activation_id=activation_id, offset_kw=offset)
            cmd.issued_at.FromNanoseconds(issued_ns)
            cmd.valid_until.FromNanoseconds(valid_ns)
            carried = tuple(a for a, _ in shares) or (run.activation_id,)
            self.command_runs[cmd.command_id] = carried
            for activation_id in carried:
                r = self.runs.get(activation_id)
                if r is not None and site_id in r.sites:
                    r.sites[site_id].commanded_at_s = now_s
                    r.sites[site_id].awaiting_ack = True
                self.commands_total[activation_id] = self.commands_total.get(activation_id, 0) + 1
            self.last_command_s[site_id] = now_s
            batch = batches.get(p := site_partition(site_id, partitions))
            if batch is None:
                batch = batches[p] = dispatch_pb2.DispatchCommandBatch()
            batch.commands.append(cmd)
        while len(self.command_runs) > 500_000:
            self.command_runs.pop(next(iter(self.command_runs)))
        futures = [self._producer.publish(COMMANDS, "", b, partition=p) for p, b in batches.items()]
        COMMANDS_SENT.inc(sum(len(b.commands) for b in batches.values()))
        return futures

    def _run_state(self, run: Run, act: market_pb2.Activation | None, late: bool) -> dispatch_pb2.ActivationRun:
        out = dispatch_pb2.ActivationRun(
            activation_id=run.activation_id,
            product=run.product,
            portfolio_id=run.portfolio_id,
            step=run.step,
            leader_epoch=self.lease.epoch,
            setpoint_kw=run.setpoint_kw,
            finished=run.finished,
            integral_kw=run.integral_kw,
            step_period_s=run.step_period_s,
            commands_total=self.commands_total.get(run.activation_id, 0),
            late=late,
            award_id=run.award_id,
        )
        record = run.history.get(run.step)
        if record is not None:
            out.unallocated_kw = record.unallocated_kw
            out.issued_at.FromNanoseconds(int(record.issued_at_s * 1e9))
        if act is not None and act.HasField("valid_until"):
            out.valid_until.CopyFrom(act.valid_until)
        for site_id, site in run.sites.items():
            if abs(site.offset_kw) > 1e-9 or site.dropped or site.gain != 1.0:
                out.sites.add(
                    site_id=site_id,
                    offset_kw=site.offset_kw,
                    gain=site.gain,
                    dropped=bool(site.dropped),
                    drop_reason=site.dropped,
                    delivered_kw=site.delivered_kw,
                    lag_s=site.lag_s,
                )
        return out

    def _apply_run_state(self, state: dispatch_pb2.ActivationRun) -> None:
        """A standby follows the active replica's runs, so it can continue them on takeover."""
        run = self.runs.get(state.activation_id)
        if run is None:
            run = self.runs[state.activation_id] = Run(
                state.activation_id, state.product, state.portfolio_id, award_id=state.award_id
            )
            self._bound()
        if state.step < run.step:
            return
        issued_s = _ts_s(state.issued_at)
        run.step, run.setpoint_kw, run.finished = state.step, state.setpoint_kw, state.finished
        run.integral_kw, run.step_period_s = state.integral_kw, state.step_period_s or run.step_period_s
        run.max_abs_setpoint_kw = max(run.max_abs_setpoint_kw, abs(state.setpoint_kw))
        listed = set()
        for share in state.sites:
            site = run.site(share.site_id)
            listed.add(share.site_id)
            if abs(site.offset_kw - share.offset_kw) > 1e-9:
                site.commanded_at_s = issued_s
            site.offset_kw, site.gain, site.dropped = share.offset_kw, share.gain or 1.0, share.drop_reason
            site.delivered_kw = share.delivered_kw
            site.lag_s = share.lag_s
            site.awaiting_ack = False
        for site_id, site in run.sites.items():
            if site_id not in listed:
                site.offset_kw = 0.0
        self.commands_total[run.activation_id] = max(
            self.commands_total.get(run.activation_id, 0), state.commands_total
        )
        if state.finished:
            return
        others = control.totals_by_site(self.runs.values(), exclude=run.activation_id)
        offsets = {s.site_id: s.offset_kw for s in state.sites if abs(s.offset_kw) > 1e-9}
        totals = {s: others.get(s, 0.0) + o for s, o in offsets.items()}
        run.history[state.step] = StepRecord(
            state.step,
            state.setpoint_kw,
            issued_s,
            offsets,
            totals,
            state.unallocated_kw,
            state.leader_epoch,
            state.late,
            commanded_at_s={s: run.sites[s].commanded_at_s for s in offsets},
        )
        for old in sorted(run.history)[:-6]:
            del run.history[old]

    async def _leadership_changed(self, was_leading: bool) -> None:
        EPOCH.set(self.lease.epoch)
        LEADER.set(1 if self.lease.leading else 0)
        if was_leading and not self.lease.leading:
            log.warning("lease_lost", epoch=self.lease.epoch, holder=self.lease.holder)
            return
        if self.lease.leading and not was_leading:
            TAKEOVERS.inc()
            self.seq.clear()  # a new epoch: sequence numbers start again
            self.last_command_s.clear()
            log.info(
                "lease_acquired", epoch=self.lease.epoch, runs=sum(1 for r in self.runs.values() if not r.finished)
            )
            # Steps the previous holder did not execute (it died after the market issued them): run the
            # newest one of each live activation now, counted late; the older ones are superseded.
            now_s = time.time()
            for act in list(self.latest.values()):
                if act.HasField("valid_until") and _ts_s(act.valid_until) < now_s:
                    continue
                run = self.runs.get(act.activation_id)
                if run is None or act.step > run.step:
                    await self._execute(act)

    # -- background loops -------------------------------------------------------------------------

    async def lease_loop(self) -> None:
        """Renew while holding; claim once the lease has lapsed. Reading the claim back is what makes
        this replica act (``on_lease``). The first claim waits one term, so the lease consumer has
        replayed the topic's tail and a live holder is not challenged with a stale epoch."""
        await asyncio.sleep(self.settings.lease_term_s)
        while True:
            now = time.monotonic()
            if self.lease.leading:
                self._producer.publish(LEASES, "dispatch", self.lease.renewal())
            elif self.lease.should_claim(now):
                claim = self.lease.claim(now)
                log.info("lease_claim", epoch=claim.epoch, previous=self.lease.holder or "-")
                self._producer.publish(LEASES, "dispatch", claim)
            await asyncio.sleep(self.settings.lease_renew_s)

    async def close_loop(self) -> None:
        """Measure steps at their end once their samples are in; end runs that received no step."""
        while True:
            await asyncio.sleep(0.25)
            if not self.lease.leading:
                continue
            now_s = time.time()
            futures: list[asyncio.Future[Any]] = []
            for run in list(self.runs.values()):
                if run.finished:
                    continue
                steps = sorted(run.history)
                for i, step in enumerate(steps):
                    record = run.history[step]
                    if record.closed:
                        continue
                    end_s = (
                        run.history[steps[i + 1]].issued_at_s
                        if i + 1 < len(steps)
                        else record.issued_at_s + run.step_period_s
                    )
                    if now_s < end_s + 0.2 or not (
                        now_s >= end_s + self.settings.close_timeout_s or self._covered(record, end_s)
                    ):
                        break
                    futures.append(self._close(run, record, end_s))
                last = run.history.get(run.step)
                if last is not None and last.closed and now_s - last.issued_at_s > self.settings.finalize_after_s:
                    run.finished = True
                    for site in run.sites.values():
                        site.offset_kw = 0.0
                    futures.append(self._producer.publish(RUNS, run.activation_id, self._run_state(run, None, False)))
                    log.info("activation_finished", activation_id=run.activation_id, steps=run.step)
            if futures:
                await self._producer.settle(futures)

    def _responses(self, run: Run, record: StepRecord, end_s: float) -> tuple[dict[str, float], dict[str, float]]:
        """Per site whose total offset this step's command changed: the lag seen in the samples after the
        command, and what the site delivered when the command left (where its response started)."""
        previous = run.history.get(record.step - 1)
        if previous is None or not self.cfg.closed_loop:
            return {}, {}
        out: dict[str, float] = {}
        starts: dict[str, float] = {}
        for site_id, total in record.totals_kw.items():
            before = previous.totals_kw.get(site_id, 0.0)
            commanded_at_s = record.commanded_at_s.get(site_id, 0.0)
            if abs(total - before) < 1.0 or commanded_at_s < record.issued_at_s:
                continue
            history = self.table.history(site_id)
            samples = [
                (r.measured_at_s, control.meter_delivery_kw(r.telemetry))
                for r in history
                if commanded_at_s <= r.measured_at_s <= end_s
            ]
            # Start from what the site delivered when the command left, not from its previous command:
            # a site still catching up with the step before would otherwise look slower than it is.
            earlier = [r for r in history if r.measured_at_s <= commanded_at_s]
            if earlier:
                before = control.meter_delivery_kw(earlier[-1].telemetry)
                starts[site_id] = before
            lag_s = control.lag_estimate(samples, commanded_at_s, before, total)
            if lag_s is not None:
                out[site_id] = lag_s
        return out, starts

    def _covered(self, record: StepRecord, end_s: float) -> bool:
        """Every site with an offset in the step has a sample from the step's last poll cycle or later."""
        horizon_s = end_s - self.settings.sample_period_s
        for site_id in record.totals_kw:
            latest = self.table.get(site_id)
            if latest is None or latest.measured_at_s < horizon_s:
                return False
        return True

    def _close(self, run: Run, record: StepRecord, end_s: float) -> asyncio.Future[Any]:
        readings: dict[str, SiteNow] = {}
        for site_id in run.sites:
            reading = self.table.reading_at(site_id, end_s)
            if reading is None:
                continue
            fresh = reading.telemetry.available and end_s - reading.measured_at_s <= self.settings.measure_window_s
            readings[site_id] = control.site_now(reading.telemetry, reading.measured_at_s, fresh, self.cfg)
        responses, starts = self._responses(run, record, end_s)
        before = {s for s, r in run.sites.items() if r.dropped}
        delivered = control.close(
            run, record, readings, end_s, self.cfg, responses, previous=run.history.get(record.step - 1), starts=starts
        )
        for site_id, site in run.sites.items():
            if site.dropped and site_id not in before:
                REALLOCATIONS.inc()
                log.warning("site_dropped", activation_id=run.activation_id, site_id=site_id, reason=site.dropped)
        acked = sum(1 for s in record.offsets_kw if not run.sites[s].awaiting_ack) if record.offsets_kw else 0
        sample = dispatch_pb2.TrackingSample(
            activation_id=run.activation_id,
            step=record.step,
            requested_kw=record.target_kw,
            delivered_kw=delivered,
            error_kw=record.target_kw - delivered,
            sites_acked=acked,
            sites_commanded=len(record.offsets_kw),
            unallocated_kw=record.unallocated_kw,
            sites_dropped=run.dropped_count(),
            leader_epoch=record.epoch,
            late=record.late,
            commanded_kw=sum(record.offsets_kw.values()),
        )
        sample.at.FromNanoseconds(int(record.issued_at_s * 1e9))
        TRACKING_ERROR.set(sample.error_kw)
        TRACKING_ABS_ERROR.observe(abs(sample.error_kw))
        DELIVERED.set(delivered)
        self.tracking.on_sample(sample)
        log.info(
            "step_tracked",
            activation_id=run.activation_id,
            step=record.step,
            requested_kw=round(record.target_kw, 2),
            delivered_kw=round(delivered, 2),
            commanded=len(record.offsets_kw),
            dropped=sample.sites_dropped,
        )
        return self._producer.publish(TRACKING, run.activation_id, sample)

    async def release(self) -> None:
        """Graceful stop: hand the lease over at once instead of letting it lapse."""
        if self.lease.leading:
            await self._producer.settle([self._producer.publish(LEASES, "dispatch", self.lease.release())])

    def _bound(self) -> None:
        while len(self.runs) > self.settings.keep_activations:
            old = next(iter(self.runs))
            self.runs.pop(old)


def build(app: ServiceApp, settings: DispatchSettings) -> DispatchServicer:
    dispatcher = Dispatcher(settings, app.producer)
    servicer = DispatchServicer(dispatcher.tracking)
    app.add_servicer(dispatch_api_pb2_grpc.add_DispatchServiceServicer_to_server, servicer, SERVICE_NAME)
    fast = settings.kafka_fast_fetch_max_wait_ms
    # Every replica keeps every site's state hot (a standby must be able to act within one step): the
    # newest samples in the stale window first (the tail of each partition), then as they come.
    app.add_consumer(
        [TELEMETRY, ACKS],
        dispatcher.on_site_record,
        name="sites",
        group=None,
        start_at="tail",
        tail_records=80,
        fetch_max_wait_ms=fast,
    )
    app.add_consumer(
        [RUNS],
        dispatcher.on_run_state,
        name="runs",
        group=None,
        start_at="tail",
        tail_records=50,
        fetch_max_wait_ms=fast,
    )
    app.add_consumer(
        [TRACKING], dispatcher.on_tracking, name="tracking", group=None, start_at="tail", tail_records=5000
    )
    app.add_consumer(
        [LEASES],
        dispatcher.on_lease,
        name="lease",
        group=None,
        start_at="tail",
        tail_records=50,
        fetch_max_wait_ms=fast,
    )
    # Activations: every replica reads them (the standby needs the newest step of each to take over).
    app.add_consumer(
        [ACTIVATIONS],
        dispatcher.on_activation,
        name="activations",
        group=None,
        start_at="tail",
        tail_records=50,
        fetch_max_wait_ms=fast,
    )
    # Awards and their reservations: small topics every replica reads from the start (which award an
    # activation may draw on, and what other awards hold at each site).
    app.add_consumer([AWARDS], dispatcher.on_award, name="awards", group=None, start_at="earliest")
    app.add_consumer([RESERVATIONS], dispatcher.on_reservations, name="reservations", group=None, start_at="earliest")
    app.add_task(dispatcher.lease_loop, name="lease")
    app.add_task(dispatcher.close_loop, name="close-steps")
    app.on_stop(dispatcher.release)
    return servicer
