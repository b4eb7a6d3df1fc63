"""Many small items, one Kafka record per partition per flush.

A kafka-python produce costs ~100-200 us of CPU whatever its size, a sample inside a batch a few: so
the gateway collects every site's samples (and acks) per partition for ``linger_s`` and writes each
partition's as one record. Items arrive already serialized as repeated-field entries (see
``entry``) and a record is their concatenation behind an Envelope header (``wrap_serialized``): no
message is parsed, built or copied on the way. ``add`` returns the future of the record the item went
into; it resolves once the broker has it, which is when the gateway may acknowledge the item.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import Histogram

from vpp_common.envelope import length_delimited, wrap_serialized
from vpp_common.kafka import EventProducer
from vpp_common.topics import Topic

BATCH_ITEMS = Histogram(
    "vpp_kafka_batch_items",
    "Items per batched Kafka record",
    ["topic"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)


def entry(field_number: int, item: bytes) -> bytes:
    """``item`` (a serialized message) as one element of a repeated message field."""
    return length_delimited(field_number, item)


class PartitionBatcher:
    def __init__(
        self,
        producer: EventProducer,
        topic: Topic,
        source: str,
        *,
        linger_s: float = 0.1,
        max_items: int = 5000,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._source = source
        self._linger_s = linger_s
        self._max_items = max_items
        self._items: dict[int, list[bytes]] = {}
        self._done: dict[int, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._histogram = BATCH_ITEMS.labels(topic.name)
        self.records_written = 0

    def add(self, partition: int, item: bytes) -> asyncio.Future[None]:
        """Queue ``item`` (an ``entry``) for ``partition``; the future resolves when its record is durable."""
        items = self._items.get(partition)
        if items is None:
            items = self._items[partition] = []
            self._done[partition] = asyncio.get_running_loop().create_future()
        items.append(item)
        done = self._done[partition]
        if len(items) >= self._max_items:
            self._flush(partition)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger_s, self.flush)
        return done

    def flush(self) -> None:
        """Write every partition's pending items now."""
        self._timer = None
        for partition in list(self._items):
            self._flush(partition)

    def _flush(self, partition: int) -> None:
        items = self._items.pop(partition)
        done = self._done.pop(partition)
        self._histogram.observe(len(items))
        self.records_written += 1
        value = wrap_serialized(self._topic.payload, b"".join(items), source=self._source)
        produced = self._producer.send_raw(self._topic.name, None, value, partition=partition)
        produced.add_done_callback(lambda f: _chain(f, done))


def _chain(source: asyncio.Future[Any], target: asyncio.Future[None]) -> None:
    if target.done():
        return
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(None)
