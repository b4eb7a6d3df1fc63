"""Service lifecycle: one asyncio loop runs the gRPC server, the Kafka consumers and the background
tasks. Start: metrics, topics, producer, consumers and tasks, gRPC (SERVING). Stop, on SIGTERM/SIGINT
or when a consumer or task dies: health NOT_SERVING first, then consumers, tasks, gRPC with a grace
period, the producer (flushed), metrics. A death makes the process exit 1 so Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
from prometheus_client import start_http_server
from pydantic import ValidationError

from vpp_common import metrics
from vpp_common.grpc_server import GrpcServer
from vpp_common.kafka import (
    ConsumerSpec,
    EventConsumer,
    EventProducer,
    Handler,
    PartitionListener,
    StartAt,
    ensure_topics,
)
from vpp_common.logs import configure_logging, get_logger
from vpp_common.settings import ServiceSettings
from vpp_common.topics import ACKS, COMMANDS, PARTIALS, TELEMETRY, Topic

log = get_logger(__name__)

SITE_TOPICS = (TELEMETRY, COMMANDS, ACKS, PARTIALS)


class ServiceApp:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        configure_logging(settings.log_level)
        self.producer = EventProducer(settings)
        self.grpc = GrpcServer(settings.grpc_host, settings.grpc_port)
        self.consumers: list[EventConsumer] = []
        self._task_factories: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._start_hooks: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._grpc_hooks: list[Callable[[int], object]] = []
        self._stop_hooks: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: dict[asyncio.Task[None], str] = {}
        self._consumer_tasks: dict[asyncio.Task[None], EventConsumer] = {}
        self._stopping = asyncio.Event()
        self._metrics_server: Any = None
        self.metrics_port = 0
        self.topic_partitions: dict[str, int] = {}
        self.fatal: BaseException | None = None

    # -- wiring (before start) -------------------------------------------------------------------

    def add_servicer(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        self.grpc.add(register, servicer, full_name)

    def add_consumer(
        self,
        topics: list[Topic],
        handler: Handler,
        *,
        name: str,
        group: str | None,
        start_at: StartAt = "committed-or-latest",
        fetch_max_wait_ms: int | None = None,
        listener: PartitionListener | None = None,
        tail_records: int = 0,
    ) -> EventConsumer:
        """``group``: the consumer group's role name (prefixed by settings), shared by every replica so
        partitions are split between them; None: this replica reads every partition (no group)."""
        spec = ConsumerSpec(
            topics=list(topics),
            handler=handler,
            name=name,
            group_id=None if group is None else self.settings.group_id(group),
            start_at=start_at,
            fetch_max_wait_ms=fetch_max_wait_ms,
            listener=listener,
            tail_records=tail_records,
        )
        consumer = EventConsumer(self.settings, spec, self.producer)
        self.consumers.append(consumer)
        return consumer

    def on_start(self, hook: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run once topics and the producer are ready, before consumers, tasks and gRPC start."""
        self._start_hooks.append(hook)

    def on_stop(self, hook: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run after consumers and tasks have stopped, before gRPC and the producer close (release
        resources: worker threads, channels, connections)."""
        self._stop_hooks.append(hook)

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the service begins to stop: long waits in handlers (retries) should end on it."""
        return self._stopping

    def after_grpc_start(self, hook: Callable[[int], object]) -> None:
        """Called with the bound gRPC port once the server listens (e.g. to advertise this replica)."""
        self._grpc_hooks.append(hook)

    def add_task(self, factory: Callable[[], Coroutine[Any, Any, None]], name: str = "task") -> None:
        """A background loop (publishers, schedulers): cancelled on stop; if it dies, the service stops."""
        self._task_factories.append((name, factory))

    @property
    def site_partitions(self) -> int:
        """The real partition count of the site topics (known after start)."""
        return self.topic_partitions.get(TELEMETRY.name, self.settings.site_partitions)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._metrics_server, _ = start_http_server(self.settings.metrics_port)
        self.metrics_port = self._metrics_server.server_port
        loop = asyncio.get_running_loop()
        self.topic_partitions = await loop.run_in_executor(
            None, ensure_topics, self.settings.kafka_bootstrap_servers, self.settings.site_partitions
        )
        counts = {t.name: self.topic_partitions.get(t.name) for t in SITE_TOPICS}
        if len(set(counts.values())) != 1:
            raise RuntimeError(
                f"site topics must have equal partition counts (a site's records share one partition "
                f"number in each), found {counts}: recreate them or add partitions to match"
            )
        await self.producer.start()
        for hook in self._start_hooks:
            await hook()
        for consumer in self.consumers:
            consumer.spec.partitions = dict(self.topic_partitions)
            task = asyncio.create_task(consumer.run(), name=f"consumer-{consumer.name}")
            self._consumer_tasks[task] = consumer
            task.add_done_callback(self._watch)
        for name, factory in self._task_factories:
            task = asyncio.create_task(factory(), name=name)
            self._tasks[task] = name
            task.add_done_callback(self._watch)
        await self.grpc.start()
        for grpc_hook in self._grpc_hooks:
            grpc_hook(self.grpc.port)
        tune_gc(self.settings.gc_gen0_threshold)
        watch_gc()
        task = asyncio.create_task(watch_loop_lag(), name="loop-lag")
        self._tasks[task] = "loop-lag"
        task.add_done_callback(self._watch)
        metrics.SERVICE_UP.labels(self.settings.service_name).set(1)
        log.info(
            "service_started",
            service=self.settings.service_name,
            instance=self.settings.instance_id,
            grpc_port=self.grpc.port,
            metrics_port=self.metrics_port,
            kafka=self.settings.kafka_bootstrap_servers,
            site_partitions=self.site_partitions,
        )

    def _watch(self, task: asyncio.Task[None]) -> None:
        """A consumer or background task ended: unless we are stopping, that is fatal."""
        if task.cancelled() or self._stopping.is_set():
            return
        exc = task.exception()
        what = task.get_name()
        if exc is None:
            exc = RuntimeError(f"{what} ended unexpectedly")
        log.error("service_component_died", component=what, error=repr(exc)[:300])
        if self.fatal is None:
            self.fatal = exc
        self._stopping.set()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        log.info("service_stopping", service=self.settings.service_name, fatal=repr(self.fatal) if self.fatal else "")
        metrics.SERVICE_UP.labels(self.settings.service_name).set(0)
        await self.grpc.not_serving()
        await asyncio.sleep(self.settings.shutdown_drain_s)
        for consumer in self.consumers:
            consumer.stop()
        if self._consumer_tasks:
            _, late = await asyncio.wait(self._consumer_tasks, timeout=10)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._consumer_tasks, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for hook in self._stop_hooks:
            try:
                await hook()
            except Exception:
                log.exception("stop_hook_failed", service=self.settings.service_name)
        await self.grpc.stop(self.settings.grpc_grace_s)
        await self.producer.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("service_stopped", service=self.settings.service_name)

    async def run(self) -> int:
        """Start, run until SIGTERM/SIGINT or a component dies, stop in order; the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
        except Exception as exc:
            log.exception("service_start_failed", service=self.settings.service_name, error=repr(exc)[:300])
            self.fatal = exc
        if self.fatal is None:
            await self._stopping.wait()
        await self.stop()
        return 1 if self.fatal is not None else 0


def tune_gc(gen0_threshold: int) -> None:
    """Move everything built at start-up out of the collector's sight and let the young generation grow.

    A service allocates per message (futures, callbacks, protobuf objects) next to long-lived state
    (sessions, site tables); with CPython's default threshold (700) the cyclic collector ran so often
    it was 14 % of the gateway's CPU (py-spy, 3,000 sites). Reference counting still frees the short-
    lived objects at once; cycles are rare here and are collected, just less eagerly.
    """
    gc.collect()
    gc.freeze()
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


_GC_PAUSE = {generation: metrics.GC_PAUSE.labels(str(generation)) for generation in range(3)}
_gc_started_at = [0.0]


def _time_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started_at[0] = time.perf_counter()
    else:
        _GC_PAUSE[info["generation"]].observe(time.perf_counter() - _gc_started_at[0])


def watch_gc() -> None:
    """Time every cyclic collection (``vpp_gc_pause_seconds``): a long one stalls every request."""
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)


async def watch_loop_lag(interval_s: float = 0.25) -> None:
    """Observe how late the loop wakes from a sleep (``vpp_event_loop_lag_seconds``): what any request or
    record waited behind other work, GC or a thread holding the GIL."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        metrics.LOOP_LAG.observe(max(0.0, loop.time() - started - interval_s))


S = TypeVar("S", bound=ServiceSettings)


def load_settings(settings_type: type[S]) -> S:
    """Settings from the environment; a bad one ends the process with one line naming the variable."""
    try:
        return settings_type()
    except ValidationError as exc:
        prefix = settings_type.model_config.get("env_prefix", "")
        problems = "; ".join(
            # a model-level check (no field) names its own fields in the message
            (f"{prefix}{'.'.join(str(p) for p in err['loc']).upper()}: " if err["loc"] else "")
            + str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise SystemExit(f"{settings_type.__name__}: invalid configuration: {problems}") from exc


def run_service(settings_type: type[S], build: Callable[[ServiceApp, S], object]) -> None:
    """``python -m <service>``: settings from the environment, wire the service, run until SIGTERM.

    Exits 1 if a consumer or background task died, so the orchestrator restarts the process.
    """
    settings = load_settings(settings_type)
    app = ServiceApp(settings)
    build(app, settings)
    sys.exit(asyncio.run(app.run()))
