"""Two dispatch replicas wired to an in-memory log (the Kafka path is covered by the e2e failover test):
the standby follows the active replica's run states and, on takeover, continues from the offsets in
force, measured against the sites' own baselines, so the next setpoints are not doubled."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from vpp.v1 import dispatch_pb2, envelope_pb2, market_pb2, telemetry_pb2

from dispatch.service import Dispatcher
from dispatch.settings import DispatchSettings
from vpp_common.envelope import wrap
from vpp_common.topics import COMMANDS, RUNS


class Log:
    """Records every publish and resolves it at once (a broker that always accepts)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, Any]] = []

    def publish(self, topic: Any, key: str, payload: Any, **_: Any) -> asyncio.Future[Any]:
        self.records.append((topic.name, payload))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def settle(self, futures: Any = None) -> None:
        return None

    def of(self, topic: Any) -> list[Any]:
        return [p for name, p in self.records if name == topic.name]


def item(payload: Any) -> Any:
    return SimpleNamespace(env=wrap(payload, source="test"))


def telemetry(site_id: str, baseline_kw: float, offset_kw: float, load_kw: float = 2.0) -> telemetry_pb2.Telemetry:
    """A site applying ``offset_kw`` on top of its self-consumption baseline (battery covers the load)."""
    battery = baseline_kw + offset_kw
    t = telemetry_pb2.Telemetry(
        site_id=site_id,
        available=True,
        load_power_kw=load_kw,
        battery_power_kw=battery,
        grid_power_kw=load_kw - battery,
        baseline_battery_kw=baseline_kw,
        baseline_grid_kw=load_kw - baseline_kw,
        offset_kw=offset_kw,
        soc_pct=60,
        battery_capacity_kwh=20,
        max_charge_kw=10,
        max_discharge_kw=10,
        soc_min_pct=10,
        soc_max_pct=95,
    )
    t.measured_at.GetCurrentTime()
    return t


def activation(step: int, setpoint_kw: float) -> market_pb2.Activation:
    act = market_pb2.Activation(activation_id="act-1", step=step, setpoint_kw=setpoint_kw, product="aFRR")
    act.issued_at.GetCurrentTime()
    act.valid_until.FromNanoseconds(time.time_ns() + 8_000_000_000)
    return act


def feed_sites(replicas: list[Dispatcher], offsets: dict[str, float]) -> None:
    batch = envelope_pb2.Envelope().telemetry_batch
    for site_id, offset in offsets.items():
        batch.records.add(message_id=f"{site_id}:{time.time_ns()}", telemetry=telemetry(site_id, 2.0, offset))
    for r in replicas:
        for record in batch.records:
            r.table.update(record.telemetry)


def commanded(log: Log, after: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for batch in log.of(COMMANDS)[after:]:
        for cmd in batch.commands:
            out[cmd.site_id] = cmd.offset_kw
    return out


def test_standby_continues_from_the_offsets_in_force_without_doubling() -> None:
    asyncio.run(_standby_continues())


async def _standby_continues() -> None:
    log_a, log_b = Log(), Log()
    settings = {"site_partitions": 4, "deadband_kw": 0.0}
    a = Dispatcher(DispatchSettings(instance_id="a", **settings), log_a)  # type: ignore[arg-type]
    b = Dispatcher(DispatchSettings(instance_id="b", **settings), log_b)  # type: ignore[arg-type]
    sites = {f"s{i}": 0.0 for i in range(4)}
    feed_sites([a, b], sites)
    claim = a.lease.claim(time.monotonic())
    for r in (a, b):
        await r.on_lease(item(claim))
    assert a.lease.leading and not b.lease.leading

    for k in (1, 2):
        act = activation(k, 16.0)
        for r in (a, b):
            await r.on_activation(item(act))
        for state in log_a.of(RUNS)[-1:]:
            await b.on_run_state(item(state))
    first = commanded(log_a, 0)
    assert sum(first.values()) == pytest.approx(16.0)
    assert not log_b.of(COMMANDS)  # the standby never acts
    # The sites now deliver their offsets: battery power = baseline + offset (the trap of a frozen baseline).
    feed_sites([a, b], first)

    # a dies; b claims and reads its claim back, then executes step 3 (issued while a was gone).
    act = activation(3, 16.0)
    await b.on_activation(item(act))
    assert not log_b.of(COMMANDS)
    claim_b = b.lease.claim(time.monotonic())
    await b.on_lease(item(claim_b))
    assert b.lease.leading
    taken = commanded(log_b, 0)
    assert sum(taken.values()) == pytest.approx(16.0)  # not 32: offsets ride on the sites' own baselines
    for site_id, offset in taken.items():
        assert offset == pytest.approx(first[site_id], abs=1.0)
    cmd = log_b.of(COMMANDS)[0].commands[0]
    assert cmd.leader_epoch == 2 and cmd.seq == 1
    assert log_b.of(RUNS)[-1].step == 3


def test_a_deposed_replica_stops_acting_when_it_reads_a_higher_epoch() -> None:
    asyncio.run(_deposed_stops())


async def _deposed_stops() -> None:
    log_a = Log()
    a = Dispatcher(DispatchSettings(instance_id="a", site_partitions=4), log_a)  # type: ignore[arg-type]
    feed_sites([a], {"s0": 0.0})
    await a.on_lease(item(a.lease.claim(time.monotonic())))
    await a.on_lease(item(dispatch_pb2.DispatchLease(holder="b", epoch=2)))
    await a.on_activation(item(activation(1, 5.0)))
    assert not log_a.of(COMMANDS)
    assert (a.lease.holder, a.lease.epoch, a.lease.leading) == ("b", 2, False)


def test_two_activations_share_sites_and_never_exceed_them_in_sum() -> None:
    asyncio.run(_two_activations())


async def _two_activations() -> None:
    log = Log()
    d = Dispatcher(DispatchSettings(instance_id="a", site_partitions=4, deadband_kw=0.0), log)  # type: ignore[arg-type]
    feed_sites([d], {f"s{i}": 0.0 for i in range(3)})  # each: baseline 2 kW, 10 kW inverter -> up 8 kW
    await d.on_lease(item(d.lease.claim(time.monotonic())))
    afrr = activation(1, 15.0)
    mfrr = market_pb2.Activation(activation_id="mfrr-1", step=1, setpoint_kw=15.0, product="mFRR")
    mfrr.issued_at.GetCurrentTime()
    mfrr.valid_until.FromNanoseconds(time.time_ns() + 8_000_000_000)
    await d.on_activation(item(afrr))
    await d.on_activation(item(mfrr))
    latest: dict[str, dispatch_pb2.DispatchCommand] = {}
    for batch in log.of(COMMANDS):
        for cmd in batch.commands:
            latest[cmd.site_id] = cmd
    assert sum(c.offset_kw for c in latest.values()) == pytest.approx(24.0)  # 8 kW up per site in all
    for cmd in latest.values():
        assert cmd.offset_kw <= 8.0 + 1e-6
        assert cmd.offset_kw == pytest.approx(sum(s.offset_kw for s in cmd.shares))
    runs = {r.activation_id: r for r in log.of(RUNS)}
    assert runs["mfrr-1"].unallocated_kw == pytest.approx(6.0)  # the second activation gets what is left
