"""Controller contract: read the frozen cycle inputs, return constraints; never touch registers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from vpp_edge.devices.snapshot import DeviceSnapshot
from vpp_edge.power import Constraint


@dataclass(frozen=True)
class CycleContext:
    """What every controller sees in one cycle: the same snapshot and the same clock reading.

    `baseline_battery_kw` is what local control alone would set this cycle (every controller but
    dispatch, solved in the device envelope). Only the dispatch controller gets it, because it is
    computed from the others' constraints; offset commands ride on it. None elsewhere.
    """

    snapshot: DeviceSnapshot
    now: datetime
    baseline_battery_kw: float | None = None


class Controller(Protocol):
    """Adds equal-to / at-most / at-least constraints on battery power for this cycle."""

    name: str

    def run(self, ctx: CycleContext) -> list[Constraint]: ...
