"""Agent against the real pymodbus simulator on a loopback port chosen at run time: discovery,
reads, setpoint write, clamping with an ack reason, and unavailability on hung or failed reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from vpp.v1 import dispatch_pb2, telemetry_pb2

from edge_agent.helpers import command, run
from vpp_devsim import BatteryParams, DeviceSimulator, SimulatorConfig
from vpp_edge.bridge import ModbusBridge, ModbusError
from vpp_edge.controllers import DispatchController, SafetyController, SelfConsumptionController
from vpp_edge.coordinator import Coordinator, SetupError
from vpp_edge.devices import DeviceError, HybridInverter
from vpp_edge.metrics import EdgeMetrics

BATTERY = BatteryParams(capacity_kwh=10.0, max_charge_kw=5.0, max_discharge_kw=5.0, tau_s=0.3)


@contextlib.asynccontextmanager
async def simulator(soc_pct: float = 60.0) -> AsyncIterator[DeviceSimulator]:
    sim = DeviceSimulator(SimulatorConfig(port=0, battery=BATTERY, soc_pct=soc_pct, tick_s=0.05, noise_pct=0.0))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def make_agent(port: int, metrics: EdgeMetrics, timeout_s: float = 0.5) -> tuple[HybridInverter, Coordinator]:
    bridge = ModbusBridge("127.0.0.1", port, 1, metrics, timeout_s=timeout_s)
    device = HybridInverter(bridge)
    coord = Coordinator(
        "site-1",
        device,
        [SafetyController(10.0, 90.0), DispatchController(), SelfConsumptionController()],
        metrics,
    )
    return device, coord


@pytest.mark.timeout(20)
def test_discovery_and_snapshot() -> None:
    async def scenario() -> None:
        async with simulator(soc_pct=60.0) as sim:
            metrics = EdgeMetrics()
            device, _ = make_agent(sim.port, metrics)
            model_map = await device.setup()
            assert model_map.base_address == 40000
            assert list(model_map.model_addresses) == [1, 103, 124, 802, 203]
            assert model_map.model_addresses == sim.image.model_addr
            snap = await device.read()
            assert snap.soc_pct == pytest.approx(60.0, abs=0.2)
            assert snap.capacity_kwh == pytest.approx(10.0)
            assert snap.max_charge_kw == pytest.approx(5.0)
            assert snap.max_discharge_kw == pytest.approx(5.0)
            assert (snap.soc_min_pct, snap.soc_max_pct) == (pytest.approx(5.0), pytest.approx(95.0))
            assert snap.pv_power_kw == pytest.approx(sim.physics.pv_kw, abs=0.01)
            assert snap.load_power_kw == pytest.approx(
                snap.grid_power_kw + snap.pv_power_kw + snap.battery_power_kw
            )
            assert metrics.registry.get_sample_value("vpp_edge_modbus_rtt_seconds_count", {"op": "read"})
            await device.bridge.close()

    run(scenario())


@pytest.mark.timeout(20)
def test_command_write_clamp_and_ack_reason() -> None:
    async def scenario() -> None:
        async with simulator() as sim:
            metrics = EdgeMetrics()
            device, coord = make_agent(sim.port, metrics)
            await coord.async_setup(timeout_s=5)
            acks: list[dispatch_pb2.CommandAck] = []
            coord.ack_sink = acks.append
            ack = await coord.handle_command(command(8.0, issued_at=coord.clock()))
            assert ack.status == dispatch_pb2.ACK_STATUS_CLAMPED
            assert "requested 8.000 kW" in ack.reason and "max_discharge_kw=5" in ack.reason
            assert ack.applied_kw == pytest.approx(5.0)
            assert ack.modbus_write_ms > 0
            assert sim.physics.command_kw == pytest.approx(5.0)
            assert sim.image.get_point(124, "StorCtl_Mod") == 2
            assert sim.image.get_point(124, "InOutWRte_RvrtTms") == 30
            ack = await coord.handle_command(command(-2.5, command_id="cmd-2", issued_at=coord.clock()))
            assert ack.status == dispatch_pb2.ACK_STATUS_APPLIED
            assert sim.physics.command_kw == pytest.approx(-2.5)
            await asyncio.sleep(1.0)  # the battery follows with its lag
            snap = await device.read()
            assert snap.battery_power_kw == pytest.approx(-2.5, abs=0.1)
            await device.bridge.close()

    run(scenario())


@pytest.mark.timeout(20)
def test_local_fallback_cycle_drives_simulator() -> None:
    async def scenario() -> None:
        async with simulator() as sim:
            metrics = EdgeMetrics()
            _device, coord = make_agent(sim.port, metrics)
            sent: list[telemetry_pb2.Telemetry] = []
            coord.telemetry_sink = sent.append
            await coord.async_setup(timeout_s=5)
            solution = await coord.run_cycle()
            assert solution is not None and solution.source == "self_consumption"
            assert sim.physics.command_kw == pytest.approx(solution.setpoint_kw, abs=0.01)
            assert sent[-1].available and sent[-1].soc_min_pct == pytest.approx(10.0)
            assert sent[-1].command_id == ""
            await coord.device.bridge.close()

    run(scenario())


@pytest.mark.timeout(20)
def test_failed_read_marks_unavailable_then_recovers() -> None:
    async def scenario() -> None:
        sim = DeviceSimulator(SimulatorConfig(port=0, battery=BATTERY, tick_s=0.05))
        port = await sim.start()
        metrics = EdgeMetrics()
        device, coord = make_agent(port, metrics, timeout_s=0.3)
        sent: list[telemetry_pb2.Telemetry] = []
        coord.telemetry_sink = sent.append
        await coord.async_setup(timeout_s=5)
        await sim.stop()
        await coord.run_cycle()
        assert device.snapshot is None and not sent[-1].available
        assert metrics.registry.get_sample_value("vpp_edge_device_available") == 0
        sim2 = DeviceSimulator(SimulatorConfig(port=port, battery=BATTERY, tick_s=0.05))
        await sim2.start()
        try:
            await coord.run_cycle()
            assert device.snapshot is not None and sent[-1].available
        finally:
            await device.bridge.close()
            await sim2.stop()

    run(scenario())


@pytest.mark.timeout(20)
def test_hung_read_marks_unavailable() -> None:
    async def scenario() -> None:
        async with simulator() as sim:
            metrics = EdgeMetrics()
            device, coord = make_agent(sim.port, metrics, timeout_s=0.3)
            await coord.async_setup(timeout_s=5)
            assert device.available
            sim.response_delay_s = 3.0  # the device stops answering in time
            await coord.run_cycle()
            assert device.snapshot is None
            assert not device.available
            assert metrics.registry.get_sample_value("vpp_edge_read_failures_total") == 1
            sim.response_delay_s = 0.0
            await asyncio.sleep(0.5)
            await coord.run_cycle()  # a fresh connection, no late answer mixed in
            assert device.available
            await device.bridge.close()

    run(scenario())


@pytest.mark.timeout(20)
def test_hung_server_does_not_block_setup_forever() -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(-1)
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        metrics = EdgeMetrics()
        device, coord = make_agent(port, metrics, timeout_s=0.2)
        with pytest.raises(ModbusError):
            await device.bridge.read_holding(40000, 2)
        with pytest.raises(DeviceError):
            await device.read()
        with pytest.raises(SetupError, match="VPP_EDGE_MODBUS_HOST"):
            await coord.async_setup(timeout_s=1.0)
        await device.bridge.close()
        server.close()

    run(scenario())
