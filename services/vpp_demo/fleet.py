"""Fleet simulator: one process plays many edge agents against the real gateway, for load tests.

A real agent per site is a Python process of its own (~60 MB, a Modbus device simulator next to it);
10,000 of them do not fit on a test machine, and their own CPU would drown what we want to measure.
So one asyncio process plays ``N`` sites, each with its own identity (site id, token, agent epoch) and
its own ``EdgeGateway/Connect`` stream, speaking the protocol the way ``vpp_edge.uplink`` does:

* hello (epoch, last gateway seq), nothing sent before the Welcome; entries the Welcome covers leave
  the outbox and the rest is re-sent at once, in messages of at most 64 entries;
* one seq per outbox entry per epoch, from 1; samples wait up to ``batch_interval_s`` (10 s, the agent's
  default) and go as one ``Batch``; a ``CommandAck`` goes within ``ack_spread_s`` (at a random moment)
  with the samples taken so far (those of the step before it); a single entry goes as a plain
  telemetry/ack message, not a Batch;
* every entry stays in the outbox until the gateway's cumulative ``ack_seq`` covers it (bounded like
  the agent's: the oldest telemetry goes first); streams reconnect with jittered backoff;
* gateway messages with a seq are processed once per session, commands once per ``command_id``; our
  ``ack_seq`` rides on the next message, or on a heartbeat after ``ack_max_delay_s`` if none is due.

Physics is vectorised over sites (numpy): PV and household load replay the same real series as the
demo (NREL PVDAQ 50, UCI household; ``vpp_demo.profiles``), scaled per site and shifted in time so
sites differ; the battery follows the command's setpoint clamped to its power and SoC limits (or runs
self-consumption when no command is valid) and its SoC is integrated at 1 Hz.

What keeps it cheap (its own CPU is in every stats line): samples are encoded straight to protobuf wire
bytes from one numpy row per site (checked against the generated classes in the tests), a central
10 Hz tick serves every site (sites spread over the ten 100 ms slots and, through their start times,
over the batch window) instead of a timer per site, and ~100 streams share one HTTP/2 channel.

It records, per sample, the time from the stream write to the gateway's ack covering it; per command,
receipt time, activation id and step; and counts of samples generated, sent and acked. Every
``stats_interval_s`` it appends one JSON line to ``--stats-file`` (read by the Locust user and by the
scale driver), and at exit writes ``--summary-file`` (per-site epochs and seqs, for exactly-once checks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from vpp.v1 import dispatch_pb2, gateway_pb2

from gateway.auth import site_token

AGENT_VERSION = "vpp-fleet/1"
CONNECT_METHOD = "/vpp.v1.EdgeGateway/Connect"
SEEN_COMMANDS_MAX = 4096  # as vpp_edge.uplink
SETPOINT_REVERT_S = 30.0  # as vpp_edge settings.setpoint_revert_s: a setpoint never outlives this
OVERDUE_S = 20.0  # a sample not acked this long after it was taken counts as a failure (batch wait included)
SOC_MIN_PCT = 10.0  # the agent's default reserve and ceiling (vpp_edge settings)
SOC_MAX_PCT = 95.0
CHARGE_EFFICIENCY = 0.95
TICKS_PER_S = 10

KIND_TELEMETRY = 0
KIND_ACK = 1

# -- protobuf wire encoding of the hot path (AgentMessage / Batch / BatchEntry / Telemetry) ---------------
# Field tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited).
_TELEMETRY_DOUBLES = (
    ("pv_power_kw", 4),
    ("load_power_kw", 5),
    ("battery_power_kw", 6),
    ("grid_power_kw", 7),
    ("soc_pct", 8),
    ("battery_capacity_kwh", 9),
    ("max_charge_kw", 10),
    ("max_discharge_kw", 11),
    ("soc_min_pct", 12),
    ("soc_max_pct", 13),
    ("setpoint_kw", 14),
)
ROW_DTYPE = np.dtype(
    [("tag_available", "u1"), ("available", "u1")]
    + [item for name, _ in _TELEMETRY_DOUBLES for item in ((f"tag_{name}", "u1"), (name, "<f8"))]
)
ROW_BYTES = ROW_DTYPE.itemsize
_ROW_TEMPLATE = np.zeros(1, dtype=ROW_DTYPE)
_ROW_TEMPLATE["tag_available"] = (3 << 3) | 0
_ROW_TEMPLATE["available"] = 1
for _name, _number in _TELEMETRY_DOUBLES:
    _ROW_TEMPLATE[f"tag_{_name}"] = (_number << 3) | 1


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def len_field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (tag < 128)."""
    return bytes((tag,)) + varint(len(payload)) + payload


def timestamp_field(tag: int, unix_ns: int) -> bytes:
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    body = b"\x08" + varint(seconds) + (b"\x10" + varint(nanos) if nanos else b"")
    return len_field(tag, body)


