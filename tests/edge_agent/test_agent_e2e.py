"""Whole agent in-process: simulator over Modbus, test gateway over gRPC. A dispatch command is
written to the device and acked over the stream with write timing; telemetry flows."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

import pytest
from vpp.v1 import dispatch_pb2, gateway_pb2

from edge_agent.gateway_fake import FakeGateway, gateway_server, until
from edge_agent.helpers import command, run
from vpp_devsim import BatteryParams, DeviceSimulator, SimulatorConfig
from vpp_edge.agent import EdgeAgent
from vpp_edge.settings import EdgeSettings


@pytest.mark.timeout(30)
def test_dispatch_command_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("VPP_")]:
        monkeypatch.delenv(key)

    async def scenario() -> None:
        sim = DeviceSimulator(SimulatorConfig(port=0, battery=BatteryParams(tau_s=0.3), soc_pct=50.0, tick_s=0.1))
        modbus_port = await sim.start()
        gateway = FakeGateway()
        async with gateway_server(gateway) as (_server, grpc_port):
            settings = EdgeSettings(
                site_id="site-1",
                site_token="tok",
                gateway_target=f"127.0.0.1:{grpc_port}",
                modbus_port=modbus_port,
                metrics_port=0,
                metrics_host="127.0.0.1",
                soc_reserve_pct=20.0,
                soc_ceiling_pct=90.0,
                reconnect_min_s=0.05,
                heartbeat_interval_s=0.5,
                uplink_batch_interval_s=0.2,
            )
            agent = EdgeAgent(settings)
            agent.start_metrics()
            await agent.start()
            try:
                await until(lambda: len(gateway.bodies("telemetry")) >= 1)
                t = gateway.bodies("telemetry")[0].telemetry
                assert t.available and t.site_id == "site-1"
                assert t.soc_min_pct == pytest.approx(20.0) and t.soc_max_pct == pytest.approx(90.0)
                cmd = command(-3.0, command_id="e2e-1", issued_at=datetime.now(UTC))
                await gateway.outgoing.put(gateway_pb2.GatewayMessage(seq=1, command=cmd))
                await until(lambda: len(gateway.bodies("ack")) == 1)
                ack = gateway.bodies("ack")[0].ack
                assert ack.status == dispatch_pb2.ACK_STATUS_APPLIED
                assert ack.applied_kw == pytest.approx(-3.0)
                assert ack.written_at.ToDatetime() >= ack.received_at.ToDatetime()
                assert sim.physics.command_kw == pytest.approx(-3.0)
                await until(lambda: any(
                    m.telemetry.command_id == "e2e-1" for m in gateway.bodies("telemetry")
                ))
                await asyncio.sleep(0)
            finally:
                await agent.stop()
        await sim.stop()

    run(scenario(), timeout_s=25)
