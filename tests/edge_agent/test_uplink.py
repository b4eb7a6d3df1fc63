"""Uplink against a real grpc.aio server implementing EdgeGateway in the test: sequence numbers,
acks, resend after the gateway restarts, duplicate suppression and the bounded outbox."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

import pytest
from vpp.v1 import dispatch_pb2, gateway_pb2, telemetry_pb2

from edge_agent.gateway_fake import FakeGateway, gateway_server, until
from edge_agent.helpers import command, run
from vpp_edge.metrics import EdgeMetrics
from vpp_edge.uplink import Uplink


def telemetry(n: int) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(site_id="site-1", available=True, soc_pct=float(n))


def make_uplink(port: int, handler: Callable[..., object] | None = None, **kwargs: float) -> Uplink:
    async def ignore(_cmd: dispatch_pb2.DispatchCommand, _at: datetime) -> None:
        return None

    options: dict[str, float] = {"heartbeat_interval_s": 0.2, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2}
    options.update(kwargs)
    return Uplink(
        "site-1",
        "secret-token",
        f"127.0.0.1:{port}",
        EdgeMetrics(),
        handler or ignore,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


async def stop_uplink(uplink: Uplink, task: asyncio.Task[None]) -> None:
    uplink.stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.timeout(20)
def test_hello_sequence_numbers_and_acks() -> None:
    async def scenario() -> None:
        gateway = FakeGateway()
        async with gateway_server(gateway) as (_server, port):
            uplink = make_uplink(port)
            task = asyncio.create_task(uplink.run())
            for i in range(3):
                uplink.send_telemetry(telemetry(i))
            await until(lambda: len(gateway.bodies("telemetry")) == 3 and not uplink.outbox)
            first = gateway.received[0]
            assert first.WhichOneof("body") == "hello" and first.seq == 0
            assert first.hello.agent_epoch == uplink.agent_epoch and first.hello.site_id == "site-1"
            assert gateway.metadata[0]["x-site-id"] == "site-1"
            assert gateway.metadata[0]["x-site-token"] == "secret-token"
            assert [m.seq for m in gateway.bodies("telemetry")] == [1, 2, 3]
            assert uplink.connected
            assert uplink.metrics.registry.get_sample_value("vpp_edge_uplink_connected") == 1
            assert uplink.metrics.registry.get_sample_value("vpp_edge_uplink_outbox_size") == 0
            await stop_uplink(uplink, task)

    run(scenario())


@pytest.mark.timeout(20)
def test_duplicate_commands_dropped_and_acked() -> None:
    async def scenario() -> None:
        gateway = FakeGateway()
        handled: list[str] = []

        async def handler(cmd: dispatch_pb2.DispatchCommand, _at: datetime) -> None:
            handled.append(cmd.command_id)

        async with gateway_server(gateway) as (_server, port):
            uplink = make_uplink(port, handler)
            task = asyncio.create_task(uplink.run())
            await until(lambda: uplink.connected)
            for seq, cmd_id in ((1, "a"), (1, "a"), (2, "a"), (3, "b")):
                await gateway.outgoing.put(gateway_pb2.GatewayMessage(seq=seq, command=command(1.0, command_id=cmd_id)))
            await until(lambda: any(m.ack_seq == 3 for m in gateway.received))
            assert handled == ["a", "b"]
            assert uplink.metrics.registry.get_sample_value("vpp_edge_commands_duplicate_total") == 1
            assert uplink.last_gateway_seq == 3
            await stop_uplink(uplink, task)

    run(scenario())


@pytest.mark.timeout(20)
def test_resend_unacked_after_gateway_restart_without_duplicates() -> None:
    async def scenario() -> None:
        first = FakeGateway(auto_ack=False)
        async with gateway_server(first) as (_server, port):
            uplink = make_uplink(port)
            task = asyncio.create_task(uplink.run())
            for i in range(3):
                uplink.send_telemetry(telemetry(i))
            await until(lambda: len(first.seqs_seen) == 3)
            await first.outgoing.put(gateway_pb2.GatewayMessage(seq=1, command=command(1.0, command_id="x")))
            await until(lambda: uplink.last_gateway_seq == 1)
        # gateway down: the agent keeps queueing
        await until(lambda: not uplink.connected)
        ack_seq = uplink.send_ack(dispatch_pb2.CommandAck(command_id="x", site_id="site-1"))
        assert ack_seq == 4
        assert list(uplink.outbox) == [1, 2, 3, 4]
        # a new gateway instance on the same port that has durably stored seq 1 already
        second = FakeGateway(auto_ack=True, last_agent_seq=1)
        async with gateway_server(second, port):
            await until(lambda: not uplink.outbox and len(second.seqs_seen) >= 3)
            assert second.seqs_seen == [2, 3, 4]
            hello = second.received[0].hello
            assert hello.agent_epoch == uplink.agent_epoch
            assert hello.last_gateway_seq == 1
            assert second.bodies("ack")[0].ack.command_id == "x"
            assert (uplink.metrics.registry.get_sample_value("vpp_edge_uplink_reconnects_total") or 0) >= 1
            await stop_uplink(uplink, task)
        assert first.seqs_seen == [1, 2, 3]

    run(scenario())


@pytest.mark.timeout(20)
def test_refusal_is_logged_and_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        gateway = FakeGateway(auto_ack=False)
        async with gateway_server(gateway) as (_server, port):
            uplink = make_uplink(port)
            task = asyncio.create_task(uplink.run())
            uplink.send_telemetry(telemetry(1))
            await until(lambda: gateway.seqs_seen == [1])
            await gateway.outgoing.put(
                gateway_pb2.GatewayMessage(seq=0, refusal=gateway_pb2.Refusal(refused_seq=1, reason="bad site"))
            )
            await until(lambda: not uplink.outbox)
            await stop_uplink(uplink, task)

    run(scenario())
    (refused,) = [r for r in caplog.records if r.getMessage() == "gateway_refused_message"]
    assert refused.levelname == "WARNING"
    assert refused.__dict__["fields"] == {"refused_seq": 1, "reason": "bad site"}


def test_outbox_drops_oldest_telemetry_never_acks() -> None:
    async def scenario() -> None:
        uplink = make_uplink(1, outbox_max=10)
        uplink.send_ack(dispatch_pb2.CommandAck(command_id="keep"))
        for i in range(20):
            uplink.send_telemetry(telemetry(i))
        assert len(uplink.outbox) == 10
        assert uplink.dropped == 11
        kinds = [m.WhichOneof("body") for m in uplink.outbox.values()]
        assert kinds[0] == "ack" and kinds.count("ack") == 1
        assert list(uplink.outbox)[-1] == 21
        assert uplink.metrics.registry.get_sample_value("vpp_edge_uplink_outbox_dropped_total") == 11
        for _ in range(15):
            uplink.send_ack(dispatch_pb2.CommandAck(command_id="more"))
        assert sum(1 for m in uplink.outbox.values() if m.WhichOneof("body") == "ack") == 16

    run(scenario())


@pytest.mark.timeout(20)
def test_samples_wait_for_the_batch_interval_and_go_in_one_message_with_their_own_seqs() -> None:
    async def scenario() -> None:
        gateway = FakeGateway()
        async with gateway_server(gateway) as (_server, port):
            uplink = make_uplink(port, batch_interval_s=0.6, heartbeat_interval_s=30)
            task = asyncio.create_task(uplink.run())
            await until(lambda: uplink.connected)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i in range(4):
                uplink.send_telemetry(telemetry(i))
                await asyncio.sleep(0.05)
            await until(lambda: not uplink.outbox)
            assert loop.time() - started >= 0.55  # they waited for the oldest to be 0.6 s old
            batches = gateway.bodies("batch")
            assert len(batches) == 1 and batches[0].seq == 4
            assert [e.seq for e in batches[0].batch.entries] == [1, 2, 3, 4]
            assert [e.telemetry.soc_pct for e in batches[0].batch.entries] == [0.0, 1.0, 2.0, 3.0]
            assert [m.seq for m in gateway.bodies("telemetry")] == [1, 2, 3, 4]
            sent = uplink.metrics.registry.get_sample_value("vpp_edge_uplink_messages_sent_total", {"kind": "batch"})
            assert sent == 1
            await stop_uplink(uplink, task)

    run(scenario())


@pytest.mark.timeout(20)
def test_a_command_ack_goes_at_once_with_the_samples_before_it() -> None:
    async def scenario() -> None:
        gateway = FakeGateway()
        async with gateway_server(gateway) as (_server, port):
            uplink = make_uplink(port, batch_interval_s=30, heartbeat_interval_s=30)
            task = asyncio.create_task(uplink.run())
            await until(lambda: uplink.connected)
            uplink.send_telemetry(telemetry(1))
            uplink.send_telemetry(telemetry(2))
            await asyncio.sleep(0.3)
            assert not gateway.bodies("batch") and len(uplink.outbox) == 2  # still waiting (30 s interval)
            uplink.send_ack(dispatch_pb2.CommandAck(command_id="step-7", site_id="site-1"))
            await until(lambda: not uplink.outbox, timeout_s=2)
            (batch,) = gateway.bodies("batch")
            assert [e.WhichOneof("body") for e in batch.batch.entries] == ["telemetry", "telemetry", "ack"]
            assert gateway.bodies("ack")[0].ack.command_id == "step-7"
            await stop_uplink(uplink, task)

    run(scenario())


@pytest.mark.timeout(20)
def test_our_ack_of_a_command_rides_on_the_next_write_not_an_extra_heartbeat() -> None:
    async def scenario() -> None:
        gateway = FakeGateway()
        async with gateway_server(gateway) as (_server, port):
            uplink = make_uplink(port, batch_interval_s=30, heartbeat_interval_s=30, ack_max_delay_s=5)
            task = asyncio.create_task(uplink.run())
            await until(lambda: uplink.connected)
            await gateway.outgoing.put(gateway_pb2.GatewayMessage(seq=1, command=command(1.0, command_id="c1")))
            await until(lambda: uplink.last_gateway_seq == 1)
            uplink.send_ack(dispatch_pb2.CommandAck(command_id="c1", site_id="site-1"))  # as the coordinator does
            await until(lambda: not uplink.outbox)
            assert gateway.bodies("ack")[0].ack_seq == 1
            assert not gateway.bodies("heartbeat")
            await stop_uplink(uplink, task)

    run(scenario())
