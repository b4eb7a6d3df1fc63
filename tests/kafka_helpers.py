"""Test helper that writes the real broker with kafka-python directly (reading: vpp_common.kafka.read_topic)."""

from __future__ import annotations

from kafka import KafkaProducer


def producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all")
