"""The per-device coordinator: one fixed cycle of read -> controllers -> solve -> write -> publish.

Modelled on Home Assistant's DataUpdateCoordinator (one owner of the fetch, consumers subscribe,
failures become `available=False`) and OpenEMS' CycleWorker (frozen snapshot, controllers in
priority order, one solver, cycle time measured). A new dispatch command does not wait for the
next cycle: it is solved against the latest snapshot and written at once, then acked.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from vpp.v1 import dispatch_pb2, telemetry_pb2

from vpp_edge.controllers import Controller, CycleContext, DispatchController, SafetyController
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
        self.last_setpoint_kw = 0.0
        self.last_command_id = ""

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
        solution: Solution | None = None
        if snapshot is not None:
            async with self._apply_lock:
                solution = self._solve(snapshot, now)
                await self._write(solution)
        for listener in list(self._listeners):
            listener(snapshot)
        self._publish_telemetry(snapshot, now)
        self.metrics.cycle_duration_seconds.observe(time.perf_counter() - started)
        return solution

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

    def _solve(self, snapshot: DeviceSnapshot, now: datetime) -> Solution:
        """Run controllers in priority order (a throwing one is flagged and skipped), then solve."""
        ctx = CycleContext(snapshot=snapshot, now=now)
        constraints: list[Constraint] = []
        for controller in self.controllers:
            try:
                constraints.extend(controller.run(ctx))
            except Exception as exc:  # a controller bug must not stop the cycle
                self.metrics.controller_errors.labels(controller=controller.name).inc()
                if controller.name not in self._failing_controllers:
                    self._failing_controllers.add(controller.name)
                    log.error(
                        "controller_failed", extra=kv(controller=controller.name, action="skipped", error=repr(exc))
                    )
                continue
            if controller.name in self._failing_controllers:
                self._failing_controllers.discard(controller.name)
                log.info("controller_recovered", extra=kv(controller=controller.name))
        solution = solve(self.limits(snapshot), constraints)
        if solution.clamped:
            self.metrics.clamps.labels(source=solution.source).inc()
        return solution

    async def _write(self, solution: Solution) -> WriteResult | None:
        try:
            result = await self.device.write_battery_setpoint(solution.setpoint_kw, self.setpoint_revert_s)
        except DeviceError as exc:
            self.metrics.setpoint_write_failures.inc()
            log.warning("setpoint_write_failed", extra=kv(setpoint_kw=round(solution.setpoint_kw, 3), error=str(exc)))
            return None
        self.last_solution = solution
        self.last_setpoint_kw = result.applied_kw
        self.last_command_id = solution.command_id
        self.metrics.setpoints_written.inc()
        self.metrics.setpoint_kw.set(result.applied_kw)
        return result

    # ------------------------------------------------------------------ commands

    async def handle_command(
        self, command: dispatch_pb2.DispatchCommand, received_at: datetime | None = None
    ) -> dispatch_pb2.CommandAck:
        """Validate, apply at once against the latest snapshot, write, and ack right after the write."""
        received_at = received_at or self.clock()
        self.metrics.commands_received.inc()
        ack = dispatch_pb2.CommandAck(
            command_id=command.command_id,
            site_id=self.site_id,
            requested_kw=command.battery_setpoint_kw,
            received_at=_ts(received_at),
        )
        status: int
        reason: str
        status, reason = self._precheck(command, received_at)
        if status == dispatch_pb2.ACK_STATUS_UNSPECIFIED:
            async with self._apply_lock:
                snapshot = self.device.snapshot
                if snapshot is None:
                    status, reason = dispatch_pb2.ACK_STATUS_REJECTED, "device unavailable"
                else:
                    assert self.dispatch is not None
                    self.dispatch.activate(command)
                    solution = self._solve(snapshot, self.clock())
                    result = await self._write(solution)
                    if result is None:
                        self.dispatch.clear()
                        status, reason = dispatch_pb2.ACK_STATUS_REJECTED, "modbus write failed"
                    else:
                        ack.applied_kw = result.applied_kw
                        ack.written_at.CopyFrom(_ts(result.written_at))
                        ack.modbus_write_ms = result.write_ms
                        self.metrics.command_latency_seconds.observe(
                            max(0.0, (result.written_at - received_at).total_seconds())
                        )
                        if solution.clamped:
                            status = dispatch_pb2.ACK_STATUS_CLAMPED
                            reason = (
                                f"requested {command.battery_setpoint_kw:.3f} kW, limited to "
                                f"{solution.setpoint_kw:.3f} kW by {solution.reason}"
                            )
                        else:
                            status = dispatch_pb2.ACK_STATUS_APPLIED
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
                requested_kw=round(command.battery_setpoint_kw, 3),
                applied_kw=round(ack.applied_kw, 3),
                reason=reason,
            ),
        )
        if self.ack_sink is not None:
            self.ack_sink(ack)
        return ack

    def _precheck(self, command: dispatch_pb2.DispatchCommand, now: datetime) -> tuple[int, str]:
        """Reasons to refuse before touching the device; UNSPECIFIED means go ahead."""
        if self.dispatch is None:
            return dispatch_pb2.ACK_STATUS_REJECTED, "no dispatch controller configured"
        if command.site_id and command.site_id != self.site_id:
            return dispatch_pb2.ACK_STATUS_REJECTED, f"site_id {command.site_id!r} is not this site"
        if not math.isfinite(command.battery_setpoint_kw):
            return dispatch_pb2.ACK_STATUS_REJECTED, "battery_setpoint_kw is not a finite number"
        if not command.HasField("valid_until"):
            return dispatch_pb2.ACK_STATUS_REJECTED, "valid_until missing"
        if not self.dispatch.is_valid(command, now):
            return dispatch_pb2.ACK_STATUS_EXPIRED, "arrived after valid_until"
        active = self.dispatch.active
        if (
            active is not None
            and command.HasField("issued_at")
            and active.HasField("issued_at")
            and command.issued_at.ToDatetime() < active.issued_at.ToDatetime()
            and self.dispatch.is_valid(active, now)
        ):
            return dispatch_pb2.ACK_STATUS_REJECTED, f"superseded by newer command {active.command_id}"
        return dispatch_pb2.ACK_STATUS_UNSPECIFIED, ""

    # ------------------------------------------------------------------ telemetry

    def _publish_telemetry(self, snapshot: DeviceSnapshot | None, now: datetime) -> None:
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
        self.telemetry_sink(msg)