def encode_rows(values: dict[str, np.ndarray], n: int) -> bytes:
    """The fixed part of ``n`` Telemetry messages (available + the eleven doubles), one row per site."""
    rows = np.repeat(_ROW_TEMPLATE, n)
    for name, _ in _TELEMETRY_DOUBLES:
        rows[name] = values[name]
    return rows.tobytes()


def telemetry_bytes(site_field: bytes, measured_at_field: bytes, row: bytes, command_id: str) -> bytes:
    """A serialized ``Telemetry``: site_id (1), measured_at (2), the row, command_id (15)."""
    tail = len_field(0x7A, command_id.encode()) if command_id else b""
    return site_field + measured_at_field + row + tail


def agent_message_bytes(seq: int, ack_seq: int, site_field: bytes, entries: Sequence[tuple[int, int, bytes]]) -> bytes:
    """An ``AgentMessage``: one entry as a plain telemetry/ack message, several as a ``Batch`` (as the uplink)."""
    head = b"\x08" + varint(seq) + (b"\x10" + varint(ack_seq) if ack_seq else b"") + site_field
    if len(entries) == 1:
        _, kind, body = entries[0]
        return head + len_field(0x5A if kind == KIND_TELEMETRY else 0x62, body)
    parts = []
    for entry_seq, kind, body in entries:
        inner = b"\x08" + varint(entry_seq) + len_field(0x12 if kind == KIND_TELEMETRY else 0x1A, body)
        parts.append(len_field(0x0A, inner))
    return head + len_field(0x72, b"".join(parts))


def _identity(data: bytes) -> bytes:
    return data


# -- site portfolio ------------------------------------------------------------------------------------

# (share, pv kWp, battery kWh, battery kW, load scale): mostly homes, some schools, farms and factories,
# the demo's site kinds (vpp_demo.sites); each site is drawn around its kind's sizes (±30 %).
SITE_KINDS: tuple[tuple[float, float, float, float, float], ...] = (
    (0.80, 6.0, 11.0, 5.0, 1.1),
    (0.08, 30.0, 60.0, 30.0, 6.0),
    (0.07, 50.0, 100.0, 40.0, 4.0),
    (0.05, 100.0, 200.0, 100.0, 20.0),
)


@dataclass
class Profile:
    """The real 15-minute PV (kW per kWp) and load (kW) series, replayed periodically."""

    offset_s: np.ndarray
    pv_kw_per_kwp: np.ndarray
    load_kw: np.ndarray

    @property
    def period_s(self) -> float:
        return float(self.offset_s[-1] + (self.offset_s[1] - self.offset_s[0]))

    @classmethod
    def from_csv(cls, path: Path) -> Profile:
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        return cls(data[:, 0], data[:, 1], data[:, 2])

    @classmethod
    def real(cls) -> Profile:
        """The demo's series (imports pandas and the data loaders: a few seconds; prefer a CSV)."""
        from forecasting.data.profiles import real_profile
        from vpp_demo.profiles import HOURS, LOAD_START, PV_START

        pv = real_profile("pv", PV_START, HOURS).to_numpy()
        load = real_profile("load", LOAD_START, HOURS).to_numpy()
        n = min(len(pv), len(load))
        return cls(np.arange(n) * 900.0, pv[:n].astype(float), load[:n].astype(float))

    def write_csv(self, path: Path) -> Path:
        rows = np.column_stack([self.offset_s, self.pv_kw_per_kwp, self.load_kw])
        np.savetxt(path, rows, delimiter=",", header="offset_s,pv_kw_per_kwp,load_kw", comments="", fmt="%.6f")
        return path


