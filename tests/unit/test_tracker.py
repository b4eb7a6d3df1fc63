"""Dispatch bookkeeping, step by step: allocation, delivery, re-allocation after a shortfall."""

from __future__ import annotations

import pytest
from vpp.v1 import dispatch_pb2

from dispatch.tracker import ActivationTracker, TrackerConfig
from vpp_common.flexibility import BatteryState


def site(site_id: str, max_kw: float, power_kw: float = 0.0, online: bool = True) -> BatteryState:
    return BatteryState(site_id, online, power_kw, 50.0, 100.0, max_kw, max_kw, 10.0, 90.0)


def make() -> ActivationTracker:
    return ActivationTracker(
        "act-1",
        [site("a", 10.0), site("b", 5.0, power_kw=1.0), site("c", 5.0, online=False)],
        TrackerConfig(efficiency=1.0),
    )


def test_offline_sites_are_left_out_and_setpoints_add_baseline() -> None:
    tr = make()
    cmds = {c.site_id: c.battery_setpoint_kw for c in tr.plan_step(1, 7.0, 100.0)}
    assert set(cmds) == {"a", "b"}
    # headroom a=10, b=4 (already discharging 1 kW): shares 5 and 2, b's setpoint includes its baseline
    assert cmds["a"] == pytest.approx(5.0)
    assert cmds["b"] == pytest.approx(3.0)


def test_delivery_is_measured_against_baselines() -> None:
    tr = make()
    tr.plan_step(1, 7.0, 100.0)
    rec = tr.close_step({"a": 5.0, "b": 3.0}, online={"a", "b"}, step=1)
    assert rec is not None and rec.delivered_kw == pytest.approx(7.0)
    assert tr.mean_abs_error_kw() == pytest.approx(0.0)


def test_site_falling_short_twice_gets_its_share_moved() -> None:
    tr = make()
    tr.plan_step(1, 7.0, 100.0)
    tr.close_step({"a": 2.0, "b": 3.0}, online={"a", "b"})  # a delivers 2 of 5: strike 1
    tr.plan_step(2, 7.0, 104.0)
    tr.close_step({"a": 2.0, "b": 3.0}, online={"a", "b"})  # strike 2: a capped at 2 kW
    assert tr.reallocations == 1
    cmds = {c.site_id: c.battery_setpoint_kw for c in tr.plan_step(3, 7.0, 108.0)}
    # caps now a=2, b=4: both saturate and the step reports 1 kW it could not place
    assert cmds["a"] == pytest.approx(2.0)
    assert cmds["b"] == pytest.approx(5.0)
    assert tr.steps[3].unallocated_kw == pytest.approx(1.0)
    cmds = {c.site_id: c.battery_setpoint_kw for c in tr.plan_step(4, 3.0, 112.0)}
    assert cmds["a"] == pytest.approx(1.0)  # 3 kW split 2:4 over the remaining headroom
    assert cmds["b"] == pytest.approx(3.0)


def test_clamped_ack_caps_the_site_and_latency_is_measured() -> None:
    tr = make()
    cmds = tr.plan_step(1, 7.0, 100.0)
    a_cmd = next(c for c in cmds if c.site_id == "a")
    ack = dispatch_pb2.CommandAck(
        command_id=a_cmd.command_id, site_id="a", status=dispatch_pb2.ACK_STATUS_CLAMPED, applied_kw=3.0
    )
    ack.written_at.FromNanoseconds(int(100.25 * 1e9))
    assert tr.on_ack(ack) == pytest.approx(250.0)
    assert tr.on_ack(ack) is None  # a re-delivered ack counts once
    assert tr.sites["a"].cap_up_kw == pytest.approx(3.0)
    assert tr.clamped == 1 and tr.acks == 1


def test_site_going_offline_loses_its_share() -> None:
    tr = make()
    tr.plan_step(1, 7.0, 100.0)
    tr.close_step({"a": 5.0, "b": 3.0}, online={"b"})
    cmds = {c.site_id: c.battery_setpoint_kw for c in tr.plan_step(2, 7.0, 104.0)}
    assert cmds["a"] == pytest.approx(0.0)
    assert cmds["b"] == pytest.approx(5.0)  # b at its 4 kW headroom on top of 1 kW baseline
