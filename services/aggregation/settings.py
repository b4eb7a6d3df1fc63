from __future__ import annotations

from pydantic import Field, field_validator

from vpp_common.settings import ServiceSettings


class AggregationSettings(ServiceSettings):
    service_name: str = "aggregation"
    portfolio_id: str = "default"
    stale_after_s: float = Field(default=15.0, gt=0, le=3600)
    # Portfolio record on vpp.flexibility.v1 (for bidding), published by the owner of partition 0.
    publish_interval_s: float = Field(default=5.0, gt=0, le=3600)
    # Partials of the owned partitions: how often, and after how long without one a partition is stale.
    partial_interval_s: float = Field(default=1.0, gt=0, le=60)
    partial_stale_after_s: float = Field(default=3.0, gt=0, le=600)
    default_interval_minutes: int = Field(default=15, ge=1, le=240)
    # Intervals whose totals are maintained; a query is answered for the next one at least as long.
    flex_intervals_minutes: list[int] = Field(default=[1, 5, 15, 60, 240], min_length=1, max_length=12)
    efficiency: float = Field(default=0.95, gt=0, le=1)

    @field_validator("flex_intervals_minutes")
    @classmethod
    def _intervals_in_range(cls, value: list[int]) -> list[int]:
        if any(not 1 <= m <= 240 for m in value):
            raise ValueError("every interval must be 1..240 minutes")
        if 240 not in value:
            raise ValueError("240 must be maintained (the longest interval a query may ask for)")
        return sorted(set(value))