class Physics:
    """Every site's PV, load and battery as numpy arrays; ``step`` advances a subset by one second."""

    def __init__(self, n: int, profile: Profile, rng: np.random.Generator) -> None:
        kinds = np.array(SITE_KINDS)
        pick = rng.choice(len(kinds), size=n, p=kinds[:, 0] / kinds[:, 0].sum())
        jitter = rng.uniform(0.7, 1.3, size=(n, 4))
        self.pv_kwp = kinds[pick, 1] * jitter[:, 0]
        self.capacity_kwh = kinds[pick, 2] * jitter[:, 1]
        self.max_kw = kinds[pick, 3] * jitter[:, 2]
        self.load_scale = kinds[pick, 4] * jitter[:, 3]
        self.soc = rng.uniform(30.0, 80.0, size=n)
        self.time_shift_s = rng.uniform(0.0, profile.period_s, size=n)
        self.setpoint = np.zeros(n)
        self.valid_until = np.zeros(n)  # unix s; a setpoint holds until then
        self.battery = np.zeros(n)
        self.profile = profile
        self.command_ids = [""] * n

    def limits(self, idx: np.ndarray | int) -> tuple[Any, Any]:
        """(max discharge, max charge) in kW now: the device limit, zero at the SoC reserve/ceiling."""
        discharge = np.where(self.soc[idx] > SOC_MIN_PCT, self.max_kw[idx], 0.0)
        charge = np.where(self.soc[idx] < SOC_MAX_PCT, self.max_kw[idx], 0.0)
        return discharge, charge

    def step(self, idx: np.ndarray, elapsed_s: float, now_s: float) -> dict[str, np.ndarray]:
        p = self.profile
        t = elapsed_s + self.time_shift_s[idx]
        pv = np.interp(t, p.offset_s, p.pv_kw_per_kwp, period=p.period_s) * self.pv_kwp[idx]
        load = np.interp(t, p.offset_s, p.load_kw, period=p.period_s) * self.load_scale[idx]
        commanded = self.valid_until[idx] > now_s
        target = np.where(commanded, self.setpoint[idx], load - pv)  # no command: self-consumption
        discharge, charge = self.limits(idx)
        battery = np.clip(target, -charge, discharge)
        energy_kwh = np.where(battery < 0, battery * CHARGE_EFFICIENCY, battery) / 3600.0
        self.soc[idx] = np.clip(self.soc[idx] - energy_kwh / self.capacity_kwh[idx] * 100.0, 0.0, 100.0)
        self.battery[idx] = battery
        return {
            "pv_power_kw": pv,
            "load_power_kw": load,
            "battery_power_kw": battery,
            "grid_power_kw": load - pv - battery,
            "soc_pct": self.soc[idx],
            "battery_capacity_kwh": self.capacity_kwh[idx],
            "max_charge_kw": self.max_kw[idx],
            "max_discharge_kw": self.max_kw[idx],
            "soc_min_pct": np.full(len(idx), SOC_MIN_PCT),
            "soc_max_pct": np.full(len(idx), SOC_MAX_PCT),
            "setpoint_kw": np.where(commanded, self.setpoint[idx], battery),
            "commanded": commanded,
        }


# -- per-site protocol state ---------------------------------------------------------------------------


class Entry:
    """One outbox entry: a sample or a command ack, kept until the gateway's ack_seq covers it."""

    __slots__ = ("acked", "body", "gen_s", "kind", "overdue", "queued_at", "seq", "written_at")

    def __init__(self, seq: int, kind: int, body: bytes, gen_s: int, queued_at: float) -> None:
        self.seq = seq
        self.kind = kind
        self.body = body
        self.gen_s = gen_s  # unix second the entry was created (acked share is counted per second)
        self.queued_at = queued_at  # monotonic (scheduled tick time for samples)
        self.written_at = 0.0  # monotonic time of its latest stream write
        self.overdue = False
        self.acked = False


class SiteLink:
    """One site's identity, outbox and stream, as ``vpp_edge.uplink.Uplink`` keeps them."""

    __slots__ = (
        "ack_dirty_since",
        "ack_flush_at",
        "ack_seqs",
        "call",
        "dropping",
        "epoch",
        "first_unsent_ack_at",
        "idx",
        "inflight",
        "last_gateway_seq",
        "last_write",
        "metadata",
        "next_seq",
        "outbox",
        "reconnects",
        "seen",
        "seen_order",
        "session_gateway_seq",
        "site_field",
        "site_id",
        "start_tick",
        "target",
        "unsent",
        "watch",
        "welcomed",
        "writer",
    )

    def __init__(self, idx: int, site_id: str, token: str, target: str, start_tick: int) -> None:
        self.idx = idx
        self.site_id = site_id
        self.metadata = (("x-site-id", site_id), ("x-site-token", token))
        self.target = target
        self.epoch = uuid.uuid4().hex
        self.site_field = len_field(0x1A, site_id.encode())  # AgentMessage.site_id is field 3
        self.next_seq = 1
        self.outbox: deque[Entry] = deque()
        self.unsent: list[Entry] = []
        self.watch: deque[Entry] = deque()  # entries not yet judged overdue (oldest first)
        self.first_unsent_ack_at = -1.0
        self.ack_flush_at = 0.0
        self.inflight: deque[tuple[int, float, int]] = deque()  # (top seq, write time, entries) per message
        self.session_gateway_seq = 0
        self.last_gateway_seq = 0
        self.seen: set[str] = set()
        self.seen_order: deque[str] = deque()
        self.call: grpc.aio.StreamStreamCall | None = None
        self.welcomed = False
        self.writer = 0  # id of the write task in progress (0: none): one write at a time per stream
        self.dropping = False
        self.ack_dirty_since = -1.0
        self.last_write = 0.0
        self.start_tick = start_tick
        self.reconnects = 0
        self.ack_seqs: list[int] = []  # seqs that carried CommandAcks (not telemetry): for exactly-once checks


