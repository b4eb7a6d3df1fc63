"""The edge gateway as a real process: real gRPC streams in, real Kafka records out."""

from __future__ import annotations

import contextlib
import queue
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from vpp.v1 import dispatch_pb2, gateway_pb2, telemetry_pb2

from gateway.auth import site_token
from kafka_helpers import ack_records, send_commands, telemetry_records
from vpp_demo.stack import DEMO_SECRET, Stack

SITE = "site-gw-1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(Path(tmp_path_factory.mktemp("gw")), sites=(), services=("gateway",), progress=lambda m: None) as s:
        yield s


class AgentStream:
    """A minimal hand-driven agent: send what the test says, collect what the gateway sends."""

    def __init__(self, target: str, site_id: str, token: str, raw: bool = False) -> None:
        self.channel = grpc.insecure_channel(target)
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.inbox: queue.Queue[gateway_pb2.GatewayMessage] = queue.Queue()
        serializer = (lambda m: m if isinstance(m, bytes) else m.SerializeToString()) if raw else None
        method = self.channel.stream_stream(
            "/vpp.v1.EdgeGateway/Connect",
            request_serializer=serializer or gateway_pb2.AgentMessage.SerializeToString,
            response_deserializer=gateway_pb2.GatewayMessage.FromString,
        )
        self.call = method(self._requests(), metadata=(("x-site-id", site_id), ("x-site-token", token)))
        import threading

        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _requests(self) -> Iterator[Any]:
        while True:
            item = self.outbox.get()
            if item is None:
                return
            yield item

    def _pump(self) -> None:
        try:
            for msg in self.call:
                self.inbox.put(msg)
        except grpc.RpcError as exc:
            self.error = exc

    def send(self, msg: Any) -> None:
        self.outbox.put(msg)

    def expect(self, predicate: Any, timeout_s: float = 10.0) -> gateway_pb2.GatewayMessage:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                msg = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if predicate(msg):
                return msg
        raise AssertionError("expected gateway message did not arrive")

    def close(self) -> None:
        self.outbox.put(None)
        self.channel.close()


def hello(site: str, epoch: str) -> gateway_pb2.AgentMessage:
    return gateway_pb2.AgentMessage(site_id=site, hello=gateway_pb2.Hello(site_id=site, agent_epoch=epoch))


def telemetry(site: str, seq: int, soc: float = 50.0) -> gateway_pb2.AgentMessage:
    t = telemetry_pb2.Telemetry(site_id=site, available=True, soc_pct=soc)
    t.measured_at.GetCurrentTime()
    return gateway_pb2.AgentMessage(seq=seq, site_id=site, telemetry=t)


def test_wrong_token_is_refused_at_the_door(stack: Stack) -> None:
    agent = AgentStream(stack.target("gateway"), SITE, "not-the-token")
    agent.send(hello(SITE, "e"))
    agent.thread.join(10)
    assert agent.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "x-site-token" in agent.error.details()
    agent.close()


def test_telemetry_reaches_kafka_once_and_bad_messages_do_not_kill_the_stream(stack: Stack) -> None:
    token = site_token(DEMO_SECRET, SITE)
    agent = AgentStream(stack.target("gateway"), SITE, token, raw=True)
    agent.send(hello(SITE, "epoch-a"))
    welcome = agent.expect(lambda m: m.HasField("welcome"))
    assert welcome.welcome.last_agent_seq == 0
    agent.send(telemetry(SITE, 1, soc=41.0))
    agent.expect(lambda m: m.ack_seq == 1)
    # a message claiming another site: refused, counted, stream alive
    agent.send(telemetry("someone-else", 2))
    refusal = agent.expect(lambda m: m.HasField("refusal"))
    assert refusal.refusal.refused_seq == 2 and "site_mismatch" in refusal.refusal.reason
    # bytes that are not an AgentMessage at all
    agent.send(b"\xff\xff\xff\xff")
    refusal = agent.expect(lambda m: m.HasField("refusal"))
    assert "undecodable" in refusal.refusal.reason
    agent.send(telemetry(SITE, 3, soc=43.0))
    agent.expect(lambda m: m.ack_seq == 3)
    agent.close()

    # reconnect with the same epoch and re-send everything: nothing is written twice
    again = AgentStream(stack.target("gateway"), SITE, token)
    again.send(hello(SITE, "epoch-a"))
    assert again.expect(lambda m: m.HasField("welcome")).welcome.last_agent_seq == 3
    again.send(telemetry(SITE, 1, soc=41.0))
    again.send(telemetry(SITE, 3, soc=43.0))
    again.send(telemetry(SITE, 4, soc=44.0))
    again.expect(lambda m: m.ack_seq == 4)

    mine = [r for r in telemetry_records(stack.bootstrap_servers, min_records=3) if r.telemetry.site_id == SITE]
    assert sorted(r.telemetry.soc_pct for r in mine) == [41.0, 43.0, 44.0]
    assert {r.message_id for r in mine} == {f"{SITE}:epoch-a:1", f"{SITE}:epoch-a:3", f"{SITE}:epoch-a:4"}

    # commands for this site come down this stream (retry until the gateway's command reader is at the end)
    deadline = time.monotonic() + 30
    got = None
    while got is None and time.monotonic() < deadline:
        cmd = dispatch_pb2.DispatchCommand(command_id=f"c-{time.monotonic_ns()}", site_id=SITE, battery_setpoint_kw=2.5)
        cmd.valid_until.FromNanoseconds(time.time_ns() + 30 * 10**9)
        send_commands(stack.bootstrap_servers, [cmd])
        try:
            got = again.expect(lambda m: m.HasField("command"), timeout_s=1.5)
        except AssertionError:
            continue
    assert got is not None and got.command.battery_setpoint_kw == 2.5 and got.seq >= 1
    again.close()

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['gateway'].metrics}/metrics").read().decode()
    assert 'vpp_gateway_messages_refused_total{reason="site_mismatch"} 1.0' in metrics
    assert 'vpp_gateway_messages_refused_total{reason="undecodable"} 1.0' in metrics
    assert "vpp_gateway_duplicates_dropped_total 2.0" in metrics
    assert "vpp_gateway_stream_reconnects_total" in metrics


