"""The EdgeGateway servicer: authenticates a site, binds the stream to it, writes what the agent sends
to Kafka before acknowledging it, and delivers the site's commands from Kafka down the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge, Histogram
from vpp.v1 import dispatch_pb2, envelope_pb2, gateway_pb2, gateway_pb2_grpc

from gateway.auth import check_site
from gateway.sessions import SessionRegistry, SiteLedger, SiteSession
from vpp_common import metrics
from vpp_common.envelope import now_timestamp
from vpp_common.kafka import EventProducer
from vpp_common.logs import get_logger
from vpp_common.topics import ACKS, TELEMETRY

log = get_logger(__name__)

CONNECTED = Gauge("vpp_gateway_connected_sites", "Sites holding a stream to this replica")
CONNECTS = Counter("vpp_gateway_stream_connects_total", "Streams opened")
RECONNECTS = Counter("vpp_gateway_stream_reconnects_total", "Streams opened by a site seen before on this replica")
AUTH_FAILURES = Counter("vpp_gateway_auth_failures_total", "Streams refused at the door")
MESSAGES_IN = Counter("vpp_gateway_messages_in_total", "Agent messages received", ["kind"])
REFUSED = Counter("vpp_gateway_messages_refused_total", "Agent messages refused (stream kept)", ["reason"])
DUPLICATES = Counter("vpp_gateway_duplicates_dropped_total", "Agent messages already written, dropped")
COMMANDS = Counter("vpp_gateway_commands_total", "Commands from Kafka by outcome", ["outcome"])
ACKS_DROPPED = Counter("vpp_gateway_acks_dropped_total", "Cumulative acks not queued (agent reading slowly)")
KAFKA_WRITE = Histogram(
    "vpp_gateway_kafka_write_seconds", "Agent message to broker acknowledgement", buckets=metrics.LATENCY_BUCKETS_S
)

SERVICE_NAME = "vpp.v1.EdgeGateway"


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
    def __init__(self, *, secret: str, gateway_id: str, producer: EventProducer, registry: SessionRegistry) -> None:
        self._secret = secret
        self._gateway_id = gateway_id
        self._producer = producer
        self.registry = registry
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- commands from Kafka (consumer thread) -------------------------------------------------
    def on_command_record(self, env: envelope_pb2.Envelope, record: Any) -> None:
        if self._loop is None:
            COMMANDS.labels("not_held").inc()
            return
        self._loop.call_soon_threadsafe(self._deliver, env.command)

    def _deliver(self, command: dispatch_pb2.DispatchCommand) -> None:
        session = self.registry.sessions.get(command.site_id)
        if session is None:
            COMMANDS.labels("not_held").inc()  # another replica holds this site, or it is offline
            return
        if command.HasField("valid_until") and command.valid_until.ToNanoseconds() < now_timestamp().ToNanoseconds():
            COMMANDS.labels("expired").inc()
            return
        ledger = self.registry.ledgers[command.site_id]
        msg = self.registry.next_message(ledger, command)
        if not session.offer(msg):
            COMMANDS.labels("queue_full").inc()  # stays unacked; re-sent when the agent reconnects
            return
        session.commands_out += 1
        COMMANDS.labels("delivered").inc()

    # -- the stream --------------------------------------------------------------------------
    async def Connect(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GatewayMessage]:
        self._loop = asyncio.get_running_loop()
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        site_id = md.get("x-site-id")
        refusal = check_site(self._secret, site_id, md.get("x-site-token"))
        if refusal is not None or site_id is None:
            AUTH_FAILURES.inc()
            log.warning("site_refused", site_id=site_id, reason=refusal, peer=context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal or "no site id")
            return
        session, ledger, old = self.registry.open(site_id)
        if old is not None:
            old.end()  # the agent reconnected: end the superseded stream
        CONNECTS.inc()
        if ledger.connects > 1:
            RECONNECTS.inc()
        CONNECTED.set(len(self.registry.sessions))
        log.info("site_connected", site_id=site_id, peer=context.peer(), connects=ledger.connects)
        reader = asyncio.create_task(self._read(session, ledger, request_iterator))
        reader.add_done_callback(lambda _t: session.end())
        try:
            while True:
                msg = await session.outbound.get()
                if msg is None:
                    break
                yield msg
        finally:
            reader.cancel()
            self.registry.close(session)
            CONNECTED.set(len(self.registry.sessions))
            log.info("site_disconnected", site_id=site_id, messages_in=session.messages_in)
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            exc = reader.exception()
            # Almost always Kafka refusing the write: the agent reconnects and re-sends from its outbox.
            detail = f"gateway failed to handle the stream ({exc!r}); reconnect"
            await context.abort(grpc.StatusCode.UNAVAILABLE, detail)

    async def _read(
        self,
        session: SiteSession,
        ledger: SiteLedger,
        request_iterator: AsyncIterator[Any],
    ) -> None:
        hello_seen = False
        async for item in request_iterator:
            session.messages_in += 1
            if isinstance(item, Undecodable):
                self._refuse(session, 0, "undecodable", f"not an AgentMessage ({item.size} bytes): {item.error}")
                continue
            kind = item.WhichOneof("body") or "empty"
            MESSAGES_IN.labels(kind).inc()
            inner_site = getattr(getattr(item, kind, None), "site_id", session.site_id) or session.site_id
            if item.site_id != session.site_id or inner_site != session.site_id:
                self._refuse(session, item.seq, "site_mismatch", f"stream is bound to site {session.site_id}")
                self._mark_processed(ledger, item.seq)
                continue
            self.registry.agent_acked(ledger, item.ack_seq)
            if kind == "hello":
                hello_seen = True
                self._hello(session, ledger, item.hello)
            elif not hello_seen:
                self._refuse(session, item.seq, "hello_required", "send Hello first")
            elif kind in ("telemetry", "ack"):
                await self._forward(session, ledger, item, kind)
            elif kind == "heartbeat":
                self._send_ack(session, ledger)
            else:
                self._refuse(session, item.seq, "empty", "message has no body")
                self._mark_processed(ledger, item.seq)

    def _hello(self, session: SiteSession, ledger: SiteLedger, hello: gateway_pb2.Hello) -> None:
        if hello.agent_epoch != ledger.agent_epoch:
            ledger.agent_epoch = hello.agent_epoch
            ledger.last_agent_seq = 0
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

    async def _forward(self, session: SiteSession, ledger: SiteLedger, item: Any, kind: str) -> None:
        if item.seq <= ledger.last_agent_seq:
            DUPLICATES.inc()
        else:
            topic = TELEMETRY if kind == "telemetry" else ACKS
            loop = asyncio.get_running_loop()
            started = loop.time()
            await self._producer.publish_async(
                topic,
                session.site_id,
                getattr(item, kind),
                site_id=session.site_id,
                message_id=f"{session.site_id}:{ledger.agent_epoch}:{item.seq}",
            )
            KAFKA_WRITE.observe(loop.time() - started)
            ledger.last_agent_seq = item.seq
        self._send_ack(session, ledger)

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

    @staticmethod
    def _mark_processed(ledger: SiteLedger, seq: int) -> None:
        """A refused message counts as handled, so the agent's outbox lets it go."""
        ledger.last_agent_seq = max(ledger.last_agent_seq, seq)

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
