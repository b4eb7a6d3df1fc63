from __future__ import annotations

from pydantic import Field

from vpp_common.settings import ServiceSettings


class BiddingSettings(ServiceSettings):
    service_name: str = "bidding"
    portfolio_id: str = "default"
    # Offer only part of what the portfolio shows now: sites drop out and SoC moves during the interval.
    safety_margin: float = Field(default=0.2, ge=0, lt=1)
    min_bid_kw: float = Field(default=1.0, gt=0)      # real aFRR: 1 MW; the demo portfolio is kW-sized
    bid_increment_kw: float = Field(default=0.5, gt=0)
    max_flexibility_age_s: float = Field(default=60.0, gt=0)
