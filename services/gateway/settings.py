from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from vpp_common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    service_name: str = "gateway"
    # Site tokens are HMAC-SHA256(secret, site_id); mTLS replaces them in a later release.
    site_token_secret: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("VPP_GATEWAY_SITE_TOKEN_SECRET", "VPP_SITE_TOKEN_SECRET"),
    )
    # Unacked commands kept per site for re-delivery after a reconnect.
    max_unacked_commands: int = Field(default=64, ge=1, le=10_000)
    outbound_queue_size: int = Field(default=256, ge=1, le=100_000)
    # How long samples and acks of all sites wait to be written together (one record per partition per
    # flush): a record costs ~100-200 us of CPU whatever its size, so 48 partitions at 250 ms is at most
    # 192 records/s however many sites; the agent's ack waits this much longer (docs/scaling.md).
    kafka_batch_linger_ms: int = Field(default=250, ge=0, le=1000)
