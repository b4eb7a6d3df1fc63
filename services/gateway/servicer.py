"""The EdgeGateway servicer: authenticates a site, binds the stream to it, writes what the agent sends
to Kafka before acknowledging it, and delivers the site's commands from Kafka down the stream.

Cost per site is what bounds a replica (docs/scaling.md): samples and acks of every site are batched
per partition into one Kafka record per flush, the ack to the agent is sent from the flush's
completion (one per site per flush), and agents batch several samples per stream message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge, Histogram
from vpp.v1 import dispatch_pb2, gateway_pb2, gateway_pb2_grpc, telemetry_pb2

from gateway.auth import check_site
from gateway.sessions import SessionRegistry, SiteLedger, SiteSession
from vpp_common import metrics
from vpp_common.batching import PartitionBatcher, entry
from vpp_common.envelope import length_delimited, now_timestamp
from vpp_common.kafka import Consumed
from vpp_common.logs import get_logger
from vpp_common.partitioning import site_partition

log = get_logger(__name__)

CONNECTED = Gauge("vpp_gateway_connected_sites", "Sites holding a stream to this replica")
CONNECTS = Counter("vpp_gateway_stream_connects_total", "Streams opened")
RECONNECTS = Counter("vpp_gateway_stream_reconnects_total", "Streams opened by a site seen before on this replica")
AUTH_FAILURES = Counter("vpp_gateway_auth_failures_total", "Streams refused at the door")
MESSAGES_IN = Counter("vpp_gateway_messages_in_total", "Agent stream messages received", ["kind"])
SAMPLES_IN = Counter("vpp_gateway_entries_in_total", "Telemetry samples and acks received (inside messages)", ["kind"])
REFUSED = Counter("vpp_gateway_messages_refused_total", "Agent messages refused (stream kept)", ["reason"])
DUPLICATES = Counter("vpp_gateway_duplicates_dropped_total", "Agent entries already written, dropped")
COMMANDS = Counter("vpp_gateway_commands_total", "Commands from Kafka by outcome", ["outcome"])
ACKS_DROPPED = Counter("vpp_gateway_acks_dropped_total", "Cumulative acks not queued (agent reading slowly)")
KAFKA_WRITE = Histogram(
    "vpp_gateway_kafka_write_seconds",
    "Agent message received to its last entry durable in Kafka",
    buckets=metrics.LATENCY_BUCKETS_S,
)

SERVICE_NAME = "vpp.v1.EdgeGateway"
_ENTRY_KINDS = ("telemetry", "ack")
# Field numbers of the Kafka batch payloads, so records are assembled from each entry's bytes.
_BATCH_FIELD = telemetry_pb2.TelemetryBatch.DESCRIPTOR.fields_by_name["records"].number
_ID_FIELD = {
    "telemetry": telemetry_pb2.TelemetryRecord.DESCRIPTOR.fields_by_name["message_id"].number,
    "ack": dispatch_pb2.CommandAckRecord.DESCRIPTOR.fields_by_name["message_id"].number,
}
_BODY_FIELD = {
    "telemetry": telemetry_pb2.TelemetryRecord.DESCRIPTOR.fields_by_name["telemetry"].number,
    "ack": dispatch_pb2.CommandAckRecord.DESCRIPTOR.fields_by_name["ack"].number,
}
assert dispatch_pb2.CommandAckBatch.DESCRIPTOR.fields_by_name["records"].number == _BATCH_FIELD
# Entries queued but not yet durable per site, beyond which the stream's reader waits (backpressure).
MAX_IN_FLIGHT_ENTRIES = 5000


@dataclass(frozen=True)
class Undecodable:
    """What the tolerant deserializer yields for bytes that are not an AgentMessage."""

    size: int
    error: str


def _decode_agent_message(raw: bytes) -> gateway_pb2.AgentMessage | Undecodable:
    msg = gateway_pb2.AgentMessage()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        return Undecodable(len(raw), str(exc))
    return msg


class EdgeGatewayServicer(gateway_pb2_grpc.EdgeGatewayServicer):
    def __init__(
        self,
        *,
        secret: str,
        gateway_id: str,
        registry: SessionRegistry,
        telemetry: PartitionBatcher,
        acks: PartitionBatcher,
        partitions: int = 0,
    ) -> None:
        self._secret = secret
        self._gateway_id = gateway_id
        self.registry = registry
        self._batchers = {"telemetry": telemetry, "ack": acks}
        self.partitions = partitions  # set from the broker's count at start
        self._outcomes = {name: COMMANDS.labels(name) for name in ("delivered", "not_held", "expired", "queue_full")}
        self._messages_in = {k: MESSAGES_IN.labels(k) for k in ("hello", "telemetry", "ack", "heartbeat", "batch")}
        self._entries_in = {k: SAMPLES_IN.labels(k) for k in _ENTRY_KINDS}

    # -- commands from Kafka ---------------------------------------------------------------------
    async def on_command_batch(self, item: Consumed) -> None:
        """Every replica reads every partition's command batch and delivers those of the sites it holds."""
        counts = dict.fromkeys(self._outcomes, 0)
        now_ns = now_timestamp().ToNanoseconds()
        sessions = self.registry.sessions
        for command in item.env.command_batch.commands:
            session = sessions.get(command.site_id)
            if session is None:
                counts["not_held"] += 1  # another replica holds this site, or it is offline
                continue
            if command.HasField("valid_until") and command.valid_until.ToNanoseconds() < now_ns:
                counts["expired"] += 1
                continue
            ledger = self.registry.ledgers[command.site_id]
            msg = self.registry.next_message(ledger, command)
            if not session.offer(msg):
                counts["queue_full"] += 1  # stays unacked; re-sent when the agent reconnects
                continue
            session.commands_out += 1
            counts["delivered"] += 1
        for outcome, n in counts.items():
            if n:
                self._outcomes[outcome].inc(n)

    # -- the stream --------------------------------------------------------------------------
    async def Connect(self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        """A coroutine with ``context.read``/``context.write`` rather than an async generator over the
        request iterator: one generator layer less per message each way (docs/scaling.md)."""
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        site_id = md.get("x-site-id")
        refusal = check_site(self._secret, site_id, md.get("x-site-token"))
        if refusal is not None or site_id is None:
            AUTH_FAILURES.inc()
            log.warning("site_refused", site_id=site_id, reason=refusal, peer=context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal or "no site id")
            return
        session, ledger, old = self.registry.open(site_id, site_partition(site_id, self.partitions))
        if old is not None:
            old.end()  # the agent reconnected: end the superseded stream
        CONNECTS.inc()
        if ledger.connects > 1:
            RECONNECTS.inc()
        CONNECTED.set(len(self.registry.sessions))
        log.info("site_connected", site_id=site_id, peer=context.peer(), connects=ledger.connects)
        reader = asyncio.create_task(self._read(session, ledger, context))
        reader.add_done_callback(lambda _t: session.end())
        outbound = session.outbound
        try:
            while True:
                msg = await outbound.get()
                if msg is None:
                    break
                await context.write(msg)
        finally:
            reader.cancel()
            self.registry.close(session)
            CONNECTED.set(len(self.registry.sessions))
            log.info("site_disconnected", site_id=site_id, messages_in=session.messages_in)
        failure = session.failure
        if failure is None and reader.done() and not reader.cancelled():
            failure = reader.exception()
        if failure is not None:
            # Almost always Kafka refusing the write: the agent reconnects and re-sends from its outbox.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"gateway could not write to Kafka ({failure!r}); reconnect and re-send"
            )

    async def _read(self, session: SiteSession, ledger: SiteLedger, context: grpc.aio.ServicerContext) -> None:
        hello_seen = False
        site_id = session.site_id
        while True:
            item = await context.read()
            if item is grpc.aio.EOF:
                return
            session.messages_in += 1
            if isinstance(item, Undecodable):
                self._refuse(session, 0, "undecodable", f"not an AgentMessage ({item.size} bytes): {item.error}")
                continue
            kind = item.WhichOneof("body") or "empty"
            counter = self._messages_in.get(kind)
            if counter is not None:
                counter.inc()
            if item.site_id != site_id:
                self._refuse(session, item.seq, "site_mismatch", f"stream is bound to site {site_id}")
                self._mark_processed(session, ledger, item.seq)
                continue
            self.registry.agent_acked(ledger, item.ack_seq)
            if kind == "hello":
                if item.hello.site_id and item.hello.site_id != site_id:
                    self._refuse(session, 0, "site_mismatch", f"hello claims site {item.hello.site_id}")
                    continue
                hello_seen = True
                self._hello(session, ledger, item.hello)
            elif not hello_seen:
                self._refuse(session, item.seq, "hello_required", "send Hello first")
            elif kind == "batch":
                await self._forward(session, ledger, [(e.seq, e.WhichOneof("body"), e) for e in item.batch.entries])
            elif kind in _ENTRY_KINDS:
                await self._forward(session, ledger, [(item.seq, kind, item)])
            elif kind == "heartbeat":
                self._send_ack(session, ledger)
            else:
                self._refuse(session, item.seq, "empty", "message has no body")
                self._mark_processed(session, ledger, item.seq)

    def _hello(self, session: SiteSession, ledger: SiteLedger, hello: gateway_pb2.Hello) -> None:
        if hello.agent_epoch != ledger.agent_epoch:
            ledger.agent_epoch = hello.agent_epoch
            ledger.last_agent_seq = 0
            ledger.queued_seq = 0
        # Entries queued by a superseded stream but never written are re-sent by the agent.
        ledger.queued_seq = max(ledger.queued_seq, ledger.last_agent_seq)
        welcome = gateway_pb2.Welcome(
            site_id=session.site_id, gateway_id=self._gateway_id, last_agent_seq=ledger.last_agent_seq
        )
        session.outbound.put_nowait(gateway_pb2.GatewayMessage(ack_seq=ledger.last_agent_seq, welcome=welcome))
        now_ns = now_timestamp().ToNanoseconds()
        for msg in list(ledger.unacked.values()):
            cmd = msg.command
            if cmd.HasField("valid_until") and cmd.valid_until.ToNanoseconds() < now_ns:
                continue
            if session.offer(msg):
                COMMANDS.labels("resent").inc()

    async def _forward(
        self, session: SiteSession, ledger: SiteLedger, entries: list[tuple[int, str | None, Any]]
    ) -> None:
        """Hand the entries to the partition batchers; ack once their record is durable."""
        site_id = session.site_id
        prefix = f"{site_id}:{ledger.agent_epoch}:"
        last: asyncio.Future[None] | None = None
        top_seq = 0
        duplicates = 0
        counts = dict.fromkeys(_ENTRY_KINDS, 0)
        for seq, kind, holder in entries:
            top_seq = max(top_seq, seq)
            if seq <= ledger.queued_seq:
                duplicates += 1
                continue
            if kind not in _ENTRY_KINDS:
                self._refuse(session, seq, "empty", "batch entry has no body")
                continue
            body = getattr(holder, kind)
            if body.site_id and body.site_id != site_id:
                detail = f"{kind} claims site {body.site_id}; stream is bound to {site_id}"
                self._refuse(session, seq, "site_mismatch", detail)
                continue
            if not body.site_id:
                body.site_id = site_id  # the stream's identity is the site's, whatever the agent left empty
            counts[kind] += 1
            # TelemetryRecord / CommandAckRecord straight from the entry's bytes (no message copies).
            record = length_delimited(_ID_FIELD[kind], f"{prefix}{seq}".encode()) + length_delimited(
                _BODY_FIELD[kind], body.SerializeToString()
            )
            last = self._batchers[kind].add(session.partition, entry(_BATCH_FIELD, record))
        if duplicates:
            DUPLICATES.inc(duplicates)
        for kind, n in counts.items():
            if n:
                self._entries_in[kind].inc(n)
        if top_seq <= ledger.queued_seq:
            self._send_ack(session, ledger)  # all duplicates (a re-send): tell the agent where we are
            return
        ledger.queued_seq = top_seq
        if last is None:  # only refused entries: handled once what came before them is written
            self._after_in_flight(session, ledger, top_seq)
            return
        session.in_flight = last
        started = asyncio.get_running_loop().time()
        last.add_done_callback(lambda f: self._written(session, ledger, top_seq, f, started))
        if top_seq - ledger.last_agent_seq > MAX_IN_FLIGHT_ENTRIES:
            await asyncio.shield(last)  # backpressure: an agent cannot outrun the broker

    def _after_in_flight(self, session: SiteSession, ledger: SiteLedger, seq: int) -> None:
        """Count ``seq`` as handled once every entry before it is durable (acks are cumulative)."""
        pending = session.in_flight
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda f: self._written(session, ledger, seq, f))
        else:
            self._written(session, ledger, seq, None)

    def _written(
        self,
        session: SiteSession,
        ledger: SiteLedger,
        seq: int,
        done: asyncio.Future[None] | None,
        started: float = 0.0,
    ) -> None:
        """A record holding this site's entries up to ``seq`` is durable (or failed)."""
        if done is not None:
            if done.exception() is not None:
                log.error("kafka_write_failed", site_id=session.site_id, error=repr(done.exception())[:200])
                ledger.queued_seq = ledger.last_agent_seq  # not written: the agent will re-send these
                session.end(done.exception())
                return
            if started:  # timed from this entry's own hand-over, not when it waited on an earlier one
                KAFKA_WRITE.observe(asyncio.get_running_loop().time() - started)
        if seq > ledger.last_agent_seq:
            ledger.last_agent_seq = seq
            self._send_ack(session, ledger)  # cumulative: it also covers whatever came before

    @staticmethod
    def _send_ack(session: SiteSession, ledger: SiteLedger) -> None:
        """Acks are cumulative: when the agent reads too slowly, dropping one loses nothing."""
        if not session.offer(gateway_pb2.GatewayMessage(ack_seq=ledger.last_agent_seq)):
            ACKS_DROPPED.inc()

    def _refuse(self, session: SiteSession, seq: int, reason: str, detail: str) -> None:
        REFUSED.labels(reason).inc()
        log.warning("message_refused", site_id=session.site_id, seq=seq, reason=reason, detail=detail)
        refusal = gateway_pb2.Refusal(refused_seq=seq, reason=f"{reason}: {detail}")
        session.offer(gateway_pb2.GatewayMessage(refusal=refusal))  # logged and counted even if dropped

    def _mark_processed(self, session: SiteSession, ledger: SiteLedger, seq: int) -> None:
        """A refused message counts as handled, so the agent's outbox lets it go."""
        if seq > ledger.queued_seq:
            ledger.queued_seq = seq
            self._after_in_flight(session, ledger, seq)

    async def ListConnectedSites(
        self, request: gateway_pb2.ListConnectedSitesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListConnectedSitesResponse:
        resp = gateway_pb2.ListConnectedSitesResponse()
        for session in sorted(self.registry.sessions.values(), key=lambda s: s.site_id):
            site = resp.sites.add(
                site_id=session.site_id,
                gateway_id=self._gateway_id,
                messages_in=session.messages_in,
                commands_out=session.commands_out,
            )
            site.connected_at.FromNanoseconds(int(session.connected_at * 1e9))
        return resp


def add_to_server(servicer: EdgeGatewayServicer, server: grpc.aio.Server) -> None:
    """Like the generated ``add_EdgeGatewayServicer_to_server``, but an undecodable agent message
    reaches the servicer (to be refused and counted) instead of killing the stream."""
    handlers = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            servicer.Connect,
            request_deserializer=_decode_agent_message,
            response_serializer=gateway_pb2.GatewayMessage.SerializeToString,
        ),
        "ListConnectedSites": grpc.unary_unary_rpc_method_handler(
            servicer.ListConnectedSites,
            request_deserializer=gateway_pb2.ListConnectedSitesRequest.FromString,
            response_serializer=gateway_pb2.ListConnectedSitesResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
