"""One settings object per service process, built once in ``__main__`` and passed down.

Nothing else reads the environment. ``KAFKA_BOOTSTRAP_SERVERS`` is read without prefix because that is
the name operators already use for Apache Kafka; everything else is ``VPP_<NAME>``.
"""

from __future__ import annotations

import socket

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VPP_", extra="ignore")

    service_name: str = "vpp"
    instance_id: str = Field(default_factory=socket.gethostname)
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "VPP_KAFKA_BOOTSTRAP_SERVERS"),
    )
    # Tansu completes a group join only after ~session_timeout/2: keep it short.
    kafka_session_timeout_ms: int = Field(default=6000, ge=1000, le=300_000)
    kafka_heartbeat_interval_ms: int = Field(default=1000, ge=100, le=60_000)
    # How long the broker may hold a fetch with no data: bounds activation-to-setpoint latency.
    kafka_fetch_max_wait_ms: int = Field(default=100, ge=1, le=5000)
    # ... and for the setpoint path (activations, commands), where every millisecond counts.
    kafka_fast_fetch_max_wait_ms: int = Field(default=10, ge=1, le=5000)
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    grpc_grace_s: float = Field(default=3.0, ge=0.0, le=60.0)
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    log_level: str = "INFO"

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

    @property
    def source(self) -> str:
        """The Envelope ``source`` of records this process produces."""
        return f"{self.service_name}/{self.instance_id}"
