"""Platform dispatch: the latest command is an EQUAL constraint until its valid_until."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from vpp.v1 import dispatch_pb2

from vpp_edge.controllers.base import CycleContext
from vpp_edge.logfmt import kv
from vpp_edge.power import Constraint, Relation

log = logging.getLogger(__name__)


def valid_until(command: dispatch_pb2.DispatchCommand) -> datetime | None:
    """Expiry as an aware datetime; None if the command carries none (treated as expired)."""
    if not command.HasField("valid_until"):
        return None
    return command.valid_until.ToDatetime(tzinfo=UTC)


class DispatchController:
    """Holds at most one active command; after it expires the site returns to local control."""

    name = "dispatch"

    def __init__(self, on_expired: Callable[[dispatch_pb2.DispatchCommand], None] | None = None) -> None:
        self.active: dispatch_pb2.DispatchCommand | None = None
        self.on_expired = on_expired

    def is_valid(self, command: dispatch_pb2.DispatchCommand, now: datetime) -> bool:
        until = valid_until(command)
        return until is not None and now < until

    def activate(self, command: dispatch_pb2.DispatchCommand) -> None:
        self.active = command

    def clear(self) -> None:
        self.active = None

    def run(self, ctx: CycleContext) -> list[Constraint]:
        command = self.active
        if command is None:
            return []
        if not self.is_valid(command, ctx.now):
            log.info("dispatch_command_expired", extra=kv(command_id=command.command_id, fallback="local_control"))
            self.active = None
            if self.on_expired is not None:
                self.on_expired(command)
            return []
        return [
            Constraint(
                Relation.EQUAL,
                command.battery_setpoint_kw,
                self.name,
                f"dispatch command {command.command_id}",
                command.command_id,
            )
        ]
