"""Kafka over kafka-python: an idempotent producer of Envelopes and a consumer thread that commits
only after processing and sends anything it cannot process to the dead-letter topic.

kafka-python is blocking, so each consumer owns a thread; handlers run on that thread. Services keep
their state behind a lock and let the asyncio gRPC side read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from google.protobuf.message import Message
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition
from vpp.v1 import envelope_pb2

from vpp_common import metrics
from vpp_common.envelope import MalformedRecord, unwrap, wrap
from vpp_common.logs import get_logger
from vpp_common.settings import ServiceSettings
from vpp_common.topics import ALL_TOPICS, DEAD_LETTER, Topic

log = get_logger(__name__)

Handler = Callable[[envelope_pb2.Envelope, Any], None]


def ensure_topics(bootstrap_servers: str, topics: Iterable[Topic] = ALL_TOPICS, timeout_s: float = 30.0) -> None:
    """Create the platform's topics if missing (idempotent; safe from every replica at once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="vpp-admin")
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cannot reach Kafka at {bootstrap_servers}: {exc}; "
                    "check KAFKA_BOOTSTRAP_SERVERS and that the broker is running"
                ) from exc
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t.name, t.partitions, 1) for t in topics if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()


def read_topic(
    bootstrap_servers: str,
    topic_name: str,
    partitions: int,
    *,
    timeout_s: float = 5.0,
    min_records: int = 0,
    settle_polls: int = 3,
) -> list[Any]:
    """Every record currently in a topic, for tools, benchmarks and tests (not for services).

    Reads from the beginning (Tansu's ListOffsets(latest) is wrong, so there is no "up to the end"):
    stops once ``min_records`` are in and ``settle_polls`` polls in a row brought nothing, or at
    ``timeout_s``.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
    tps = [TopicPartition(topic_name, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    idle_polls = 0
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=200)
        for recs in batch.values():
            records.extend(recs)
        idle_polls = 0 if batch else idle_polls + 1
        if len(records) >= min_records and idle_polls >= settle_polls:
            break
    consumer.close()
    return records


class EventProducer:
    """Idempotent, acks=all: bids, setpoints and acks must neither vanish nor double."""

    def __init__(self, settings: ServiceSettings, *, linger_ms: int = 2) -> None:
        self._source = settings.source
        self._producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=settings.source,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            retries=5,
        )

    def publish(
        self,
        topic: Topic,
        key: str,
        payload: Message,
        *,
        site_id: str = "",
        message_id: str | None = None,
    ) -> Future[Any]:
        env = wrap(payload, source=self._source, site_id=site_id, message_id=message_id)
        return self.send_raw(topic.name, key.encode(), env.SerializeToString())

    def send_raw(
        self, topic_name: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> Future[Any]:
        """Send bytes; the returned future resolves when the broker has acknowledged the record."""
        result: Future[Any] = Future()
        kafka_future = self._producer.send(topic_name, key=key, value=value, headers=headers or [])

        def ok(meta: Any) -> None:
            metrics.KAFKA_PRODUCED.labels(topic_name).inc()
            result.set_result(meta)

        def failed(exc: BaseException) -> None:
            metrics.KAFKA_PRODUCE_ERRORS.labels(topic_name).inc()
            log.error("kafka_produce_failed", topic=topic_name, error=repr(exc))
            result.set_exception(exc)

        kafka_future.add_callback(ok)
        kafka_future.add_errback(failed)
        return result

    async def publish_async(self, topic: Topic, key: str, payload: Message, **kw: Any) -> Any:
        return await asyncio.wrap_future(self.publish(topic, key, payload, **kw))

    def flush(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.close(timeout=timeout_s)


def dead_letter(producer: EventProducer, record: Any, reason: str, detail: str) -> None:
    """Keep the original bytes and say where they came from and why they were refused."""
    metrics.KAFKA_DEAD_LETTERED.labels(record.topic, reason).inc()
    log.warning(
        "record_dead_lettered",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
        detail=detail[:300],
    )
    headers = [
        ("vpp-original-topic", record.topic.encode()),
        ("vpp-original-partition", str(record.partition).encode()),
        ("vpp-original-offset", str(record.offset).encode()),
        ("vpp-error-reason", reason.encode()),
        ("vpp-error-detail", detail[:1000].encode()),
    ]
    producer.send_raw(DEAD_LETTER.name, record.key, record.value or b"", headers).result(timeout=10)


class EventConsumer:
    """One consumer thread: poll, unwrap, handle, dead-letter what fails, commit after the batch."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        topics: dict[Topic, str],
        handler: Handler,
        producer: EventProducer,
        group_id: str,
        from_beginning: bool = False,
        fetch_max_wait_ms: int | None = None,
    ) -> None:
        """``topics`` maps each topic to the Envelope payload field it must carry; ``fetch_max_wait_ms``
        overrides the setting for latency-critical streams (activations, commands)."""
        self._expected = {t.name: payload for t, payload in topics.items()}
        self._children: dict[str, tuple[Any, Any, Any]] = {}
        self._handler = handler
        self._producer = producer
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._consumer = KafkaConsumer(
            *self._expected,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"{settings.source}/{group_id}",
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            max_poll_records=500,
            fetch_max_wait_ms=fetch_max_wait_ms or settings.kafka_fetch_max_wait_ms,
        )
        self._thread = threading.Thread(target=self._run, name=f"consumer-{group_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_assigned(self, timeout_s: float) -> bool:
        """True once the group join gave this consumer its partitions."""
        return self._ready.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._consumer.poll(timeout_ms=200)
                if self._consumer.assignment():
                    self._ready.set()
                if not batch:
                    continue
                for tp, records in batch.items():
                    for record in records:
                        self._process(record)
                    self._commit(tp, records[-1].offset + 1)
        except Exception:  # the thread must say why it died, or the service silently stops consuming
            log.exception("consumer_crashed", topics=",".join(self._expected))
            raise
        finally:
            self._consumer.close()

    def _commit(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.commit({tp: OffsetAndMetadata(offset, "", -1)})
        metrics.KAFKA_COMMITTED_OFFSET.labels(tp.topic, str(tp.partition)).set(offset)

    def _process(self, record: Any) -> None:
        topic = record.topic
        consumed, age, processing = self._metrics_for(topic)
        consumed.inc()
        started = time.perf_counter()
        try:
            env = unwrap(record.value, self._expected.get(topic))
        except MalformedRecord as exc:
            dead_letter(self._producer, record, exc.reason, exc.detail)
            return
        age_s = time.time() - env.produced_at.ToNanoseconds() / 1e9
        age.observe(max(age_s, 0.0))
        try:
            self._handler(env, record)
        except (ValueError, KeyError) as exc:  # the record is at fault (domain validation)
            dead_letter(self._producer, record, "invalid", repr(exc))
        except Exception as exc:  # a bug of ours: keep the record, say so loudly, keep consuming
            log.exception("handler_failed", topic=topic, offset=record.offset)
            dead_letter(self._producer, record, "handler_error", repr(exc))
        finally:
            processing.observe(time.perf_counter() - started)

    def _metrics_for(self, topic: str) -> tuple[Any, Any, Any]:
        """Labelled metric children, resolved once per topic rather than per record."""
        children = self._children.get(topic)
        if children is None:
            children = (
                metrics.KAFKA_CONSUMED.labels(topic),
                metrics.KAFKA_RECORD_AGE_SECONDS.labels(topic),
                metrics.KAFKA_PROCESSING_SECONDS.labels(topic),
            )
            self._children[topic] = children
        return children
