"""The platform end to end on real parts: Tansu over TCP, every service as a process (gateway,
aggregation and dispatch as two replicas each, sharing the sites' partitions), five pymodbus device
simulators with edge agents; plus clients this project did not write."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families
from vpp.v1 import (
    bidding_pb2,
    bidding_pb2_grpc,
    common_pb2,
    dispatch_api_pb2,
    dispatch_api_pb2_grpc,
    dispatch_pb2,
    envelope_pb2,
    market_api_pb2,
    market_api_pb2_grpc,
    market_pb2,
)

from kafka_helpers import ack_records, producer, send_commands
from vpp_common.envelope import wrap
from vpp_common.partitioning import site_partition
from vpp_common.topics import ACTIVATIONS, COMMANDS, TELEMETRY
from vpp_demo.market_loop import run_market_loop
from vpp_demo.stack import Stack, retry_warming

pytestmark = pytest.mark.slow


REPLICAS = {"gateway": 2, "aggregation": 2, "dispatch": 2}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(Path(tmp_path_factory.mktemp("e2e")), replicas=REPLICAS, progress=lambda m: None) as s:
        yield s


def summed(stack: Stack, service: str, name: str) -> float:
    """A metric summed over the service's replicas."""
    return sum(metrics_of(stack.metrics_urls()[stack.replica_name(service, i)]).get(name, 0.0) for i in range(2))


def metrics_of(url: str) -> dict[str, float]:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def test_activation_is_split_written_over_modbus_and_tracked(stack: Stack) -> None:
    market = market_api_pb2_grpc.MarketSimulatorStub(stack.channel("market"))
    start = market.StartActivation(
        market_api_pb2.StartActivationRequest(
            step_s=4,
            phases=[
                market_api_pb2.ActivationPhase(fraction=0.4, duration_s=28),
                market_api_pb2.ActivationPhase(fraction=-0.3, duration_s=28),
            ],
        ),
        timeout=10,
    )
    assert start.up_capability_kw > 0 and start.down_capability_kw > 0
    dispatch = dispatch_api_pb2_grpc.DispatchServiceStub(stack.channel("dispatch"))
    # Exactly one dispatch replica holds the lease and acts; the other is a hot standby.
    assert summed(stack, "dispatch", "vpp_dispatch_leader") == 1
    deadline = time.monotonic() + 90
    tracking = None
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            tracking = dispatch.GetActivationTracking(
                dispatch_api_pb2.GetActivationTrackingRequest(activation_id=start.activation_id), timeout=5
            )
        except grpc.RpcError:
            continue
        if len(tracking.samples) == 14 and all(s.delivered_kw == s.delivered_kw for s in tracking.samples):
            break
    assert tracking is not None and len(tracking.samples) == 14
    n_sites = len(stack.sites)
    time.sleep(2)  # the last commands' acks
    tracking = dispatch.GetActivationTracking(
        dispatch_api_pb2.GetActivationTrackingRequest(activation_id=start.activation_id), timeout=5
    )
    # Offsets are re-sent only when they change by more than the deadband (or are due a refresh).
    assert n_sites <= tracking.commands_sent <= 14 * n_sites
    assert tracking.acks_received == tracking.commands_sent  # every command reached its device and came back
    assert tracking.median_activation_to_write_ms > 0
    up = [s for s in tracking.samples if s.requested_kw > 0]
    down = [s for s in tracking.samples if s.requested_kw < 0]
    assert len(up) == 7 and len(down) == 7
    assert up[0].requested_kw == pytest.approx(0.4 * start.up_capability_kw)
    # farm-01's inverter delivers 60 % of its rating (the registers do not say so). Whenever its
    # share needs more, dispatch measures it short at a step end (at the meter, against the site's own
    # baseline) and moves the share to the others; no healthy site is ever blamed, and the last two of
    # each phase's seven steps track within 8 % (without the move the error is ~25 %). Not 5 %: when the
    # others' response lags the drop on a loaded machine, the integral winds up and the phase ends up
    # to 6 % over (seen in make test; README "Known limits"): a known weakness, not hidden here.
    assert set(tracking.reallocated_sites) <= {"farm-01"}
    for phase in (up, down):
        for s in phase[-2:]:
            assert abs(s.error_kw) <= 0.08 * abs(s.requested_kw), s

    # Every dispatch replica answers the same tracking (each reads the tracking and run-state topics).
    for i in range(2):
        with grpc.insecure_channel(stack.target("dispatch", i)) as other:
            again = dispatch_api_pb2_grpc.DispatchServiceStub(other).GetActivationTracking(
                dispatch_api_pb2.GetActivationTrackingRequest(activation_id=start.activation_id), timeout=5
            )
        assert list(again.samples) == list(tracking.samples)
        assert again.commands_sent == tracking.commands_sent

    assert summed(stack, "gateway", "vpp_gateway_connected_sites") == n_sites
    for i in range(2):  # agents are spread over both gateway replicas
        assert metrics_of(stack.metrics_urls()[f"gateway-{i}"])["vpp_gateway_connected_sites"] > 0
    # every replica reads every command batch and delivers its own sites' commands
    delivered = sum(
        s.value
        for i in range(2)
        for f in text_string_to_metric_families(
            urllib.request.urlopen(stack.metrics_urls()[f"gateway-{i}"], timeout=5).read().decode()
        )
        for s in f.samples
        if s.name == "vpp_gateway_commands_total" and s.labels.get("outcome") == "delivered"
    )
    assert delivered >= tracking.commands_sent
    assert summed(stack, "dispatch", "vpp_dispatch_activation_to_write_seconds_count") >= n_sites
    assert summed(stack, "dispatch", "vpp_dispatch_reallocations_total") == tracking.reallocations
    assert "vpp_dispatch_tracking_error_kw" in metrics_of(stack.metrics_urls()["dispatch-0"])
    for site in stack.site_ports:
        agent = metrics_of(stack.metrics_urls()[f"edge-agent/{site}"])
        assert agent["vpp_edge_modbus_rtt_seconds_count"] > 0


