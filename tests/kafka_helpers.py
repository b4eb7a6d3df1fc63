"""Test helpers that read and write the real broker with kafka-python directly."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition


def read_all(bootstrap: str, topic: str, partitions: int, timeout_s: float = 5.0, min_records: int = 0) -> list[Any]:
    """Every record currently in the topic (polls until ``min_records`` or the timeout)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    idle_polls = 0
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=200)
        got = sum(len(v) for v in batch.values())
        for recs in batch.values():
            records.extend(recs)
        idle_polls = 0 if got else idle_polls + 1
        if len(records) >= min_records and idle_polls >= 3:
            break
    consumer.close()
    return records


def producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all")
