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

Commands are handled as the agent does (``Fleet._apply``). A site's *baseline* is what its local control
(self-consumption: battery = load - pv, clamped to the power and SoC limits) would set this cycle. A
``battery_setpoint_kw`` command sets the battery to that power; an ``offset_kw`` command sets it to
baseline + offset, re-applied every tick on the moving baseline and clamped to the limits, until
``valid_until`` (at most SETPOINT_REVERT_S after receipt; local control after). Fencing: each site keeps
the last applied ``(leader_epoch, seq)``; a command with epoch > 0 not above it is acked DUPLICATE (same
epoch) or REJECTED "stale leader_epoch" (lower epoch) and not applied; epoch 0 is unfenced. Then: not
finite -> REJECTED, past valid_until -> EXPIRED. The ack carries requested_kw / applied_kw (the offset
asked and applied after clamping, for an offset; battery power for an absolute setpoint),
battery_setpoint_kw (the battery power set), status CLAMPED when they differ, and the command's
leader_epoch, seq, activation_id and step. Telemetry reports, besides the device values,
``setpoint_kw`` (what the agent set), ``baseline_battery_kw``, ``baseline_grid_kw`` = grid + battery -
baseline_battery (so delivery at the meter is baseline_grid_kw - grid_power_kw), ``offset_kw`` applied
(0 without an offset command in force) and the command's ``command_id``, ``leader_epoch``,
``command_seq``. The summary counts the refusals (``duplicates_refused``, ``stale_epoch_refused``) and
``double_applied``: commands applied for an activation step at or below one the site had applied already
(a takeover re-issuing a step under a higher epoch; harmless for an offset, which is a level).

Physics is vectorised over sites (numpy, ``Physics``): PV and household load replay the same real series
as the demo (NREL PVDAQ 50, UCI household; ``vpp_demo.profiles``), scaled per site and shifted in time so
sites differ, read once a second per site; every 100 ms tick advances every site's battery (its target:
the baseline or the command in force, clamped; then the device's response) and integrates its SoC.

What dispatch must cope with (``FleetConfig``; all off by default, so load tests behave as before; all
seeded by ``--seed``, each from a stream of its own, so the sites themselves stay the same):

* response: battery power follows its target through a first-order lag, time constant ``--lag-s`` on
  average, each site drawn uniformly within ±``--lag-spread`` (0.5: ±50 %) of it, and a ramp limit
  (``--ramp-kw-per-s`` for every site and/or ``--ramp-pct-per-s`` % of the site's max power per second;
  the tighter applies; 0: none), integrated at the tick rate;
* measurement noise: gaussian, sd ``--noise-kw``, on the reported battery and grid power (independently;
  baseline_grid_kw is computed from the noisy values, as the agent would);
* failures: ``--fail-share`` of the sites fail once, each at a uniform time in [``--fail-after-s``,
  ``--fail-before-s``] after the start, in a mode drawn uniformly from ``--fail-modes`` (default all of
  ``silent``, ``stuck``, ``partial``, ``nack``; see ``Failure``). The schedule (site, mode, unix time,
  partial share) is ``Fleet.failures`` (``failure_schedule(config)`` computes it before a run; ``at`` is
  set when the run starts) and the summary file's ``failures``. Silent sites' lost samples are not counted
  overdue and the drain does not wait for them.

Ground truth for benchmarks: after every tick ``Physics.delivered_sum`` is the fleet's true delivery, the
sum over all sites (failed ones included) of battery - baseline, without measurement noise;
``Physics.delivered_kw()`` is the per-site array and ``Fleet.delivered_kw()`` the total. Each wall-clock
second becomes one point ``{"t": unix second, "delivered_kw", "offset_kw", "target_kw", "failed",
"ticks"}``, means over the ticks of [t, t + 1): ``offset_kw`` is the sum of the offsets commanded and in
force (as requested), ``target_kw`` the same after the power/SoC clamps (what ideal devices would
deliver), ``failed`` how many failures have happened. The points are kept in ``Fleet.truth`` (in process),
appended as JSON lines to ``--truth-file`` (one per second) and carried by each stats line (``truth``:
the points since the previous line).

What keeps it cheap (its own CPU is in every stats line): samples are encoded straight to protobuf wire
bytes from one numpy row per site (checked against the generated classes in the tests), a central
10 Hz tick serves every site (sites spread over the ten 100 ms slots and, through their start times,
over the batch window) instead of a timer per site, the per-tick physics is a few numpy operations over
all sites (~0.3 ms at 10,000 sites), and ~100 streams share one HTTP/2 channel.

