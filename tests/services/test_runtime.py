"""The one Kafka runtime, with real processes and a real broker:

* a produce that fails for good is never lost: the consumed offset is not committed, the service
  turns NOT_SERVING and exits non-zero, and after a restart the record is processed again;
* two aggregation replicas split the site partitions and both answer the correct portfolio total;
  when one stops, its partitions move to the other without a site counted twice or dropped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from vpp.v1 import aggregation_pb2, aggregation_pb2_grpc, common_pb2, envelope_pb2, market_pb2, telemetry_pb2

from kafka_helpers import producer, send_telemetry
from kafka_proxy import KafkaFaultProxy
from vpp_common.envelope import wrap
from vpp_common.flexibility import BatteryState, battery_flexibility
from vpp_common.kafka import read_topic
from vpp_common.topics import AWARDS, BIDS
from vpp_demo.stack import Stack
from vpp_devtools.broker import EmbeddedBroker
from vpp_devtools.netutil import free_port

pytestmark = pytest.mark.slow


def metric(url: str, name: str, **labels: str) -> float | None:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():  # type: ignore[operator]
                return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# -- a produce that fails for good ----------------------------------------------------------------


@pytest.fixture()
def proxied_broker(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, KafkaFaultProxy]]:
    proxy_port = free_port()
    broker = EmbeddedBroker(advertised_port=proxy_port, log_path=tmp_path / "tansu.log").start()
    proxy = KafkaFaultProxy(proxy_port, broker.port).start()
    try:
        yield broker, proxy
    finally:
        proxy.stop()
        broker.stop()


def start_market(bootstrap: str, grpc_port: int, metrics_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VPP_", "KAFKA_"))}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "VPP_GRPC_HOST": "127.0.0.1",
            "VPP_GRPC_PORT": str(grpc_port),
            "VPP_METRICS_PORT": str(metrics_port),
            "VPP_INSTANCE_ID": "market-0",
            "VPP_KAFKA_PRODUCE_TIMEOUT_S": "4",
            "VPP_SHUTDOWN_DRAIN_S": "3",
        }
    )
    return subprocess.Popen([sys.executable, "-m", "market"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_failed_produce_is_not_committed_and_the_record_is_processed_after_restart(
    proxied_broker: tuple[EmbeddedBroker, KafkaFaultProxy], tmp_path: Path
) -> None:
    _broker, proxy = proxied_broker
    bootstrap = f"127.0.0.1:{proxy.listen_port}"
    grpc_port, metrics_port = free_port(), free_port()
    log = tmp_path / "market.log"
    market = start_market(bootstrap, grpc_port, metrics_port, log)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_for(
            lambda: metric(metrics_url, "vpp_kafka_partitions_owned", consumer="bids", topic=BIDS.name) == 1,
            60,
            "the market's bid consumer to own its partition",
        )
        proxy.break_produces_of("market/")  # the market's award can no longer be written
        # A valid bid for a block whose gate closed long ago: the market answers it at once with a rejection.
        bid = market_pb2.Bid(
            bid_id="bid-under-fault",
            product="aFRR",
            direction=common_pb2.DIRECTION_UP,
            capacity_kw=5,
            capacity_price_per_mw_h=1,
            portfolio_id="eu-north",
            market_id="entsoe",
            currency="EUR",
        )
        bid.interval_start.FromSeconds(1_767_222_000)  # 2026-01-01 00:00 Berlin: an aFRR block start
        bid.interval_end.FromSeconds(1_767_222_000 + 4 * 3600)
        meta = producer(bootstrap).send(BIDS.name, value=wrap(bid, source="test").SerializeToString()).get(10)

        # The award's produce fails for good (4 s): the consumer dies, health turns NOT_SERVING, the
        # process exits 1 -- and the bid's offset is not committed.
        statuses: list[int] = []
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 40
            while market.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(grpc.RpcError):
                    statuses.append(health.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
                time.sleep(0.05)
        assert market.wait(30) == 1, log.read_text()[-3000:]
        assert health_pb2.HealthCheckResponse.SERVING in statuses
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING was never reported"
        assert proxy.dropped_produces >= 1
        assert "consumer_died" in log.read_text()
        group = KafkaConsumer(bootstrap_servers=bootstrap, group_id="market", enable_auto_commit=False)
        committed = group.committed(TopicPartition(BIDS.name, 0))
        group.close()
        assert committed is None or committed <= meta.offset, "the bid was committed without its award"
        assert not [r for r in read_topic(bootstrap, AWARDS.name, 1, timeout_s=2)]

        # Healed and restarted: the bid is consumed again and its award written, once.
        proxy.break_produces_of(None)
        market = start_market(bootstrap, grpc_port, metrics_port, log)
        awards: list[market_pb2.Award] = []

        def award_written() -> bool:
            awards[:] = [
                envelope_pb2.Envelope.FromString(r.value).award
                for r in read_topic(bootstrap, AWARDS.name, 1, timeout_s=2)
            ]
            return bool(awards)

        wait_for(award_written, 60, "the award of the bid after the restart")
        assert [a.bid_id for a in awards] == ["bid-under-fault"]
    finally:
        if market.poll() is None:
            market.send_signal(signal.SIGTERM)
            market.wait(20)


# -- two aggregation replicas ---------------------------------------------------------------------

N_SITES = 120
PARTITIONS = 12


def fleet_sample(i: int) -> telemetry_pb2.Telemetry:
    """Constant state per site (only the time moves), so the portfolio total is known exactly."""
    return telemetry_pb2.Telemetry(
        site_id=f"site-{i:04d}",
        available=True,
        battery_power_kw=float(i % 7) - 3.0,
        soc_pct=20.0 + (i * 37) % 70,
        battery_capacity_kwh=10.0 + i % 5 * 5.0,
        max_charge_kw=5.0 + i % 3,
        max_discharge_kw=5.0 + i % 4,
        soc_min_pct=10.0,
        soc_max_pct=95.0,
    )


def expected_totals(interval_minutes: int = 15) -> tuple[float, float]:
    up = down = 0.0
    for i in range(N_SITES):
        t = fleet_sample(i)
        state = BatteryState(
            t.site_id, True, t.battery_power_kw, t.soc_pct, t.battery_capacity_kwh,
            t.max_charge_kw, t.max_discharge_kw, t.soc_min_pct, t.soc_max_pct,
        )  # fmt: skip
        flex = battery_flexibility(state, interval_minutes / 60, 0.95)
        up += flex.up_kw
        down += flex.down_kw
    return up, down


class Feeder:
    """Writes every site's sample once a second, the way the gateway does (one batch per partition)."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._stop = threading.Event()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._seq += 1
            samples = []
            for i in range(N_SITES):
                t = fleet_sample(i)
                t.measured_at.GetCurrentTime()
                samples.append((f"{t.site_id}:e:{self._seq}", t))
            send_telemetry(self._bootstrap, samples)
            self._stop.wait(1.0)


