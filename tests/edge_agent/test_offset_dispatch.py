"""Offset commands on the counterfactual baseline, and fencing by (leader_epoch, seq).

The baseline is what local control alone would set each cycle; an offset command rides on it, and
telemetry reports it so delivery is measured at the meter as baseline_grid_kw - grid_power_kw. A
MeterDevice (the battery runs the last write by the next read, the meter balances the site) and
the real pymodbus simulator stand in for the site.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from vpp.v1 import dispatch_pb2, gateway_pb2, telemetry_pb2

from edge_agent.gateway_fake import FakeGateway, gateway_server, until
from edge_agent.helpers import T0, FakeDevice, FrozenClock, MeterDevice, command, run, snapshot
from vpp_devsim import BatteryParams, DeviceSimulator, SimulatorConfig
from vpp_devsim.profile import Profile, ProfilePoint
from vpp_edge.bridge import ModbusBridge
from vpp_edge.controllers import (
    Controller,
    CycleContext,
    DispatchController,
    SafetyController,
    SelfConsumptionController,
)
from vpp_edge.coordinator import Coordinator
from vpp_edge.devices import HybridInverter
from vpp_edge.metrics import EdgeMetrics
from vpp_edge.power import Relation
from vpp_edge.uplink import Uplink


def make(device: FakeDevice, *, reserve: float = 20.0, ceiling: float = 90.0) -> tuple[Coordinator, EdgeMetrics]:
    metrics = EdgeMetrics()
    controllers = [SafetyController(reserve, ceiling), DispatchController(), SelfConsumptionController()]
    coord = Coordinator("site-1", device, controllers, metrics, clock=FrozenClock())  # type: ignore[arg-type]
    return coord, metrics


def sample(metrics: EdgeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def delivered_kw(t: telemetry_pb2.Telemetry) -> float:
    """Delivery at the meter against the site's own counterfactual (> 0: less import)."""
    return t.baseline_grid_kw - t.grid_power_kw


# ---------------------------------------------------------------------- the counterfactual


@pytest.mark.timeout(20)
def test_local_control_is_its_own_baseline() -> None:
    async def scenario() -> None:
        device = MeterDevice(pv_kw=0.5, load_kw=2.0)
        coord, _metrics = make(device)
        sent: list[telemetry_pb2.Telemetry] = []
        coord.telemetry_sink = sent.append
        for _ in range(3):  # the first cycle reads an idle battery, the later ones one at its setpoint
            await coord.run_cycle()
            t = sent[-1]
            assert t.baseline_battery_kw == pytest.approx(t.setpoint_kw) == pytest.approx(1.5)
            assert t.baseline_grid_kw == pytest.approx(t.grid_power_kw)
            assert (t.offset_kw, t.leader_epoch, t.command_seq) == (0.0, 0, 0)
        assert sent[-1].grid_power_kw == pytest.approx(0.0)  # self-consumption keeps the meter at 0

    run(scenario())


