"""The one place where battery setpoints are limited: constraints + device envelope -> setpoint.

Pure and synchronous so it can be property-tested. Semantics follow OpenEMS' power component:
constraints are applied in priority order, each narrowing the feasible interval; one that
cannot be met is cut back to what still can. The device's own limits come first and always win.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

_EPS_KW = 1e-9


class Relation(Enum):
    EQUAL = "eq"
    AT_MOST = "le"
    AT_LEAST = "ge"


@dataclass(frozen=True)
class Constraint:
    """battery_power_kw <relation> value_kw (> 0 discharge), added by `source` for one cycle."""

    relation: Relation
    value_kw: float
    source: str
    reason: str = ""
    command_id: str = ""


@dataclass(frozen=True)
class DeviceLimits:
    """The device envelope: power magnitudes and the SoC window it may operate in."""

    max_charge_kw: float
    max_discharge_kw: float
    soc_pct: float
    soc_min_pct: float
    soc_max_pct: float


@dataclass(frozen=True)
class Solution:
    """Setpoint to write, what was asked for and, if it differs, which limit cut it."""

    setpoint_kw: float
    requested_kw: float | None
    clamped: bool
    reason: str
    source: str
    command_id: str
    min_kw: float
    max_kw: float
    ignored: tuple[str, ...] = ()


def _finite_or_zero(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0


def envelope(limits: DeviceLimits) -> tuple[float, str, float, str]:
    """(min_kw, why, max_kw, why) from the device alone: max power, no discharge at/below its SoC
    floor, no charge at/above its SoC ceiling. Unknown (NaN) SoC allows nothing."""
    lo = -_finite_or_zero(limits.max_charge_kw)
    hi = _finite_or_zero(limits.max_discharge_kw)
    lo_why = f"max_charge_kw={-lo:g}"
    hi_why = f"max_discharge_kw={hi:g}"
    soc = limits.soc_pct
    if not math.isfinite(soc) or soc <= limits.soc_min_pct or not math.isfinite(limits.soc_min_pct):
        hi, hi_why = 0.0, f"device soc_min_pct={limits.soc_min_pct:g} reached (soc {soc:.1f}%)"
    if not math.isfinite(soc) or soc >= limits.soc_max_pct or not math.isfinite(limits.soc_max_pct):
        lo, lo_why = 0.0, f"device soc_max_pct={limits.soc_max_pct:g} reached (soc {soc:.1f}%)"
    return lo, lo_why, hi, hi_why


def solve(limits: DeviceLimits, constraints: Sequence[Constraint]) -> Solution:
    """Merge constraints (priority order) with the device envelope and return the setpoint.

    Always returns a value inside `envelope(limits)`. The first EQUAL is the request; later
    EQUALs are ignored. Without any EQUAL the battery idles at the nearest feasible point to 0.
    """
    lo, lo_why, hi, hi_why = envelope(limits)
    requested: Constraint | None = None
    ignored: list[str] = []
    clamp_reason = ""
    for c in constraints:
        if not math.isfinite(c.value_kw):
            ignored.append(f"{c.source}: non-finite value")
            continue
        why = c.reason or f"{c.source} {c.relation.value} {c.value_kw:g} kW"
        if c.relation is Relation.AT_MOST:
            new_hi = max(lo, min(hi, c.value_kw))
            if new_hi < hi - _EPS_KW:
                hi, hi_why = new_hi, why
        elif c.relation is Relation.AT_LEAST:
            new_lo = min(hi, max(lo, c.value_kw))
            if new_lo > lo + _EPS_KW:
                lo, lo_why = new_lo, why
        elif requested is None:
            requested = c
            if c.value_kw > hi + _EPS_KW:
                clamp_reason = hi_why
            elif c.value_kw < lo - _EPS_KW:
                clamp_reason = lo_why
            point = min(hi, max(lo, c.value_kw))
            lo = hi = point
        else:
            ignored.append(f"{c.source}: lower priority than {requested.source}")
    target = requested.value_kw if requested is not None else 0.0
    setpoint = min(hi, max(lo, target))
    clamped = requested is not None and abs(setpoint - requested.value_kw) > 1e-6
    if requested is None and abs(setpoint) > _EPS_KW:
        clamp_reason = lo_why if setpoint > 0 else hi_why
    return Solution(
        setpoint_kw=setpoint,
        requested_kw=requested.value_kw if requested is not None else None,
        clamped=clamped,
        reason=clamp_reason if clamped or requested is None else "",
        source=requested.source if requested is not None else "idle",
        command_id=requested.command_id if requested is not None else "",
        min_kw=lo,
        max_kw=hi,
        ignored=tuple(ignored),
    )