It records, per sample, the time from the stream write to the gateway's ack covering it; per command,
receipt time, activation id and step; and counts of samples generated, sent and acked, and of acks by
status. Every ``stats_interval_s`` it appends one JSON line to ``--stats-file`` (read by the Locust user
and by the scale driver), and at exit writes ``--summary-file`` (per-site epochs, seqs and failure mode,
for exactly-once checks; the failure schedule; the response settings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Sequence
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
MAX_DT_S = 5.0  # physics step cap after a starved loop
TRUTH_KEEP = 7 * 86400  # ground-truth points (seconds) kept in memory

KIND_TELEMETRY = 0
KIND_ACK = 1

# -- protobuf wire encoding of the hot path (AgentMessage / Batch / BatchEntry / Telemetry) ---------------
# Field tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited); a field number
# above 15 takes a two-byte tag.


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
    ("baseline_battery_kw", 17),
    ("baseline_grid_kw", 18),
    ("offset_kw", 19),
)
_TAG_BYTES = {name: varint((number << 3) | 1) for name, number in _TELEMETRY_DOUBLES}
ROW_DTYPE = np.dtype(
    [("tag_available", "u1"), ("available", "u1")]
    + [
        item
        for name, _ in _TELEMETRY_DOUBLES
        for item in ((f"tag_{name}", "u1", (len(_TAG_BYTES[name]),)), (name, "<f8"))
    ]
)
ROW_BYTES = ROW_DTYPE.itemsize
_ROW_TEMPLATE = np.zeros(1, dtype=ROW_DTYPE)
_ROW_TEMPLATE["tag_available"] = (3 << 3) | 0
_ROW_TEMPLATE["available"] = 1
for _name, _tag in _TAG_BYTES.items():
    _ROW_TEMPLATE[f"tag_{_name}"] = np.frombuffer(_tag, dtype=np.uint8)
# Telemetry.command_id (15, length-delimited), leader_epoch (20) and command_seq (21) (varints).
_TAG_COMMAND_ID = 0x7A
_TAG_LEADER_EPOCH = varint(20 << 3)
_TAG_COMMAND_SEQ = varint(21 << 3)


def len_field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (tag < 128)."""
    return bytes((tag,)) + varint(len(payload)) + payload


def timestamp_field(tag: int, unix_ns: int) -> bytes:
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    body = b"\x08" + varint(seconds) + (b"\x10" + varint(nanos) if nanos else b"")
    return len_field(tag, body)


def encode_rows(values: dict[str, np.ndarray], n: int) -> bytes:
    """The fixed part of ``n`` Telemetry messages (available + the doubles), one row per site."""
    rows = np.repeat(_ROW_TEMPLATE, n)
    for name, _ in _TELEMETRY_DOUBLES:
        rows[name] = values[name]
    return rows.tobytes()


def command_tail(command_id: str, leader_epoch: int = 0, seq: int = 0) -> bytes:
    """Telemetry's fields of the command in force: command_id (15), leader_epoch (20), command_seq (21)."""
    tail = len_field(_TAG_COMMAND_ID, command_id.encode()) if command_id else b""
    if leader_epoch:
        tail += _TAG_LEADER_EPOCH + varint(leader_epoch)
    if seq:
        tail += _TAG_COMMAND_SEQ + varint(seq)
    return tail