@pytest.mark.timeout(20)
def test_offset_command_rides_on_baseline_and_telemetry_reports_it() -> None:
    async def scenario() -> None:
        device = MeterDevice(pv_kw=0.5, load_kw=2.0)  # baseline: cover the 1.5 kW net load
        coord, _metrics = make(device)
        sent: list[telemetry_pb2.Telemetry] = []
        coord.telemetry_sink = sent.append
        await coord.run_cycle()
        cmd = command(offset_kw=1.0, leader_epoch=3, seq=7)
        ack = await coord.handle_command(cmd, T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_APPLIED, ack.reason
        assert ack.requested_kw == pytest.approx(1.0)
        assert ack.applied_kw == pytest.approx(1.0)
        assert ack.battery_setpoint_kw == pytest.approx(2.5)
        assert (ack.leader_epoch, ack.seq, ack.activation_id, ack.step) == (3, 7, "act-1", 1)
        assert device.writes[-1] == pytest.approx(2.5)
        await coord.run_cycle()
        t = sent[-1]
        assert t.baseline_battery_kw == pytest.approx(1.5)
        assert t.setpoint_kw == pytest.approx(2.5)
        assert t.offset_kw == pytest.approx(1.0)
        assert (t.leader_epoch, t.command_seq, t.command_id) == (3, 7, "cmd-1")
        assert t.baseline_grid_kw == pytest.approx(0.0)  # what self-consumption would have kept the meter at
        assert delivered_kw(t) == pytest.approx(1.0)

    run(scenario())


@pytest.mark.timeout(20)
def test_house_load_jump_during_offset_is_neither_credited_nor_blamed() -> None:
    async def scenario() -> None:
        device = MeterDevice(pv_kw=0.0, load_kw=1.0)
        coord, _metrics = make(device)
        sent: list[telemetry_pb2.Telemetry] = []
        coord.telemetry_sink = sent.append
        await coord.run_cycle()
        ack = await coord.handle_command(command(offset_kw=1.5, leader_epoch=1, seq=1), T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_APPLIED, ack.reason
        await coord.run_cycle()
        before = sent[-1]
        assert before.baseline_battery_kw == pytest.approx(1.0)
        assert before.battery_power_kw == pytest.approx(2.5)
        assert delivered_kw(before) == pytest.approx(1.5)

        device.load_kw = 2.5  # the kettle goes on
        await coord.run_cycle()  # this cycle reads the battery before it followed (one sample off by the step)
        await coord.run_cycle()
        after = sent[-1]
        assert after.load_power_kw == pytest.approx(2.5)
        assert after.baseline_battery_kw == pytest.approx(2.5)  # local control follows the load...
        assert after.setpoint_kw == pytest.approx(4.0)  # ...and the dispatched battery rides on it
        assert after.offset_kw == pytest.approx(1.5)
        # Local control would have covered the step too: both meters stay where they were.
        assert after.grid_power_kw == pytest.approx(before.grid_power_kw)
        assert after.baseline_grid_kw == pytest.approx(before.baseline_grid_kw) == pytest.approx(0.0)
        assert delivered_kw(after) == pytest.approx(1.5)
        # Against a baseline frozen at the start, the battery's extra 1.5 kW for the kettle would be credited.
        assert after.battery_power_kw - before.baseline_battery_kw == pytest.approx(3.0)

    run(scenario())


@pytest.mark.timeout(20)
def test_absolute_command_keeps_working_and_is_measured_against_the_baseline() -> None:
    async def scenario() -> None:
        device = MeterDevice(pv_kw=0.0, load_kw=1.0)
        coord, _metrics = make(device)
        sent: list[telemetry_pb2.Telemetry] = []
        coord.telemetry_sink = sent.append
        await coord.run_cycle()
        ack = await coord.handle_command(command(2.5), T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_APPLIED
        assert ack.requested_kw == ack.applied_kw == ack.battery_setpoint_kw == pytest.approx(2.5)
        await coord.run_cycle()
        assert sent[-1].offset_kw == 0.0
        assert delivered_kw(sent[-1]) == pytest.approx(1.5)
        device.load_kw = 2.5  # an absolute setpoint does not follow the load: its delivery shrinks
        await coord.run_cycle()
        await coord.run_cycle()
        assert device.writes[-1] == pytest.approx(2.5)
        assert delivered_kw(sent[-1]) == pytest.approx(0.0)

    run(scenario())


def test_dispatch_controller_puts_offset_on_the_baseline() -> None:
    controller = DispatchController()
    controller.activate(command(offset_kw=-0.5))
    (constraint,) = controller.run(CycleContext(snapshot=snapshot(), now=T0, baseline_battery_kw=2.0))
    assert (constraint.relation, constraint.value_kw, constraint.command_id) == (Relation.EQUAL, 1.5, "cmd-1")
    with pytest.raises(ValueError, match="baseline"):
        controller.run(CycleContext(snapshot=snapshot(), now=T0))  # the coordinator always passes one


# ---------------------------------------------------------------------- clamping and validation


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("site", "offset_kw", "battery_kw", "applied_kw", "limit"),
    [
        pytest.param({"load_kw": 3.0}, 4.0, 5.0, 2.0, "max_discharge_kw=5", id="device-max-discharge"),
        pytest.param({"pv_kw": 4.0, "load_kw": 1.0}, -3.0, -5.0, -2.0, "max_charge_kw=5", id="device-max-charge"),
        pytest.param({"load_kw": 1.0, "soc_pct": 15.0}, 2.0, 0.0, 0.0, "soc_reserve_pct=20", id="site-reserve"),
    ],
)
def test_offset_clamped_at_envelope(
    site: dict[str, float], offset_kw: float, battery_kw: float, applied_kw: float, limit: str
) -> None:
    async def scenario() -> None:
        device = MeterDevice(**site)
        coord, metrics = make(device)
        await coord.run_cycle()
        ack = await coord.handle_command(command(offset_kw=offset_kw), T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_CLAMPED
        assert ack.requested_kw == pytest.approx(offset_kw)
        assert ack.applied_kw == pytest.approx(applied_kw)
        assert ack.battery_setpoint_kw == pytest.approx(battery_kw)
        assert device.writes[-1] == pytest.approx(battery_kw)
        assert f"requested offset {offset_kw:.3f} kW" in ack.reason and limit in ack.reason
        assert sample(metrics, "vpp_edge_clamps_total", source="dispatch") == 1

    run(scenario())


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("cmd", "reason"),
    [
        pytest.param(command(offset_kw=math.nan), "offset_kw is not a finite number", id="nan-offset"),
        pytest.param(command(offset_kw=math.inf), "offset_kw is not a finite number", id="inf-offset"),
        pytest.param(command(), "target missing: set offset_kw or battery_setpoint_kw", id="no-target"),
    ],
)
def test_invalid_offset_commands_rejected(cmd: dispatch_pb2.DispatchCommand, reason: str) -> None:
    async def scenario() -> None:
        device = MeterDevice(load_kw=1.0)
        coord, metrics = make(device)
        await coord.run_cycle()
        writes = len(device.writes)
        ack = await coord.handle_command(cmd, T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_REJECTED
        assert ack.reason == reason
        assert len(device.writes) == writes
        assert coord.dispatch is not None and coord.dispatch.active is None
        assert sample(metrics, "vpp_edge_commands_rejected_total") == 1

    run(scenario())


# ---------------------------------------------------------------------- fencing


@pytest.mark.timeout(20)
def test_fencing_duplicates_and_stale_epochs_are_not_written() -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot())
        coord, metrics = make(device)
        sent: list[telemetry_pb2.Telemetry] = []
        coord.telemetry_sink = sent.append
        await coord.run_cycle()

        first = await coord.handle_command(command(offset_kw=1.0, command_id="a", leader_epoch=1, seq=50), T0)
        assert first.status == dispatch_pb2.ACK_STATUS_APPLIED
        writes = len(device.writes)

        again = await coord.handle_command(command(offset_kw=1.0, command_id="a2", leader_epoch=1, seq=50), T0)
        assert again.status == dispatch_pb2.ACK_STATUS_DUPLICATE
        assert again.reason == "seq 50 already applied (epoch 1)"
        assert (again.leader_epoch, again.seq) == (1, 50)
        older = await coord.handle_command(command(offset_kw=-1.0, command_id="a0", leader_epoch=1, seq=49), T0)
        assert older.status == dispatch_pb2.ACK_STATUS_DUPLICATE
        assert len(device.writes) == writes  # nothing written for either

        # A new leader starts its own seq at 1; the fence orders it, not issued_at (a takeover may re-issue).
        takeover = command(
            offset_kw=2.0, command_id="b", leader_epoch=2, seq=1, issued_at=T0 - timedelta(seconds=2)
        )
        ack = await coord.handle_command(takeover, T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_APPLIED, ack.reason
        assert device.writes[-1] == pytest.approx(2.0)
        writes = len(device.writes)

        stale = await coord.handle_command(command(offset_kw=-3.0, command_id="c", leader_epoch=1, seq=51), T0)
        assert stale.status == dispatch_pb2.ACK_STATUS_REJECTED
        assert stale.reason == "stale leader_epoch 1 < 2 (deposed dispatcher)"
        assert len(device.writes) == writes
        assert coord.applied_fence == (2, 1)

        await coord.run_cycle()
        assert device.writes[-1] == pytest.approx(2.0)  # the new leader's offset stays in force
        assert (sent[-1].leader_epoch, sent[-1].command_seq, sent[-1].command_id) == (2, 1, "b")
        assert sample(metrics, "vpp_edge_commands_refused_total", reason="duplicate") == 2
        assert sample(metrics, "vpp_edge_commands_refused_total", reason="stale_epoch") == 1
        assert sample(metrics, "vpp_edge_commands_rejected_total") == 1

    run(scenario())


@pytest.mark.timeout(20)
def test_refused_write_does_not_advance_the_fence() -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot())
        coord, _metrics = make(device)
        await coord.run_cycle()
        device.fail_writes = True
        ack = await coord.handle_command(command(offset_kw=1.0, command_id="a", leader_epoch=4, seq=9), T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_REJECTED and "write failed" in ack.reason
        device.fail_writes = False
        retry = await coord.handle_command(command(offset_kw=1.0, command_id="a-retry", leader_epoch=4, seq=9), T0)
        assert retry.status == dispatch_pb2.ACK_STATUS_APPLIED
        assert coord.applied_fence == (4, 9)

    run(scenario())


@pytest.mark.timeout(20)
def test_unfenced_commands_keep_issued_at_supersede() -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot())
        coord, _metrics = make(device)
        await coord.run_cycle()
        fenced = command(offset_kw=1.0, command_id="f", leader_epoch=5, seq=3)
        assert (await coord.handle_command(fenced, T0)).status == dispatch_pb2.ACK_STATUS_APPLIED
        older = command(-2.0, command_id="u", issued_at=T0 - timedelta(seconds=4))
        ack = await coord.handle_command(older, T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_REJECTED and "superseded by newer command f" in ack.reason
        newer = command(-2.0, command_id="u2", issued_at=T0 + timedelta(seconds=1))
        assert (await coord.handle_command(newer, T0)).status == dispatch_pb2.ACK_STATUS_APPLIED
        assert coord.applied_fence == (5, 3)  # unfenced commands leave the fence alone

    run(scenario())


@pytest.mark.timeout(30)
def test_fence_survives_gateway_reconnect() -> None:
    """The fence lives in the coordinator, so a new stream (or gateway) cannot replay past it."""

    async def scenario() -> None:
        device = FakeDevice(snapshot())
        coord, metrics = make(device)
        coord.clock = lambda: datetime.now(T0.tzinfo)
        await coord.run_cycle()
        uplink = Uplink(
            "site-1", "token", "127.0.0.1:0", metrics, coord.handle_command,
            heartbeat_interval_s=0.2, reconnect_min_s=0.05, reconnect_max_s=0.2,
        )
        coord.ack_sink = uplink.send_ack
        now = coord.clock()

        def acks(gateway: FakeGateway) -> list[dispatch_pb2.CommandAck]:
            return [m.ack for m in gateway.bodies("ack")]

        first = FakeGateway()
        async with gateway_server(first) as (_server, port):
            uplink.target = f"127.0.0.1:{port}"
            task = asyncio.create_task(uplink.run())
            cmd = command(offset_kw=1.0, command_id="a", leader_epoch=2, seq=10, issued_at=now)
            await first.outgoing.put(gateway_pb2.GatewayMessage(seq=1, command=cmd))
            await until(lambda: len(acks(first)) == 1)
            assert acks(first)[0].status == dispatch_pb2.ACK_STATUS_APPLIED
        await until(lambda: not uplink.connected)
        writes = len(device.writes)
        second = FakeGateway()
        async with gateway_server(second, port):
            # the same step re-sent under a new command_id, then a command from the deposed leader
            dup = command(offset_kw=1.0, command_id="a-resent", leader_epoch=2, seq=10, issued_at=now)
            stale = command(offset_kw=-1.0, command_id="z", leader_epoch=1, seq=99, issued_at=now)
            await second.outgoing.put(gateway_pb2.GatewayMessage(seq=1, command=dup))
            await second.outgoing.put(gateway_pb2.GatewayMessage(seq=2, command=stale))
            await until(lambda: len(acks(second)) == 2)
            statuses = [a.status for a in acks(second)]
            assert statuses == [dispatch_pb2.ACK_STATUS_DUPLICATE, dispatch_pb2.ACK_STATUS_REJECTED]
            assert len(device.writes) == writes
            uplink.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(scenario())


# ---------------------------------------------------------------------- against the real simulator


def constant_profile(pv_kw: float, load_kw: float) -> Profile:
    return Profile([ProfilePoint(0.0, pv_kw, load_kw), ProfilePoint(60.0, pv_kw, load_kw)])


@contextlib.asynccontextmanager
async def simulated_site(pv_kw: float, load_kw: float) -> AsyncIterator[tuple[DeviceSimulator, Coordinator]]:
    battery = BatteryParams(capacity_kwh=10.0, max_charge_kw=5.0, max_discharge_kw=5.0, tau_s=0.1)
    config = SimulatorConfig(port=0, battery=battery, soc_pct=60.0, tick_s=0.05, noise_pct=0.0)
    sim = DeviceSimulator(config, profile=constant_profile(pv_kw, load_kw))
    await sim.start()
    metrics = EdgeMetrics()
    device = HybridInverter(ModbusBridge("127.0.0.1", sim.port, 1, metrics, timeout_s=0.5))
    controllers: list[Controller] = [SafetyController(10.0, 90.0), DispatchController(), SelfConsumptionController()]
    coord = Coordinator("site-1", device, controllers, metrics)
    try:
        await coord.async_setup(timeout_s=5)
        yield sim, coord
    finally:
        await device.bridge.close()
        await sim.stop()


async def settled_cycle(coord: Coordinator, sent: list[telemetry_pb2.Telemetry]) -> telemetry_pb2.Telemetry:
    """Cycles until the battery has followed its setpoint (bounded); returns the last sample."""
    for _ in range(10):
        await coord.run_cycle()
        if abs(sent[-1].battery_power_kw - sent[-1].setpoint_kw) < 0.02:
            return sent[-1]
        await asyncio.sleep(0.3)
    raise AssertionError(f"battery never settled: {sent[-1]}")


@pytest.mark.timeout(30)
def test_offset_delivery_at_the_meter_against_simulator() -> None:
    async def scenario() -> None:
        async with simulated_site(pv_kw=0.5, load_kw=2.0) as (sim, coord):
            sent: list[telemetry_pb2.Telemetry] = []
            coord.telemetry_sink = sent.append
            local = await settled_cycle(coord, sent)
            assert local.baseline_battery_kw == pytest.approx(local.setpoint_kw)
            assert local.baseline_grid_kw == pytest.approx(local.grid_power_kw)

            ack = await coord.handle_command(command(offset_kw=1.0, leader_epoch=1, seq=1, issued_at=coord.clock()))
            assert ack.status == dispatch_pb2.ACK_STATUS_APPLIED, ack.reason
            assert ack.applied_kw == pytest.approx(1.0, abs=0.01)
            before = await settled_cycle(coord, sent)
            assert before.baseline_battery_kw == pytest.approx(1.5, abs=0.02)
            assert delivered_kw(before) == pytest.approx(1.0, abs=0.03)

            sim.profile = constant_profile(0.5, 3.0)  # the house load steps up by 1 kW
            await asyncio.sleep(0.2)
            after = await settled_cycle(coord, sent)
            assert after.load_power_kw == pytest.approx(3.0, abs=0.02)
            assert after.baseline_battery_kw == pytest.approx(2.5, abs=0.02)
            assert sim.physics.command_kw == pytest.approx(3.5, abs=0.02)
            assert delivered_kw(after) == pytest.approx(1.0, abs=0.03)

    run(scenario(), timeout_s=25)