@dataclass
class Counters:
    generated: int = 0
    sent: int = 0  # samples written at least once
    resent: int = 0  # extra writes of samples (after a reconnect)
    acked: int = 0
    dropped: int = 0  # outbox full: oldest telemetry dropped (as the agent does)
    overdue: int = 0  # samples not acked within OVERDUE_S of being taken (counted once each)
    messages: int = 0
    heartbeats: int = 0
    acks_sent: int = 0  # CommandAck entries queued
    acks_acked: int = 0
    commands: int = 0
    command_duplicates: int = 0
    refusals: int = 0
    reconnects: int = 0
    stream_errors: dict[str, int] = field(default_factory=dict)


@dataclass
class FleetConfig:
    targets: list[str]
    sites: int
    block: str = "b000"
    secret: str = ""
    batch_interval_s: float = 10.0  # vpp_edge settings.uplink_batch_interval_s
    ack_max_delay_s: float = 1.5
    ack_spread_s: float = 1.0  # vpp_edge settings.uplink_ack_spread_s
    max_batch_entries: int = 64
    outbox_max: int = 2000
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    streams_per_channel: int = 100
    start_spread_s: float = 10.0
    stats_interval_s: float = 1.0
    duration_s: float = 0.0  # 0: until SIGTERM/SIGINT
    drain_s: float = 10.0
    seed: int = 0
    drop_at_s: float = 0.0  # chaos for tests: cancel a share of the streams once, at this time
    drop_share: float = 0.0


