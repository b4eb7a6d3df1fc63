"""Local fallback: self-consumption, so the site keeps working without a valid command.

Charge from PV surplus, discharge to cover the load: aim the battery at load - pv so the
grid meter reads ~0. It is the lowest-priority EQUAL, so any dispatch command overrides it.
"""

from __future__ import annotations

from vpp_edge.controllers.base import CycleContext
from vpp_edge.power import Constraint, Relation


class SelfConsumptionController:
    name = "self_consumption"

    def run(self, ctx: CycleContext) -> list[Constraint]:
        snap = ctx.snapshot
        target_kw = snap.load_power_kw - snap.pv_power_kw
        return [Constraint(Relation.EQUAL, target_kw, self.name, "self-consumption")]
