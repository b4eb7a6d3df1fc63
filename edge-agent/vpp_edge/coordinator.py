"""The per-device coordinator: one fixed cycle of read -> controllers -> solve -> write -> publish.

Modelled on Home Assistant's DataUpdateCoordinator (one owner of the fetch, consumers subscribe,
failures become `available=False`) and OpenEMS' CycleWorker (frozen snapshot, controllers in
priority order, one solver, cycle time measured). A new dispatch command does not wait for the
next cycle: it is solved against the latest snapshot and written at once, then acked.

Every cycle also solves the counterfactual: what the site's local control would set without
dispatch (the same snapshot and constraints minus the dispatch controller's, in the same
envelope). It is what an offset command rides on, and what telemetry reports so delivery can be
measured at the meter against the site's own baseline (see `_publish_telemetry`).

Fencing: a command with a leader_epoch is applied only if (leader_epoch, seq) is above the last
one applied, so a re-delivered command or one from a deposed dispatcher is never written. That
state lives here, so it survives gateway reconnects; it is in memory only, so an agent restart
forgets it (a command re-delivered after a restart would apply again until its valid_until).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from vpp.v1 import dispatch_pb2, telemetry_pb2

from vpp_edge.controllers import Controller, CycleContext, DispatchController, SafetyController
from vpp_edge.controllers.dispatch import is_offset, requested_kw
from vpp_edge.devices import DeviceError, DeviceSnapshot, HybridInverter, WriteResult
from vpp_edge.logfmt import kv
from vpp_edge.metrics import EdgeMetrics
from vpp_edge.power import Constraint, DeviceLimits, Solution, solve

log = logging.getLogger(__name__)

TelemetrySink = Callable[[telemetry_pb2.Telemetry], object]
AckSink = Callable[[dispatch_pb2.CommandAck], object]
SnapshotListener = Callable[[DeviceSnapshot | None], None]


class SetupError(Exception):
    """The device never answered a good poll during setup."""


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


@dataclass(frozen=True)
class Plan:
    """One solve: the setpoint to write, the counterfactual without dispatch, and the command in force."""

    solution: Solution
    baseline: Solution  # local control alone: every controller but dispatch, same envelope
    command: dispatch_pb2.DispatchCommand | None = None  # the dispatch command that set `solution`, if any

    @property
    def baseline_battery_kw(self) -> float:
        return self.baseline.setpoint_kw

    def offset_kw(self, battery_kw: float) -> float:
        """Offset that `battery_kw` puts on the baseline: 0 under local control or an absolute command."""
        if self.command is None or not is_offset(self.command):
            return 0.0
        return battery_kw - self.baseline_battery_kw


class Coordinator:
    """Owns the cycle for one device; the uplink only feeds commands in and takes messages out."""

    def __init__(
        self,
        site_id: str,
        device: HybridInverter,
        controllers: Sequence[Controller],
        metrics: EdgeMetrics,
        *,
        poll_interval_s: float = 1.0,
        setpoint_revert_s: int = 30,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.site_id = site_id
        self.device = device
        self.controllers = list(controllers)
        self.metrics = metrics
        self.dispatch = next((c for c in self.controllers if isinstance(c, DispatchController)), None)
        self.safety = next((c for c in self.controllers if isinstance(c, SafetyController)), None)
        if self.dispatch is not None:
            self.dispatch.on_expired = lambda _cmd: self.metrics.commands_expired.inc()
        self.poll_interval_s = poll_interval_s
        self.setpoint_revert_s = setpoint_revert_s
        self.clock = clock
        self.telemetry_sink: TelemetrySink | None = None
        self.ack_sink: AckSink | None = None
        self._listeners: list[SnapshotListener] = []
        self._apply_lock = asyncio.Lock()
        self._failing_controllers: set[str] = set()
        self._unavailable_logged = False
        self.last_solution: Solution | None = None
        self.last_plan: Plan | None = None  # the plan last written
        self.last_setpoint_kw = 0.0
        self.last_offset_kw = 0.0
        self.last_command_id = ""
        # (leader_epoch, seq) of the last fenced command written; in memory only (see module doc).
        self.applied_fence: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------------ subscribers

    def add_listener(self, listener: SnapshotListener) -> Callable[[], None]:
        """Subscribe to each cycle's snapshot (None when unavailable); returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # ------------------------------------------------------------------ setup

    async def async_setup(self, timeout_s: float) -> DeviceSnapshot:
        """Wait for the first good poll, so the agent never starts blind."""
        deadline = time.monotonic() + timeout_s
        last_error = "no attempt"
        while True:
            try:
                snapshot = await self.device.read()
            except DeviceError as exc:
                last_error = str(exc)
            else:
                self.metrics.device_available.set(1)
                return snapshot
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                bridge = self.device.bridge
                raise SetupError(
                    f"no good poll from the SunSpec device at {bridge.host}:{bridge.port} unit {bridge.unit_id} "
                    f"within {timeout_s:g} s (last error: {last_error}). Check VPP_EDGE_MODBUS_HOST, "
                    "VPP_EDGE_MODBUS_PORT and VPP_EDGE_MODBUS_UNIT_ID, that the device is powered and reachable, "
                    "and that it serves SunSpec (marker 'SunS' at register 40000, models 10x, 124, 802, 20x)."
                )
            await asyncio.sleep(min(1.0, remaining))

    # ------------------------------------------------------------------ cycle

    async def run(self) -> None:
        """Fixed-period loop; a cycle that overruns is counted and the schedule re-anchored."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.run_cycle()
            except Exception:  # a bug in one cycle must not stop the site's control loop
                log.exception("cycle_failed")
            next_at += self.poll_interval_s
            delay = next_at - loop.time()
            if delay < 0:
                self.metrics.cycle_overruns.inc()
                next_at = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)

    async def run_cycle(self) -> Solution | None:
        """One cycle; returns the solution written (None if the device was unavailable)."""
        started = time.perf_counter()
        now = self.clock()
        snapshot = await self._read()
        plan: Plan | None = None
        if snapshot is not None:
            async with self._apply_lock:
                plan = self._plan(snapshot, now)
                await self._write(plan)
        for listener in list(self._listeners):
            listener(snapshot)
        self._publish_telemetry(snapshot, plan, now)
        self.metrics.cycle_duration_seconds.observe(time.perf_counter() - started)
        return plan.solution if plan is not None else None

    async def _read(self) -> DeviceSnapshot | None:
        try:
            snapshot = await self.device.read()
        except DeviceError as exc:
            self.metrics.read_failures.inc()
            self.metrics.device_available.set(0)
            if not self._unavailable_logged:
                self._unavailable_logged = True
                log.warning("device_unavailable", extra=kv(error=str(exc)))
            return None
        if self._unavailable_logged:
            self._unavailable_logged = False
            log.info("device_available_again", extra=kv(soc_pct=round(snapshot.soc_pct, 1)))
        self.metrics.device_available.set(1)
        return snapshot

    def limits(self, snapshot: DeviceSnapshot) -> DeviceLimits:
        return DeviceLimits(
            max_charge_kw=snapshot.max_charge_kw,
            max_discharge_kw=snapshot.max_discharge_kw,
            soc_pct=snapshot.soc_pct,
            soc_min_pct=snapshot.soc_min_pct,
            soc_max_pct=snapshot.soc_max_pct,
        )

    def _plan(self, snapshot: DeviceSnapshot, now: datetime) -> Plan:
        """Solve local control alone (the baseline), then everything in priority order.

        Dispatch runs after the others because an offset command needs their result; its
        constraints still go into the solve at its place in the priority order.
        """
        ctx = CycleContext(snapshot=snapshot, now=now)
        limits = self.limits(snapshot)
        by_rank: dict[int, list[Constraint]] = {}
        dispatch_rank = -1
        for rank, controller in enumerate(self.controllers):
            if controller is self.dispatch:
                dispatch_rank = rank
            else:
                by_rank[rank] = self._run_controller(controller, ctx)
        baseline = solve(limits, [c for rank in sorted(by_rank) for c in by_rank[rank]])
        command: dispatch_pb2.DispatchCommand | None = None
        if self.dispatch is not None:
            dispatch_ctx = replace(ctx, baseline_battery_kw=baseline.setpoint_kw)
            by_rank[dispatch_rank] = self._run_controller(self.dispatch, dispatch_ctx)
        solution = solve(limits, [c for rank in sorted(by_rank) for c in by_rank[rank]])
        if self.dispatch is not None and solution.source == self.dispatch.name:
            command = self.dispatch.active
        if solution.clamped:
            self.metrics.clamps.labels(source=solution.source).inc()
        return Plan(solution=solution, baseline=baseline, command=command)

    def _run_controller(self, controller: Controller, ctx: CycleContext) -> list[Constraint]:
        """One controller's constraints; a throwing one is flagged, logged once and skipped."""
        try:
            constraints = controller.run(ctx)
        except Exception as exc:  # a controller bug must not stop the cycle
            self.metrics.controller_errors.labels(controller=controller.name).inc()
            if controller.name not in self._failing_controllers:
                self._failing_controllers.add(controller.name)
                log.error("controller_failed", extra=kv(controller=controller.name, action="skipped", error=repr(exc)))
            return []
        if controller.name in self._failing_controllers:
            self._failing_controllers.discard(controller.name)
            log.info("controller_recovered", extra=kv(controller=controller.name))
        return constraints

    async def _write(self, plan: Plan) -> WriteResult | None:
        solution = plan.solution
        try:
            result = await self.device.write_battery_setpoint(solution.setpoint_kw, self.setpoint_revert_s)
        except DeviceError as exc:
            self.metrics.setpoint_write_failures.inc()
            log.warning("setpoint_write_failed", extra=kv(setpoint_kw=round(solution.setpoint_kw, 3), error=str(exc)))
            return None
        self.last_solution = solution
        self.last_plan = plan
        self.last_setpoint_kw = result.applied_kw
        self.last_offset_kw = plan.offset_kw(result.applied_kw)
        self.last_command_id = solution.command_id
        self.metrics.setpoints_written.inc()
        self.metrics.setpoint_kw.set(result.applied_kw)
        return result

    # ------------------------------------------------------------------ commands

    async def handle_command(
        self, command: dispatch_pb2.DispatchCommand, received_at: datetime | None = None
    ) -> dispatch_pb2.CommandAck:
        """Validate, apply at once against the latest snapshot, write, and ack right after the write.

        For an offset command requested_kw/applied_kw are offsets (applied = battery power written
        minus this solve's baseline); for an absolute one they are battery power. battery_setpoint_kw
        is always the battery power written.
        """
        received_at = received_at or self.clock()
        self.metrics.commands_received.inc()
        ack = dispatch_pb2.CommandAck(
            command_id=command.command_id,
            site_id=self.site_id,
            requested_kw=requested_kw(command),
            received_at=_ts(received_at),
            leader_epoch=command.leader_epoch,
            seq=command.seq,
            activation_id=command.activation_id,
            step=command.step,
        )
        status: int
        reason: str
        async with self._apply_lock:  # the fence and the active command are read and moved together
            status, reason = self._precheck(command, received_at)
            if status == dispatch_pb2.ACK_STATUS_UNSPECIFIED:
                status, reason = await self._apply(command, received_at, ack)
        if status == dispatch_pb2.ACK_STATUS_REJECTED:
            self.metrics.commands_rejected.inc()
        elif status == dispatch_pb2.ACK_STATUS_EXPIRED:
            self.metrics.commands_expired.inc()
        ack.status = dispatch_pb2.AckStatus.ValueType(status)
        ack.reason = reason
        log.info(
            "command_handled",
            extra=kv(
                command_id=command.command_id,
                status=dispatch_pb2.AckStatus.Name(status),
                target=command.WhichOneof("target") or "none",
                requested_kw=round(ack.requested_kw, 3),
                applied_kw=round(ack.applied_kw, 3),
                battery_setpoint_kw=round(ack.battery_setpoint_kw, 3),
                leader_epoch=command.leader_epoch,
                seq=command.seq,
                reason=reason,
            ),
        )
        if self.ack_sink is not None:
            self.ack_sink(ack)
        return ack

    async def _apply(
        self, command: dispatch_pb2.DispatchCommand, received_at: datetime, ack: dispatch_pb2.CommandAck
    ) -> tuple[int, str]:
        """Activate, solve against the latest snapshot and write; fills the ack's written values."""
        assert self.dispatch is not None
        snapshot = self.device.snapshot
        if snapshot is None:
            return dispatch_pb2.ACK_STATUS_REJECTED, "device unavailable"
        self.dispatch.activate(command)
        plan = self._plan(snapshot, self.clock())
        if plan.command is not command:
            # Expired between the precheck and the solve, or the dispatch controller failed: nothing
            # of this command would be written; the next cycle runs local control.
            self.dispatch.clear()
            return dispatch_pb2.ACK_STATUS_REJECTED, "command not in force after solving (expired or controller failed)"
        result = await self._write(plan)
        if result is None:
            self.dispatch.clear()
            return dispatch_pb2.ACK_STATUS_REJECTED, "modbus write failed"
        if command.leader_epoch:
            self.applied_fence = (command.leader_epoch, command.seq)
        ack.battery_setpoint_kw = result.applied_kw
        ack.applied_kw = plan.offset_kw(result.applied_kw) if is_offset(command) else result.applied_kw
        ack.written_at.CopyFrom(_ts(result.written_at))
        ack.modbus_write_ms = result.write_ms
        self.metrics.command_latency_seconds.observe(max(0.0, (result.written_at - received_at).total_seconds()))
        solution = plan.solution
        if not solution.clamped:
            return dispatch_pb2.ACK_STATUS_APPLIED, ""
        if is_offset(command):
            reason = (
                f"requested offset {command.offset_kw:.3f} kW on baseline {plan.baseline_battery_kw:.3f} kW, "
                f"limited to offset {plan.offset_kw(solution.setpoint_kw):.3f} kW "
                f"(battery {solution.setpoint_kw:.3f} kW) by {solution.reason}"
            )
        else:
            reason = (
                f"requested {command.battery_setpoint_kw:.3f} kW, limited to "
                f"{solution.setpoint_kw:.3f} kW by {solution.reason}"
            )
        return dispatch_pb2.ACK_STATUS_CLAMPED, reason

    def _precheck(self, command: dispatch_pb2.DispatchCommand, now: datetime) -> tuple[int, str]:
        """Reasons to refuse before touching the device; UNSPECIFIED means go ahead."""
        if self.dispatch is None:
            return dispatch_pb2.ACK_STATUS_REJECTED, "no dispatch controller configured"
        if command.site_id and command.site_id != self.site_id:
            return dispatch_pb2.ACK_STATUS_REJECTED, f"site_id {command.site_id!r} is not this site"
        refused = self._fence_refusal(command)
        if refused is not None:
            return refused
        target = command.WhichOneof("target")
        if target is None:
            return dispatch_pb2.ACK_STATUS_REJECTED, "target missing: set offset_kw or battery_setpoint_kw"
        if not math.isfinite(getattr(command, target)):
            return dispatch_pb2.ACK_STATUS_REJECTED, f"{target} is not a finite number"
        if not command.HasField("valid_until"):
            return dispatch_pb2.ACK_STATUS_REJECTED, "valid_until missing"
        if not self.dispatch.is_valid(command, now):
            return dispatch_pb2.ACK_STATUS_EXPIRED, "arrived after valid_until"
        active = self.dispatch.active
        if (
            command.leader_epoch == 0  # unfenced: the newest issued_at wins; fenced ones are ordered by the fence
            and active is not None
            and command.HasField("issued_at")
            and active.HasField("issued_at")
            and command.issued_at.ToDatetime() < active.issued_at.ToDatetime()
            and self.dispatch.is_valid(active, now)
        ):
            return dispatch_pb2.ACK_STATUS_REJECTED, f"superseded by newer command {active.command_id}"
        return dispatch_pb2.ACK_STATUS_UNSPECIFIED, ""

    def _fence_refusal(self, command: dispatch_pb2.DispatchCommand) -> tuple[int, str] | None:
        """DUPLICATE or REJECTED (counted and logged) if (leader_epoch, seq) is not above the last applied."""
        epoch, seq = command.leader_epoch, command.seq
        if epoch == 0 or (epoch, seq) > self.applied_fence:
            return None
        last_epoch, last_seq = self.applied_fence
        if epoch == last_epoch:
            label, status = "duplicate", dispatch_pb2.ACK_STATUS_DUPLICATE
            reason = f"seq {seq} already applied (epoch {epoch})"
        else:
            label, status = "stale_epoch", dispatch_pb2.ACK_STATUS_REJECTED
            reason = f"stale leader_epoch {epoch} < {last_epoch} (deposed dispatcher)"
        self.metrics.commands_refused.labels(reason=label).inc()
        log.log(
            logging.INFO if label == "duplicate" else logging.WARNING,
            "command_refused",
            extra=kv(
                command_id=command.command_id,
                refusal=label,
                leader_epoch=epoch,
                seq=seq,
                applied_epoch=last_epoch,
                applied_seq=last_seq,
            ),
        )
        return status, reason

    # ------------------------------------------------------------------ telemetry

    def _publish_telemetry(self, snapshot: DeviceSnapshot | None, plan: Plan | None, now: datetime) -> None:
        """One sample per cycle, with this cycle's counterfactual.

        baseline_battery_kw is what local control alone would set this cycle. baseline_grid_kw is
        the meter reading the site would have had with it: the meter sees the measured battery, so
        swap it for the baseline, grid + battery - baseline_battery (grid > 0 import, battery > 0
        discharge). Delivery at the meter is then baseline_grid_kw - grid_power_kw; a house load
        step moves grid and baseline alike, so it is neither credited nor blamed. The formula
        assumes the battery has caught up with its setpoint: in the cycle that first sees a load
        step the battery still runs the previous setpoint, so that one sample is off by the step.
        Under local control the site is its own counterfactual: baseline_grid_kw = grid_power_kw.
        offset_kw, leader_epoch and command_seq belong to the setpoint last written (like
        setpoint_kw and command_id); offset_kw is that setpoint minus its baseline, 0 under local
        control or an absolute command.
        """
        if self.telemetry_sink is None:
            return
        msg = telemetry_pb2.Telemetry(site_id=self.site_id, measured_at=_ts(now), available=snapshot is not None)
        if snapshot is not None:
            reserve, ceiling = snapshot.soc_min_pct, snapshot.soc_max_pct
            if self.safety is not None:
                reserve, ceiling = self.safety.window(snapshot.soc_min_pct, snapshot.soc_max_pct)
            msg.measured_at.CopyFrom(_ts(snapshot.measured_at))
            msg.pv_power_kw = snapshot.pv_power_kw
            msg.load_power_kw = snapshot.load_power_kw
            msg.battery_power_kw = snapshot.battery_power_kw
            msg.grid_power_kw = snapshot.grid_power_kw
            msg.soc_pct = snapshot.soc_pct
            msg.battery_capacity_kwh = snapshot.capacity_kwh
            msg.max_charge_kw = snapshot.max_charge_kw
            msg.max_discharge_kw = snapshot.max_discharge_kw
            msg.soc_min_pct = reserve
            msg.soc_max_pct = ceiling
            msg.setpoint_kw = self.last_setpoint_kw
            msg.command_id = self.last_command_id
            msg.modbus_rtt_ms = snapshot.read_rtt_ms
            if plan is not None:
                msg.baseline_battery_kw = plan.baseline_battery_kw
                msg.baseline_grid_kw = snapshot.grid_power_kw
                if plan.command is not None:
                    msg.baseline_grid_kw += snapshot.battery_power_kw - plan.baseline_battery_kw
            written = self.last_plan.command if self.last_plan is not None else None
            msg.offset_kw = self.last_offset_kw
            if written is not None:
                msg.leader_epoch = written.leader_epoch
                msg.command_seq = written.seq
        self.telemetry_sink(msg)
