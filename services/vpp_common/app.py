"""Service lifecycle: start metrics, Kafka and gRPC; on SIGTERM/SIGINT stop in order
(health NOT_SERVING, Kafka consumers, background tasks, gRPC with a grace period, producer flush,
metrics)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
from prometheus_client import start_http_server
from pydantic import ValidationError

from vpp_common import metrics
from vpp_common.grpc_server import GrpcServer
from vpp_common.kafka import EventConsumer, EventProducer, Handler, ensure_topics
from vpp_common.logs import configure_logging, get_logger
from vpp_common.settings import ServiceSettings
from vpp_common.topics import Topic

log = get_logger(__name__)


class ServiceApp:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        configure_logging(settings.log_level)
        ensure_topics(settings.kafka_bootstrap_servers)
        self.producer = EventProducer(settings)
        self.grpc = GrpcServer(settings.grpc_host, settings.grpc_port)
        self._consumers: list[EventConsumer] = []
        self._task_factories: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._metrics_server: Any = None
        self.metrics_port = 0

    def add_servicer(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        self.grpc.add(register, servicer, full_name)

    def add_consumer(
        self,
        topics: dict[Topic, str],
        handler: Handler,
        *,
        group_id: str,
        from_beginning: bool = False,
        fetch_max_wait_ms: int | None = None,
    ) -> EventConsumer:
        consumer = EventConsumer(
            self.settings,
            topics=topics,
            handler=handler,
            producer=self.producer,
            group_id=group_id,
            from_beginning=from_beginning,
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        self._consumers.append(consumer)
        return consumer

    def add_task(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A background loop (publishers, schedulers); cancelled on stop."""
        self._task_factories.append(factory)

    async def start(self) -> None:
        self._metrics_server, _ = start_http_server(self.settings.metrics_port)
        self.metrics_port = self._metrics_server.server_port
        for consumer in self._consumers:
            consumer.start()
        for factory in self._task_factories:
            self._tasks.append(asyncio.create_task(factory()))
        await self.grpc.start()
        metrics.SERVICE_UP.labels(self.settings.service_name).set(1)
        log.info(
            "service_started",
            service=self.settings.service_name,
            grpc_port=self.grpc.port,
            metrics_port=self.metrics_port,
            kafka=self.settings.kafka_bootstrap_servers,
        )

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        log.info("service_stopping", service=self.settings.service_name)
        metrics.SERVICE_UP.labels(self.settings.service_name).set(0)
        await self.grpc.not_serving()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, c.stop) for c in self._consumers))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.grpc.stop(self.settings.grpc_grace_s)
        await loop.run_in_executor(None, self.producer.close)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("service_stopped", service=self.settings.service_name)

    async def run(self) -> None:
        """Start, wait for SIGTERM/SIGINT, stop in order."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        await self._stopping.wait()
        await self.stop()


S = TypeVar("S", bound=ServiceSettings)


def run_service(settings_type: type[S], build: Callable[[ServiceApp, S], object]) -> None:
    """``python -m <service>``: settings from the environment, wire the service, run until SIGTERM.

    A bad setting ends the process with one line naming the environment variable, not a traceback.
    """
    try:
        settings = settings_type()
    except ValidationError as exc:
        prefix = settings_type.model_config.get("env_prefix", "")
        problems = "; ".join(
            f"{prefix}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise SystemExit(f"{settings_type.__name__}: invalid configuration: {problems}") from exc
    app = ServiceApp(settings)
    build(app, settings)
    asyncio.run(app.run())
