"""Every service as a real process: health, reflection, INVALID_ARGUMENT naming the field (also for
request bytes that do not decode, on every unary method), dead-lettering of malformed Kafka records,
Prometheus text on /metrics."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families
from vpp.v1 import (
    aggregation_pb2,
    aggregation_pb2_grpc,
    bidding_pb2,
    bidding_pb2_grpc,
    dispatch_api_pb2,
    dispatch_api_pb2_grpc,
    market_api_pb2,
    market_api_pb2_grpc,
    market_pb2,
    telemetry_pb2,
)

from kafka_helpers import partitions, producer, send_telemetry
from vpp_common.envelope import wrap
from vpp_common.kafka import read_topic
from vpp_common.partitioning import site_partition
from vpp_common.topics import DEAD_LETTER, TELEMETRY
from vpp_demo.stack import Stack

SERVICES = {
    "aggregation": "vpp.v1.AggregationService",
    "dispatch": "vpp.v1.DispatchService",
    "bidding": "vpp.v1.BiddingService",
    "market": "vpp.v1.MarketSimulator",
    "gateway": "vpp.v1.EdgeGateway",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    path = Path(tmp_path_factory.mktemp("contracts"))
    with Stack(path, sites=(), services=tuple(SERVICES), progress=lambda m: None) as s:
        yield s


@pytest.mark.parametrize("service", list(SERVICES))
def test_health_and_reflection(stack: Stack, service: str) -> None:
    with stack.channel(service) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICES[service]):
            status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        names = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert SERVICES[service] in names
        assert "grpc.health.v1.Health" in names


def invalid(call: Any, request: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


def test_invalid_arguments_name_the_field(stack: Stack) -> None:
    with stack.channel("aggregation") as ch:
        stub = aggregation_pb2_grpc.AggregationServiceStub(ch)
        assert invalid(
            stub.GetPortfolioFlexibility, aggregation_pb2.GetPortfolioFlexibilityRequest(interval_minutes=999)
        ).startswith("interval_minutes:")
        assert invalid(stub.GetSiteFlexibility, aggregation_pb2.GetSiteFlexibilityRequest()).startswith("site_id:")
        assert invalid(
            stub.GetSiteFlexibility, aggregation_pb2.GetSiteFlexibilityRequest(site_id="Bad Site!")
        ).startswith("site_id:")
    with stack.channel("dispatch") as ch:
        stub_d = dispatch_api_pb2_grpc.DispatchServiceStub(ch)
        assert invalid(
            stub_d.GetActivationTracking, dispatch_api_pb2.GetActivationTrackingRequest()
        ).startswith("activation_id:")
    with stack.channel("bidding") as ch:
        stub_b = bidding_pb2_grpc.BiddingServiceStub(ch)
        assert invalid(stub_b.BuildBids, bidding_pb2.BuildBidsRequest()).startswith("portfolio_id:")
        assert invalid(stub_b.BuildBids, bidding_pb2.BuildBidsRequest(portfolio_id="nope")).startswith(
            "portfolio_id:"
        )
        assert invalid(
            stub_b.BuildBids, bidding_pb2.BuildBidsRequest(portfolio_id="eu-north", product="SR2")
        ).startswith("product:")  # a Japanese product is not bid by the European portfolio
        far = bidding_pb2.BuildBidsRequest(portfolio_id="eu-north")
        far.interval_start.seconds = 10**13  # past 9999-12-31: converting it used to answer UNKNOWN
        assert invalid(stub_b.BuildBids, far).startswith("interval_start:")
        bad_nanos = bidding_pb2.BuildBidsRequest(portfolio_id="eu-north")
        bad_nanos.interval_start.nanos = -5
        assert invalid(stub_b.BuildBids, bad_nanos).startswith("interval_start:")
        past = bidding_pb2.BuildBidsRequest(portfolio_id="eu-north")
        past.interval_start.seconds = 1_000_000_000
        assert invalid(stub_b.BuildBids, past).startswith("interval_start:")
        assert invalid(
            stub_b.GetOffers, bidding_pb2.GetOffersRequest(portfolio_id="jp-kanto", confidence=0.3)
        ).startswith("confidence:")
        assert invalid(
            stub_b.GetOffers, bidding_pb2.GetOffersRequest(portfolio_id="jp-kanto", horizon_h=100)
        ).startswith("horizon_h:")
        assert invalid(stub_b.ListAwards, bidding_pb2.ListAwardsRequest()).startswith("portfolio_id:")
        assert invalid(stub_b.ListReservations, bidding_pb2.ListReservationsRequest(portfolio_id="x")).startswith(
            "portfolio_id:"
        )
        backwards = bidding_pb2.GetSettlementRequest(portfolio_id="eu-north")
        backwards.period_start.seconds, backwards.period_end.seconds = 2_000_000_000, 1_900_000_000
        assert invalid(stub_b.GetSettlement, backwards).startswith("period_end:")
    with stack.channel("market") as ch:
        stub_m = market_api_pb2_grpc.MarketSimulatorStub(ch)
        assert invalid(stub_m.StartActivation, market_api_pb2.StartActivationRequest()).startswith("phases:")
        bad_phase = market_api_pb2.StartActivationRequest(
            phases=[market_api_pb2.ActivationPhase(fraction=2.0, duration_s=10)]
        )
        assert invalid(stub_m.StartActivation, bad_phase).startswith("phases.0.fraction:")
        unknown_award = market_api_pb2.StartActivationRequest(
            award_id="awd-nope", phases=[market_api_pb2.ActivationPhase(fraction=0.5, duration_s=8)]
        )
        assert invalid(stub_m.StartActivation, unknown_award).startswith("award_id:")
        assert invalid(stub_m.ClearAuction, market_api_pb2.ClearAuctionRequest()).startswith("market_id:")
        block = market_api_pb2.ClearAuctionRequest(market_id="entsoe", product="SR2")
        block.interval_start.seconds = 2_000_000_000
        assert invalid(stub_m.ClearAuction, block).startswith("product:")
        no_block = market_api_pb2.DeliverBlockRequest(market_id="entsoe", product="FCR")
        assert invalid(stub_m.DeliverBlock, no_block).startswith("interval_start:")


def unary_methods(channel: grpc.Channel, service: str) -> list[str]:
    """The service's unary methods, as an outside client finds them: by reflection."""
    db = ProtoReflectionDescriptorDatabase(channel)
    from google.protobuf.descriptor_pool import DescriptorPool

    descriptor = DescriptorPool(db).FindServiceByName(service)
    return [f"/{service}/{m.name}" for m in descriptor.methods if not m.client_streaming and not m.server_streaming]


