"""Controller + solver table tests in the OpenEMS style: inputs per cycle, check the setpoint
written. A fake device and a frozen clock stand in for Modbus and time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from vpp.v1 import dispatch_pb2, telemetry_pb2

from edge_agent.helpers import T0, FakeDevice, FrozenClock, command, run, snapshot
from vpp_edge.controllers import (
    CycleContext,
    DispatchController,
    SafetyController,
    SelfConsumptionController,
)
from vpp_edge.coordinator import Coordinator
from vpp_edge.metrics import EdgeMetrics
from vpp_edge.power import Constraint


class BrokenController:
    name = "broken"

    def run(self, ctx: CycleContext) -> list[Constraint]:
        raise RuntimeError("bug in a controller")


def make(
    device: FakeDevice, *, reserve: float = 20.0, ceiling: float = 90.0, extra: list[object] | None = None
) -> tuple[Coordinator, FrozenClock, EdgeMetrics]:
    clock = FrozenClock()
    metrics = EdgeMetrics()
    controllers = [
        *(extra or []),
        SafetyController(reserve, ceiling),
        DispatchController(),
        SelfConsumptionController(),
    ]
    coord = Coordinator("site-1", device, controllers, metrics, clock=clock)  # type: ignore[arg-type]
    return coord, clock, metrics


def sample(metrics: EdgeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("snap", "cmd_kw", "reserve", "expected_kw"),
    [
        pytest.param({"pv_power_kw": 4.0, "load_power_kw": 1.0}, None, 20.0, -3.0, id="local-charge-from-surplus"),
        pytest.param({"pv_power_kw": 0.0, "load_power_kw": 2.0}, None, 20.0, 2.0, id="local-cover-load"),
        pytest.param({"pv_power_kw": 0.0, "load_power_kw": 8.0}, None, 20.0, 5.0, id="local-capped-by-device"),
        pytest.param({"pv_power_kw": 9.0, "load_power_kw": 0.5}, None, 20.0, -5.0, id="local-charge-capped"),
        pytest.param(
            {"pv_power_kw": 0.0, "load_power_kw": 2.0, "soc_pct": 15.0}, None, 20.0, 0.0, id="local-at-reserve"
        ),
        pytest.param({"pv_power_kw": 4.0, "load_power_kw": 1.0}, 3.0, 20.0, 3.0, id="dispatch-overrides-local"),
        pytest.param({"soc_pct": 19.0}, 3.0, 20.0, 0.0, id="dispatch-blocked-by-site-reserve"),
        pytest.param({"soc_pct": 19.0}, -2.0, 20.0, -2.0, id="dispatch-charge-below-reserve-ok"),
        pytest.param({"soc_pct": 92.0}, -4.0, 20.0, 0.0, id="dispatch-blocked-by-ceiling"),
        pytest.param({"soc_pct": 4.0, "soc_min_pct": 5.0}, 1.0, 3.0, 0.0, id="device-floor-tighter-than-config"),
        pytest.param({"max_discharge_kw": 2.5}, 4.0, 20.0, 2.5, id="dispatch-capped-by-device"),
    ],
)
def test_cycle_setpoint_table(snap: dict[str, float], cmd_kw: float | None, reserve: float, expected_kw: float) -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot(**snap))
        coord, _clock, _metrics = make(device, reserve=reserve)
        await coord.run_cycle()
        if cmd_kw is not None:
            await coord.handle_command(command(cmd_kw), T0)
        await coord.run_cycle()
        assert device.writes[-1] == pytest.approx(expected_kw)

    run(scenario())


@pytest.mark.timeout(20)
def test_command_expires_and_site_returns_to_local_control() -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot(pv_power_kw=0.0, load_power_kw=1.5))
        coord, clock, metrics = make(device)
        await coord.run_cycle()
        assert device.writes[-1] == pytest.approx(1.5)
        await coord.handle_command(command(-4.0, valid_for_s=10), T0)
        assert device.writes[-1] == pytest.approx(-4.0)
        for _ in range(9):
            clock.advance(1)
            await coord.run_cycle()
            assert device.writes[-1] == pytest.approx(-4.0)
        clock.advance(1.5)
        await coord.run_cycle()
        assert device.writes[-1] == pytest.approx(1.5)
        assert sample(metrics, "vpp_edge_commands_expired_total") == 1

    run(scenario())


@pytest.mark.timeout(20)
def test_throwing_controller_is_flagged_and_skipped() -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot(pv_power_kw=0.0, load_power_kw=1.0))
        coord, _clock, metrics = make(device, extra=[BrokenController()])
        await coord.run_cycle()
        await coord.run_cycle()
        assert device.writes == [pytest.approx(1.0), pytest.approx(1.0)]
        assert sample(metrics, "vpp_edge_controller_errors_total", controller="broken") == 2

    run(scenario())


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("cmd", "status", "applied_kw", "reason_has"),
    [
        pytest.param(command(3.0), dispatch_pb2.ACK_STATUS_APPLIED, 3.0, "", id="applied"),
        pytest.param(command(8.0), dispatch_pb2.ACK_STATUS_CLAMPED, 5.0, "requested 8.000 kW", id="clamped"),
        pytest.param(
            command(2.0, issued_at=T0 - timedelta(seconds=120)), dispatch_pb2.ACK_STATUS_EXPIRED, 0.0, "valid_until",
            id="expired",
        ),
        pytest.param(command(2.0, site_id="other"), dispatch_pb2.ACK_STATUS_REJECTED, 0.0, "site_id", id="wrong-site"),
    ],
)
def test_command_acks(cmd: dispatch_pb2.DispatchCommand, status: int, applied_kw: float, reason_has: str) -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot())
        coord, _clock, _metrics = make(device)
        acks: list[dispatch_pb2.CommandAck] = []
        coord.ack_sink = acks.append
        await coord.run_cycle()
        ack = await coord.handle_command(cmd, T0)
        assert acks == [ack]
        assert ack.status == status
        assert ack.applied_kw == pytest.approx(applied_kw)
        assert reason_has in ack.reason
        assert ack.received_at.ToDatetime() == T0.replace(tzinfo=None)
        if status in (dispatch_pb2.ACK_STATUS_APPLIED, dispatch_pb2.ACK_STATUS_CLAMPED):
            assert ack.HasField("written_at")
            assert ack.modbus_write_ms > 0
            assert device.writes[-1] == pytest.approx(applied_kw)
        else:
            assert not ack.HasField("written_at")

    run(scenario())


@pytest.mark.timeout(20)
def test_clamped_ack_names_limit_and_request() -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot(soc_pct=12.0))
        coord, _clock, metrics = make(device, reserve=20.0)
        await coord.run_cycle()
        ack = await coord.handle_command(command(4.0), T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_CLAMPED
        assert "requested 4.000 kW" in ack.reason
        assert "soc_reserve_pct=20" in ack.reason
        assert sample(metrics, "vpp_edge_clamps_total", source="dispatch") == 1

    run(scenario())


@pytest.mark.timeout(20)
def test_unavailable_device_rejects_commands_and_publishes_no_values() -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot(soc_pct=70.0, pv_power_kw=3.0))
        coord, _clock, metrics = make(device)
        sent: list[telemetry_pb2.Telemetry] = []
        coord.telemetry_sink = sent.append
        await coord.run_cycle()
        assert sent[-1].available and sent[-1].soc_pct == pytest.approx(70.0)
        device.fail_reads = True
        writes_before = len(device.writes)
        await coord.run_cycle()
        assert not sent[-1].available
        assert sent[-1].soc_pct == 0.0 and sent[-1].pv_power_kw == 0.0
        assert device.snapshot is None
        assert len(device.writes) == writes_before
        ack = await coord.handle_command(command(1.0), T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_REJECTED
        assert "unavailable" in ack.reason
        assert sample(metrics, "vpp_edge_device_available") == 0
        assert sample(metrics, "vpp_edge_read_failures_total") == 1

    run(scenario())


@pytest.mark.timeout(20)
def test_failed_write_rejects_command_and_keeps_local_control() -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot(pv_power_kw=0.0, load_power_kw=1.0))
        coord, _clock, _metrics = make(device)
        await coord.run_cycle()
        device.fail_writes = True
        ack = await coord.handle_command(command(3.0), T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_REJECTED
        device.fail_writes = False
        await coord.run_cycle()
        assert device.writes[-1] == pytest.approx(1.0)

    run(scenario())


@pytest.mark.timeout(20)
def test_older_command_does_not_replace_newer() -> None:
    async def scenario() -> None:
        device = FakeDevice(snapshot())
        coord, _clock, _metrics = make(device)
        await coord.run_cycle()
        newer = command(2.0, command_id="new", issued_at=T0)
        older = command(-2.0, command_id="old", issued_at=T0 - timedelta(seconds=4))
        assert (await coord.handle_command(newer, T0)).status == dispatch_pb2.ACK_STATUS_APPLIED
        ack = await coord.handle_command(older, T0)
        assert ack.status == dispatch_pb2.ACK_STATUS_REJECTED
        assert "superseded" in ack.reason
        await coord.run_cycle()
        assert device.writes[-1] == pytest.approx(2.0)

    run(scenario())
