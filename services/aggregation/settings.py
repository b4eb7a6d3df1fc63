from __future__ import annotations

from pydantic import Field

from vpp_common.settings import ServiceSettings


class AggregationSettings(ServiceSettings):
    service_name: str = "aggregation"
    portfolio_id: str = "default"
    stale_after_s: float = Field(default=10.0, gt=0, le=3600)
    publish_interval_s: float = Field(default=5.0, gt=0, le=3600)
    default_interval_minutes: int = Field(default=15, ge=1, le=240)
    efficiency: float = Field(default=0.95, gt=0, le=1)
