"""The fleet simulator against the real platform, reduced to fit ``make test``, and the scale report.

200 simulated sites for ~30 s against a real stack (Tansu, gateway, aggregation, dispatch, market), a
quarter of their streams cut once mid-run: every sample must be in Kafka exactly once under its own seq
(no gap, no duplicate), aggregation must see every site online, and an activation's commands must
reach every site. The wire encoding the fleet uses for speed is checked against the generated classes,
the Locust user against a short headless run, and ``make load-scale``'s report against made-up levels.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from vpp.v1 import (
    aggregation_pb2,
    aggregation_pb2_grpc,
    dispatch_pb2,
    gateway_pb2,
    market_api_pb2,
    market_api_pb2_grpc,
    telemetry_pb2,
)

from kafka_helpers import ack_records, telemetry_records
from vpp_demo import fleet as fleet_mod
from vpp_demo import scale_report
from vpp_demo.stack import DEMO_SECRET, Stack

LOCUSTFILE = Path(__file__).with_name("locustfile_scale.py")
SITES = 200
RUN_S = 30.0


# -- wire encoding and physics (no I/O) -----------------------------------------------------------------


def _values(n: int) -> dict[str, np.ndarray]:
    return {name: np.arange(n, dtype=float) + number / 10 for name, number in fleet_mod._TELEMETRY_DOUBLES}


def test_hand_encoded_messages_equal_the_generated_classes() -> None:
    """The fleet writes AgentMessage bytes itself (cheap); they must parse to exactly what protobuf builds."""
    site = "fleet-t-00001"
    measured_ns = 1_796_000_000_123_456_789
    rows = fleet_mod.encode_rows(_values(2), 2)
    assert {number for _, number in fleet_mod._TELEMETRY_DOUBLES} >= {17, 18, 19}  # two-byte tags too
    # The command in force: id, and the fencing of a dispatcher whose epoch and seq need multi-byte varints.
    tail = fleet_mod.command_tail("cmd-7", 300, 2**40 + 5)
    bodies = [
        fleet_mod.telemetry_bytes(
            fleet_mod.len_field(0x0A, site.encode()),
            fleet_mod.timestamp_field(0x12, measured_ns),
            rows[i * fleet_mod.ROW_BYTES : (i + 1) * fleet_mod.ROW_BYTES],
            tail if i else b"",
        )
        for i in range(2)
    ]
    ack = dispatch_pb2.CommandAck(command_id="cmd-7", site_id=site, status=dispatch_pb2.ACK_STATUS_APPLIED)
    site_field = fleet_mod.len_field(0x1A, site.encode())
    entries = [(5, fleet_mod.KIND_TELEMETRY, bodies[0]), (6, fleet_mod.KIND_ACK, ack.SerializeToString())]
    entries.append((7, fleet_mod.KIND_TELEMETRY, bodies[1]))
    got = gateway_pb2.AgentMessage.FromString(fleet_mod.agent_message_bytes(7, 3, site_field, entries))

    stamp = Timestamp()
    stamp.FromNanoseconds(measured_ns)
    expected_telemetry = [
        telemetry_pb2.Telemetry(
            site_id=site,
            measured_at=stamp,
            available=True,
            command_id="cmd-7" if i else "",
            leader_epoch=300 if i else 0,
            command_seq=2**40 + 5 if i else 0,
            **{name: float(i) + number / 10 for name, number in fleet_mod._TELEMETRY_DOUBLES},
        )
        for i in range(2)
    ]
    assert fleet_mod.command_tail("c", 0, 0) == telemetry_pb2.Telemetry(command_id="c").SerializeToString()
    batch = gateway_pb2.Batch()
    batch.entries.add(seq=5).telemetry.CopyFrom(expected_telemetry[0])
    batch.entries.add(seq=6).ack.CopyFrom(ack)
    batch.entries.add(seq=7).telemetry.CopyFrom(expected_telemetry[1])
    assert got == gateway_pb2.AgentMessage(seq=7, ack_seq=3, site_id=site, batch=batch)
    # A single entry goes as a plain message, not a Batch (as the uplink does).
    single = gateway_pb2.AgentMessage.FromString(fleet_mod.agent_message_bytes(5, 0, site_field, entries[:1]))
    assert single == gateway_pb2.AgentMessage(seq=5, site_id=site, telemetry=expected_telemetry[0])


def _flat_profile(pv_kw_per_kwp: float = 0.5, load_kw: float = 1.0) -> fleet_mod.Profile:
    return fleet_mod.Profile(np.array([0.0, 900.0]), np.full(2, pv_kw_per_kwp), np.full(2, load_kw))


def _physics(
    n: int, profile: fleet_mod.Profile | None = None, *, pv_kwp: float, load_scale: float, max_kw: float
) -> fleet_mod.Physics:
    """Sites with set sizes (the draws made equal), at 50 % SoC, after their first PV/load reading."""
    physics = fleet_mod.Physics(n, profile or _flat_profile(), np.random.default_rng(1))
    physics.pv_kwp[:], physics.load_scale[:], physics.max_kw[:], physics.soc[:] = pv_kwp, load_scale, max_kw, 50.0
    physics.time_shift_s[:] = 0.0
    physics.refresh(np.arange(n), 0.0)
    physics.battery[:] = np.clip(physics.load - physics.pv, -max_kw, max_kw)  # at local control
    return physics


def test_physics_clamps_the_setpoint_and_integrates_soc() -> None:
    physics = fleet_mod.Physics(2, _flat_profile(), np.random.default_rng(1))
    physics.soc[:] = [50.0, 10.0]  # site 1 sits at its reserve: it cannot discharge
    physics.setpoint[:] = [1e6, 1e6]
    now = time.time()
    physics.valid_until[:] = now + 10
    before = physics.soc.copy()
    idx = np.array([0, 1])
    physics.refresh(idx, 0.0)
    physics.advance(now, 1.0)
    out = physics.sample(idx)
    assert out["battery_power_kw"][0] == pytest.approx(physics.max_kw[0])  # clamped to the device limit
    assert out["battery_power_kw"][1] == 0.0  # clamped by the SoC reserve
    assert physics.soc[0] < before[0] and physics.soc[1] == before[1]  # discharging lowers SoC
    assert out["grid_power_kw"] == pytest.approx(out["load_power_kw"] - out["pv_power_kw"] - out["battery_power_kw"])
    assert list(out["offset_kw"]) == [0.0, 0.0]  # an absolute setpoint is no offset
    # Without a command the battery runs self-consumption, and that is the baseline.
    physics.advance(now + 20, 1.0)
    out = physics.sample(idx)
    want = np.clip(out["load_power_kw"] - out["pv_power_kw"], -physics.max_kw, [physics.max_kw[0], 0.0])
    assert out["battery_power_kw"] == pytest.approx(want)
    assert out["baseline_battery_kw"] == pytest.approx(want)
    assert out["baseline_grid_kw"] == pytest.approx(out["grid_power_kw"])
    assert not out["commanded"].any()


def test_an_offset_rides_on_the_moving_baseline_clamped_every_tick_and_the_meter_sees_it() -> None:
    # PV 0 -> 3 kW -> 0 over half an hour against a 1 kW load: the baseline goes 1 -> -2 -> 1 kW.
    profile = fleet_mod.Profile(np.array([0.0, 900.0, 1800.0]), np.array([0.0, 0.5, 0.0]), np.ones(3))
    physics = _physics(1, profile, pv_kwp=6.0, load_scale=1.0, max_kw=5.0)
    now = time.time()
    physics.is_offset[0], physics.offset[0], physics.valid_until[0] = True, 2.0, now + 100
    for t in (0.0, 450.0, 900.0, 1350.0):
        physics.refresh(np.array([0]), t)
        physics.advance(now, 0.1)
        out = physics.sample(np.array([0]))
        baseline = 1.0 - 3.0 * min(t, 1800 - t) / 900
        assert out["baseline_battery_kw"][0] == pytest.approx(baseline)
        assert out["battery_power_kw"][0] == pytest.approx(baseline + 2.0)
        assert out["setpoint_kw"][0] == pytest.approx(baseline + 2.0)
        assert out["offset_kw"][0] == pytest.approx(2.0)
        assert out["baseline_grid_kw"][0] - out["grid_power_kw"][0] == pytest.approx(2.0)  # delivery at the meter
    # Clamped to the limit every tick: the offset applied is what is left above the baseline.
    physics.offset[0] = 100.0
    physics.advance(now, 0.1)
    out = physics.sample(np.array([0]))
    assert out["battery_power_kw"][0] == pytest.approx(5.0)
    assert out["offset_kw"][0] == pytest.approx(5.0 - out["baseline_battery_kw"][0])
    assert physics.offset_sum == 100.0 and physics.target_sum == pytest.approx(out["offset_kw"][0])
    # Past valid_until: local control, no offset.
    physics.advance(now + 101, 0.1)
    out = physics.sample(np.array([0]))
    assert out["offset_kw"][0] == 0.0 and not out["commanded"][0]
    assert out["battery_power_kw"][0] == pytest.approx(out["baseline_battery_kw"][0])


def test_the_battery_follows_its_target_through_a_lag_and_a_ramp_limit() -> None:
    physics = _physics(2, pv_kwp=0.0, load_scale=0.0, max_kw=10.0)  # baseline 0
    physics.set_response(np.array([1.0, 0.0]), np.array([np.inf, 2.0]))
    now = time.time()
    physics.setpoint[:], physics.valid_until[:] = 5.0, now + 100
    for _ in range(10):  # 1 s at the tick rate
        physics.advance(now, 0.1)
    assert physics.battery[0] == pytest.approx(5.0 * (1 - math.exp(-1.0)))  # tau 1 s
    assert physics.battery[1] == pytest.approx(2.0)  # 2 kW/s
    assert list(physics.target) == [5.0, 5.0]
    assert physics.delivered_sum == pytest.approx(physics.battery.sum())
    assert physics.target_sum == pytest.approx(10.0)
    out = physics.sample(np.array([0, 1]))
    assert out["setpoint_kw"] == pytest.approx([5.0, 5.0])  # what the agent wrote, not what the battery does
    assert out["battery_power_kw"] == pytest.approx(physics.battery)
    for _ in range(100):
        physics.advance(now, 0.1)
    assert physics.battery == pytest.approx([5.0, 5.0], abs=1e-3)


def test_measurement_noise_is_on_battery_and_grid_and_the_baseline_grid_follows_the_measurement() -> None:
    physics = _physics(4000, pv_kwp=1.0, load_scale=1.0, max_kw=5.0)
    physics.noise_kw = 0.5
    physics.advance(time.time(), 0.1)
    idx = np.arange(4000)
    out = physics.sample(idx)
    assert np.std(out["battery_power_kw"] - physics.battery) == pytest.approx(0.5, rel=0.05)
    true_grid = physics.load - physics.pv - physics.battery
    assert np.std(out["grid_power_kw"] - true_grid) == pytest.approx(0.5, rel=0.05)
    measured_delivery = out["baseline_grid_kw"] - out["grid_power_kw"]
    assert measured_delivery == pytest.approx(out["battery_power_kw"] - out["baseline_battery_kw"])


# -- commands, fencing, failures, ground truth (a fleet without a gateway) ---------------------------------


class _Clock:
    """Wall time of tick ``k``: a whole second + k / 10 (+ any jump), so ticks fall into seconds predictably."""

    def __init__(self) -> None:
        self.base = float(int(time.time()))
        self.k = 0
        self.jumped_s = 0.0

    def ns(self) -> int:
        return int((self.base + self.jumped_s + self.k / fleet_mod.TICKS_PER_S) * 1e9)


def _fleet(n: int, tmp_path: Path | None = None, **config: Any) -> tuple[fleet_mod.Fleet, _Clock]:
    """Sites of 5 kW, no PV, 1 kW load (baseline: discharge 1 kW), all sampled in slot 0, on a fake clock."""
    cfg = fleet_mod.FleetConfig(targets=["127.0.0.1:9"], sites=n, block="u", secret="s", start_spread_s=0.1, **config)
    fleet = fleet_mod.Fleet(cfg, _flat_profile(0.0, 1.0), truth_path=tmp_path / "truth.jsonl" if tmp_path else None)
    p = fleet.physics
    p.pv_kwp[:], p.load_scale[:], p.max_kw[:], p.soc[:] = 0.0, 1.0, 5.0, 50.0
    p.refresh(np.arange(n), 0.0)
    clock = _Clock()
    fleet.clock_ns = clock.ns
    fleet.t0_mono, fleet.t0_wall = time.monotonic(), clock.base
    return fleet, clock


def _tick(fleet: fleet_mod.Fleet, clock: _Clock, ticks: int = 1) -> None:
    for _ in range(ticks):
        fleet._tick(clock.k, fleet.t0_mono + clock.k / fleet_mod.TICKS_PER_S)
        clock.k += 1


_ids = iter(range(10**9))


def _command(fleet: fleet_mod.Fleet, i: int, valid_s: float = 20.0, **fields: Any) -> dispatch_pb2.CommandAck:
    """Hand site ``i`` a command as the gateway would; the ack it queued."""
    link = fleet.links[i]
    command = dispatch_pb2.DispatchCommand(command_id=f"c{next(_ids)}", site_id=link.site_id, **fields)
    command.valid_until.FromNanoseconds(int((fleet.clock_ns() / 1e9 + valid_s) * 1e9))
    fleet._on_command(link, command, time.monotonic())
    entry = link.outbox[-1]
    assert entry.kind == fleet_mod.KIND_ACK
    return dispatch_pb2.CommandAck.FromString(entry.body)


def _last_sample(fleet: fleet_mod.Fleet, i: int) -> telemetry_pb2.Telemetry:
    entry = next(e for e in reversed(fleet.links[i].outbox) if e.kind == fleet_mod.KIND_TELEMETRY)
    return telemetry_pb2.Telemetry.FromString(entry.body)


def test_offset_commands_are_acked_clamped_and_fenced_as_the_agent_does() -> None:
    fleet, clock = _fleet(1)
    _tick(fleet, clock)
    ack = _command(fleet, 0, offset_kw=2.0, leader_epoch=3, seq=1, activation_id="act", step=7)
    assert ack.status == dispatch_pb2.ACK_STATUS_APPLIED
    assert (ack.requested_kw, ack.applied_kw, ack.battery_setpoint_kw) == pytest.approx((2.0, 2.0, 3.0))
    assert (ack.leader_epoch, ack.seq, ack.activation_id, ack.step) == (3, 1, "act", 7)
    _tick(fleet, clock, fleet_mod.TICKS_PER_S)  # the site is sampled once a second
    sample = _last_sample(fleet, 0)
    assert (sample.battery_power_kw, sample.baseline_battery_kw, sample.offset_kw) == pytest.approx((3.0, 1.0, 2.0))
    assert sample.baseline_grid_kw - sample.grid_power_kw == pytest.approx(2.0)
    assert (sample.leader_epoch, sample.command_seq, sample.command_id) == (3, 1, ack.command_id)

    ack = _command(fleet, 0, offset_kw=10.0, leader_epoch=3, seq=2)  # 1 kW baseline + 10 > 5 kW
    assert ack.status == dispatch_pb2.ACK_STATUS_CLAMPED and "max_discharge_kw=5" in ack.reason
    assert (ack.requested_kw, ack.applied_kw, ack.battery_setpoint_kw) == pytest.approx((10.0, 4.0, 5.0))
    # Re-delivered under the same (epoch, seq): not applied again; a deposed dispatcher: refused.
    ack = _command(fleet, 0, offset_kw=-3.0, leader_epoch=3, seq=2)
    assert ack.status == dispatch_pb2.ACK_STATUS_DUPLICATE and not ack.applied_kw
    ack = _command(fleet, 0, offset_kw=-3.0, leader_epoch=2, seq=50)
    assert ack.status == dispatch_pb2.ACK_STATUS_REJECTED and ack.reason.startswith("stale leader_epoch")
    assert fleet.physics.offset[0] == 10.0
    # Epoch 0 is unfenced (today's commands) and does not move the fence.
    ack = _command(fleet, 0, battery_setpoint_kw=-7.0)
    assert ack.status == dispatch_pb2.ACK_STATUS_CLAMPED
    assert (ack.applied_kw, ack.battery_setpoint_kw) == pytest.approx((-5.0, -5.0))
    assert _command(fleet, 0, offset_kw=0.5, leader_epoch=3, seq=2).status == dispatch_pb2.ACK_STATUS_DUPLICATE
    assert _command(fleet, 0, offset_kw=0.5, leader_epoch=4, seq=1).status == dispatch_pb2.ACK_STATUS_APPLIED
    assert _command(fleet, 0, valid_s=-1, offset_kw=1.0, leader_epoch=4, seq=2).status == (
        dispatch_pb2.ACK_STATUS_EXPIRED
    )
    # A takeover re-issuing a step the site already applied: applied (higher epoch), and counted.
    ack = _command(fleet, 0, offset_kw=2.0, leader_epoch=5, seq=1, activation_id="act", step=7)
    assert ack.status == dispatch_pb2.ACK_STATUS_APPLIED
    assert _command(fleet, 0, offset_kw=2.0, leader_epoch=5, seq=2, activation_id="act", step=8).status == 1
    counters = fleet.counters
    assert counters.acks_by_status == {
        "ACK_STATUS_APPLIED": 4,
        "ACK_STATUS_CLAMPED": 2,
        "ACK_STATUS_DUPLICATE": 2,
        "ACK_STATUS_REJECTED": 1,
        "ACK_STATUS_EXPIRED": 1,
    }
    assert (counters.duplicates_refused, counters.stale_epoch_refused, counters.double_applied) == (2, 1, 1)


def test_the_failure_schedule_is_seeded_and_leaves_the_physics_alone() -> None:
    def config(**kw: Any) -> fleet_mod.FleetConfig:
        return fleet_mod.FleetConfig(targets=["x:1"], sites=1000, block="f", secret="s", seed=7, **kw)

    failing = config(fail_share=0.1, fail_after_s=10.0, fail_before_s=70.0)
    schedule = fleet_mod.failure_schedule(failing)
    assert schedule == fleet_mod.failure_schedule(failing)
    assert schedule != fleet_mod.failure_schedule(dataclasses.replace(failing, seed=8))
    assert len(schedule) == 100 and len({f.idx for f in schedule}) == 100
    assert [f.after_s for f in schedule] == sorted(f.after_s for f in schedule)
    assert all(10.0 <= f.after_s <= 70.0 for f in schedule)
    assert {f.mode for f in schedule} == set(fleet_mod.FAILURE_MODES)
    assert all(0.2 <= f.share <= 0.7 if f.mode == "partial" else f.share == 1.0 for f in schedule)
    assert all(f.site_id == fleet_mod.site_ids("f", 1000)[f.idx] for f in schedule)
    only = fleet_mod.failure_schedule(dataclasses.replace(failing, fail_modes=("stuck",)))
    assert {f.mode for f in only} == {"stuck"}
    with pytest.raises(ValueError):
        fleet_mod.failure_schedule(dataclasses.replace(failing, fail_modes=("melts",)))
    assert fleet_mod.failure_schedule(config()) == []
    # Failures, lag and noise draw from streams of their own: the sites are the same.
    plain = fleet_mod.Fleet(config(), _flat_profile())
    other = fleet_mod.Fleet(dataclasses.replace(failing, lag_s=1.0, noise_kw=0.1), _flat_profile())
    assert plain.physics.max_kw == pytest.approx(other.physics.max_kw)
    assert list(plain._start_ticks) == list(other._start_ticks)
    assert other.failures == schedule
    assert other.physics.tau_s.min() >= 0.5 and other.physics.tau_s.max() <= 1.5


def test_failure_modes_and_the_ground_truth(tmp_path: Path) -> None:
    fleet, clock = _fleet(5, tmp_path)
    modes = ["silent", "stuck", "partial", "nack"]
    fleet.failures = [
        fleet_mod.Failure(link.site_id, i, mode, after_s=0.45, share=0.5 if mode == "partial" else 1.0)
        for i, (link, mode) in enumerate(zip(fleet.links, modes, strict=False))
    ]
    fleet._truth_file = (tmp_path / "truth.jsonl").open("a")
    _tick(fleet, clock)
    for i in range(5):
        assert _command(fleet, i, offset_kw=2.0).status == dispatch_pb2.ACK_STATUS_APPLIED
    _tick(fleet, clock, 4)
    assert fleet.physics.battery == pytest.approx([3.0] * 5)
    assert fleet.delivered_kw() == pytest.approx(10.0)
    _tick(fleet, clock, 2)  # the failures happen (tick 5)
    assert [link.failed for link in fleet.links] == [*modes, ""]
    samples_before = [len(link.outbox) for link in fleet.links]
    # stuck: frozen at 3 kW whatever it is told, acking as usual.
    assert _command(fleet, 1, offset_kw=-2.0).status == dispatch_pb2.ACK_STATUS_APPLIED
    # partial: half of the offset; the agent reports the whole of it (dispatch sees the gap at the meter).
    assert _command(fleet, 2, offset_kw=4.0).status == dispatch_pb2.ACK_STATUS_APPLIED
    # nack: local control at once, every command refused.
    ack = _command(fleet, 3, offset_kw=1.0)
    assert ack.status == dispatch_pb2.ACK_STATUS_REJECTED and ack.reason == "inverter fault"
    _tick(fleet, clock, 5)
    battery = fleet.physics.battery
    assert battery[1] == pytest.approx(3.0)
    assert battery[2] == pytest.approx(1.0 + 0.5 * 4.0)
    sample = _last_sample(fleet, 2)
    assert sample.offset_kw == pytest.approx(4.0)
    assert sample.baseline_grid_kw - sample.grid_power_kw == pytest.approx(2.0)
    assert battery[3] == pytest.approx(1.0) and not _last_sample(fleet, 3).offset_kw
    # silent: no more samples, but its battery holds the command until it reverts.
    assert len(fleet.links[0].outbox) == samples_before[0]
    assert len(fleet.links[4].outbox) > samples_before[4]
    assert battery[0] == pytest.approx(3.0)
    truth = fleet.physics.delivered_kw()
    assert truth == pytest.approx([2.0, 2.0, 2.0, 0.0, 2.0])
    assert fleet.delivered_kw() == pytest.approx(8.0)
    clock.jumped_s = 31.0  # past the silent site's command (and everyone else's)
    _tick(fleet, clock)
    assert fleet.physics.battery[[0, 2, 3, 4]] == pytest.approx([1.0] * 4)
    assert fleet.physics.battery[1] == pytest.approx(3.0)  # still stuck
    # Ground truth: one point per wall second, means over its ticks, in memory and in the file.
    fleet._emit_truth()
    fleet._truth_file.close()
    points = list(fleet.truth)
    assert [p["ticks"] for p in points] == [10, 2, 1] and points[-1]["failed"] == 4
    # Ticks 0-9: local control; 4 x 5 sites delivering 2 kW; from the failures (tick 5) the nack site 0 and
    # the partial one 1 kW (2 x 7); once the partial site is told 4 kW, 2 again (3 x 8).
    assert points[0]["delivered_kw"] == pytest.approx((0 + 4 * 10.0 + 2 * 7.0 + 3 * 8.0) / 10)
    # Offsets asked: 4 x 10, 2 x 8, then the stuck site told -2 and the partial one 4: 3 x 6.
    assert points[0]["offset_kw"] == pytest.approx((0 + 4 * 10.0 + 2 * 8.0 + 3 * 6.0) / 10)
    assert [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()] == points
    assert fleet.snapshot(final=False)["truth"] == points
    assert fleet.snapshot(final=False)["truth"] == []


def test_a_run_writes_the_failure_schedule_and_the_truth(tmp_path: Path) -> None:
    """The whole loop against no gateway at all (streams fail and retry): failures play, truth is written."""
    cfg = fleet_mod.FleetConfig(
        targets=["127.0.0.1:9"],
        sites=20,
        block="r",
        secret="s",
        start_spread_s=0.5,
        duration_s=2.5,
        drain_s=0.0,
        stats_interval_s=0.5,
        lag_s=1.0,
        ramp_pct_per_s=50.0,
        noise_kw=0.1,
        fail_share=0.5,
        fail_after_s=0.5,
        fail_before_s=1.5,
    )
    paths = [tmp_path / name for name in ("stats.jsonl", "summary.json", "truth.jsonl")]
    fleet = fleet_mod.Fleet(cfg, _flat_profile(), *paths)
    asyncio.run(fleet.run())
    summary = json.loads(paths[1].read_text())
    assert len(summary["failures"]) == 10 and all(f["played"] for f in summary["failures"])
    assert [f["at"] for f in summary["failures"]] == pytest.approx([summary["t0"] + f.after_s for f in fleet.failures])
    assert {s["failed"] for s in summary["sites"].values()} <= {"", *fleet_mod.FAILURE_MODES}
    assert sum(1 for s in summary["sites"].values() if s["failed"]) == 10
    truth = [json.loads(line) for line in paths[2].read_text().splitlines()]
    assert len(truth) >= 2 and set(truth[0]) == {"t", "delivered_kw", "offset_kw", "target_kw", "failed", "ticks"}
    assert truth[-1]["failed"] == 10
    assert sum(t["ticks"] for t in truth) >= 20
    stats = _stats(paths[0])
    assert [p for line in stats for p in line["truth"]] == truth
    assert stats[-1]["failed"] == 10


# -- the report (made-up levels) --------------------------------------------------------------------------


def _level(sites: int, *, acked: float = 1.0, p99: float = 200.0) -> dict[str, Any]:
    k = sites / 1000
    return {
        "sites": sites,
        "acked_share": acked,
        "ack_p50_ms": 40.0,
        "ack_p99_ms": p99,
        "view_fresh_p99_s": 0.6,
        "view_call_p99_ms": 3.0,
        "lag_max_records": 12.0,
        "lag_bounded": True,
        "gateway_cpu_pct": 10 + 8 * k,
        "broker_cpu_pct": 15 + 5 * k,
        "aggregation_cpu_pct": 5 + 3 * k,
        "dispatch_cpu_pct": 8 + 4 * k,
        "harness_cpu_pct": 2 + 9 * k,
        "fleet_cpu_pct": 1 + 8 * k,
        "locust_cpu_pct": 0.5,
        "driver_cpu_pct": 0.5,
        "other_cpu_pct": 3.0,
        "gateway_rss_mb": 80 + 40 * k,
        "commands": {"received_share": 1.0, "p50_ms": 30.0, "p99_ms": 90.0, "received": 10, "expected": 10},
    }


def test_report_has_the_required_keys_fits_costs_and_decides_what_is_held(tmp_path: Path) -> None:
    from vpp_demo.scale import _clean

    levels = [_level(1000), _level(2500), _level(5000, p99=1500.0), _level(10000, acked=0.95, p99=9000.0)]
    replicated = [_level(5000)]
    replicated[0]["replica_shares"] = {"gateway-0": "2500 sites connected"}
    consume = {
        "raw": {
            "records": 10,
            "records_per_s": 5000.0,
            "samples": 40,
            "samples_per_s": 20000.0,
            "bytes_per_sample": 200,
        },
        "raw_decode": {"samples_per_s": 15000.0},
        "aggregation": {"records_per_s": 2000.0, "samples_per_s": 8000.0},
        "ratio_aggregation_over_raw": 0.4,
    }
    baseline: dict[str, Any] = {"sites": 0, "window_s": 30.0}
    baseline.update({k: v for k, v in _level(0).items() if k.endswith("_cpu_pct")})
    meta = {"block_sites": 500, "notes": ["made up"], "baseline": baseline}
    report = scale_report.build_report(levels, replicated, consume, meta)
    for key in scale_report.REQUIRED_KEYS:
        assert key in report
    for level in report["levels"]:
        assert set(scale_report.REQUIRED_LEVEL_KEYS) <= set(level)
    assert set(report["commands"]) >= {"sites", "received_share", "p50_ms", "p99_ms"}
    assert [lv["held"] for lv in levels] == [True, True, False, False]
    assert any("ack p99 1500 ms" in m for m in levels[2]["missed"])
    assert report["max_sites_held"] == 5000  # with two replicas
    assert report["max_sites_held_single_replica"] == 2500
    # Fitted over the idle platform and the levels where every sample was acked (5,000 was, if late; 10,000
    # was not): exactly linear here.
    assert report["cost_per_1000_sites_pct_of_core"]["gateway"] == pytest.approx(8.0)
    assert report["cost_fit"]["gateway"]["fixed_pct"] == pytest.approx(10.0)
    assert report["cost_fit"]["gateway"]["levels_used"] == [0, 1000, 2500, 5000]
    assert report["sizing"]["100000"]["gateway"]["replicas"] >= 2
    text = json.dumps(_clean(report))  # no NaN in the JSON
    assert "NaN" not in text
    (tmp_path / "scale.md").write_text(scale_report.markdown(report))
    assert "| 5,000 |" in (tmp_path / "scale.md").read_text()
    timeline = [{"t": float(t), "generated_per_s": 100.0, "acked_per_s": 99.0, "lag_max": 1.0} for t in range(10)]
    scale_report.write_plot(timeline, [{"t0": 1.0, "t1": 5.0, "label": "1k", "held": True}], tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 10_000


def test_statistics_helpers() -> None:
    assert scale_report.hist_percentile({10: 98, 500: 2}, 0.99) == 500.0
    assert scale_report.hist_percentile({10: 99, 500: 1}, 0.99) == 10.0
    assert math.isnan(scale_report.percentile([], 0.5))
    assert scale_report.lag_bounded([5, 6, 5, 6, 5, 7])
    assert not scale_report.lag_bounded([0, 10, 100, 400, 900, 1600])


# -- against the real platform ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = Path(tmp_path_factory.mktemp("fleet"))
    services = ("gateway", "aggregation", "dispatch", "market")
    with Stack(workdir, sites=(), services=services, progress=lambda m: None) as s:
        yield s


@pytest.fixture(scope="module")
def profile_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fleet_mod.Profile.real().write_csv(Path(tmp_path_factory.mktemp("profile")) / "profile.csv")


def _stats(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_every_sample_lands_once_every_site_is_online_and_every_command_arrives(
    stack: Stack, profile_csv: Path, tmp_path: Path
) -> None:
    stats, summary = tmp_path / "stats.jsonl", tmp_path / "summary.json"
    argv = [sys.executable, "-m", "vpp_demo.fleet", "--targets", stack.target("gateway"), "--sites", str(SITES)]
    argv += ["--block", "t", "--profile", str(profile_csv), "--stats-file", str(stats), "--summary-file", str(summary)]
    argv += ["--duration-s", str(RUN_S), "--drop-at-s", "20", "--drop-share", "0.25", "--secret", DEMO_SECRET]
    fleet = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        aggregation = aggregation_pb2_grpc.AggregationServiceStub(stack.channel("aggregation"))
        deadline = time.monotonic() + 20
        online = 0
        while time.monotonic() < deadline and online < SITES:
            online = aggregation.GetPortfolioFlexibility(
                aggregation_pb2.GetPortfolioFlexibilityRequest(), timeout=5
            ).sites_online
            time.sleep(0.5)
        assert online == SITES, f"aggregation saw {online}/{SITES} sites online"
        market = market_api_pb2_grpc.MarketSimulatorStub(stack.channel("market"))
        activation = market.StartActivation(
            market_api_pb2.StartActivationRequest(
                product="aFRR", step_s=4, phases=[market_api_pb2.ActivationPhase(fraction=0.3, duration_s=8)]
            ),
            timeout=10,
        ).activation_id
        _, err = fleet.communicate(timeout=RUN_S + 40)
    finally:
        if fleet.poll() is None:
            fleet.kill()
    assert fleet.returncode == 0, err

    report = json.loads(summary.read_text())
    sites = report["sites"]
    assert len(sites) == SITES
    assert all(not s["unacked"] for s in sites.values()), "the fleet drained: every entry acked"
    assert report["counters"]["reconnects"] >= SITES // 10, "the test cut a quarter of the streams"

    # Kafka holds every sample exactly once under its own seq, and every command ack too.
    ids = Counter(r.message_id for r in telemetry_records(stack.bootstrap_servers, min_records=1))
    ack_ids = Counter(r.message_id for r in ack_records(stack.bootstrap_servers, min_records=1))
    expected_samples: set[str] = set()
    expected_acks: set[str] = set()
    for site_id, s in sites.items():
        acks = set(s["ack_seqs"])
        for seq in range(1, s["last_seq"] + 1):
            (expected_acks if seq in acks else expected_samples).add(f"{site_id}:{s['epoch']}:{seq}")
    mine = {k: v for k, v in ids.items() if k.startswith("fleet-t-")}
    assert set(mine) == expected_samples, "a gap or a foreign id"
    assert max(mine.values()) == 1, f"duplicates: {[k for k, v in mine.items() if v > 1][:5]}"
    assert {k for k in ack_ids if k.startswith("fleet-t-")} == expected_acks
    assert max(v for k, v in ack_ids.items() if k.startswith("fleet-t-")) == 1
    assert report["counters"]["acked"] == report["counters"]["generated"] == len(expected_samples)

    # The first step reached every site; the second repeats the setpoint, so dispatch re-commands only
    # the sites whose offset moved by more than its deadband (none may be lost or foreign).
    lines = _stats(stats)
    received = {(site, step) for line in lines for site, act, step, *_ in line["cmds"] if act == activation}
    assert {(site, 1) for site in sites} <= received
    assert received <= {(site, step) for site in sites for step in (1, 2)}
    assert lines[-1]["final"] and lines[-1]["overdue"] == 0


@pytest.mark.slow
def test_locust_user_reports_acks_and_commands(stack: Stack, profile_csv: Path, tmp_path: Path) -> None:
    """The locustfile as Locust runs it (gevent, headless): its events land in Locust's CSV stats."""
    env = dict(os.environ)
    env.update(
        {
            "VPP_FLEET_TARGETS": stack.target("gateway"),
            "VPP_FLEET_BLOCK_SITES": "50",
            "VPP_FLEET_STATS_DIR": str(tmp_path / "fleet"),
            "VPP_FLEET_PROFILE": str(profile_csv),
            "VPP_FLEET_SECRET": DEMO_SECRET,
            "VPP_FLEET_BLOCK_PREFIX": "loc",
        }
    )
    env.pop("VPP_FLEET_CONTROL", None)
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-r", "1", "-t", "14s"]
    argv += ["--csv", str(tmp_path / "locust"), "--only-summary", "-L", "WARNING"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with (tmp_path / "locust_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    acks = rows["telemetry message: stream write -> gateway ack"]
    assert int(acks["Request Count"]) >= 50 and int(acks["Failure Count"]) == 0
