"""Wire the gateway into the shared service lifecycle."""

from __future__ import annotations

from gateway.servicer import SERVICE_NAME, EdgeGatewayServicer, add_to_server
from gateway.sessions import SessionRegistry
from gateway.settings import GatewaySettings
from vpp_common.app import ServiceApp
from vpp_common.topics import COMMANDS


def build(app: ServiceApp, settings: GatewaySettings) -> EdgeGatewayServicer:
    if not settings.site_token_secret.get_secret_value():
        raise SystemExit("gateway: set VPP_GATEWAY_SITE_TOKEN_SECRET (site tokens are HMACs under it)")
    servicer = EdgeGatewayServicer(
        secret=settings.site_token_secret.get_secret_value(),
        gateway_id=settings.instance_id,
        producer=app.producer,
        registry=SessionRegistry(settings.max_unacked_commands, settings.outbound_queue_size),
    )
    app.add_servicer(add_to_server, servicer, SERVICE_NAME)
    # Each replica reads every command with a group of its own and delivers those for the sites whose
    # stream it holds (README: "How a command reaches its site").
    app.add_consumer(
        {COMMANDS: "command"},
        servicer.on_command_record,
        group_id=f"gateway-{settings.instance_id}",
        fetch_max_wait_ms=settings.kafka_fast_fetch_max_wait_ms,
    )
    return servicer
