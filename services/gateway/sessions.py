"""Per-site stream state on this replica: sequence numbers both ways, unacked commands, dedupe.

Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from vpp.v1 import dispatch_pb2, gateway_pb2


@dataclass
class SiteSession:
    site_id: str
    partition: int
    connected_at: float
    limit: int
    # Unbounded so the end-of-stream sentinel (None) always fits; ``offer`` enforces ``limit``.
    outbound: asyncio.Queue[gateway_pb2.GatewayMessage | None] = field(default_factory=asyncio.Queue)
    messages_in: int = 0
    commands_out: int = 0
    in_flight: asyncio.Future[None] | None = None  # the record holding this site's latest queued entries
    failure: BaseException | None = None  # a write to Kafka failed: the stream ends UNAVAILABLE
    ended: bool = False

    def offer(self, msg: gateway_pb2.GatewayMessage) -> bool:
        """Queue a message for the agent unless it is already ``limit`` behind."""
        if self.ended or self.outbound.qsize() >= self.limit:
            return False
        self.outbound.put_nowait(msg)
        return True

    def end(self, failure: BaseException | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        self.failure = failure
        self.outbound.put_nowait(None)


@dataclass
class SiteLedger:
    """What this replica remembers about a site across its reconnects."""

    agent_epoch: str = ""
    last_agent_seq: int = 0  # highest AgentMessage seq durably written to Kafka (what we ack)
    queued_seq: int = 0  # highest seq handed to a Kafka batch (written or on its way)
    next_gateway_seq: int = 1
    last_acked_gateway_seq: int = 0
    unacked: OrderedDict[int, gateway_pb2.GatewayMessage] = field(default_factory=OrderedDict)
    connects: int = 0


class SessionRegistry:
    def __init__(self, max_unacked: int, queue_size: int) -> None:
        self._max_unacked = max_unacked
        self._queue_size = queue_size
        self.sessions: dict[str, SiteSession] = {}
        self.ledgers: dict[str, SiteLedger] = {}

    def open(self, site_id: str, partition: int) -> tuple[SiteSession, SiteLedger, SiteSession | None]:
        """A new stream for a site replaces any older one (the agent reconnected): returns the old."""
        old = self.sessions.get(site_id)
        session = SiteSession(site_id, partition, time.time(), self._queue_size)
        self.sessions[site_id] = session
        ledger = self.ledgers.setdefault(site_id, SiteLedger())
        ledger.connects += 1
        return session, ledger, old

    def close(self, session: SiteSession) -> None:
        if self.sessions.get(session.site_id) is session:
            del self.sessions[session.site_id]

    def next_message(self, ledger: SiteLedger, command: dispatch_pb2.DispatchCommand) -> gateway_pb2.GatewayMessage:
        msg = gateway_pb2.GatewayMessage(seq=ledger.next_gateway_seq, ack_seq=ledger.last_agent_seq, command=command)
        ledger.next_gateway_seq += 1
        ledger.unacked[msg.seq] = msg
        while len(ledger.unacked) > self._max_unacked:
            ledger.unacked.popitem(last=False)
        return msg

    @staticmethod
    def agent_acked(ledger: SiteLedger, ack_seq: int) -> None:
        if ack_seq <= ledger.last_acked_gateway_seq:
            return
        ledger.last_acked_gateway_seq = ack_seq
        while ledger.unacked:
            seq = next(iter(ledger.unacked))
            if seq > ack_seq:
                break
            del ledger.unacked[seq]
