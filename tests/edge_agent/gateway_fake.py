"""A real grpc.aio EdgeGateway for tests: records what agents send, acks or not, pushes messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
from vpp.v1 import gateway_pb2, gateway_pb2_grpc


class FakeGateway(gateway_pb2_grpc.EdgeGatewayServicer):
    """Records what the agent sends; acks (or not) and pushes scripted messages."""

    def __init__(self, *, auto_ack: bool = True, last_agent_seq: int = 0) -> None:
        self.auto_ack = auto_ack
        self.last_agent_seq = last_agent_seq
        self.received: list[gateway_pb2.AgentMessage] = []
        self.metadata: list[dict[str, str]] = []
        self.outgoing: asyncio.Queue[gateway_pb2.GatewayMessage] = asyncio.Queue()
        self.seqs_seen: list[int] = []

    async def Connect(
        self, request_iterator: AsyncIterator[gateway_pb2.AgentMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GatewayMessage]:
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        hello = await request_iterator.__anext__()
        self.received.append(hello)
        yield gateway_pb2.GatewayMessage(
            seq=0,
            ack_seq=self.last_agent_seq,
            welcome=gateway_pb2.Welcome(site_id=hello.hello.site_id, gateway_id="gw-test",
                                        last_agent_seq=self.last_agent_seq),
        )

        async def reader() -> None:
            async for msg in request_iterator:
                self.received.append(msg)
                if msg.seq:
                    self.seqs_seen.append(msg.seq)
                    if self.auto_ack:
                        await self.outgoing.put(gateway_pb2.GatewayMessage(seq=0, ack_seq=msg.seq))

        task = asyncio.create_task(reader())
        try:
            while not task.done():
                getter = asyncio.create_task(self.outgoing.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
        finally:
            task.cancel()

    def bodies(self, kind: str) -> list[gateway_pb2.AgentMessage]:
        """Messages of one kind; the entries of a Batch count as messages of their own kind."""
        out = []
        for m in self.received:
            if m.WhichOneof("body") == "batch" and kind != "batch":
                for e in m.batch.entries:
                    body = e.WhichOneof("body")
                    if body == kind:
                        single = gateway_pb2.AgentMessage(seq=e.seq, ack_seq=m.ack_seq, site_id=m.site_id)
                        getattr(single, kind).CopyFrom(getattr(e, kind))
                        out.append(single)
            elif m.WhichOneof("body") == kind:
                out.append(m)
        return out


@contextlib.asynccontextmanager
async def gateway_server(gateway: FakeGateway, port: int = 0) -> AsyncIterator[tuple[grpc.aio.Server, int]]:
    server = grpc.aio.server()
    gateway_pb2_grpc.add_EdgeGatewayServicer_to_server(gateway, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield server, bound
    finally:
        await server.stop(grace=0)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0, poll_s: float = 0.02) -> None:
    """Wait for a condition another task makes true (bounded, so a failing test cannot hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(poll_s)
