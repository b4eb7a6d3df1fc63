"""Shared test helpers: a fake device with a frozen clock, and command builders."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from vpp.v1 import dispatch_pb2

from vpp_edge.devices import DeviceError, DeviceSnapshot, WriteResult

T = TypeVar("T")

T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


def snapshot(**overrides: float) -> DeviceSnapshot:
    base = DeviceSnapshot(
        measured_at=T0,
        pv_power_kw=0.0,
        load_power_kw=0.0,
        battery_power_kw=0.0,
        grid_power_kw=0.0,
        soc_pct=50.0,
        capacity_kwh=10.0,
        max_charge_kw=5.0,
        max_discharge_kw=5.0,
        soc_min_pct=5.0,
        soc_max_pct=95.0,
        read_rtt_ms=1.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def command(
    setpoint_kw: float | None = None,
    *,
    offset_kw: float | None = None,
    command_id: str = "cmd-1",
    site_id: str = "site-1",
    issued_at: datetime = T0,
    valid_for_s: float = 60.0,
    leader_epoch: int = 0,
    seq: int = 0,
) -> dispatch_pb2.DispatchCommand:
    """An absolute command (setpoint_kw), an offset command (offset_kw), or one with no target."""
    cmd = dispatch_pb2.DispatchCommand(
        command_id=command_id,
        site_id=site_id,
        activation_id="act-1",
        step=1,
        issued_at=ts(issued_at),
        valid_until=ts(issued_at + timedelta(seconds=valid_for_s)),
        leader_epoch=leader_epoch,
        seq=seq,
    )
    if setpoint_kw is not None:
        cmd.battery_setpoint_kw = setpoint_kw
    if offset_kw is not None:
        cmd.offset_kw = offset_kw
    return cmd


class FakeBridge:
    host = "fake"
    port = 502
    unit_id = 1


class FakeDevice:
    """Stands in for HybridInverter: serves a scripted snapshot and records setpoint writes."""

    def __init__(self, snap: DeviceSnapshot | None = None) -> None:
        self.bridge = FakeBridge()
        self.next_snapshot: DeviceSnapshot | None = snap or snapshot()
        self.fail_reads = False
        self.fail_writes = False
        self._snapshot: DeviceSnapshot | None = None
        self.writes: list[float] = []

    @property
    def snapshot(self) -> DeviceSnapshot | None:
        return self._snapshot

    @property
    def available(self) -> bool:
        return self._snapshot is not None

    async def read(self) -> DeviceSnapshot:
        if self.fail_reads or self.next_snapshot is None:
            self._snapshot = None
            raise DeviceError("scripted read failure")
        self._snapshot = self.next_snapshot
        return self._snapshot

    async def write_battery_setpoint(self, setpoint_kw: float, revert_s: int) -> WriteResult:
        if self.fail_writes:
            raise DeviceError("scripted write failure")
        self.writes.append(setpoint_kw)
        return WriteResult(applied_kw=setpoint_kw, written_at=datetime.now(UTC), write_ms=0.5)


class MeterDevice(FakeDevice):
    """A FakeDevice behind one grid meter: by the next read the battery runs the last setpoint
    written, and the meter balances the site (grid = load - pv - battery, > 0 import)."""

    def __init__(self, *, pv_kw: float = 0.0, load_kw: float = 0.0, **overrides: float) -> None:
        super().__init__(snapshot(**overrides))
        self.pv_kw = pv_kw
        self.load_kw = load_kw

    async def read(self) -> DeviceSnapshot:
        if self.next_snapshot is not None:
            battery_kw = self.writes[-1] if self.writes else 0.0
            self.next_snapshot = replace(
                self.next_snapshot,
                pv_power_kw=self.pv_kw,
                load_power_kw=self.load_kw,
                battery_power_kw=battery_kw,
                grid_power_kw=self.load_kw - self.pv_kw - battery_kw,
            )
        return await super().read()


class FrozenClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 15.0) -> T:
    """Run a test coroutine in a fresh loop with a hard bound (no pytest-asyncio needed)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=timeout_s)

    return asyncio.run(bounded())
