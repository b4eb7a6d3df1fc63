"""The agent's one bidirectional gRPC stream to the gateway (vpp.v1.EdgeGateway/Connect).

Delivery contract (gateway.proto): every telemetry/ack gets a seq (per agent epoch, from 1) and
stays in the outbox until the gateway's ack_seq covers it; after a reconnect the unacked rest is
sent again. Incoming gateway messages are processed once: a seq already processed in the
session, or a command_id already seen, is dropped. Our ack_seq rides on every message and on
heartbeats. The outbox is bounded: when full the oldest telemetry goes, acks never do.

Batching (docs/scaling.md): a stream message costs the gateway far more CPU than a sample inside
one, so samples wait up to ``batch_interval_s`` and go together in one ``Batch`` message (each
keeps its own seq and timestamp). A command ack goes within ``ack_spread_s`` (at a random moment,
so a fleet that got its commands together does not answer in one burst), with every sample taken so
far: under an aFRR activation that is one message per 4 s step, and it brings dispatch the samples
that show how the site delivered the previous step. Our ack_seq for the gateway's messages rides on the next
write, or on a heartbeat after ``ack_max_delay_s``. ``batch_interval_s=0`` sends every entry at
once, each in its own message (no ``Batch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from vpp.v1 import dispatch_pb2, gateway_pb2, gateway_pb2_grpc, telemetry_pb2

from vpp_edge import __version__
from vpp_edge.logfmt import kv
from vpp_edge.metrics import EdgeMetrics

log = logging.getLogger(__name__)

CommandHandler = Callable[[dispatch_pb2.DispatchCommand, datetime], Awaitable[Any]]
SEEN_COMMANDS_MAX = 4096
WELCOME_WAIT_S = 5.0


class Uplink:
    """Owns the gateway stream, the outbox and the reconnect loop."""

    def __init__(
        self,
        site_id: str,
        site_token: str,
        target: str,
        metrics: EdgeMetrics,
        command_handler: CommandHandler,
        *,
        outbox_max: int = 2000,
        heartbeat_interval_s: float = 5.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        batch_interval_s: float = 0.0,
        dispatched_batch_interval_s: float | None = None,
        ack_max_delay_s: float = 1.5,
        ack_spread_s: float = 0.0,
        max_batch_entries: int = 64,
    ) -> None:
        self.site_id = site_id
        self.site_token = site_token
        self.target = target
        self.metrics = metrics
        self.command_handler = command_handler
        self.outbox_max = outbox_max
        self.heartbeat_interval_s = heartbeat_interval_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.batch_interval_s = batch_interval_s
        # While a dispatch command is in force, samples go at least this often: dispatch measures every
        # 4 s step at its end and moves the error to other sites, so it cannot wait for the idle batch.
        self.dispatched_batch_interval_s = (
            batch_interval_s if dispatched_batch_interval_s is None else dispatched_batch_interval_s
        )
        self._dispatched = False
        self.ack_max_delay_s = ack_max_delay_s
        self.ack_spread_s = ack_spread_s
        self._ack_flush_at: float | None = None  # when the unsent command ack goes
        self.max_batch_entries = max_batch_entries
        self.agent_epoch = uuid.uuid4().hex
        self.outbox: OrderedDict[int, gateway_pb2.AgentMessage] = OrderedDict()
        self._queued_at: dict[int, float] = {}  # seq -> monotonic time it entered the outbox
        self.dropped = 0
        self.last_gateway_seq = 0
        self._next_seq = 1
        self._session_gateway_seq = 0
        self._seen_ids: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._wake = asyncio.Event()
        self._welcomed = asyncio.Event()
        self._ack_dirty = False
        self._ack_dirty_since = 0.0
        self._stopping = False
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    # ------------------------------------------------------------------ outbox

    def send_telemetry(self, telemetry: telemetry_pb2.Telemetry) -> int:
        """Queue telemetry for delivery; returns its seq."""
        self._dispatched = bool(telemetry.command_id)
        return self._enqueue(gateway_pb2.AgentMessage(site_id=self.site_id, telemetry=telemetry))

    def send_ack(self, ack: dispatch_pb2.CommandAck) -> int:
        """Queue a command ack for delivery (never dropped); returns its seq."""
        return self._enqueue(gateway_pb2.AgentMessage(site_id=self.site_id, ack=ack))

    def _enqueue(self, message: gateway_pb2.AgentMessage) -> int:
        if len(self.outbox) >= self.outbox_max and not self._drop_oldest_telemetry():
            log.warning("outbox_full_of_acks", extra=kv(size=len(self.outbox), bound=self.outbox_max))
        message.seq = self._next_seq
        self._next_seq += 1
        self.outbox[message.seq] = message
        now = time.monotonic()
        self._queued_at[message.seq] = now
        if self._ack_flush_at is None and message.WhichOneof("body") == "ack":
            self._ack_flush_at = now + (random.uniform(0.0, self.ack_spread_s) if self.ack_spread_s > 0 else 0.0)
        self.metrics.uplink_outbox_size.set(len(self.outbox))
        self._wake.set()
        return message.seq

    def _drop_oldest_telemetry(self) -> bool:
        for seq, msg in self.outbox.items():
            if msg.WhichOneof("body") == "telemetry":
                del self.outbox[seq]
                self._queued_at.pop(seq, None)
                self.dropped += 1
                self.metrics.uplink_outbox_dropped.inc()
                return True
        return False

    def _release(self, upto_seq: int) -> None:
        """Forget every message the gateway has durably taken (seq <= upto_seq)."""
        while self.outbox:
            seq = next(iter(self.outbox))
            if seq > upto_seq:
                break
            del self.outbox[seq]
            self._queued_at.pop(seq, None)
        self.metrics.uplink_outbox_size.set(len(self.outbox))

    # ------------------------------------------------------------------ connection loop

    async def run(self) -> None:
        """Keep one stream up; reconnect with jittered exponential backoff."""
        attempt = 0
        first_failure = True
        while not self._stopping:
            welcomed = False
            try:
                welcomed = await self._session()
                reason = "stream closed by gateway"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # anything else still must not end the reconnect loop
                log.exception("gateway_session_failed", extra=kv(target=self.target))
                reason = repr(exc)
            self._set_connected(False)
            if self._stopping:
                break
            if welcomed:
                attempt = 0
                first_failure = True
            if first_failure:
                log.warning("gateway_stream_down", extra=kv(target=self.target, reason=reason))
                first_failure = False
            else:
                log.debug("gateway_reconnect_failed", extra=kv(target=self.target, reason=reason, attempt=attempt))
            delay_s = min(self.reconnect_max_s, self.reconnect_min_s * (2**attempt)) * random.uniform(0.5, 1.0)
            attempt = min(attempt + 1, 30)
            self.metrics.uplink_reconnects.inc()
            await asyncio.sleep(delay_s)

    def _set_connected(self, up: bool) -> None:
        if up != self._connected:
            self._connected = up
            self.metrics.uplink_connected.set(1 if up else 0)

    async def _session(self) -> bool:
        """One stream: hello, then send and receive until it breaks. Returns True if welcomed."""
        metadata = (("x-site-id", self.site_id), ("x-site-token", self.site_token))
        self._session_gateway_seq = 0
        self._welcomed.clear()
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = gateway_pb2_grpc.EdgeGatewayStub(channel)
            call = stub.Connect(metadata=metadata)
            hello = gateway_pb2.AgentMessage(
                seq=0,
                ack_seq=0,
                site_id=self.site_id,
                hello=gateway_pb2.Hello(
                    site_id=self.site_id,
                    agent_version=__version__,
                    agent_epoch=self.agent_epoch,
                    last_gateway_seq=self.last_gateway_seq,
                ),
            )
            sender: asyncio.Task[None] | None = None
            try:
                await call.write(hello)
                self.metrics.uplink_sent.labels(kind="hello").inc()
                sender = asyncio.create_task(self._send_loop(call), name="uplink-send")
                while True:
                    reader = asyncio.ensure_future(call.read())
                    await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
                    if not reader.done():
                        # The send side broke first: surface its error, the session is over.
                        reader.cancel()
                        sender.result()
                        break
                    message = reader.result()
                    if message is grpc.aio.EOF:
                        break
                    await self._on_message(message)
            finally:
                if sender is not None:
                    sender.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                        await sender
                call.cancel()
        return self._welcomed.is_set()

    async def _send_loop(self, call: grpc.aio.StreamStreamCall) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._welcomed.wait(), timeout=WELCOME_WAIT_S)
        sent_upto = 0
        last_write = time.monotonic()
        # Whatever is still unacked after a (re)connect goes at once: it has waited long enough.
        catch_up = True
        while True:
            self._wake.clear()
            unsent = [s for s in self.outbox if s > sent_upto]
            now = time.monotonic()
            flush_at = self._flush_at(unsent, now)
            if unsent and (catch_up or flush_at <= now):
                size = self.max_batch_entries if self.batch_interval_s > 0 else 1
                for start in range(0, len(unsent), size):
                    sent_upto = await self._write_entries(call, unsent[start : start + size])
                last_write = time.monotonic()
                continue
            catch_up = False
            ack_due = self._ack_dirty_since + self.ack_max_delay_s if self._ack_dirty else float("inf")
            if ack_due <= now and not unsent:
                await self._heartbeat(call)  # our ack_seq, when no entry is going to carry it soon
                last_write = time.monotonic()
                continue
            wake_at = min(flush_at, last_write + self.heartbeat_interval_s, ack_due)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, wake_at - now))
            except TimeoutError:
                if time.monotonic() - last_write >= self.heartbeat_interval_s and not unsent:
                    await self._heartbeat(call)
                    last_write = time.monotonic()

    def _flush_at(self, unsent: list[int], now: float) -> float:
        """When the unsent entries should go (``inf`` if there are none)."""
        if not unsent:
            return float("inf")
        if self.batch_interval_s <= 0 or len(unsent) >= self.max_batch_entries:
            return now
        interval_s = self.batch_interval_s
        if self._dispatched:
            interval_s = min(interval_s, self.dispatched_batch_interval_s)
        flush_at = self._queued_at.get(unsent[0], now) + interval_s
        if self._ack_flush_at is not None:
            if any(self.outbox[s].WhichOneof("body") == "ack" for s in unsent):
                # A command ack goes soon, with the samples of the step before it.
                flush_at = min(flush_at, self._ack_flush_at)
            else:
                self._ack_flush_at = None  # it went already (a reconnect's catch-up) or was refused
        return flush_at

    async def _write_entries(self, call: grpc.aio.StreamStreamCall, seqs: list[int]) -> int:
        """One stream message for ``seqs`` (a Batch unless it is a single entry); returns the last seq."""
        messages = [m for s in seqs if (m := self.outbox.get(s)) is not None]
        if not messages:
            return seqs[-1]
        if len(messages) == 1:
            message = messages[0]
            message.ack_seq = self._session_gateway_seq
            kind = message.WhichOneof("body") or "unknown"
        else:
            batch = gateway_pb2.Batch()
            for m in messages:
                body = m.WhichOneof("body")  # the outbox holds only telemetry and acks
                assert body is not None
                getattr(batch.entries.add(seq=m.seq), body).CopyFrom(getattr(m, body))
            message = gateway_pb2.AgentMessage(
                seq=messages[-1].seq, ack_seq=self._session_gateway_seq, site_id=self.site_id, batch=batch
            )
            kind = "batch"
        await call.write(message)
        self._ack_dirty = False
        if any(m.WhichOneof("body") == "ack" for m in messages):
            self._ack_flush_at = None
        self.metrics.uplink_sent.labels(kind=kind).inc()
        return seqs[-1]

    async def _heartbeat(self, call: grpc.aio.StreamStreamCall) -> None:
        now = Timestamp()
        now.FromDatetime(datetime.now(UTC))
        await call.write(
            gateway_pb2.AgentMessage(
                seq=0,
                ack_seq=self._session_gateway_seq,
                site_id=self.site_id,
                heartbeat=gateway_pb2.Heartbeat(sent_at=now),
            )
        )
        self._ack_dirty = False
        self.metrics.uplink_sent.labels(kind="heartbeat").inc()

    # ------------------------------------------------------------------ incoming

    async def _on_message(self, message: gateway_pb2.GatewayMessage) -> None:
        kind = message.WhichOneof("body") or "none"
        self.metrics.uplink_received.labels(kind=kind).inc()
        self._set_connected(True)
        if message.ack_seq:
            self._release(message.ack_seq)
        if message.seq and message.seq <= self._session_gateway_seq:
            log.debug("duplicate_gateway_message_dropped", extra=kv(seq=message.seq))
            self._mark_ack_dirty()
            return
        if kind == "welcome":
            welcome = message.welcome
            self._release(welcome.last_agent_seq)
            log.info(
                "gateway_welcome",
                extra=kv(gateway_id=welcome.gateway_id, last_agent_seq=welcome.last_agent_seq, outbox=len(self.outbox)),
            )
            self._welcomed.set()
        elif kind == "refusal":
            refusal = message.refusal
            self.metrics.uplink_refusals.inc()
            self.outbox.pop(refusal.refused_seq, None)
            self.metrics.uplink_outbox_size.set(len(self.outbox))
            log.warning("gateway_refused_message", extra=kv(refused_seq=refusal.refused_seq, reason=refusal.reason))
        elif kind == "command":
            await self._on_command(message.command)
        if message.seq:
            self._session_gateway_seq = message.seq
            self.last_gateway_seq = message.seq
            self._mark_ack_dirty()

    def _mark_ack_dirty(self) -> None:
        """We processed a gateway message: our ack_seq must reach the gateway (on the next write)."""
        if not self._ack_dirty:
            self._ack_dirty = True
            self._ack_dirty_since = time.monotonic()
        self._wake.set()

    async def _on_command(self, command: dispatch_pb2.DispatchCommand) -> None:
        received_at = datetime.now(UTC)
        if command.command_id in self._seen_ids:
            self.metrics.commands_duplicate.inc()
            log.info("duplicate_command_dropped", extra=kv(command_id=command.command_id))
            return
        self._seen_ids.add(command.command_id)
        self._seen_order.append(command.command_id)
        if len(self._seen_order) > SEEN_COMMANDS_MAX:
            self._seen_ids.discard(self._seen_order.popleft())
        try:
            await self.command_handler(command, received_at)
        except Exception:  # one bad command must not take the stream down
            log.exception("command_handler_failed", extra=kv(command_id=command.command_id))

    def stop(self) -> None:
        """Make run() exit at its next step; cancel its task to close the stream now."""
        self._stopping = True
