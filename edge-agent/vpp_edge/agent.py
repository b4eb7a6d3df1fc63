"""Wiring: settings -> bridge -> device -> controllers -> coordinator <-> uplink, plus /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from vpp_edge.bridge import ModbusBridge
from vpp_edge.controllers import DispatchController, SafetyController, SelfConsumptionController
from vpp_edge.coordinator import Coordinator
from vpp_edge.devices import HybridInverter
from vpp_edge.logfmt import kv
from vpp_edge.metrics import EdgeMetrics
from vpp_edge.settings import EdgeSettings
from vpp_edge.uplink import Uplink

log = logging.getLogger(__name__)


class EdgeAgent:
    """One site: one Modbus device, one coordinator, one gateway stream."""

    def __init__(self, settings: EdgeSettings, metrics: EdgeMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or EdgeMetrics()
        self.bridge = ModbusBridge(
            settings.modbus_host,
            settings.modbus_port,
            settings.modbus_unit_id,
            self.metrics,
            timeout_s=settings.modbus_timeout_s,
        )
        self.device = HybridInverter(self.bridge)
        # Priority order: the safety envelope first, then the platform, then local fallback.
        self.coordinator = Coordinator(
            settings.site_id,
            self.device,
            [
                SafetyController(settings.soc_reserve_pct, settings.soc_ceiling_pct),
                DispatchController(),
                SelfConsumptionController(),
            ],
            self.metrics,
            poll_interval_s=settings.poll_interval_s,
            setpoint_revert_s=settings.setpoint_revert_s,
        )
        self.uplink = Uplink(
            settings.site_id,
            settings.site_token,
            settings.gateway_target,
            self.metrics,
            self.coordinator.handle_command,
            outbox_max=settings.outbox_max,
            batch_interval_s=settings.uplink_batch_interval_s,
            dispatched_batch_interval_s=settings.uplink_dispatched_batch_interval_s,
            ack_max_delay_s=settings.uplink_ack_max_delay_s,
            ack_spread_s=settings.uplink_ack_spread_s,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            reconnect_min_s=settings.reconnect_min_s,
            reconnect_max_s=settings.reconnect_max_s,
        )
        self.coordinator.telemetry_sink = self.uplink.send_telemetry
        self.coordinator.ack_sink = self.uplink.send_ack
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_server: WSGIServer | None = None
        self.metrics_port = 0

    def start_metrics(self) -> int:
        """Serve /metrics on its own port (0 picks a free one); returns the bound port."""
        server, _thread = start_http_server(
            self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.metrics.registry
        )
        self._metrics_server = server
        self.metrics_port = int(server.server_port)
        return self.metrics_port

    async def start(self) -> None:
        """Wait for a first good poll, then run the cycle and the gateway stream."""
        snapshot = await self.coordinator.async_setup(self.settings.setup_timeout_s)
        log.info(
            "device_ready",
            extra=kv(
                soc_pct=round(snapshot.soc_pct, 1),
                capacity_kwh=snapshot.capacity_kwh,
                max_charge_kw=snapshot.max_charge_kw,
                max_discharge_kw=snapshot.max_discharge_kw,
            ),
        )
        self._tasks = [
            asyncio.create_task(self.coordinator.run(), name="coordinator"),
            asyncio.create_task(self.uplink.run(), name="uplink"),
        ]

    async def wait(self) -> None:
        """Return when a background task dies (a bug), re-raising its error."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    async def stop(self) -> None:
        """Cancel the poll in flight, close the gateway stream, then the Modbus link and /metrics."""
        self.uplink.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.bridge.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        log.info("agent_stopped")
