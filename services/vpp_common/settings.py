"""One settings object per service process, built once in ``__main__`` and passed down.

Nothing else reads the environment. ``KAFKA_BOOTSTRAP_SERVERS`` is read without prefix because that is
the name operators already use for Apache Kafka; everything else is ``VPP_<NAME>``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import AliasChoices, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from vpp_common.markets import Catalog


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VPP_", extra="ignore")

    service_name: str = "vpp"
    # Names this replica in logs, Envelope.source and partition ownership; never part of a group id.
    instance_id: str = Field(default_factory=socket.gethostname)
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "VPP_KAFKA_BOOTSTRAP_SERVERS"),
    )
    # Tansu completes a group join only after ~session_timeout/2: keep it short.
    kafka_session_timeout_ms: int = Field(default=6000, ge=1000, le=300_000)
    kafka_heartbeat_interval_ms: int = Field(default=1000, ge=100, le=60_000)
    # How long the broker may hold a fetch that has no data yet. A short wait makes an idle consumer poll
    # more often (an idle 48-partition consumer: 20 % of a core and the broker 9 % at 10 ms, 1.6 % and
    # 3.2 % at 500 ms); Tansu does not always answer a waiting fetch when a record arrives, so a long
    # wait adds latency (one hop, 48 partitions: median ~15 ms at 50 ms, ~85 ms at 500 ms; vpp_demo.hop_latency).
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=1, le=5000)
    # ... and for the setpoint path (dispatch's activations and plans, the gateway's commands), where
    # latency is the product: at 50 ms instead of 500 ms the idle platform costs ~15 % of a core more, and
    # 3,000 fleet sites get their commands at p50/p99 229/544 ms instead of 372/750 ms.
    kafka_fast_fetch_max_wait_ms: int = Field(default=50, ge=1, le=5000)
    # Consumer groups are named "<prefix><role>" (e.g. "aggregation"): stable across restarts, so a
    # restarted pod resumes its group's offsets and leaves no dead group behind. The prefix separates
    # two platforms sharing one Kafka cluster.
    kafka_group_prefix: str = Field(default="", max_length=100, pattern=r"^[A-Za-z0-9._-]*$")
    # Partition count of the site topics (telemetry, commands, acks, aggregation partials) when this
    # service creates them; 48 lets 100,000 sites spread over up to 48 replicas. Services read the real
    # count from the broker, so an existing topic keeps its own.
    site_partitions: int = Field(default=48, ge=1, le=10_000)
    # Records consumed per batch handed to the event loop (bounds in-flight work per consumer).
    kafka_max_poll_records: int = Field(default=500, ge=1, le=100_000)
    # How long a produce is retried before the service gives up and exits (Kubernetes restarts it and
    # the consumed records are processed again: nothing is committed before its produces are durable).
    kafka_produce_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    grpc_grace_s: float = Field(default=3.0, ge=0.0, le=60.0)
    # On stop (SIGTERM or a dead consumer) health says NOT_SERVING this long before anything stops, so
    # probes and load balancers see it while calls in flight still complete.
    shutdown_drain_s: float = Field(default=1.0, ge=0.0, le=120.0)
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    # Where other replicas reach this one's gRPC server (site queries are forwarded to the owner of the
    # site's partition). Empty: grpc_host:grpc_port, with 0.0.0.0 replaced by the host name. In
    # Kubernetes the chart sets it from the pod IP.
    advertised_grpc_target: str = ""
    log_level: str = "INFO"
    # CPython's cyclic GC young-generation threshold (its default is 700; 0 keeps it). See app.tune_gc.
    gc_gen0_threshold: int = Field(default=50_000, ge=0, le=10_000_000)

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_has_port(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(
                    f"expected host:port[,host:port...], got {value!r}; set KAFKA_BOOTSTRAP_SERVERS"
                )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return level

    def group_id(self, role: str) -> str:
        """The consumer group of one of this service's consumers."""
        return f"{self.kafka_group_prefix}{role}"

    def advertised_target(self, bound_port: int) -> str:
        if self.advertised_grpc_target:
            return self.advertised_grpc_target
        host = self.grpc_host if self.grpc_host not in ("0.0.0.0", "::", "[::]", "") else socket.gethostname()
        return f"{host}:{bound_port}"

    @property
    def source(self) -> str:
        """The Envelope ``source`` of records this process produces."""
        return f"{self.service_name}/{self.instance_id}"


class MarketCatalogSettings(ServiceSettings):
    """Services that work with markets and portfolios (bidding, market, dispatch): the data files are
    loaded and cross-validated at start-up, so a bad file stops the process with the file and field
    named (docs/markets.md)."""

    markets_dir: Path | None = None  # one TOML per market; None: the shipped vpp_common/markets/data/markets
    portfolios_file: Path | None = None  # None: the shipped vpp_common/markets/data/portfolios.toml
    _catalog: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_catalog(self) -> MarketCatalogSettings:
        from vpp_common.markets import MarketConfigError, load_catalog

        try:
            self._catalog = load_catalog(self.markets_dir, self.portfolios_file)
        except MarketConfigError as exc:
            raise ValueError(f"VPP_MARKETS_DIR/VPP_PORTFOLIOS_FILE: {exc}") from None
        return self

    @property
    def catalog(self) -> Catalog:
        return cast("Catalog", self._catalog)
