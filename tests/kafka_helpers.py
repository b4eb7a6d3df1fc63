"""Test helpers that talk to the real broker with kafka-python directly, the way an outside tool would
(reading whole topics: ``vpp_common.kafka.read_topic``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from kafka import KafkaConsumer, KafkaProducer
from vpp.v1 import dispatch_pb2, envelope_pb2, telemetry_pb2

from vpp_common.envelope import wrap
from vpp_common.kafka import read_topic
from vpp_common.partitioning import site_partition
from vpp_common.topics import ACKS, COMMANDS, TELEMETRY


def producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all")


def partitions(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def send_commands(bootstrap: str, commands: Iterable[dispatch_pb2.DispatchCommand]) -> None:
    """Write commands the way dispatch does: one batch per site partition."""
    count = partitions(bootstrap, COMMANDS.name)
    by_partition: dict[int, list[dispatch_pb2.DispatchCommand]] = defaultdict(list)
    for cmd in commands:
        by_partition[site_partition(cmd.site_id, count)].append(cmd)
    prod = producer(bootstrap)
    for partition, cmds in by_partition.items():
        env = wrap(dispatch_pb2.DispatchCommandBatch(commands=cmds), source="test")
        prod.send(COMMANDS.name, value=env.SerializeToString(), partition=partition).get(10)
    prod.close()


def send_telemetry(
    bootstrap: str, samples: Iterable[tuple[str, telemetry_pb2.Telemetry]], *, partition: int | None = None
) -> None:
    """Write (message_id, sample) pairs the way the gateway does: one batch per site partition, unless
    ``partition`` forces one (to test what a consumer does with a sample in the wrong partition)."""
    count = partitions(bootstrap, TELEMETRY.name)
    by_partition: dict[int, list[telemetry_pb2.TelemetryRecord]] = defaultdict(list)
    for message_id, t in samples:
        p = site_partition(t.site_id, count) if partition is None else partition
        by_partition[p].append(telemetry_pb2.TelemetryRecord(message_id=message_id, telemetry=t))
    prod = producer(bootstrap)
    for p, records in by_partition.items():
        env = wrap(telemetry_pb2.TelemetryBatch(records=records), source="test")
        prod.send(TELEMETRY.name, value=env.SerializeToString(), partition=p).get(10)
    prod.close()


def telemetry_records(bootstrap: str, **kwargs: float) -> list[telemetry_pb2.TelemetryRecord]:
    """Every sample on the telemetry topic (batches expanded), in partition/offset order."""
    out: list[telemetry_pb2.TelemetryRecord] = []
    for r in read_topic(bootstrap, TELEMETRY.name, partitions(bootstrap, TELEMETRY.name), **kwargs):  # type: ignore[arg-type]
        out.extend(envelope_pb2.Envelope.FromString(r.value).telemetry_batch.records)
    return out


def ack_records(bootstrap: str, **kwargs: float) -> list[dispatch_pb2.CommandAckRecord]:
    out: list[dispatch_pb2.CommandAckRecord] = []
    for r in read_topic(bootstrap, ACKS.name, partitions(bootstrap, ACKS.name), **kwargs):  # type: ignore[arg-type]
        out.extend(envelope_pb2.Envelope.FromString(r.value).ack_batch.records)
    return out
