"""The one Kafka runtime every service uses, on kafka-python, driven from the asyncio loop.

kafka-python is blocking, so each consumer keeps one worker thread that alone touches its
``KafkaConsumer`` (poll, commit, seek, close). Everything else happens on the event loop:

* ``poll`` runs on the worker; the batch it returns is handed to the loop, where the service's async
  handler sees one decoded record at a time. Records that do not decode, or that the handler refuses,
  go to the dead-letter topic with the reason, and processing goes on.
* Every produce a handler makes (directly or from a task it started) is recorded in the batch's
  produce scope. The offsets are committed only after all of them are durable, so a failed produce
  cannot lose the record that caused it. A produce that stays failing past
  ``kafka_produce_timeout_s`` ends the consumer, and the app turns that into NOT_SERVING and a
  non-zero exit: Kubernetes restarts the pod, and the uncommitted records are processed again.
* One batch at a time per consumer: in-flight work is bounded by ``kafka_max_poll_records``.
* Rebalances call the service's async ``on_revoked``/``on_assigned`` on the loop. ``on_assigned`` may
  return offsets to replay from, which is how partitioned state is restored (aggregation).
* Per partition the consumer keeps position, high watermark (from fetch responses, which Tansu gets
  right) and the time it last held everything the broker had, for lag metrics and view freshness.

The producer is kafka-python's thread-safe ``KafkaProducer``; ``send`` returns an asyncio future that
resolves once the broker has the record, re-sending on failure until the produce timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from google.protobuf.message import Message
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition
from vpp.v1 import envelope_pb2

from vpp_common import metrics
from vpp_common.envelope import MalformedRecord, unwrap, wrap
from vpp_common.logs import get_logger
from vpp_common.settings import ServiceSettings
from vpp_common.topics import ALL_TOPICS, DEAD_LETTER, Topic

log = get_logger(__name__)

# How long one poll waits for records before the loop gets a (possibly empty) batch: bounds how long a
# stop waits for the consumer; records themselves are handed over as soon as a fetch brings them.
POLL_TIMEOUT_MS = 500

# A batch handed to the loop may take a while to handle: give the loop back this often, so a gRPC query
# waits for at most this long behind a consumer.
YIELD_EVERY_S = 0.005

StartAt = Literal["committed-or-earliest", "committed-or-latest", "earliest", "latest", "last", "tail"]


class ProduceFailed(RuntimeError):
    """A record could not be written within the produce timeout: the service cannot go on safely."""


class ConsumerDied(RuntimeError):
    """A consumer stopped for good; the service must stop serving and exit."""


# -- topics ------------------------------------------------------------------------------------------


def ensure_topics(
    bootstrap_servers: str,
    site_partitions: int,
    topics: Iterable[Topic] = ALL_TOPICS,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Create the platform's topics if missing (idempotent, safe from every replica at once) and return
    every topic's real partition count. Blocking: call from a worker thread or before the loop starts."""
    topics = list(topics)
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
        missing = [
            NewTopic(t.name, t.partition_count(site_partitions), 1, topic_configs=dict(t.config))
            for t in topics
            if t.name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        counts: dict[str, int] = {}
        described = admin.describe_topics([t.name for t in topics])
        for desc in described:
            counts[desc["name"]] = len(desc["partitions"])
        return counts
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
        batch = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        for recs in batch.values():
            records.extend(recs)
        idle_polls = 0 if batch else idle_polls + 1
        if len(records) >= min_records and idle_polls >= settle_polls:
            break
    consumer.close()
    return records


# -- producer ----------------------------------------------------------------------------------------

# The produce scope of the consumer batch being processed: every send made while it is set (also from
# tasks started meanwhile, which inherit the context) is awaited before that batch's offsets commit.
_PRODUCE_SCOPE: contextvars.ContextVar[list[asyncio.Future[Any]] | None] = contextvars.ContextVar(
    "vpp_produce_scope", default=None
)


@dataclass
class _Send:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None
    headers: list[tuple[str, bytes]]
    future: asyncio.Future[Any]
    deadline: float
    attempts: int = 0


class EventProducer:
    """Idempotent, acks=all: bids, setpoints and acks must neither vanish nor double.

    Built and used on the event loop; ``start`` connects (blocking work runs on a worker thread).
    """

    def __init__(self, settings: ServiceSettings, *, linger_ms: int = 2) -> None:
        self._settings = settings
        self._source = settings.source
        self._linger_ms = linger_ms
        self._producer: KafkaProducer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._closing = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer = await self._loop.run_in_executor(None, self._create)

    def _create(self) -> KafkaProducer:
        # kafka-python retries on its own up to delivery_timeout; our re-send covers the rest of the timeout.
        delivery_ms = int(min(self._settings.kafka_produce_timeout_s, 120) * 1000)
        return KafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id=self._settings.source,
            acks="all",
            enable_idempotence=True,
            linger_ms=self._linger_ms,
            max_request_size=8 * 1024 * 1024,
            delivery_timeout_ms=max(delivery_ms, 3 * self._linger_ms + 1000),
            request_timeout_ms=max(500, min(30_000, delivery_ms // 2)),
        )

    def publish(
        self,
        topic: Topic,
        key: str,
        payload: Message,
        *,
        site_id: str = "",
        message_id: str | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Wrap ``payload`` in an Envelope and send it; the future resolves once the broker has it."""
        env = wrap(payload, source=self._source, site_id=site_id, message_id=message_id)
        return self.send_raw(topic.name, key.encode() if key else None, env.SerializeToString(), partition=partition)

    def send_raw(
        self,
        topic_name: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        *,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Send bytes (call on the loop). Joins the current produce scope, if any."""
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        send = _Send(
            topic_name,
            key,
            value,
            partition,
            headers or [],
            fut,
            time.monotonic() + self._settings.kafka_produce_timeout_s,
        )
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        scope = _PRODUCE_SCOPE.get()
        if scope is not None:
            scope.append(fut)
        self._attempt(send)
        return fut

    def _attempt(self, send: _Send) -> None:
        assert self._producer is not None and self._loop is not None, "EventProducer.start() first"
        send.attempts += 1
        loop = self._loop
        try:
            kafka_future = self._producer.send(
                send.topic, key=send.key, value=send.value, headers=send.headers, partition=send.partition
            )
        except KafkaError as exc:  # e.g. buffer full or metadata timeout: same path as a failed send
            self._failed(send, exc)
            return
        kafka_future.add_callback(lambda meta: loop.call_soon_threadsafe(self._succeeded, send, meta))
        kafka_future.add_errback(lambda exc: loop.call_soon_threadsafe(self._failed, send, exc))

    def _succeeded(self, send: _Send, meta: Any) -> None:
        metrics.KAFKA_PRODUCED.labels(send.topic).inc()
        if not send.future.done():
            send.future.set_result(meta)

    def _failed(self, send: _Send, exc: BaseException) -> None:
        metrics.KAFKA_PRODUCE_ERRORS.labels(send.topic).inc()
        if send.future.done():
            return
        if time.monotonic() < send.deadline and not self._closing:
            retry_in_s = min(5.0, 0.2 * 2 ** min(send.attempts, 5))
            log.warning("kafka_produce_retry", topic=send.topic, attempt=send.attempts, error=repr(exc)[:200])
            assert self._loop is not None
            self._loop.call_later(retry_in_s, self._attempt, send)
            return
        log.error("kafka_produce_failed", topic=send.topic, attempts=send.attempts, error=repr(exc)[:300])
        send.future.set_exception(ProduceFailed(f"{send.topic}: {exc!r} after {send.attempts} attempts"))

    async def settle(self, futures: Iterable[asyncio.Future[Any]] | None = None) -> None:
        """Wait until ``futures`` (default: every send so far) are durable; ProduceFailed if any is not."""
        pending = list(self._pending if futures is None else futures)
        if not pending:
            return
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise ProduceFailed(str(result)) from result

    async def close(self, timeout_s: float = 5.0) -> None:
        self._closing = True
        if self._producer is None:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.settle(), timeout_s)
        producer, self._producer = self._producer, None
        await loop.run_in_executor(None, producer.close, timeout_s)


# -- consumer ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Consumed:
    """One decoded record as handlers see it."""

    env: envelope_pb2.Envelope
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int  # the broker record's timestamp (producer's create time)
    # (reason, detail, value): send one bad part of a batch (``value``: its bytes) to the dead-letter
    # topic with this record's origin, and go on with the rest of the batch.
    dead_letter: Callable[[str, str, bytes], None] = field(repr=False, compare=False, default=lambda *_: None)


Handler = Callable[[Consumed], Awaitable[None]]


class PartitionListener(Protocol):
    """Partitioned state, told when its partitions move (group consumers only)."""

    async def on_revoked(self, partitions: list[TopicPartition]) -> None: ...

    async def on_assigned(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Offsets to start the given partitions from (replay to restore state); others: committed."""
        ...


@dataclass
class PartitionProgress:
    """What this consumer knows of one partition: for lag metrics and the freshness of derived views."""

    position: int = -1  # next offset to be handed to the handler
    highwater: int = -1  # broker's high watermark at the last fetch
    caught_up_at_s: float = 0.0  # wall time when position last reached the high watermark
    last_record_ms: int = 0  # broker timestamp of the last record handled

    @property
    def lag(self) -> int:
        return max(0, self.highwater - self.position) if self.highwater >= 0 and self.position >= 0 else 0

    def as_of_s(self) -> float:
        """Everything the broker held up to this time has been handled."""
        return max(self.caught_up_at_s, self.last_record_ms / 1000.0)


class _ListenerBridge(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: hands rebalances to the service on the asyncio loop and waits."""

    def __init__(self, owner: EventConsumer, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._call(self._owner._revoked(sorted(revoked)))

    def on_partitions_assigned(self, assigned: Any) -> None:
        seeks = self._call(self._owner._assigned(sorted(assigned)))
        consumer = self._owner._consumer
        assert consumer is not None
        for tp, offset in (seeks or {}).items():
            consumer.seek(tp, offset)

    def on_partitions_lost(self, lost: Any) -> None:
        self._call(self._owner._revoked(sorted(lost)))

    def _call(self, coro: Any) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)
        except Exception as exc:  # a failed hook must stop the consumer, not leave half-moved state
            self._owner._fatal = exc
            raise


@dataclass
class ConsumerSpec:
    topics: list[Topic]
    handler: Handler
    name: str
    group_id: str | None  # None: no group, every partition assigned to this replica (broadcast reads)
    start_at: StartAt = "committed-or-latest"
    fetch_max_wait_ms: int | None = None
    listener: PartitionListener | None = None
    partitions: dict[str, int] = field(default_factory=dict)  # for group-less consumers
    tail_records: int = 0  # start_at="tail": this many records back from the end of each partition


class EventConsumer:
    """Poll on a worker thread, handle on the loop, settle produces, then commit. See the module doc."""

    def __init__(self, settings: ServiceSettings, spec: ConsumerSpec, producer: EventProducer) -> None:
        self._settings = settings
        self.spec = spec
        self.name = spec.name
        self._expected = {t.name: t.payload for t in spec.topics}
        self._producer = producer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-{spec.name}")
        self._consumer: KafkaConsumer | None = None
        self._stopping = False
        self._fatal: BaseException | None = None
        self._children: dict[str, tuple[Any, Any, Any]] = {}
        self._lag_children: dict[TopicPartition, Any] = {}
        self.assigned = asyncio.Event()
        self.assignment: set[TopicPartition] = set()
        self.progress: dict[TopicPartition, PartitionProgress] = {}
        self.generation = 0
        self.records_handled = 0
        self._static_assignment: set[TopicPartition] = set()

    # -- lifecycle (on the loop) ---------------------------------------------------------------

    async def run(self) -> None:
        """Consume until ``stop``; raises ConsumerDied if it cannot go on."""
        loop = asyncio.get_running_loop()
        metrics.CONSUMER_UP.labels(self.name).set(1)
        try:
            self._consumer = await loop.run_in_executor(self._executor, self._create, loop)
            if self._static_assignment:
                self._set_assignment(self._static_assignment)
            while not self._stopping:
                if self._fatal is not None:
                    raise self._fatal
                polled = await loop.run_in_executor(self._executor, self._poll_once)
                if self._fatal is not None:
                    raise self._fatal
                await self._handle_batch(*polled)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            metrics.CONSUMER_UP.labels(self.name).set(0)
            log.exception("consumer_died", consumer=self.name, group=self.spec.group_id or "-", error=repr(exc)[:300])
            raise ConsumerDied(f"consumer {self.name}: {exc!r}") from exc
        finally:
            await self._close(loop)

    def stop(self) -> None:
        self._stopping = True

    async def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._executor, consumer.close)
        self._executor.shutdown(wait=False)

    # -- worker thread -------------------------------------------------------------------------

    def _create(self, loop: asyncio.AbstractEventLoop) -> KafkaConsumer:
        spec = self.spec
        group = spec.group_id
        reset = "earliest" if spec.start_at in ("earliest", "committed-or-earliest") else "latest"
        consumer = KafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id=f"{self._settings.source}/{spec.name}",
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset=reset,
            session_timeout_ms=self._settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=self._settings.kafka_heartbeat_interval_ms,
            max_poll_records=self._settings.kafka_max_poll_records,
            fetch_max_wait_ms=spec.fetch_max_wait_ms or self._settings.kafka_fetch_max_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        if group is not None:
            consumer.subscribe(list(self._expected), listener=_ListenerBridge(self, loop))
            return consumer
        tps: list[TopicPartition] = []
        for topic in spec.topics:
            count = spec.partitions.get(topic.name) or len(consumer.partitions_for_topic(topic.name) or [])
            if not count:
                raise RuntimeError(f"topic {topic.name} has no partitions: was it created?")
            tps.extend(TopicPartition(topic.name, p) for p in range(count))
        consumer.assign(tps)
        if spec.start_at in ("earliest", "committed-or-earliest"):
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
            if spec.start_at in ("last", "tail"):
                # Tansu answers ListOffsets(latest) with the last batch's base offset + 1, Kafka with the
                # offset after the last record: one step back reads at least the last record on both.
                back = 1 if spec.start_at == "last" else max(1, spec.tail_records)
                for tp in tps:
                    consumer.seek(tp, max(0, consumer.position(tp) - back))
        self._static_assignment = set(tps)  # applied on the loop (asyncio.Event is not thread-safe)
        return consumer

    def _poll_once(self) -> tuple[dict[TopicPartition, list[Any]], dict[TopicPartition, int], set[TopicPartition]]:
        consumer = self._consumer
        assert consumer is not None
        batch = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        assignment = set(consumer.assignment())
        highwater = {tp: hw for tp in assignment if (hw := consumer.highwater(tp)) is not None}
        if self.spec.group_id is not None:
            # Read here, on the consumer's own thread (the coordinator's lock is held during rebalances).
            self.generation = max(0, int(consumer.group_metadata().generation_id))
        return batch, highwater, assignment

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        assert self._consumer is not None
        self._consumer.commit(offsets)

    def _position(self, tp: TopicPartition) -> int:
        assert self._consumer is not None
        return int(self._consumer.position(tp))

    # -- on the loop ---------------------------------------------------------------------------

    async def _handle_batch(
        self,
        batch: dict[TopicPartition, list[Any]],
        highwater: dict[TopicPartition, int],
        assignment: set[TopicPartition],
    ) -> None:
        now_s = time.time()
        if assignment != self.assignment or not self.assigned.is_set():
            self._set_assignment(assignment)
        scope: list[asyncio.Future[Any]] = []
        token = _PRODUCE_SCOPE.set(scope)
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        try:
            yielded = time.perf_counter()
            for tp, records in batch.items():
                if tp not in self.assignment:
                    continue  # revoked while this batch was on its way: the new owner handles it
                for record in records:
                    await self._process(record)
                    if time.perf_counter() - yielded > YIELD_EVERY_S:
                        await asyncio.sleep(0)  # let gRPC calls and other consumers in between
                        yielded = time.perf_counter()
                last = records[-1]
                progress = self.progress.setdefault(tp, PartitionProgress())
                progress.position = last.offset + 1
                progress.last_record_ms = int(last.timestamp)
                offsets[tp] = OffsetAndMetadata(last.offset + 1, "", -1)
        finally:
            _PRODUCE_SCOPE.reset(token)
        # Nothing is committed before every produce it caused is durable (ProduceFailed ends the consumer).
        await self._producer.settle(scope)
        loop = asyncio.get_running_loop()
        if offsets and self.spec.group_id is not None:
            try:
                await loop.run_in_executor(self._executor, self._commit, offsets)
            except CommitFailedError as exc:
                # The group rebalanced meanwhile: the new owner starts from the last commit (at least once).
                log.warning("commit_failed_rebalance", consumer=self.name, error=repr(exc)[:200])
            else:
                for tp, om in offsets.items():
                    metrics.KAFKA_COMMITTED_OFFSET.labels(tp.topic, str(tp.partition)).set(om.offset)
        for tp in self.assignment:
            progress = self.progress.setdefault(tp, PartitionProgress())
            if tp in highwater:
                progress.highwater = highwater[tp]
            if progress.position < 0 and tp in highwater and tp not in batch:
                progress.position = await loop.run_in_executor(self._executor, self._position, tp)
            if progress.highwater >= 0 and progress.position >= progress.highwater:
                progress.caught_up_at_s = now_s
            lag_gauge = self._lag_children.get(tp)
            if lag_gauge is None:
                lag_gauge = self._lag_children[tp] = metrics.KAFKA_CONSUMER_LAG.labels(tp.topic, str(tp.partition))
            lag_gauge.set(progress.lag)

    async def _process(self, record: Any) -> None:
        topic = record.topic
        consumed, age, processing = self._metrics_for(topic)
        consumed.inc()
        started = time.perf_counter()
        try:
            env = unwrap(record.value, self._expected.get(topic))
        except MalformedRecord as exc:
            self.dead_letter(record, exc.reason, exc.detail)
            return
        age.observe(max(time.time() - env.produced_at.ToNanoseconds() / 1e9, 0.0))
        item = Consumed(
            env,
            topic,
            record.partition,
            record.offset,
            record.key,
            int(record.timestamp),
            lambda reason, detail, value: self.dead_letter(record, reason, detail, value),
        )
        try:
            await self.spec.handler(item)
        except (ValueError, KeyError) as exc:  # the record is at fault (domain validation)
            self.dead_letter(record, "invalid", repr(exc))
        except ProduceFailed:
            raise
        except Exception as exc:  # a bug of ours: keep the record, say so loudly, keep consuming
            log.exception("handler_failed", consumer=self.name, topic=topic, offset=record.offset)
            self.dead_letter(record, "handler_error", repr(exc))
        finally:
            self.records_handled += 1
            processing.observe(time.perf_counter() - started)

    def dead_letter(self, record: Any, reason: str, detail: str, value: bytes | None = None) -> None:
        """Keep the original bytes (or ``value``, one part of a batch) with where they came from and why."""
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
        raw = value if value is not None else (record.value or b"")
        self._producer.send_raw(DEAD_LETTER.name, record.key, raw, headers)

    def _set_assignment(self, assignment: set[TopicPartition]) -> None:
        self.assignment = set(assignment)
        for topic in self._expected:
            owned = sum(1 for tp in assignment if tp.topic == topic)
            metrics.KAFKA_PARTITIONS_OWNED.labels(self.name, topic).set(owned)
        if assignment:
            self.assigned.set()

    async def _revoked(self, partitions: list[TopicPartition]) -> None:
        self._set_assignment(self.assignment - set(partitions))
        for tp in partitions:
            self.progress.pop(tp, None)
        log.info("partitions_revoked", consumer=self.name, partitions=_fmt(partitions))
        if self.spec.listener is not None:
            await self.spec.listener.on_revoked(partitions)

    async def _assigned(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self._set_assignment(self.assignment | set(partitions))
        log.info("partitions_assigned", consumer=self.name, partitions=_fmt(partitions))
        if self.spec.listener is None:
            return {}
        return await self.spec.listener.on_assigned(partitions)

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


def _fmt(partitions: Iterable[TopicPartition]) -> str:
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return ";".join(f"{t}:{','.join(str(p) for p in sorted(ps))}" for t, ps in sorted(by_topic.items()))
