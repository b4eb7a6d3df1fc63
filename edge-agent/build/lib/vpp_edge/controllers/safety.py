"""The site's own SoC envelope: the agent keeps a reserve and a ceiling whatever dispatch asks.

The effective window is the tighter of the site config and the device's own SoC limits.
"""

from __future__ import annotations

from vpp_edge.controllers.base import CycleContext
from vpp_edge.power import Constraint, Relation


class SafetyController:
    """No discharge at/below the reserve, no charge at/above the ceiling."""

    name = "safety"

    def __init__(self, soc_reserve_pct: float, soc_ceiling_pct: float) -> None:
        if soc_reserve_pct >= soc_ceiling_pct:
            raise ValueError("soc_reserve_pct must be below soc_ceiling_pct")
        self.soc_reserve_pct = soc_reserve_pct
        self.soc_ceiling_pct = soc_ceiling_pct

    def window(self, soc_min_pct: float, soc_max_pct: float) -> tuple[float, float]:
        """(reserve, ceiling) actually enforced: never looser than the device's."""
        return max(self.soc_reserve_pct, soc_min_pct), min(self.soc_ceiling_pct, soc_max_pct)

    def run(self, ctx: CycleContext) -> list[Constraint]:
        snap = ctx.snapshot
        reserve, ceiling = self.window(snap.soc_min_pct, snap.soc_max_pct)
        out: list[Constraint] = []
        if snap.soc_pct <= reserve:
            why = f"soc_reserve_pct={reserve:g} reached (soc {snap.soc_pct:.1f}%)"
            out.append(Constraint(Relation.AT_MOST, 0.0, self.name, why))
        if snap.soc_pct >= ceiling:
            why = f"soc_ceiling_pct={ceiling:g} reached (soc {snap.soc_pct:.1f}%)"
            out.append(Constraint(Relation.AT_LEAST, 0.0, self.name, why))
        return out