def telemetry_bytes(site_field: bytes, measured_at_field: bytes, row: bytes, tail: bytes = b"") -> bytes:
    """A serialized ``Telemetry``: site_id (1), measured_at (2), the row, then ``command_tail``'s fields."""
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
    """Every site's PV, load and battery as numpy arrays, advanced for all sites at once each tick.

    ``refresh`` re-reads PV and load for the sites sampled this tick (each site once a second: the profile
    is 15-minute data); ``advance`` moves every site's battery and SoC on by ``dt_s`` (local control or the
    command in force, the device's response, failures); ``sample`` returns the telemetry values of a subset.
    Battery power > 0 discharges, grid power > 0 imports (protos/vpp/v1/common.proto).
    """

    def __init__(self, n: int, profile: Profile, rng: np.random.Generator) -> None:
        kinds = np.array(SITE_KINDS)
        pick = rng.choice(len(kinds), size=n, p=kinds[:, 0] / kinds[:, 0].sum())
        jitter = rng.uniform(0.7, 1.3, size=(n, 4))
        self.n = n
        self.pv_kwp = kinds[pick, 1] * jitter[:, 0]
        self.capacity_kwh = kinds[pick, 2] * jitter[:, 1]
        self.max_kw = kinds[pick, 3] * jitter[:, 2]
        self.load_scale = kinds[pick, 4] * jitter[:, 3]
        self.soc = rng.uniform(30.0, 80.0, size=n)
        self.time_shift_s = rng.uniform(0.0, profile.period_s, size=n)
        self.profile = profile
        # The command in force: an absolute battery setpoint, or an offset on top of the baseline.
        self.setpoint = np.zeros(n)
        self.offset = np.zeros(n)
        self.is_offset = np.zeros(n, dtype=bool)
        self.valid_until = np.zeros(n)  # unix s; the command holds until then, local control after
        self.command_ids = [""] * n
        self.command_tails = [b""] * n  # its telemetry fields (command_id, leader_epoch, command_seq)
        # State after the latest ``advance``.
        self.pv = np.zeros(n)
        self.load = np.zeros(n)
        self.in_force = np.zeros(n, dtype=bool)
        self.baseline = np.zeros(n)  # what local control (self-consumption) would set
        self.target = np.zeros(n)  # what the agent sets: the baseline, or the command clamped to the limits
        self.battery = np.zeros(n)  # what the battery does (target through the device's response)
        # The device's response (default: follows its target within the tick).
        self.tau_s = np.zeros(n)
        self.ramp_kw_per_s = np.full(n, np.inf)
        self._dynamic = False
        self._alpha_dt = -1.0
        self._alpha = np.ones(n)
        # Failures (see ``Failure``): a stuck battery holds ``stuck_kw``, a partial one delivers ``share`` of
        # the agent's offset.
        self.stuck = np.zeros(n, dtype=bool)
        self.stuck_kw = np.zeros(n)
        self.share = np.ones(n)
        self._any_stuck = False
        self._any_partial = False
        # Measurement noise on the reported battery and grid power (sd, kW).
        self.noise_kw = 0.0
        self.noise_rng = np.random.default_rng(0)
        # Fleet totals after the latest ``advance`` (ground truth for benchmarks), kW.
        self.delivered_sum = 0.0  # sum of battery - baseline: what the meters really see
        self.offset_sum = 0.0  # sum of the offsets commanded and in force (as requested)
        self.target_sum = 0.0  # sum of target - baseline: the offsets after power and SoC limits
        everyone = np.arange(n)
        self.refresh(everyone, 0.0)
        self.battery[:] = np.clip(self.load - self.pv, *self._bounds(everyone))  # start at local control

    def set_response(self, tau_s: np.ndarray, ramp_kw_per_s: np.ndarray) -> None:
        """Battery power follows its target through a first-order lag (``tau_s``, 0: none) and moves at most
        ``ramp_kw_per_s`` (inf: no limit)."""
        self.tau_s = np.asarray(tau_s, dtype=float)
        self.ramp_kw_per_s = np.asarray(ramp_kw_per_s, dtype=float)
        self._dynamic = bool(np.any(self.tau_s > 0) or np.any(np.isfinite(self.ramp_kw_per_s)))
        self._alpha_dt = -1.0

    def limits(self, idx: np.ndarray | int | slice) -> tuple[Any, Any]:
        """(max discharge, max charge) in kW now: the device limit, zero at the SoC reserve/ceiling."""
        discharge = np.where(self.soc[idx] > SOC_MIN_PCT, self.max_kw[idx], 0.0)
        charge = np.where(self.soc[idx] < SOC_MAX_PCT, self.max_kw[idx], 0.0)
        return discharge, charge

    def _bounds(self, idx: np.ndarray | int | slice) -> tuple[Any, Any]:
        discharge, charge = self.limits(idx)
        return -charge, discharge

    def baseline_now(self, i: int) -> float:
        """Site ``i``'s local-control setpoint from its latest PV/load reading and SoC."""
        low, high = self._bounds(i)
        return float(min(max(float(self.load[i] - self.pv[i]), float(low)), float(high)))

    def refresh(self, idx: np.ndarray, elapsed_s: float) -> None:
        p = self.profile
        t = elapsed_s + self.time_shift_s[idx]
        self.pv[idx] = np.interp(t, p.offset_s, p.pv_kw_per_kwp, period=p.period_s) * self.pv_kwp[idx]
        self.load[idx] = np.interp(t, p.offset_s, p.load_kw, period=p.period_s) * self.load_scale[idx]

    def advance(self, now_s: float, dt_s: float) -> None:
        """Every site by ``dt_s``: targets at wall time ``now_s``, battery response, SoC, fleet totals."""
        low, high = self._bounds(slice(None))
        baseline = np.clip(self.load - self.pv, low, high)  # self-consumption: battery = load - pv
        in_force = self.valid_until > now_s
        wanted = np.where(self.is_offset, baseline + self.offset, self.setpoint)
        target = np.where(in_force, np.clip(wanted, low, high), baseline)
        goal = target
        if self._any_partial:
            goal = baseline + (goal - baseline) * self.share
        if self._any_stuck:  # frozen output; the BMS still cuts it at the SoC reserve/ceiling
            goal = np.clip(np.where(self.stuck, self.stuck_kw, goal), low, high)
        if self._dynamic:
            if dt_s != self._alpha_dt:
                self._alpha_dt = dt_s
                lagged = self.tau_s > 0
                self._alpha = np.where(lagged, -np.expm1(-dt_s / np.where(lagged, self.tau_s, 1.0)), 1.0)
            move = (goal - self.battery) * self._alpha
            limit = self.ramp_kw_per_s * dt_s
            battery = np.clip(self.battery + np.clip(move, -limit, limit), low, high)
        else:
            battery = goal
        energy_kwh = np.where(battery < 0, battery * CHARGE_EFFICIENCY, battery) * (dt_s / 3600.0)
        self.soc = np.clip(self.soc - energy_kwh / self.capacity_kwh * 100.0, 0.0, 100.0)
        self.battery = battery
        self.baseline = baseline
        self.target = target
        self.in_force = in_force
        self.delivered_sum = float(battery.sum() - baseline.sum())
        self.target_sum = float(target.sum() - baseline.sum())
        self.offset_sum = float(self.offset[in_force & self.is_offset].sum())

    def sample(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Telemetry of ``idx`` as the agent reports it (noisy battery and grid power if ``noise_kw``)."""
        pv, load, battery = self.pv[idx], self.load[idx], self.battery[idx]
        grid = load - pv - battery
        if self.noise_kw > 0:
            noise = self.noise_rng.normal(0.0, self.noise_kw, size=(2, len(idx)))
            battery = battery + noise[0]
            grid = grid + noise[1]
        baseline, target, in_force = self.baseline[idx], self.target[idx], self.in_force[idx]
        return {
            "pv_power_kw": pv,
            "load_power_kw": load,
            "battery_power_kw": battery,
            "grid_power_kw": grid,
            "soc_pct": self.soc[idx],
            "battery_capacity_kwh": self.capacity_kwh[idx],
            "max_charge_kw": self.max_kw[idx],
            "max_discharge_kw": self.max_kw[idx],
            "soc_min_pct": np.full(len(idx), SOC_MIN_PCT),
            "soc_max_pct": np.full(len(idx), SOC_MAX_PCT),
            "setpoint_kw": target,
            # The agent's counterfactual from its own (measured) values: delivery at the meter,
            # baseline_grid - grid, is then battery - baseline.
            "baseline_battery_kw": baseline,
            "baseline_grid_kw": grid + battery - baseline,
            "offset_kw": np.where(in_force & self.is_offset[idx], target - baseline, 0.0),
            "commanded": in_force,
        }

    def delivered_kw(self) -> np.ndarray:
        """Each site's true delivery now (battery - baseline, no measurement noise), kW."""
        return self.battery - self.baseline

    def fail_stuck(self, i: int) -> None:
        self.stuck[i] = True
        self.stuck_kw[i] = self.battery[i]
        self._any_stuck = True

    def fail_partial(self, i: int, share: float) -> None:
        self.share[i] = share
        self._any_partial = True

    def release(self, i: int) -> None:
        """Drop site ``i``'s command: local control from the next tick."""
        self.valid_until[i] = 0.0


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
        "applied_steps",
        "call",
        "dispatched",
        "dropping",
        "epoch",
        "failed",
        "fence_epoch",
        "fence_seq",
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
        self.dispatched = False  # a command is in force: samples go every dispatched_batch_interval_s
        self.ack_dirty_since = -1.0
        self.last_write = 0.0
        self.start_tick = start_tick
        self.reconnects = 0
        self.ack_seqs: list[int] = []  # seqs that carried CommandAcks (not telemetry): for exactly-once checks
        self.failed = ""  # the failure mode once the site has failed (``Failure``)
        self.fence_epoch = 0  # (leader_epoch, seq) of the last fenced command applied
        self.fence_seq = 0
        self.applied_steps: dict[str, int] = {}  # activation_id -> highest step applied


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
    acks_by_status: dict[str, int] = field(default_factory=dict)  # CommandAck status name -> count
    duplicates_refused: int = 0  # acked DUPLICATE: (leader_epoch, seq) already applied
    stale_epoch_refused: int = 0  # acked REJECTED: a lower leader_epoch than the last applied
    double_applied: int = 0  # applied a step of an activation at or below one the site had applied already
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
    dispatched_batch_interval_s: float = 2.0  # vpp_edge settings.uplink_dispatched_batch_interval_s
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
    # What dispatch must cope with (all off by default). The battery follows its target through a
    # first-order lag (time constant lag_s on average, each site drawn within ±lag_spread of it) and a ramp
    # limit (the tighter of ramp_kw_per_s and ramp_pct_per_s % of the site's max power per second; 0: none).
    lag_s: float = 0.0
    lag_spread: float = 0.5
    ramp_kw_per_s: float = 0.0
    ramp_pct_per_s: float = 0.0
    noise_kw: float = 0.0  # sd of gaussian noise on the reported battery and grid power
    # A share of the sites fails once, each at a uniform time in [fail_after_s, fail_before_s] after the
    # start, in a mode drawn uniformly from fail_modes (see ``Failure``).
    fail_share: float = 0.0
    fail_after_s: float = 0.0
    fail_before_s: float = 0.0
    fail_modes: tuple[str, ...] = ("silent", "stuck", "partial", "nack")


FAILURE_MODES = ("silent", "stuck", "partial", "nack")
PARTIAL_SHARE = (0.2, 0.7)


@dataclass
class Failure:
    """One site's failure, from ``after_s`` after the fleet's start on (``at``: unix s, set when it runs).

    * ``silent``: the stream drops and the site stays away: no telemetry, no acks; the battery returns to
      local control when the command in force would revert (its valid_until, at most SETPOINT_REVERT_S).
    * ``stuck``: the agent goes on as usual (acks APPLIED, or CLAMPED by the limits as any site), but the
      battery's output freezes at its power when the failure began (the BMS still stops it at the SoC
      reserve/ceiling).
    * ``partial``: acks as usual, but the battery delivers only ``share`` (20-70 %) of the agent's offset.
    * ``nack``: the command in force is dropped (local control) and every later command is acked REJECTED
      "inverter fault".
    """

    site_id: str
    idx: int
    mode: str
    after_s: float
    share: float = 1.0  # partial: share of the offset delivered
    at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "mode": self.mode,
            "at": round(self.at, 3),
            "after_s": round(self.after_s, 3),
            "share": round(self.share, 4),
        }


