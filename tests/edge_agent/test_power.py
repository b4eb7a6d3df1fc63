"""The power solver: table tests of the merge rules, and a property test that it never leaves
the device envelope whatever the constraints say."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpp_edge.power import Constraint, DeviceLimits, Relation, envelope, solve

LIMITS = DeviceLimits(max_charge_kw=5.0, max_discharge_kw=4.0, soc_pct=50.0, soc_min_pct=10.0, soc_max_pct=90.0)
EQ, LE, GE = Relation.EQUAL, Relation.AT_MOST, Relation.AT_LEAST


@pytest.mark.parametrize(
    ("limits", "constraints", "setpoint", "clamped", "reason_has"),
    [
        pytest.param(LIMITS, [], 0.0, False, "", id="nothing-idles"),
        pytest.param(LIMITS, [Constraint(EQ, 3.0, "dispatch")], 3.0, False, "", id="within"),
        pytest.param(LIMITS, [Constraint(EQ, 8.0, "dispatch")], 4.0, True, "max_discharge_kw=4", id="over-discharge"),
        pytest.param(LIMITS, [Constraint(EQ, -9.0, "dispatch")], -5.0, True, "max_charge_kw=5", id="over-charge"),
        pytest.param(
            DeviceLimits(5.0, 4.0, soc_pct=10.0, soc_min_pct=10.0, soc_max_pct=90.0),
            [Constraint(EQ, 2.0, "dispatch")], 0.0, True, "soc_min_pct=10", id="empty-no-discharge",
        ),
        pytest.param(
            DeviceLimits(5.0, 4.0, soc_pct=10.0, soc_min_pct=10.0, soc_max_pct=90.0),
            [Constraint(EQ, -2.0, "dispatch")], -2.0, False, "", id="empty-may-charge",
        ),
        pytest.param(
            DeviceLimits(5.0, 4.0, soc_pct=95.0, soc_min_pct=10.0, soc_max_pct=90.0),
            [Constraint(EQ, -2.0, "dispatch")], 0.0, True, "soc_max_pct=90", id="full-no-charge",
        ),
        pytest.param(
            LIMITS,
            [Constraint(LE, 0.0, "safety", "soc_reserve_pct=20 reached"), Constraint(EQ, 3.0, "dispatch")],
            0.0, True, "soc_reserve_pct=20", id="safety-before-dispatch",
        ),
        pytest.param(
            LIMITS,
            [Constraint(EQ, 3.0, "dispatch"), Constraint(LE, 0.0, "late")],
            3.0, False, "", id="lower-priority-bound-cannot-override",
        ),
        pytest.param(
            LIMITS,
            [Constraint(EQ, 1.0, "dispatch"), Constraint(EQ, -2.0, "self_consumption")],
            1.0, False, "", id="first-equal-wins",
        ),
        pytest.param(LIMITS, [Constraint(GE, 1.5, "x")], 1.5, False, "", id="at-least-moves-idle"),
        pytest.param(
            LIMITS, [Constraint(EQ, math.nan, "bad"), Constraint(EQ, 2.0, "ok")], 2.0, False, "", id="nan-ignored"
        ),
        pytest.param(
            DeviceLimits(math.nan, 4.0, soc_pct=50.0, soc_min_pct=10.0, soc_max_pct=90.0),
            [Constraint(EQ, -3.0, "dispatch")], 0.0, True, "max_charge_kw=0", id="unknown-limit-is-zero",
        ),
    ],
)
def test_solver_table(
    limits: DeviceLimits, constraints: list[Constraint], setpoint: float, clamped: bool, reason_has: str
) -> None:
    solution = solve(limits, constraints)
    assert solution.setpoint_kw == pytest.approx(setpoint)
    assert solution.clamped is clamped
    assert reason_has in solution.reason


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
constraint_st = st.builds(Constraint, relation=st.sampled_from(list(Relation)), value_kw=floats, source=st.just("c"))
limits_st = st.builds(
    DeviceLimits,
    max_charge_kw=floats,
    max_discharge_kw=floats,
    soc_pct=floats,
    soc_min_pct=floats,
    soc_max_pct=floats,
)


@settings(max_examples=400, deadline=None)
@given(limits=limits_st, constraints=st.lists(constraint_st, max_size=6))
def test_solver_never_leaves_envelope(limits: DeviceLimits, constraints: list[Constraint]) -> None:
    lo, _, hi, _ = envelope(limits)
    solution = solve(limits, constraints)
    assert math.isfinite(solution.setpoint_kw)
    assert lo - 1e-9 <= solution.setpoint_kw <= hi + 1e-9
    max_charge = limits.max_charge_kw if math.isfinite(limits.max_charge_kw) else 0.0
    max_discharge = limits.max_discharge_kw if math.isfinite(limits.max_discharge_kw) else 0.0
    assert solution.setpoint_kw >= -max(0.0, max_charge) - 1e-9
    assert solution.setpoint_kw <= max(0.0, max_discharge) + 1e-9
    if solution.setpoint_kw > 0:
        assert limits.soc_pct > limits.soc_min_pct
    if solution.setpoint_kw < 0:
        assert limits.soc_pct < limits.soc_max_pct


@settings(max_examples=200, deadline=None)
@given(
    request=st.floats(-50, 50),
    soc=st.floats(0, 100),
    max_charge=st.floats(0, 20),
    max_discharge=st.floats(0, 20),
)
def test_solver_applies_feasible_requests_exactly(
    request: float, soc: float, max_charge: float, max_discharge: float
) -> None:
    limits = DeviceLimits(max_charge, max_discharge, soc, 10.0, 90.0)
    lo, _, hi, _ = envelope(limits)
    solution = solve(limits, [Constraint(EQ, request, "dispatch", command_id="c1")])
    if lo - 1e-6 <= request <= hi + 1e-6:  # the solver's clamp tolerance
        assert solution.setpoint_kw == pytest.approx(request, abs=1e-6)
        assert not solution.clamped
    else:
        assert solution.clamped
        assert solution.setpoint_kw in (pytest.approx(lo), pytest.approx(hi))
        assert solution.reason
    assert solution.command_id == "c1"