def test_a_batch_keeps_every_sample_once_with_its_own_seq(stack: Stack) -> None:
    """Agents batch samples (and acks) into one message: each entry is written once under its own
    seq, a foreign entry is refused alone, a re-sent batch writes nothing twice, acks are cumulative."""
    site = "site-gw-batch"
    agent = AgentStream(stack.target("gateway"), site, site_token(DEMO_SECRET, site))
    agent.send(hello(site, "eb"))
    agent.expect(lambda m: m.HasField("welcome"))
    batch = gateway_pb2.Batch()
    for seq in (1, 2, 3):
        t = batch.entries.add(seq=seq).telemetry
        t.CopyFrom(telemetry(site, seq, soc=10.0 + seq).telemetry)
    batch.entries.add(seq=4).ack.CopyFrom(dispatch_pb2.CommandAck(command_id="cmd-1", site_id=site))
    foreign = batch.entries.add(seq=5).telemetry
    foreign.CopyFrom(telemetry("not-me", 5).telemetry)
    batch.entries.add(seq=6).telemetry.CopyFrom(telemetry(site, 6, soc=16.0).telemetry)
    agent.send(gateway_pb2.AgentMessage(seq=6, site_id=site, batch=batch))
    refusal = agent.expect(lambda m: m.HasField("refusal"))
    assert refusal.refusal.refused_seq == 5 and "site_mismatch" in refusal.refusal.reason
    agent.expect(lambda m: m.ack_seq == 6)
    agent.send(gateway_pb2.AgentMessage(seq=6, site_id=site, batch=batch))  # a re-send after a lost ack
    agent.expect(lambda m: m.ack_seq == 6)
    agent.close()

    mine = [r for r in telemetry_records(stack.bootstrap_servers, min_records=4) if r.telemetry.site_id == site]
    assert sorted(r.message_id for r in mine) == [f"{site}:eb:{s}" for s in (1, 2, 3, 6)]
    assert sorted(r.telemetry.soc_pct for r in mine) == [11.0, 12.0, 13.0, 16.0]
    acks = [r for r in ack_records(stack.bootstrap_servers, min_records=1) if r.ack.site_id == site]
    assert [r.message_id for r in acks] == [f"{site}:eb:4"]
    assert not any(r.telemetry.site_id == "not-me" for r in telemetry_records(stack.bootstrap_servers))


def test_a_command_reaches_the_replica_that_holds_the_site(stack: Stack) -> None:
    """Two gateway replicas: each reads every command and delivers only to its own sites."""
    import subprocess
    import sys

    from vpp_devtools.netutil import free_port, wait_for_port

    env = stack._service_env("gateway")  # same broker and secret as replica 0
    port_b, metrics_b = free_port(), free_port()
    env.update({"VPP_GRPC_PORT": str(port_b), "VPP_METRICS_PORT": str(metrics_b), "VPP_INSTANCE_ID": "gateway-1"})
    replica_b = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port_b, 60, "second gateway replica")
        site_a, site_b = "site-on-a", "site-on-b"
        on_a = AgentStream(stack.target("gateway"), site_a, site_token(DEMO_SECRET, site_a))
        on_b = AgentStream(f"127.0.0.1:{port_b}", site_b, site_token(DEMO_SECRET, site_b))
        for agent, site in ((on_a, site_a), (on_b, site_b)):
            agent.send(hello(site, "e1"))
            agent.expect(lambda m: m.HasField("welcome"))

        def send(site: str) -> None:
            cmd = dispatch_pb2.DispatchCommand(command_id=f"{site}-{time.monotonic_ns()}", site_id=site)
            cmd.valid_until.FromNanoseconds(time.time_ns() + 30 * 10**9)
            send_commands(stack.bootstrap_servers, [cmd])

        got: dict[str, gateway_pb2.GatewayMessage] = {}
        deadline = time.monotonic() + 40
        while len(got) < 2 and time.monotonic() < deadline:  # until both replicas' command readers are up
            for site, agent in ((site_a, on_a), (site_b, on_b)):
                if site not in got:
                    send(site)
                    with contextlib.suppress(AssertionError):
                        got[site] = agent.expect(lambda m: m.HasField("command"), timeout_s=1.5)
        assert got[site_a].command.site_id == site_a
        assert got[site_b].command.site_id == site_b
        # Both replicas now read the topic: one more command each is delivered once, by its holder,
        # and counted as not held by the other.
        send(site_a)
        send(site_b)
        assert on_a.expect(lambda m: m.HasField("command")).command.site_id == site_a
        assert on_b.expect(lambda m: m.HasField("command")).command.site_id == site_b
        for url in (
            f"http://127.0.0.1:{stack.ports['gateway'].metrics}/metrics",
            f"http://127.0.0.1:{metrics_b}/metrics",
        ):
            body = urllib.request.urlopen(url).read().decode()
            assert 'vpp_gateway_commands_total{outcome="not_held"}' in body, url
        on_a.close()
        on_b.close()
    finally:
        replica_b.terminate()
        replica_b.wait(15)
