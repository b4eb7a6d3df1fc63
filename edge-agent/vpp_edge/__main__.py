"""`python -m vpp_edge` / `vpp-edge-agent`: run one site's agent until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from vpp_edge.agent import EdgeAgent
from vpp_edge.coordinator import SetupError
from vpp_edge.logfmt import kv, setup_logging
from vpp_edge.settings import EdgeSettings

log = logging.getLogger("vpp_edge")


async def run(settings: EdgeSettings) -> int:
    agent = EdgeAgent(settings)
    port = agent.start_metrics()
    if settings.metrics_port == 0:
        sys.stdout.write(f"METRICS_PORT={port}\n")
        sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "agent_starting",
        extra=kv(site_id=settings.site_id, modbus=f"{settings.modbus_host}:{settings.modbus_port}",
                 gateway=settings.gateway_target, metrics_port=port),
    )
    try:
        setup = asyncio.create_task(agent.start())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({setup, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not setup.done():
            setup.cancel()
            return 0
        setup.result()
        watcher = asyncio.create_task(agent.wait())
        await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if watcher.done():
            watcher.result()
        watcher.cancel()
        return 0
    except SetupError as exc:
        log.error("setup_failed", extra=kv(error=str(exc)))
        return 2
    finally:
        await agent.stop()


def main() -> None:
    try:
        settings = EdgeSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        sys.stderr.write(f"invalid VPP_EDGE_* configuration:\n{exc}\n")
        raise SystemExit(2) from exc
    setup_logging(settings.log_level)
    raise SystemExit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