def portfolio(stack: Stack, replica: int) -> aggregation_pb2.PortfolioFlexibility:
    with grpc.insecure_channel(stack.target("aggregation", replica)) as channel:
        stub = aggregation_pb2_grpc.AggregationServiceStub(channel)
        return stub.GetPortfolioFlexibility(aggregation_pb2.GetPortfolioFlexibilityRequest(), timeout=5)


def owned(stack: Stack, replica: int) -> int:
    url = stack.metrics_urls()[stack.replica_name("aggregation", replica)]
    return int(metric(url, "vpp_kafka_partitions_owned", consumer="telemetry") or 0)


def test_two_aggregation_replicas_split_the_fleet_and_hand_over_without_double_counting(tmp_path: Path) -> None:
    up_kw, down_kw = expected_totals()
    with Stack(
        tmp_path,
        sites=(),
        services=("aggregation",),
        replicas={"aggregation": 2},
        extra_env={"VPP_SITE_PARTITIONS": str(PARTITIONS)},
        progress=lambda m: None,
    ) as stack, Feeder(stack.bootstrap_servers):

        def both_complete() -> bool:
            views = [portfolio(stack, r) for r in (0, 1)]
            return all(v.sites_online == N_SITES and v.partitions == PARTITIONS for v in views)

        wait_for(lambda: owned(stack, 0) > 0 and owned(stack, 1) > 0, 60, "both replicas to own partitions")
        wait_for(both_complete, 30, "both replicas to see every site")
        assert owned(stack, 0) + owned(stack, 1) == PARTITIONS
        for replica in (0, 1):
            view = portfolio(stack, replica)
            assert view.sites_total == N_SITES and view.partitions_stale == 0
            assert view.up_kw == pytest.approx(up_kw, rel=1e-9)
            assert view.down_kw == pytest.approx(down_kw, rel=1e-9)
        # A site query lands on either replica and is answered by the owner of the site's partition.
        with grpc.insecure_channel(stack.target("aggregation", 0)) as channel:
            stub = aggregation_pb2_grpc.AggregationServiceStub(channel)
            for i in (0, 1, 2, 3, 57, 119):
                site = stub.GetSiteFlexibility(aggregation_pb2.GetSiteFlexibilityRequest(site_id=f"site-{i:04d}"))
                assert site.online and site.soc_pct == fleet_sample(i).soc_pct
            rows = stub.GetPortfolioFlexibility(aggregation_pb2.GetPortfolioFlexibilityRequest(include_sites=True))
            assert sorted(s.site_id for s in rows.sites) == [f"site-{i:04d}" for i in range(N_SITES)]

        # Replica 1 stops: its partitions move to replica 0, which replays their window before it counts
        # them. Meanwhile the view never counts a site twice and never loses one.
        seen: list[tuple[int, int, float]] = []
        stack.proc("aggregation-1").popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (owned(stack, 0) == PARTITIONS and len(seen) > 20):
            v = portfolio(stack, 0)
            seen.append((v.sites_total, v.sites_online, v.up_kw))
            time.sleep(0.1)
        assert stack.proc("aggregation-1").popen.wait(20) == 0
        assert owned(stack, 0) == PARTITIONS
        assert max(s[0] for s in seen) == N_SITES, "a site was counted twice"
        assert min(s[1] for s in seen) == N_SITES, "a site was dropped during the hand-over"
        assert all(s[2] == pytest.approx(up_kw, rel=1e-9) for s in seen)
        wait_for(lambda: portfolio(stack, 0).partitions_stale == 0, 20, "the moved partitions to be republished")

        # It comes back: the partitions are split again, and again nothing is doubled or dropped.
        stack.start_replica("aggregation", 1)
        stack.wait_serving("aggregation", 1)
        seen.clear()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not (owned(stack, 1) > 0 and len(seen) > 20):
            v = portfolio(stack, 0)
            seen.append((v.sites_total, v.sites_online, v.up_kw))
            time.sleep(0.1)
        assert owned(stack, 1) > 0
        assert max(s[0] for s in seen) == N_SITES and min(s[1] for s in seen) == N_SITES
        wait_for(both_complete, 30, "both replicas to see every site again")
