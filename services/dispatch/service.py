"""Dispatch service: activations in, one command per site out, delivery watched through telemetry
and acks, tracking published per step."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, Field
from vpp.v1 import dispatch_api_pb2, dispatch_api_pb2_grpc, dispatch_pb2, envelope_pb2

from dispatch.settings import DispatchSettings
from dispatch.tracker import ActivationTracker, StepRecord, TrackerConfig
from vpp_common.app import ServiceApp
from vpp_common.grpc_server import validated
from vpp_common.kafka import EventProducer
from vpp_common.logs import get_logger
from vpp_common.sites import SiteTable
from vpp_common.topics import ACKS, ACTIVATIONS, COMMANDS, TELEMETRY, TRACKING

log = get_logger(__name__)

TRACKING_ERROR = Gauge("vpp_dispatch_tracking_error_kw", "Requested minus delivered at the last step end")
TRACKING_ABS_ERROR = Histogram(
    "vpp_dispatch_tracking_abs_error_kw", "Absolute tracking error per step", buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 25)
)
REQUESTED = Gauge("vpp_dispatch_requested_kw", "Portfolio setpoint of the current step")
DELIVERED = Gauge("vpp_dispatch_delivered_kw", "Portfolio delivery at the last step end")
LATENCY = Histogram(
    "vpp_dispatch_activation_to_write_seconds",
    "Activation issued (market) to setpoint written over Modbus (agent ack)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 4),
)
COMMANDS_SENT = Counter("vpp_dispatch_commands_total", "Commands published")
ACKS_IN = Counter("vpp_dispatch_acks_total", "Acks received", ["status"])
REALLOCATIONS = Counter("vpp_dispatch_reallocations_total", "Sites whose headroom was cut after falling short")
STALE_ACTIVATIONS = Counter("vpp_dispatch_stale_activations_total", "Activation steps ignored as expired")
UNALLOCATED = Gauge("vpp_dispatch_unallocated_kw", "Part of the request no site could take")


class TrackingRequest(BaseModel):
    activation_id: str = Field(min_length=1, max_length=128)
    last_n: int = Field(ge=0, le=100_000)


class Dispatcher(dispatch_api_pb2_grpc.DispatchServiceServicer):
    def __init__(self, settings: DispatchSettings, producer: EventProducer) -> None:
        self._settings = settings
        self._producer = producer
        self._lock = threading.Lock()
        self.table = SiteTable(settings.stale_after_s)
        self.runs: OrderedDict[str, ActivationTracker] = OrderedDict()  # newest last, bounded
        self._run_of_command: dict[str, str] = {}
        self._current: ActivationTracker | None = None
        self._last_step_s = 0.0
        self._config = TrackerConfig(
            shortfall_abs_kw=settings.shortfall_abs_kw,
            shortfall_rel=settings.shortfall_rel,
            shortfall_strikes=settings.shortfall_strikes,
            efficiency=settings.efficiency,
            headroom_interval_h=settings.headroom_interval_minutes / 60,
        )

    # -- Kafka handlers (consumer threads) ------------------------------------------------------
    def on_site_event(self, env: envelope_pb2.Envelope, record: Any) -> None:
        if env.HasField("telemetry"):
            self.table.update(env.telemetry)
            return
        ack = env.ack
        status = dispatch_pb2.AckStatus.Name(ack.status)
        ACKS_IN.labels(status).inc()
        with self._lock:
            run = self.runs.get(self._run_of_command.get(ack.command_id, ""))
            latency_ms = run.on_ack(ack) if run else None
        if latency_ms is not None:
            LATENCY.observe(latency_ms / 1000)
        if ack.status == dispatch_pb2.ACK_STATUS_CLAMPED:
            log.info("setpoint_clamped", site_id=ack.site_id, requested_kw=ack.requested_kw, reason=ack.reason)

    def on_activation(self, env: envelope_pb2.Envelope, record: Any) -> None:
        act = env.activation
        if not act.activation_id:
            raise ValueError("activation.activation_id is empty")
        issued_at_s = act.issued_at.ToNanoseconds() / 1e9
        if act.HasField("valid_until") and act.valid_until.ToNanoseconds() / 1e9 < time.time():
            STALE_ACTIVATIONS.inc()  # replayed from before this replica started: never act on it
            return
        with self._lock:
            run = self.runs.get(act.activation_id)
            if run is None:
                self._finish_current()
                now_s = time.time()
                states = [self.table.battery_state(r, now_s) for r in self.table.readings().values()]
                run = ActivationTracker(act.activation_id, states, self._config)
                self.runs[act.activation_id] = run
                while len(self.runs) > self._settings.keep_activations:
                    _, old = self.runs.popitem(last=False)
                    for command_id in old.commands:
                        self._run_of_command.pop(command_id, None)
                self._current = run
                log.info("activation_started", activation_id=act.activation_id, sites=len(run.sites))
            elif act.step in run.steps:
                return  # a re-delivered step
            else:
                self._close_step(run)
            commands = run.plan_step(act.step, act.setpoint_kw, issued_at_s)
            self._run_of_command.update((c.command_id, run.activation_id) for c in commands)
            self._last_step_s = time.monotonic()
            record_ = run.steps[act.step]
        REQUESTED.set(act.setpoint_kw)
        UNALLOCATED.set(record_.unallocated_kw)
        for cmd in commands:
            cmd.issued_at.GetCurrentTime()
            cmd.valid_until.CopyFrom(act.valid_until)
            self._producer.publish(COMMANDS, cmd.site_id, cmd, site_id=cmd.site_id, message_id=cmd.command_id)
        COMMANDS_SENT.inc(len(commands))

    def _close_step(self, run: ActivationTracker) -> None:
        now_s = time.time()
        readings = self.table.readings()
        actual = {site: r.telemetry.battery_power_kw for site, r in readings.items()}
        online = {site for site, r in readings.items() if self.table.is_online(r, now_s)}
        before = run.reallocations
        record = run.close_step(actual, online)
        REALLOCATIONS.inc(run.reallocations - before)
        if record is not None:
            self._publish_tracking(run, record)

    def _publish_tracking(self, run: ActivationTracker, record: StepRecord) -> None:
        assert record.delivered_kw is not None
        error_kw = record.requested_kw - record.delivered_kw
        TRACKING_ERROR.set(error_kw)
        TRACKING_ABS_ERROR.observe(abs(error_kw))
        DELIVERED.set(record.delivered_kw)
        sample = dispatch_pb2.TrackingSample(
            activation_id=run.activation_id,
            step=record.step,
            requested_kw=record.requested_kw,
            delivered_kw=record.delivered_kw,
            error_kw=error_kw,
            sites_acked=len(record.acked_sites),
            sites_commanded=record.commanded_sites,
        )
        sample.at.GetCurrentTime()
        self._producer.publish(TRACKING, run.activation_id, sample)
        log.info(
            "step_tracked",
            activation_id=run.activation_id,
            step=record.step,
            requested_kw=round(record.requested_kw, 2),
            delivered_kw=round(record.delivered_kw, 2),
            acked=len(record.acked_sites),
        )

    def _finish_current(self) -> None:
        if self._current is not None:
            self._close_step(self._current)
            log.info(
                "activation_finished",
                activation_id=self._current.activation_id,
                mae_kw=round(self._current.mean_abs_error_kw(), 3),
                median_latency_ms=round(self._current.median_latency_ms(), 1),
            )
            self._current = None

    async def finalize_loop(self) -> None:
        """Close the last step of an activation once no new step has come for a while."""
        while True:
            await asyncio.sleep(0.5)
            with self._lock:
                idle_s = time.monotonic() - self._last_step_s
                if self._current is not None and idle_s > self._settings.finalize_after_s:
                    self._finish_current()

    # -- gRPC -----------------------------------------------------------------------------------
    async def GetActivationTracking(
        self, request: dispatch_api_pb2.GetActivationTrackingRequest, context: grpc.aio.ServicerContext
    ) -> dispatch_api_pb2.GetActivationTrackingResponse:
        req = await validated(
            TrackingRequest, {"activation_id": request.activation_id, "last_n": request.last_n}, context
        )
        with self._lock:
            run = self.runs.get(req.activation_id)
            if run is None:
                resp = None
            else:
                resp = dispatch_api_pb2.GetActivationTrackingResponse(
                    activation_id=run.activation_id,
                    mean_abs_error_kw=run.mean_abs_error_kw(),
                    median_activation_to_write_ms=run.median_latency_ms(),
                    acks_received=run.acks,
                    commands_sent=sum(r.commanded_sites for r in run.steps.values()),
                    acks_clamped=run.clamped,
                    reallocations=run.reallocations,
                    reallocated_sites=sorted(s for s, r in run.sites.items() if r.reallocated),
                )
                records = sorted(run.steps.values(), key=lambda r: r.step)
                if req.last_n:
                    records = records[-req.last_n :]
                for r in records:
                    s = resp.samples.add(
                        activation_id=run.activation_id,
                        step=r.step,
                        requested_kw=r.requested_kw,
                        delivered_kw=r.delivered_kw if r.delivered_kw is not None else float("nan"),
                        error_kw=(r.requested_kw - r.delivered_kw) if r.delivered_kw is not None else float("nan"),
                        sites_acked=len(r.acked_sites),
                        sites_commanded=r.commanded_sites,
                    )
                    s.at.FromNanoseconds(int(r.issued_at_s * 1e9))
        if resp is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"activation_id: unknown activation {req.activation_id!r}")
        assert resp is not None
        return resp


def build(app: ServiceApp, settings: DispatchSettings) -> Dispatcher:
    dispatcher = Dispatcher(settings, app.producer)
    app.add_servicer(dispatch_api_pb2_grpc.add_DispatchServiceServicer_to_server, dispatcher, "vpp.v1.DispatchService")
    # Site state and acks: every replica keeps the full view (its own group).
    app.add_consumer(
        {TELEMETRY: "telemetry", ACKS: "ack"}, dispatcher.on_site_event, group_id=f"dispatch-{settings.instance_id}"
    )
    # Activations: one shared group, so exactly one replica dispatches each activation.
    # Read from the start so a step produced during the group join is not missed; expired ones are skipped.
    app.add_consumer(
        {ACTIVATIONS: "activation"},
        dispatcher.on_activation,
        group_id="dispatch",
        from_beginning=True,
        fetch_max_wait_ms=settings.kafka_fast_fetch_max_wait_ms,
    )
    app.add_task(dispatcher.finalize_loop)
    return dispatcher