class Fleet:
    def __init__(
        self,
        config: FleetConfig,
        profile: Profile,
        stats_path: Path | None = None,
        summary_path: Path | None = None,
    ) -> None:
        self.cfg = config
        seed = config.seed or zlib.crc32(config.block.encode())
        self.rng = np.random.default_rng(seed)
        self._jitter = random.Random(seed)
        self.physics = Physics(config.sites, profile, self.rng)
        spread_ticks = max(1, int(config.start_spread_s * TICKS_PER_S))
        start_ticks = self.rng.integers(0, spread_ticks, size=config.sites)
        self._start_ticks = start_ticks
        self.links = [
            SiteLink(
                i,
                site_id,
                site_token(config.secret, site_id),
                config.targets[i % len(config.targets)],
                int(start_ticks[i]),
            )
            for i, site_id in enumerate(site_ids(config.block, config.sites))
        ]
        self._telemetry_site = [len_field(0x0A, link.site_id.encode()) for link in self.links]
        self.slots = [np.flatnonzero(start_ticks % TICKS_PER_S == s) for s in range(TICKS_PER_S)]
        self.stats_path = stats_path
        self.summary_path = summary_path
        self.counters = Counters()
        self._lat: dict[int, int] = {}
        self._msg_lat: dict[tuple[int, int], int] = {}
        self._gen_by_s: dict[int, int] = {}
        self._acked_by_s: dict[int, int] = {}
        self._cmds: list[list[Any]] = []
        self._dirty: set[int] = set()
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}
        self._methods: dict[tuple[str, int], Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sampling = True
        self._stop = asyncio.Event()
        self.t0_mono = 0.0
        self.t0_wall = 0.0
        self._tick_now = 0
        self._writes = 0

    # -- channels --------------------------------------------------------------------------------
    def _connect(self, link: SiteLink) -> grpc.aio.StreamStreamCall:
        key = (link.target, link.idx // self.cfg.streams_per_channel)
        method = self._methods.get(key)
        if method is None:
            # A local subchannel pool: otherwise grpc shares one TCP connection between equal channels.
            channel = grpc.aio.insecure_channel(link.target, options=[("grpc.use_local_subchannel_pool", 1)])
            self._channels[key] = channel
            method = self._methods[key] = channel.stream_stream(
                CONNECT_METHOD,
                request_serializer=_identity,
                response_deserializer=gateway_pb2.GatewayMessage.FromString,
            )
        call: grpc.aio.StreamStreamCall = method(metadata=link.metadata)
        return call

    # -- run -------------------------------------------------------------------------------------
    async def run(self) -> Counters:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        self.t0_mono = time.monotonic()
        self.t0_wall = time.time()
        sessions = [asyncio.create_task(self._session(link)) for link in self.links]
        ticker = asyncio.create_task(self._tick_loop())
        stats = asyncio.create_task(self._stats_loop())
        chaos = asyncio.create_task(self._chaos()) if self.cfg.drop_share > 0 else None
        try:
            if self.cfg.duration_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.cfg.duration_s)
            else:
                await self._stop.wait()
            await self._drain()
        finally:
            for task in (ticker, stats, chaos, *sessions, *self._tasks):
                if task is not None:
                    task.cancel()
            await asyncio.gather(ticker, stats, *sessions, return_exceptions=True)
            self._write_stats(final=True)
            self._write_summary()
            await asyncio.gather(*(c.close(grace=None) for c in self._channels.values()), return_exceptions=True)
        return self.counters

    async def _drain(self) -> None:
        """Stop sampling, send what is unsent at once and wait (bounded) for the gateway's acks."""
        self._sampling = False
        deadline = time.monotonic() + self.cfg.drain_s
        while time.monotonic() < deadline:
            pending = 0
            for link in self.links:
                if link.unsent and link.welcomed and not link.writer:
                    self._flush(link)
                pending += len(link.outbox)
            if not pending:
                return
            await asyncio.sleep(0.1)

    async def _chaos(self) -> None:
        """Cancel a share of the streams once (tests): their outboxes must be re-sent, nothing doubled."""
        await asyncio.sleep(self.cfg.drop_at_s)
        for link in self.links:
            if link.call is not None and self._jitter.random() < self.cfg.drop_share:
                link.dropping = True
                link.call.cancel()

    async def _session(self, link: SiteLink) -> None:
        """One site's stream, reconnected with jittered exponential backoff (as the uplink)."""
        await asyncio.sleep(link.start_tick / TICKS_PER_S)
        attempt = 0
        while True:
            welcomed = False
            call = self._connect(link)
            link.call = call
            link.session_gateway_seq = 0
            reason = "stream closed by gateway"
            try:
                await call.write(self._hello(link))
                while True:
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        break
                    self._on_message(link, message)
                    welcomed = welcomed or link.welcomed
            except grpc.aio.AioRpcError as exc:
                reason = exc.code().name
            except asyncio.CancelledError:
                if not link.dropping:
                    raise
                reason = "dropped (test)"
            finally:
                link.call = None
                link.welcomed = False
                link.dropping = False
                link.inflight.clear()
                call.cancel()
            errors = self.counters.stream_errors
            errors[reason] = errors.get(reason, 0) + 1
            if welcomed:
                attempt = 0
            delay_s = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2**attempt)
            attempt = min(attempt + 1, 30)
            link.reconnects += 1
            self.counters.reconnects += 1
            await asyncio.sleep(delay_s * self._jitter.uniform(0.5, 1.0))

    def _hello(self, link: SiteLink) -> bytes:
        hello = gateway_pb2.Hello(
            site_id=link.site_id,
            agent_version=AGENT_VERSION,
            agent_epoch=link.epoch,
            last_gateway_seq=link.last_gateway_seq,
        )
        return gateway_pb2.AgentMessage(seq=0, ack_seq=0, site_id=link.site_id, hello=hello).SerializeToString()

    # -- the 10 Hz tick: samples, flushes, heartbeats ----------------------------------------------
    async def _tick_loop(self) -> None:
        tick = 0
        while self._sampling:
            scheduled = self.t0_mono + tick / TICKS_PER_S
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # starved for over a second: skip ahead, do not burst
                tick = int((time.monotonic() - self.t0_mono) * TICKS_PER_S)
                scheduled = self.t0_mono + tick / TICKS_PER_S
            self._tick(tick, scheduled)
            tick += 1

    def _tick(self, tick: int, now: float) -> None:
        self._tick_now = tick
        slot = self.slots[tick % TICKS_PER_S]
        started = slot[self._start_ticks[slot] <= tick]
        if len(started) and self._sampling:
            self._sample(started, now)
        for i in list(self._dirty):
            self._maybe_heartbeat(self.links[i], now)

    def _sample(self, idx: np.ndarray, now: float) -> None:
        wall_ns = time.time_ns()
        values = self.physics.step(idx, now - self.t0_mono, wall_ns / 1e9)
        rows = encode_rows(values, len(idx))
        measured_at = timestamp_field(0x12, wall_ns)
        gen_s = wall_ns // 1_000_000_000
        commanded = values["commanded"]
        command_ids = self.physics.command_ids
        counters = self.counters
        for j, i in enumerate(idx.tolist()):
            link = self.links[i]
            if link.unsent and self._flush_due(link, now):
                self._flush(link)
            body = telemetry_bytes(
                self._telemetry_site[i],
                measured_at,
                rows[j * ROW_BYTES : (j + 1) * ROW_BYTES],
                command_ids[i] if commanded[j] else "",
            )
            self._enqueue(link, KIND_TELEMETRY, body, gen_s, now)
        counters.generated += len(idx)
        self._gen_by_s[gen_s] = self._gen_by_s.get(gen_s, 0) + len(idx)

    def _enqueue(self, link: SiteLink, kind: int, body: bytes, gen_s: int, now: float) -> None:
        if len(link.outbox) >= self.cfg.outbox_max:
            self._drop_oldest_telemetry(link)
        entry = Entry(link.next_seq, kind, body, gen_s, now)
        link.next_seq += 1
        link.outbox.append(entry)
        link.unsent.append(entry)
        link.watch.append(entry)
        if kind == KIND_ACK:
            link.ack_seqs.append(entry.seq)
            if link.first_unsent_ack_at < 0:
                link.first_unsent_ack_at = now
                link.ack_flush_at = now + self._jitter.uniform(0.0, self.cfg.ack_spread_s)
                self._dirty.add(link.idx)

    def _drop_oldest_telemetry(self, link: SiteLink) -> None:
        for entry in link.outbox:
            if entry.kind == KIND_TELEMETRY:
                link.outbox.remove(entry)
                with contextlib.suppress(ValueError):
                    link.unsent.remove(entry)
                entry.acked = True  # gone: never judged overdue (counted as dropped)
                self.counters.dropped += 1
                return

    def _flush_due(self, link: SiteLink, now: float) -> bool:
        """The uplink's rule (``Uplink._flush_at``) for the unsent entries."""
        if not link.welcomed or link.writer:
            return False
        cfg = self.cfg
        if cfg.batch_interval_s <= 0 or len(link.unsent) >= cfg.max_batch_entries:
            return True
        if link.first_unsent_ack_at >= 0 and now + 1e-9 >= link.ack_flush_at:
            return True  # a command ack goes (spread over ack_spread_s), with the samples taken so far
        return link.unsent[0].queued_at + cfg.batch_interval_s <= now + 1e-9

    def _maybe_heartbeat(self, link: SiteLink, now: float) -> None:
        """Pending acks of gateway messages go on a heartbeat when no entry will carry them soon."""
        if not link.welcomed or link.writer or link.call is None:
            return
        if link.unsent:
            if self._flush_due(link, now):
                self._flush(link)
            return
        if link.ack_dirty_since >= 0 and now - link.ack_dirty_since >= self.cfg.ack_max_delay_s:
            heartbeat = gateway_pb2.Heartbeat(sent_at=_now_ts())
            message = gateway_pb2.AgentMessage(
                seq=0, ack_seq=link.session_gateway_seq, site_id=link.site_id, heartbeat=heartbeat
            )
            self.counters.heartbeats += 1
            self._start_write(link, [(message.SerializeToString(), [])])
        elif link.ack_dirty_since < 0 and link.first_unsent_ack_at < 0:
            self._dirty.discard(link.idx)

    def _flush(self, link: SiteLink) -> None:
        """Everything unsent goes now, in messages of at most ``max_batch_entries``."""
        entries, link.unsent = link.unsent, []
        link.first_unsent_ack_at = -1.0
        size = self.cfg.max_batch_entries if self.cfg.batch_interval_s > 0 else 1
        chunks = []
        for start in range(0, len(entries), size):
            chunk = entries[start : start + size]
            data = agent_message_bytes(
                chunk[-1].seq,
                link.session_gateway_seq,
                link.site_field,
                [(e.seq, e.kind, e.body) for e in chunk],
            )
            chunks.append((data, chunk))
        self._start_write(link, chunks)

    def _start_write(self, link: SiteLink, chunks: list[tuple[bytes, list[Entry]]]) -> None:
        call = link.call
        if call is None:
            return
        self._writes += 1
        link.writer = self._writes
        link.ack_dirty_since = -1.0
        task = asyncio.get_running_loop().create_task(self._write(link, call, chunks, self._writes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(
        self, link: SiteLink, call: grpc.aio.StreamStreamCall, chunks: list[tuple[bytes, list[Entry]]], writer: int
    ) -> None:
        counters = self.counters
        try:
            for data, entries in chunks:
                written_at = time.monotonic()
                samples = 0
                for entry in entries:
                    if entry.kind == KIND_TELEMETRY:
                        samples += 1
                        if entry.written_at:
                            counters.resent += 1
                        else:
                            counters.sent += 1
                    entry.written_at = written_at
                if entries:
                    link.inflight.append((entries[-1].seq, written_at, samples))
                await call.write(data)
                counters.messages += 1
                link.last_write = written_at
        except (Exception, asyncio.CancelledError):
            pass  # the stream is gone: the session task reconnects and the outbox is re-sent
        finally:
            if link.writer == writer:
                link.writer = 0

    # -- from the gateway ---------------------------------------------------------------------------
    def _on_message(self, link: SiteLink, message: gateway_pb2.GatewayMessage) -> None:
        if message.ack_seq:
            self._release(link, message.ack_seq)
        now = time.monotonic()
        if message.seq and message.seq <= link.session_gateway_seq:
            self._mark_ack_dirty(link, now)
            return
        kind = message.WhichOneof("body")
        if kind == "welcome":
            self._release(link, message.welcome.last_agent_seq)
            link.welcomed = True
            # Whatever is still unacked goes at once, in order.
            link.unsent = list(link.outbox)
            link.first_unsent_ack_at = -1.0
            if link.unsent:
                self._flush(link)
        elif kind == "refusal":
            self.counters.refusals += 1
            refused = message.refusal.refused_seq
            for entry in list(link.outbox):
                if entry.seq == refused:
                    link.outbox.remove(entry)
                    entry.acked = True
        elif kind == "command":
            self._on_command(link, message.command, now)
        if message.seq:
            link.session_gateway_seq = message.seq
            link.last_gateway_seq = message.seq
            self._mark_ack_dirty(link, now)

    def _mark_ack_dirty(self, link: SiteLink, now: float) -> None:
        if link.ack_dirty_since < 0:
            link.ack_dirty_since = now
        self._dirty.add(link.idx)

    def _release(self, link: SiteLink, upto: int) -> None:
        """The gateway has every entry up to ``upto`` durably in Kafka: forget them, record latencies."""
        outbox = link.outbox
        if not outbox or outbox[0].seq > upto:
            return
        now = time.monotonic()
        counters = self.counters
        lat = self._lat
        acked_by_s = self._acked_by_s
        while outbox and outbox[0].seq <= upto:
            entry = outbox.popleft()
            entry.acked = True
            if entry.kind == KIND_ACK:
                counters.acks_acked += 1
                continue
            counters.acked += 1
            acked_by_s[entry.gen_s] = acked_by_s.get(entry.gen_s, 0) + 1
            if entry.written_at:
                ms = int((now - entry.written_at) * 1000.0)
                lat[ms] = lat.get(ms, 0) + 1
        inflight = link.inflight
        while inflight and inflight[0][0] <= upto:
            _, written_at, samples = inflight.popleft()
            if samples:
                key = (int((now - written_at) * 1000.0), samples)
                self._msg_lat[key] = self._msg_lat.get(key, 0) + 1
        if link.unsent and link.unsent[0].seq <= upto:
            link.unsent = [e for e in link.unsent if e.seq > upto]

    def _on_command(self, link: SiteLink, command: dispatch_pb2.DispatchCommand, now: float) -> None:
        received = time.time()
        if command.command_id in link.seen:
            self.counters.command_duplicates += 1
            return
        link.seen.add(command.command_id)
        link.seen_order.append(command.command_id)
        if len(link.seen_order) > SEEN_COMMANDS_MAX:
            link.seen.discard(link.seen_order.popleft())
        self.counters.commands += 1
        issued = command.issued_at.seconds + command.issued_at.nanos / 1e9 if command.HasField("issued_at") else 0.0
        self._cmds.append([link.site_id, command.activation_id, command.step, round(received, 6), round(issued, 6)])
        ack = dispatch_pb2.CommandAck(
            command_id=command.command_id, site_id=link.site_id, requested_kw=command.battery_setpoint_kw
        )
        ack.received_at.FromNanoseconds(int(received * 1e9))
        valid_until = command.valid_until.seconds + command.valid_until.nanos / 1e9
        if command.HasField("valid_until") and valid_until < received:
            ack.status = dispatch_pb2.ACK_STATUS_EXPIRED
            ack.reason = "arrived after valid_until"
        else:
            i = link.idx
            physics = self.physics
            discharge, charge = physics.limits(i)
            requested = command.battery_setpoint_kw
            applied = float(min(max(requested, -float(charge)), float(discharge)))
            physics.setpoint[i] = applied
            revert_at = received + SETPOINT_REVERT_S
            physics.valid_until[i] = min(valid_until, revert_at) if valid_until else revert_at
            physics.command_ids[i] = command.command_id
            ack.applied_kw = applied
            ack.written_at.FromNanoseconds(time.time_ns())
            if abs(applied - requested) > 1e-6:
                ack.status = dispatch_pb2.ACK_STATUS_CLAMPED
                limit = (
                    f"max_discharge_kw={float(discharge):g}"
                    if requested > applied
                    else f"max_charge_kw={float(charge):g}"
                )
                ack.reason = f"requested {requested:.3f} kW, limited to {applied:.3f} kW by {limit}"
            else:
                ack.status = dispatch_pb2.ACK_STATUS_APPLIED
        self.counters.acks_sent += 1
        self._enqueue(link, KIND_ACK, ack.SerializeToString(), int(received), now)

    # -- reporting ---------------------------------------------------------------------------------
    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.stats_interval_s)
            self._scan_overdue()
            self._write_stats(final=False)

    def _scan_overdue(self) -> None:
        """Count samples that crossed OVERDUE_S unacked, once each: only entries not yet judged are looked at,
        so a gateway that stops acking does not make this grow with the backlog."""
        limit = time.monotonic() - OVERDUE_S
        for link in self.links:
            watch = link.watch
            while watch and (watch[0].acked or watch[0].queued_at <= limit):
                entry = watch.popleft()
                if not entry.acked and entry.kind == KIND_TELEMETRY:
                    entry.overdue = True
                    self.counters.overdue += 1

    def snapshot(self, final: bool) -> dict[str, Any]:
        c = self.counters
        line: dict[str, Any] = {
            "t": round(time.time(), 3),
            "pid": os.getpid(),
            "block": self.cfg.block,
            "sites": self.cfg.sites,
            "targets": len(self.cfg.targets),
            "started": int(np.count_nonzero(self._start_ticks <= self._tick_now)),
            "connected": sum(1 for link in self.links if link.welcomed),
            "generated": c.generated,
            "sent": c.sent,
            "resent": c.resent,
            "acked": c.acked,
            "dropped": c.dropped,
            "overdue": c.overdue,
            "outbox": sum(len(link.outbox) for link in self.links),
            "messages": c.messages,
            "heartbeats": c.heartbeats,
            "commands": c.commands,
            "command_duplicates": c.command_duplicates,
            "acks_sent": c.acks_sent,
            "acks_acked": c.acks_acked,
            "refusals": c.refusals,
            "reconnects": c.reconnects,
            "stream_errors": dict(c.stream_errors),
            "lat_ms": {str(k): v for k, v in self._lat.items()},
            "msg_lat_ms": [[ms, n, count] for (ms, n), count in self._msg_lat.items()],
            "gen_by_s": {str(k): v for k, v in self._gen_by_s.items()},
            "acked_by_s": {str(k): v for k, v in self._acked_by_s.items()},
            "cmds": self._cmds,
            "cpu_s": round(time.process_time(), 3),
            "rss_kb": _rss_kb(),
            "final": final,
        }
        self._lat, self._msg_lat, self._gen_by_s, self._acked_by_s, self._cmds = {}, {}, {}, {}, []
        return line

    def _write_stats(self, final: bool) -> None:
        line = self.snapshot(final)
        if self.stats_path is not None:
            with self.stats_path.open("a") as f:
                f.write(json.dumps(line, separators=(",", ":")) + "\n")

    def _write_summary(self) -> None:
        if self.summary_path is None:
            return
        sites = {
            link.site_id: {
                "epoch": link.epoch,
                "last_seq": link.next_seq - 1,
                "ack_seqs": link.ack_seqs,
                "unacked": [e.seq for e in link.outbox],
                "reconnects": link.reconnects,
            }
            for link in self.links
        }
        counters = {k: v for k, v in vars(self.counters).items()}
        self.summary_path.write_text(json.dumps({"counters": counters, "sites": sites}))


def site_ids(block: str, n: int) -> list[str]:
    """Site ids of a block: ``fleet-<block>-<index>`` (valid gateway site ids)."""
    return [f"fleet-{block}-{i:05d}" for i in range(n)]


def _now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:
        return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Play many edge agents against the gateway (load tests).")
    parser.add_argument("--targets", required=True, help="gateway host:port[,host:port...] (sites round-robin)")
    parser.add_argument("--sites", type=int, required=True)
    parser.add_argument("--block", default="b000", help="site ids are fleet-<block>-<index>")
    parser.add_argument("--secret", default=os.environ.get("VPP_FLEET_SECRET", ""), help="gateway token secret")
    parser.add_argument("--profile", type=Path, help="CSV offset_s,pv_kw_per_kwp,load_kw (default: the real series)")
    parser.add_argument("--batch-interval-s", type=float, default=10.0)
    parser.add_argument("--streams-per-channel", type=int, default=100)
    parser.add_argument("--start-spread-s", type=float, default=10.0)
    parser.add_argument("--stats-file", type=Path)
    parser.add_argument("--stats-interval-s", type=float, default=1.0)
    parser.add_argument("--summary-file", type=Path)
    parser.add_argument("--duration-s", type=float, default=0.0, help="0: until SIGTERM")
    parser.add_argument("--drain-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop-at-s", type=float, default=0.0, help="tests: cancel a share of the streams once")
    parser.add_argument("--drop-share", type=float, default=0.0)
    args = parser.parse_args(argv)
    if not args.secret:
        from vpp_demo.stack import DEMO_SECRET

        args.secret = DEMO_SECRET
    config = FleetConfig(
        targets=[t.strip() for t in args.targets.split(",") if t.strip()],
        sites=args.sites,
        block=args.block,
        secret=args.secret,
        batch_interval_s=args.batch_interval_s,
        streams_per_channel=args.streams_per_channel,
        start_spread_s=args.start_spread_s,
        stats_interval_s=args.stats_interval_s,
        duration_s=args.duration_s,
        drain_s=args.drain_s,
        seed=args.seed,
        drop_at_s=args.drop_at_s,
        drop_share=args.drop_share,
    )
    profile = Profile.from_csv(args.profile) if args.profile else Profile.real()
    fleet = Fleet(config, profile, args.stats_file, args.summary_file)
    counters = asyncio.run(fleet.run())
    print(
        f"fleet {config.block}: {config.sites} sites, {counters.generated} samples, {counters.acked} acked, "
        f"{counters.commands} commands, cpu {time.process_time():.1f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
