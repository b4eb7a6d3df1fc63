"""``make bench``: latencies of the platform's paths, each next to the raw building block it rests on,
measured in the same run on the same machine (ratios and medians; these machines are shared and noisy).

Writes ``out/bench/results.json`` and ``out/bench/results.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from vpp.v1 import aggregation_pb2, aggregation_pb2_grpc, envelope_pb2, market_api_pb2, market_api_pb2_grpc

from vpp_common.kafka import ensure_topics, read_topic
from vpp_common.topics import ACKS, ACTIVATIONS, COMMANDS, Topic
from vpp_demo import fanout_cost, forecast_serving
from vpp_demo.stack import Stack
from vpp_demo.telemetry_tap import TelemetryTap
from vpp_devtools.process import exit_on_sigterm


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "median_ms": round(statistics.median(values_ms), 3),
        "p90_ms": round(pct(values_ms, 0.9), 3),
        "max_ms": round(max(values_ms), 3),
    }


def raw_kafka_round_trip(bootstrap: str, n: int) -> list[float]:
    """Produce one record (acks=all) and wait until a consumer has it: the floor under every Kafka hop."""
    bench_topic = Topic(f"bench.rtt.{uuid.uuid4().hex[:6]}", "none", "bytes", 1)
    ensure_topics(bootstrap, 1, [bench_topic])  # created up front: Tansu's auto-create is not relied on
    topic = bench_topic.name
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    producer.send(topic, b"warm").get(10)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)  # not seek_to_end: Tansu's ListOffsets(latest) is wrong
    while not any(consumer.poll(timeout_ms=200).values()):
        pass
    out = []
    for i in range(n):
        started = time.perf_counter()
        producer.send(topic, b"x").get(10)
        got = False
        deadline = started + 10
        while not got:
            got = any(consumer.poll(timeout_ms=100).values())
            if time.perf_counter() > deadline:
                raise RuntimeError("raw Kafka round trip: record not consumed within 10 s")
        out.append((time.perf_counter() - started) * 1000)
        if i % 50 == 0:
            progress(f"  raw Kafka round trip {i}/{n}")
    producer.close()
    consumer.close()
    return out


def grpc_unary(stack: Stack, n: int) -> tuple[list[float], list[float]]:
    """Platform call (aggregation's portfolio flexibility) vs the bare health check on the same server."""
    with stack.channel("aggregation") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        agg = aggregation_pb2_grpc.AggregationServiceStub(ch)
        raw, ours = [], []
        for _ in range(n):
            t = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            raw.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            agg.GetPortfolioFlexibility(aggregation_pb2.GetPortfolioFlexibilityRequest(), timeout=5)
            ours.append((time.perf_counter() - t) * 1000)
    return raw, ours


def activation_to_write(stack: Stack, duration_s: int) -> dict[str, list[float]]:
    """Market issues a step -> dispatch -> Kafka -> gateway -> gRPC stream -> agent -> Modbus write (ack),
    split into its legs by the timestamps each hop stamps (all clocks are this machine's)."""
    market = market_api_pb2_grpc.MarketSimulatorStub(stack.channel("market"))
    start = market.StartActivation(
        market_api_pb2.StartActivationRequest(
            step_s=4,
            phases=[
                market_api_pb2.ActivationPhase(fraction=0.3, duration_s=duration_s // 2),
                market_api_pb2.ActivationPhase(fraction=-0.2, duration_s=duration_s - duration_s // 2),
            ],
        ),
        timeout=10,
    )
    for waited in range(duration_s + 10):
        time.sleep(1)
        if waited % 10 == 0:
            progress(f"  activation running {waited}/{duration_s + 10} s")
    issued_ms: dict[int, float] = {}
    for rec in read_topic(
        stack.bootstrap_servers, ACTIVATIONS.name, ACTIVATIONS.partitions, timeout_s=15, min_records=1, settle_polls=5
    ):
        act = envelope_pb2.Envelope.FromString(rec.value).activation
        if act.activation_id == start.activation_id:
            issued_ms[act.step] = act.issued_at.ToNanoseconds() / 1e6
    commands: dict[str, tuple[int, float]] = {}
    partitions = stack.site_partitions()
    for rec in read_topic(
        stack.bootstrap_servers, COMMANDS.name, partitions, timeout_s=15, min_records=1, settle_polls=5
    ):
        for cmd in envelope_pb2.Envelope.FromString(rec.value).command_batch.commands:
            if cmd.activation_id == start.activation_id:
                commands[cmd.command_id] = (cmd.step, cmd.issued_at.ToNanoseconds() / 1e6)
    legs: dict[str, list[float]] = {"total": [], "market_to_dispatch": [], "dispatch_to_agent": [], "agent_write": []}
    acks = [
        record.ack
        for rec in read_topic(
            stack.bootstrap_servers, ACKS.name, partitions, timeout_s=15, min_records=1, settle_polls=5
        )
        for record in envelope_pb2.Envelope.FromString(rec.value).ack_batch.records
    ]
    for ack in acks:
        if ack.command_id not in commands or not ack.HasField("written_at"):
            continue
        step, command_ms = commands[ack.command_id]
        received_ms = ack.received_at.ToNanoseconds() / 1e6
        written_ms = ack.written_at.ToNanoseconds() / 1e6
        legs["total"].append(written_ms - issued_ms[step])
        legs["market_to_dispatch"].append(command_ms - issued_ms[step])
        legs["dispatch_to_agent"].append(received_ms - command_ms)
        legs["agent_write"].append(written_ms - received_ms)
    return legs


def telemetry_latency(tap: TelemetryTap) -> tuple[list[float], list[float]]:
    """Agent's Modbus read (measured_at) -> [wait in the agent's batch] -> gRPC stream -> gateway ->
    Kafka -> an outside consumer; and the platform's part alone (gateway's Kafka write -> consumer)."""
    return [v * 1000 for v in tap.latencies_s()], [v * 1000 for v in tap.pipeline_latencies_s()]


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--activation-s", type=int, default=40)
    parser.add_argument("--forecast-sites", type=int, default=1000, help="sites of the forecast serving section")
    parser.add_argument("--production-fits", type=int, default=2, help="sites fit with the production model spec")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with Stack(args.out / "run", progress=progress) as stack:
        tap = TelemetryTap(stack.bootstrap_servers, record_arrival=True).start()
        progress("[bench 1/6] raw Kafka produce->consume round trip")
        kafka_rtt = raw_kafka_round_trip(stack.bootstrap_servers, args.samples)
        progress("[bench 2/6] gRPC unary: health check vs GetPortfolioFlexibility")
        grpc_raw, grpc_ours = grpc_unary(stack, args.samples)
        progress("[bench 3/6] activation -> Modbus write through the whole platform")
        act = activation_to_write(stack, args.activation_s)
        progress("[bench 4/6] telemetry: Modbus read -> Kafka consumer")
        tap.stop()
        tele, pipeline = telemetry_latency(tap)
        progress(f"[bench 5/6] forecast serving: {args.forecast_sites} sites, GetForecast beside a health check")
        forecasts = forecast_serving.measure(
            stack,
            args.out / "forecast-fleet",
            n_sites=args.forecast_sites,
            samples=args.samples,
            production_sites=args.production_fits,
            progress=progress,
        )
    progress("[bench 6/6] gateway command fan-out: CPU per command a replica reads but does not hold")
    fanout = fanout_cost.measure()
    results = {
        "raw_kafka_round_trip": summarise(kafka_rtt),
        "activation_to_modbus_write": summarise(act["total"]),
        "  leg: market step -> dispatch command (active dispatcher)": summarise(act["market_to_dispatch"]),
        "  leg: dispatch command -> agent (Kafka, gateway, gRPC stream)": summarise(act["dispatch_to_agent"]),
        "  leg: agent receives -> Modbus write done": summarise(act["agent_write"]),
        "telemetry_read_to_kafka_consumer (includes the agent's batch wait)": summarise(tele),
        "telemetry_gateway_write_to_kafka_consumer": summarise(pipeline),
        "grpc_health_check": summarise(grpc_raw),
        "grpc_get_portfolio_flexibility": summarise(grpc_ours),
    }
    ratios = {
        "activation_to_write_over_kafka_rtt": round(
            results["activation_to_modbus_write"]["median_ms"] / results["raw_kafka_round_trip"]["median_ms"], 2
        ),
        "telemetry_pipeline_over_kafka_rtt": round(
            results["telemetry_gateway_write_to_kafka_consumer"]["median_ms"]
            / results["raw_kafka_round_trip"]["median_ms"],
            2,
        ),
        "flexibility_call_over_health_check": round(
            results["grpc_get_portfolio_flexibility"]["median_ms"] / results["grpc_health_check"]["median_ms"], 2
        ),
    }
    doc = {
        "results": results,
        "ratios": ratios,
        "gateway_command_fanout": fanout,
        "forecast_serving": forecasts,
        "wall_time_s": round(time.monotonic() - started, 1),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sites": 5,
    }
    (args.out / "results.json").write_text(json.dumps(doc, indent=2))
    lines = [
        f"# Benchmark ({doc['when']}, 5 sites, one run, all on loopback)",
        "",
        "| path | n | median ms | p90 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['n']} | {r['median_ms']} | {r['p90_ms']} | {r['max_ms']} |")
    lines += ["", "| ratio (medians, same run) | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in ratios.items()]
    lines += [
        "",
        f"Gateway command fan-out (in-process, real code path): {fanout['us_per_command_not_held']} µs of CPU per "
        f"command a replica reads but does not hold; at {fanout['fleet_sites']:,} sites "
        f"({fanout['commands_per_s']:,.0f} commands/s) that is {fanout['pct_of_core_per_replica']} % of a core "
        "per gateway replica.",
    ]
    lines += ["", *forecast_serving.markdown(forecasts)]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {args.out}/results.md and results.json ({doc['wall_time_s']} s)")


if __name__ == "__main__":
    main()
