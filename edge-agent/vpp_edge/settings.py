"""Agent configuration: one pydantic-settings object (env prefix VPP_EDGE_), built once, passed down."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class EdgeSettings(BaseSettings):
    """Site identity, where the gateway and the device are, and the site's own safety envelope."""

    model_config = SettingsConfigDict(env_prefix="VPP_EDGE_", extra="ignore")

    site_id: str = Field(min_length=1)
    site_token: str = ""
    gateway_target: str = "127.0.0.1:50051"
    modbus_host: str = "127.0.0.1"
    modbus_port: int = Field(default=502, ge=1, le=65535)
    modbus_unit_id: int = Field(default=1, ge=0, le=255)
    modbus_timeout_s: float = Field(default=1.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    soc_reserve_pct: float = Field(default=10.0, ge=0, le=100)
    soc_ceiling_pct: float = Field(default=95.0, ge=0, le=100)
    setpoint_revert_s: int = Field(default=30, ge=0, le=65535)
    setup_timeout_s: float = Field(default=30.0, gt=0)
    outbox_max: int = Field(default=2000, ge=10)
    # Samples wait up to this long and go to the gateway together (0: each at once); a command ack goes
    # within uplink_ack_spread_s with the samples taken so far. A stream message costs the gateway ~0.5 ms of CPU, a
    # sample inside one ~10 us: docs/scaling.md has the costs. Aggregation's stale_after_s must exceed it.
    uplink_batch_interval_s: float = Field(default=10.0, ge=0, le=60)
    # While a dispatch command is in force: dispatch measures each 4 s step at its end (docs/dispatch.md).
    uplink_dispatched_batch_interval_s: float = Field(default=2.0, ge=0, le=60)
    uplink_ack_max_delay_s: float = Field(default=1.5, gt=0, le=60)
    # A command ack waits a random 0..this long, so a fleet commanded together answers spread out.
    uplink_ack_spread_s: float = Field(default=1.0, ge=0, le=10)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _check_envelope(self) -> Self:
        if self.soc_reserve_pct >= self.soc_ceiling_pct:
            raise ValueError("soc_reserve_pct must be below soc_ceiling_pct")
        if ":" not in self.gateway_target:
            raise ValueError("gateway_target must be host:port")
        return self