def fleet_seed(config: FleetConfig) -> int:
    return config.seed or zlib.crc32(config.block.encode())


def failure_schedule(config: FleetConfig) -> list[Failure]:
    """The failures a fleet with ``config`` will play (seeded; sorted by time). ``at`` is 0 until it runs."""
    count = min(config.sites, round(config.fail_share * config.sites))
    if count <= 0:
        return []
    modes = tuple(config.fail_modes)
    unknown = set(modes) - set(FAILURE_MODES)
    if unknown or not modes:
        raise ValueError(f"fail_modes must be some of {FAILURE_MODES}, got {modes}")
    rng = np.random.default_rng([fleet_seed(config), 2])  # its own stream: the physics draws stay the same
    sites = rng.choice(config.sites, size=count, replace=False)
    after = rng.uniform(config.fail_after_s, max(config.fail_after_s, config.fail_before_s), size=count)
    picked = rng.integers(0, len(modes), size=count)
    shares = rng.uniform(*PARTIAL_SHARE, size=count)
    ids = site_ids(config.block, config.sites)
    failures = [
        Failure(
            site_id=ids[int(i)],
            idx=int(i),
            mode=modes[int(m)],
            after_s=float(a),
            share=float(sh) if modes[int(m)] == "partial" else 1.0,
        )
        for i, a, m, sh in zip(sites, after, picked, shares, strict=True)
    ]
    return sorted(failures, key=lambda f: (f.after_s, f.idx))