def test_edge_agent_clamps_to_device_limits_and_says_so(stack: Stack) -> None:
    site = "home-01"  # 5 kW inverter
    cmd = dispatch_pb2.DispatchCommand(command_id=f"clamp-{time.time_ns()}", site_id=site, battery_setpoint_kw=50.0)
    cmd.valid_until.FromNanoseconds(time.time_ns() + 20 * 10**9)
    send_commands(stack.bootstrap_servers, [cmd])
    deadline = time.monotonic() + 20
    ack = None
    while ack is None and time.monotonic() < deadline:
        for r in ack_records(stack.bootstrap_servers, timeout_s=2):
            if r.ack.command_id == cmd.command_id:
                ack = r.ack
    assert ack is not None, "no ack for the out-of-range command"
    assert ack.status == dispatch_pb2.ACK_STATUS_CLAMPED
    assert ack.applied_kw <= 5.0 + 1e-6
    assert "50" in ack.reason  # names the requested value


def test_every_service_answers_reflection_and_metrics(stack: Stack) -> None:
    for name, replicas in stack.replica_ports.items():
        for i in range(len(replicas)):
            with grpc.insecure_channel(stack.target(name, i)) as channel:
                services = ProtoReflectionDescriptorDatabase(channel).get_services()
                assert any(s.startswith("vpp.v1.") for s in services), (name, services)
                assert "grpc.health.v1.Health" in services
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make tools` (apt-get install prometheus)")
    for name, url in stack.metrics_urls().items():
        assert metrics_of(url), name
        body = urllib.request.urlopen(url, timeout=5).read()
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert check.returncode == 0, (name, check.stdout, check.stderr)


def test_librdkafka_client_lists_topics_and_reads_telemetry(stack: Stack) -> None:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    topics = admin.list_topics(timeout=10).topics
    assert TELEMETRY.name in topics and COMMANDS.name in topics
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap_servers,
            "group.id": f"librdkafka-check-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([TELEMETRY.name])
    partitions = len(topics[TELEMETRY.name].partitions)
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while len(seen) < len(stack.sites) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        env = envelope_pb2.Envelope.FromString(msg.value())
        for record in env.telemetry_batch.records:
            # the gateway writes each site's samples to the site's partition (Kafka's default partitioner)
            assert site_partition(record.telemetry.site_id, partitions) == msg.partition()
            seen.add(record.telemetry.site_id)
    consumer.close()
    assert seen == {s.site_id for s in stack.sites}


def test_mbpoll_reads_the_sunspec_marker(stack: Stack) -> None:
    mbpoll = shutil.which("mbpoll")
    if mbpoll is None:
        pytest.fail("mbpoll is not installed: run `make tools` (apt-get install mbpoll)")
    port = next(iter(stack.site_ports.values())).modbus
    out = subprocess.run(
        [
            mbpoll,
            "-m",
            "tcp",
            "-a",
            "1",
            "-0",
            "-r",
            "40000",
            "-c",
            "2",
            "-t",
            "4:hex",
            "-1",
            "-p",
            str(port),
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert "0x5375" in out.stdout and "0x6E53" in out.stdout.upper().replace("0X", "0x")


def test_market_loop_offers_bids_awards_reserves_delivers_and_settles(stack: Stack) -> None:
    """Both portfolios, two markets: offers from forecasts, bids before gate closure, an auction, awards
    held as reservations, a time-compressed delivery at the meters, and a settlement that survives a
    restart of the bidding service (the store)."""
    runs = run_market_loop(stack, lambda _m: None, duration_s=32)
    assert set(runs) == {"eu-north", "jp-kanto"}
    for run in runs.values():
        assert run.offers and all(o.offer_kw >= 0 and o.offer_kw <= o.p50_kw + 1e-6 for o in run.offers)
        assert run.bids, f"{run.portfolio_id}: no bid"
        assert all(b.gate_closure.seconds > b.interval_start.seconds - 48 * 3600 for b in run.bids)
    jp = runs["jp-kanto"]
    won = [a for a in jp.awards if a.awarded_kw > 0]
    assert won, "the Japanese portfolio bids at its opportunity cost: below the competing supply"
    assert sum(r.reserved_kw for r in jp.reservations) == pytest.approx(sum(a.awarded_kw for a in won))
    assert {r.site_id for r in jp.reservations} <= {"school-01", "factory-01"}
    for run in runs.values():
        if run.settlement is None:
            continue
        for line in run.settlement.lines:
            assert line.penalty >= 0
            assert line.net_revenue == pytest.approx(line.capacity_revenue + line.energy_revenue - line.penalty)
            assert sum(s.revenue for s in line.site_shares) == pytest.approx(line.net_revenue, abs=1e-9)
    assert jp.settlement is not None and jp.settlement.lines
    # Durable: the bidding service restarts and answers the same awards and settlement from its store.
    stack.stop_proc("bidding")
    stack.start_replica("bidding", 0)
    bidding = bidding_pb2_grpc.BiddingServiceStub(stack.channel("bidding"))
    awards = retry_warming(
        lambda: bidding.ListAwards(bidding_pb2.ListAwardsRequest(portfolio_id="jp-kanto"), timeout=10), 60
    )
    assert {a.award_id for a in won} <= {a.award_id for a in awards.awards}
    again = bidding.GetSettlement(bidding_pb2.GetSettlementRequest(portfolio_id="jp-kanto"), timeout=10)
    assert again.net_revenue == pytest.approx(jp.settlement.net_revenue)


def test_an_activation_larger_than_its_award_is_refused_with_a_reason(stack: Stack) -> None:
    """Dispatch delivers against awards: too large, the wrong way or an unknown award is refused, counted
    and explained in the activation's tracking; nothing is commanded for it."""
    bidding = bidding_pb2_grpc.BiddingServiceStub(stack.channel("bidding"))
    awards = bidding.ListAwards(bidding_pb2.ListAwardsRequest(portfolio_id="jp-kanto"), timeout=10).awards
    award = next((a for a in awards if a.awarded_kw > 0), None)
    assert award is not None, "runs after the market-loop test, which wins an award"
    before = summed(stack, "dispatch", "vpp_dispatch_activations_refused_total")
    cases = {
        "exceeds award": (award.award_id, -(award.awarded_kw * 1.5 + 1)),
        "up setpoint": (award.award_id, 1.0)
        if award.direction == common_pb2.DIRECTION_DOWN
        else (award.award_id, -1.0),
        "unknown award": ("awd-never-awarded", -1.0),
    }
    prod = producer(stack.bootstrap_servers)
    ids = {}
    for reason, (award_id, setpoint_kw) in cases.items():
        act = market_pb2.Activation(
            activation_id=f"act-refuse-{time.time_ns()}",
            step=1,
            product=award.product,
            setpoint_kw=setpoint_kw,
            award_id=award_id,
            portfolio_id=award.portfolio_id,
        )
        act.issued_at.GetCurrentTime()
        act.valid_until.FromNanoseconds(act.issued_at.ToNanoseconds() + 8 * 10**9)
        act.block_time.CopyFrom(award.interval_start)
        prod.send(ACTIVATIONS.name, key=b"test", value=wrap(act, source="test").SerializeToString()).get(10)
        ids[reason] = act.activation_id
    dispatch = dispatch_api_pb2_grpc.DispatchServiceStub(stack.channel("dispatch"))
    for reason, activation_id in ids.items():
        deadline = time.monotonic() + 20
        tracking = None
        while time.monotonic() < deadline:
            try:
                tracking = dispatch.GetActivationTracking(
                    dispatch_api_pb2.GetActivationTrackingRequest(activation_id=activation_id), timeout=5
                )
                if tracking.refused_reason:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.5)
        assert tracking is not None and reason in tracking.refused_reason, (reason, tracking)
        assert tracking.commands_sent == 0
    assert summed(stack, "dispatch", "vpp_dispatch_activations_refused_total") >= before + len(cases)
