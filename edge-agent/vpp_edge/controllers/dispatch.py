"""Platform dispatch: the latest command is an EQUAL constraint until its valid_until.

An absolute command (`battery_setpoint_kw`) asks for that battery power. An offset command
(`offset_kw`) asks for the cycle's baseline (what local control would set without dispatch) plus
the offset, recomputed every cycle: the offset rides on the moving baseline, so what the meter
sees change because of dispatch is the offset, whatever the house load does meanwhile.
"""

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


def is_offset(command: dispatch_pb2.DispatchCommand) -> bool:
    """True for an offset command (battery power added to the baseline), False for an absolute one."""
    return command.WhichOneof("target") == "offset_kw"


def requested_kw(command: dispatch_pb2.DispatchCommand) -> float:
    """What the command asks for in its own terms: the offset, or the absolute battery power."""
    return command.offset_kw if is_offset(command) else command.battery_setpoint_kw


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
        if is_offset(command):
            if ctx.baseline_battery_kw is None:
                raise ValueError("an offset command needs the cycle's baseline (CycleContext.baseline_battery_kw)")
            target_kw = ctx.baseline_battery_kw + command.offset_kw
        else:
            target_kw = command.battery_setpoint_kw
        why = f"dispatch command {command.command_id}"
        return [Constraint(Relation.EQUAL, target_kw, self.name, why, command.command_id)]