class Fleet:
    def __init__(
        self,
        config: FleetConfig,
        profile: Profile,
        stats_path: Path | None = None,
        summary_path: Path | None = None,
        truth_path: Path | None = None,
    ) -> None:
        self.cfg = config
        seed = fleet_seed(config)
        self.rng = np.random.default_rng(seed)
        self._jitter = random.Random(seed)
        self.physics = Physics(config.sites, profile, self.rng)
        self._set_response(seed)
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
        self._sample_from = start_ticks.copy()  # tick from which a site is sampled (never, once silent)
        self.stats_path = stats_path
        self.summary_path = summary_path
        self.truth_path = truth_path
        # Failures, in time order (``at`` is set when the run starts); ``_next_failure`` is the next to play.
        self.failures = failure_schedule(config)
        self._next_failure = 0
        # Ground truth, one point per wall-clock second (see ``_truth_point``); ``_truth_sent``: how many of
        # them the stats lines have carried.
        self.truth: deque[dict[str, Any]] = deque(maxlen=TRUTH_KEEP)
        self._truth_new: list[dict[str, Any]] = []
        self._truth_second = -1
        self._truth_acc = [0.0, 0.0, 0.0, 0]
        self._truth_file: Any = None
        self._last_tick_at = -1.0
        self.clock_ns: Callable[[], int] = time.time_ns  # wall clock of the physics and commands (tests)
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

    def _set_response(self, seed: int) -> None:
        """Per-site lag and ramp limit, and the measurement noise, from streams of their own (seeded)."""
        cfg = self.cfg
        n = cfg.sites
        physics = self.physics
        rng = np.random.default_rng([seed, 1])
        spread = min(max(cfg.lag_spread, 0.0), 1.0)
        tau = cfg.lag_s * rng.uniform(1.0 - spread, 1.0 + spread, size=n) if cfg.lag_s > 0 else np.zeros(n)
        ramp = np.full(n, np.inf)
        if cfg.ramp_kw_per_s > 0:
            ramp = np.minimum(ramp, cfg.ramp_kw_per_s)
        if cfg.ramp_pct_per_s > 0:
            ramp = np.minimum(ramp, physics.max_kw * cfg.ramp_pct_per_s / 100.0)
        physics.set_response(tau, ramp)
        physics.noise_kw = max(0.0, cfg.noise_kw)
        physics.noise_rng = np.random.default_rng([seed, 3])

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
        for failure in self.failures:
            failure.at = self.t0_wall + failure.after_s
        if self.truth_path is not None:
            self._truth_file = self.truth_path.open("a", buffering=1)  # line-buffered: one line a second
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
            self._emit_truth()
            if self._truth_file is not None:
                self._truth_file.close()
                self._truth_file = None
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
                if link.failed == "silent":
                    continue  # gone for good: its outbox never drains
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
        while link.failed != "silent":
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
                reason = "failed (silent)" if link.failed == "silent" else "dropped (test)"
            finally:
                link.call = None
                link.welcomed = False
                link.dropping = False
                link.inflight.clear()
                call.cancel()
            errors = self.counters.stream_errors
            errors[reason] = errors.get(reason, 0) + 1
            if link.failed == "silent":
                return  # the site stays away
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
        """One tick: failures due, PV/load of this slot's sites, every site's physics, ground truth, then the
        slot's samples and pending heartbeats."""
        self._tick_now = tick
        wall_ns = self.clock_ns()
        wall = wall_ns / 1e9
        elapsed = now - self.t0_mono
        failures = self.failures
        while self._next_failure < len(failures) and failures[self._next_failure].after_s <= elapsed:
            self._fail(failures[self._next_failure])
            self._next_failure += 1
        slot = self.slots[tick % TICKS_PER_S]
        physics = self.physics
        physics.refresh(slot, elapsed)
        dt_s = 1.0 / TICKS_PER_S if self._last_tick_at < 0 else min(MAX_DT_S, max(0.0, now - self._last_tick_at))
        self._last_tick_at = now
        physics.advance(wall, dt_s)
        self._account_truth(wall)
        started = slot[self._sample_from[slot] <= tick]
        if len(started) and self._sampling:
            self._sample(started, now, wall_ns)
        for i in list(self._dirty):
            self._maybe_heartbeat(self.links[i], now)

    def _sample(self, idx: np.ndarray, now: float, wall_ns: int) -> None:
        values = self.physics.sample(idx)
        rows = encode_rows(values, len(idx))
        measured_at = timestamp_field(0x12, wall_ns)
        gen_s = wall_ns // 1_000_000_000
        commanded = values["commanded"]
        tails = self.physics.command_tails
        counters = self.counters
        for j, i in enumerate(idx.tolist()):
            link = self.links[i]
            link.dispatched = bool(commanded[j])
            if link.unsent and self._flush_due(link, now):
                self._flush(link)
            body = telemetry_bytes(
                self._telemetry_site[i],
                measured_at,
                rows[j * ROW_BYTES : (j + 1) * ROW_BYTES],
                tails[i] if commanded[j] else b"",
            )
            self._enqueue(link, KIND_TELEMETRY, body, gen_s, now)
        counters.generated += len(idx)
        self._gen_by_s[gen_s] = self._gen_by_s.get(gen_s, 0) + len(idx)

    def _fail(self, failure: Failure) -> None:
        i = failure.idx
        link = self.links[i]
        link.failed = failure.mode
        if failure.mode == "silent":
            self._sample_from[i] = np.iinfo(self._sample_from.dtype).max
            self._dirty.discard(i)
            if link.call is not None:
                link.dropping = True
                link.call.cancel()
        elif failure.mode == "stuck":
            self.physics.fail_stuck(i)
        elif failure.mode == "partial":
            self.physics.fail_partial(i, failure.share)
        elif failure.mode == "nack":
            self.physics.release(i)

    # -- ground truth ------------------------------------------------------------------------------
    def _account_truth(self, wall: float) -> None:
        second = int(wall)
        if second != self._truth_second:
            self._emit_truth()
            self._truth_second = second
        acc = self._truth_acc
        physics = self.physics
        acc[0] += physics.delivered_sum
        acc[1] += physics.offset_sum
        acc[2] += physics.target_sum
        acc[3] += 1

    def _emit_truth(self) -> None:
        """The second's point: means over its ticks of the fleet totals (``Physics.advance``)."""
        acc = self._truth_acc
        ticks = int(acc[3])
        if not ticks:
            return
        point = {
            "t": self._truth_second,
            "delivered_kw": round(acc[0] / ticks, 4),
            "offset_kw": round(acc[1] / ticks, 4),
            "target_kw": round(acc[2] / ticks, 4),
            "failed": self._next_failure,
            "ticks": ticks,
        }
        self._truth_acc = [0.0, 0.0, 0.0, 0]
        self.truth.append(point)
        self._truth_new.append(point)
        if self._truth_file is not None:
            self._truth_file.write(json.dumps(point, separators=(",", ":")) + "\n")

    def delivered_kw(self) -> float:
        """The fleet's true delivery at the latest tick (sum over sites of battery - baseline), kW."""
        return self.physics.delivered_sum

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
        interval_s = cfg.batch_interval_s
        if link.dispatched:
            interval_s = min(interval_s, cfg.dispatched_batch_interval_s)
        return link.unsent[0].queued_at + interval_s <= now + 1e-9

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
        received = self.clock_ns() / 1e9
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
        ack = self._apply(link, command, received)
        status = dispatch_pb2.AckStatus.Name(ack.status)
        by_status = self.counters.acks_by_status
        by_status[status] = by_status.get(status, 0) + 1
        self.counters.acks_sent += 1
        self._enqueue(link, KIND_ACK, ack.SerializeToString(), int(received), now)

    def _apply(self, link: SiteLink, command: dispatch_pb2.DispatchCommand, received: float) -> dispatch_pb2.CommandAck:
        """Fence, check and apply a command as the agent does; the ack to send."""
        is_offset = command.WhichOneof("target") == "offset_kw"
        requested = command.offset_kw if is_offset else command.battery_setpoint_kw  # no target: 0 kW absolute
        epoch, seq = command.leader_epoch, command.seq
        ack = dispatch_pb2.CommandAck(
            command_id=command.command_id,
            site_id=link.site_id,
            requested_kw=requested,
            leader_epoch=epoch,
            seq=seq,
            activation_id=command.activation_id,
            step=command.step,
        )
        ack.received_at.FromNanoseconds(int(received * 1e9))
        valid_until = command.valid_until.seconds + command.valid_until.nanos / 1e9
        if epoch and (epoch, seq) <= (link.fence_epoch, link.fence_seq):
            if epoch == link.fence_epoch:
                self.counters.duplicates_refused += 1
                ack.status = dispatch_pb2.ACK_STATUS_DUPLICATE
                ack.reason = f"seq {seq} already applied (last {link.fence_seq})"
            else:
                self.counters.stale_epoch_refused += 1
                ack.status = dispatch_pb2.ACK_STATUS_REJECTED
                ack.reason = f"stale leader_epoch {epoch} (last applied {link.fence_epoch})"
            return ack
        if not math.isfinite(requested):
            ack.status = dispatch_pb2.ACK_STATUS_REJECTED
            ack.reason = f"{'offset_kw' if is_offset else 'battery_setpoint_kw'} is not a finite number"
            return ack
        if command.HasField("valid_until") and valid_until < received:
            ack.status = dispatch_pb2.ACK_STATUS_EXPIRED
            ack.reason = "arrived after valid_until"
            return ack
        if link.failed == "nack":
            ack.status = dispatch_pb2.ACK_STATUS_REJECTED
            ack.reason = "inverter fault"
            return ack
        i = link.idx
        physics = self.physics
        discharge, charge = (float(v) for v in physics.limits(i))
        baseline = physics.baseline_now(i) if is_offset else 0.0
        wanted = baseline + requested
        battery = min(max(wanted, -charge), discharge)
        applied = battery - baseline
        physics.is_offset[i] = is_offset
        if is_offset:
            physics.offset[i] = requested
        else:
            physics.setpoint[i] = requested
        revert_at = received + SETPOINT_REVERT_S
        physics.valid_until[i] = min(valid_until, revert_at) if valid_until else revert_at
        physics.command_ids[i] = command.command_id
        physics.command_tails[i] = command_tail(command.command_id, epoch, seq)
        if epoch:
            link.fence_epoch, link.fence_seq = epoch, seq
        if command.activation_id and command.step:
            if command.step <= link.applied_steps.get(command.activation_id, 0):
                self.counters.double_applied += 1  # e.g. a step re-issued under a new epoch after a takeover
            else:
                link.applied_steps[command.activation_id] = command.step
        ack.applied_kw = applied
        ack.battery_setpoint_kw = battery
        ack.written_at.FromNanoseconds(self.clock_ns())
        if abs(applied - requested) > 1e-6:
            ack.status = dispatch_pb2.ACK_STATUS_CLAMPED
            limit = f"max_discharge_kw={discharge:g}" if wanted > battery else f"max_charge_kw={charge:g}"
            what = f"offset {requested:.3f} kW on baseline {baseline:.3f} kW" if is_offset else f"{requested:.3f} kW"
            ack.reason = f"requested {what}, limited to {applied:.3f} kW by {limit}"
        else:
            ack.status = dispatch_pb2.ACK_STATUS_APPLIED
        return ack

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
            if link.failed == "silent":
                continue  # its samples are lost with it, not late
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
            "acks_by_status": dict(c.acks_by_status),
            "failed": self._next_failure,
            "truth": self._truth_new,
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
        self._truth_new = []
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
                "failed": link.failed,
            }
            for link in self.links
        }
        counters = {k: v for k, v in vars(self.counters).items()}
        cfg = self.cfg
        response = {
            "lag_s": cfg.lag_s,
            "lag_spread": cfg.lag_spread,
            "ramp_kw_per_s": cfg.ramp_kw_per_s,
            "ramp_pct_per_s": cfg.ramp_pct_per_s,
            "noise_kw": cfg.noise_kw,
        }
        summary = {
            # Fencing, for failover benchmarks (also in counters).
            "duplicates_refused": self.counters.duplicates_refused,
            "stale_epoch_refused": self.counters.stale_epoch_refused,
            "double_applied": self.counters.double_applied,
            "counters": counters,
            "sites": sites,
            "t0": round(self.t0_wall, 3),
            "response": response,
            # The whole schedule; those after the run's end never happened (``played``).
            "failures": [dict(f.as_dict(), played=k < self._next_failure) for k, f in enumerate(self.failures)],
        }
        self.summary_path.write_text(json.dumps(summary))


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
    parser.add_argument("--dispatched-batch-interval-s", type=float, default=2.0)
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
    what = parser.add_argument_group("what dispatch must cope with (all off by default)")
    what.add_argument("--lag-s", type=float, default=0.0, help="mean time constant of the battery's response")
    what.add_argument("--lag-spread", type=float, default=0.5, help="per-site spread of --lag-s (0.5: ±50 %%)")
    what.add_argument("--ramp-kw-per-s", type=float, default=0.0, help="ramp limit, kW/s (0: none)")
    what.add_argument("--ramp-pct-per-s", type=float, default=0.0, help="ramp limit, %% of max power/s (0: none)")
    what.add_argument("--noise-kw", type=float, default=0.0, help="sd of noise on reported battery/grid power")
    what.add_argument("--fail-share", type=float, default=0.0, help="share of the sites that fail once")
    what.add_argument("--fail-after-s", type=float, default=0.0, help="failures at uniform times from ...")
    what.add_argument("--fail-before-s", type=float, default=0.0, help="... to this, after the start")
    what.add_argument(
        "--fail-modes", default=",".join(FAILURE_MODES), help="modes drawn from (comma-separated, uniform)"
    )
    what.add_argument(
        "--truth-file", type=Path, help="append one line per second: the fleet's true delivered kW (see docstring)"
    )
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
        dispatched_batch_interval_s=args.dispatched_batch_interval_s,
        streams_per_channel=args.streams_per_channel,
        start_spread_s=args.start_spread_s,
        stats_interval_s=args.stats_interval_s,
        duration_s=args.duration_s,
        drain_s=args.drain_s,
        seed=args.seed,
        drop_at_s=args.drop_at_s,
        drop_share=args.drop_share,
        lag_s=args.lag_s,
        lag_spread=args.lag_spread,
        ramp_kw_per_s=args.ramp_kw_per_s,
        ramp_pct_per_s=args.ramp_pct_per_s,
        noise_kw=args.noise_kw,
        fail_share=args.fail_share,
        fail_after_s=args.fail_after_s,
        fail_before_s=args.fail_before_s,
        fail_modes=tuple(m.strip() for m in args.fail_modes.split(",") if m.strip()),
    )
    failure_schedule(config)  # fail fast on a bad --fail-modes
    profile = Profile.from_csv(args.profile) if args.profile else Profile.real()
    fleet = Fleet(config, profile, args.stats_file, args.summary_file, args.truth_file)
    counters = asyncio.run(fleet.run())
    print(
        f"fleet {config.block}: {config.sites} sites, {counters.generated} samples, {counters.acked} acked, "
        f"{counters.commands} commands, cpu {time.process_time():.1f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
