"""Wire the gateway into the shared service lifecycle."""

from __future__ import annotations

from gateway.servicer import SERVICE_NAME, EdgeGatewayServicer, add_to_server
from gateway.sessions import SessionRegistry
from gateway.settings import GatewaySettings
from vpp_common.app import ServiceApp
from vpp_common.batching import PartitionBatcher
from vpp_common.topics import ACKS, COMMANDS, TELEMETRY


def build(app: ServiceApp, settings: GatewaySettings) -> EdgeGatewayServicer:
    if not settings.site_token_secret.get_secret_value():
        raise SystemExit("gateway: set VPP_GATEWAY_SITE_TOKEN_SECRET (site tokens are HMACs under it)")
    linger_s = settings.kafka_batch_linger_ms / 1000
    servicer = EdgeGatewayServicer(
        secret=settings.site_token_secret.get_secret_value(),
        gateway_id=settings.instance_id,
        registry=SessionRegistry(settings.max_unacked_commands, settings.outbound_queue_size),
        telemetry=PartitionBatcher(app.producer, TELEMETRY, settings.source, linger_s=linger_s),
        acks=PartitionBatcher(app.producer, ACKS, settings.source, linger_s=linger_s),
    )
    app.add_servicer(add_to_server, servicer, SERVICE_NAME)

    async def know_partitions() -> None:
        servicer.partitions = app.site_partitions

    app.on_start(know_partitions)
    # Every replica reads every command batch (no group, so nothing is left behind at a restart) and
    # delivers those of the sites whose stream it holds; commands are only good for one 4 s step, so a
    # replica starts at the end. docs/scaling.md has the measured cost of reading the others' commands.
    app.add_consumer(
        [COMMANDS],
        servicer.on_command_batch,
        name="commands",
        group=None,
        start_at="latest",
        fetch_max_wait_ms=settings.kafka_fast_fetch_max_wait_ms,
    )
    return servicer