@pytest.mark.parametrize("service", list(SERVICES))
def test_undecodable_request_bytes_are_invalid_argument_on_every_method(stack: Stack, service: str) -> None:
    with stack.channel(service) as channel:
        methods = [*unary_methods(channel, SERVICES[service]), "/grpc.health.v1.Health/Check"]
        assert len(methods) >= 2
        for method in methods:
            raw = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as info:
                raw(b"\xff\xff\xff\xff", timeout=5)  # an unterminated varint: not any protobuf message
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, info.value.code())
            assert info.value.details().startswith("request:"), info.value.details()


def test_malformed_records_are_dead_lettered_and_processing_continues(stack: Stack) -> None:
    prod = producer(stack.bootstrap_servers)
    site = "dlq-site"
    partition = site_partition(site, partitions(stack.bootstrap_servers, TELEMETRY.name))
    good = telemetry_pb2.Telemetry(site_id=site, available=True, soc_pct=50, battery_capacity_kwh=10)
    # 1: not protobuf at all; 2: a valid envelope carrying the wrong payload for the topic; 3: good
    wrong_payload = wrap(market_pb2.Bid(bid_id="b"), source="test", site_id=site)
    metrics_url = f"http://127.0.0.1:{stack.ports['aggregation'].metrics}/metrics"
    counted = 'vpp_kafka_records_dead_lettered_total{reason="decode_error",topic="vpp.telemetry.v1"}'

    def aggregation_counted() -> bool:
        return counted in urllib.request.urlopen(metrics_url, timeout=5).read().decode()

    deadline = time.monotonic() + 30
    found = False
    n = 0
    # Retry while the consumer group join completes: records sent before aggregation owns the partition
    # may be behind where it starts, so go on until it has dead-lettered a bad one and applied a good one.
    while not (found and aggregation_counted()) and time.monotonic() < deadline:
        prod.send(TELEMETRY.name, value=b"\x08\x96\x01garbage", partition=partition).get(10)
        prod.send(TELEMETRY.name, value=wrong_payload.SerializeToString(), partition=partition).get(10)
        good.measured_at.GetCurrentTime()
        n += 1
        send_telemetry(stack.bootstrap_servers, [(f"{site}:e:{n}", good)])
        time.sleep(1.0)
        with stack.channel("aggregation") as ch:
            try:
                aggregation_pb2_grpc.AggregationServiceStub(ch).GetSiteFlexibility(
                    aggregation_pb2.GetSiteFlexibilityRequest(site_id=site), timeout=5
                )
                found = True
            except grpc.RpcError as exc:  # not seen yet, its partition still being restored, or a busy start
                assert exc.code() in (
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ), exc.details()
    assert found, "the good record after the bad ones was not processed"
    dead = read_topic(stack.bootstrap_servers, DEAD_LETTER.name, DEAD_LETTER.partitions, min_records=2)
    reasons = {dict(r.headers)["vpp-error-reason"].decode() for r in dead}
    assert {"decode_error", "wrong_payload"} <= reasons
    for r in dead:
        headers = dict(r.headers)
        assert headers["vpp-original-topic"] == TELEMETRY.name.encode()
        assert int(headers["vpp-original-offset"]) >= 0
    assert aggregation_counted()


@pytest.mark.parametrize("service", list(SERVICES))
def test_metrics_are_prometheus_text(stack: Stack, service: str) -> None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{stack.ports[service].metrics}/metrics").read().decode()
    names = {family.name for family in text_string_to_metric_families(body)}
    assert {"vpp_kafka_records_consumed", "vpp_grpc_requests", "vpp_service_up"} <= names
