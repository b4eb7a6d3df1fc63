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
