from __future__ import annotations

from pydantic import Field

from vpp_common.settings import ServiceSettings


class MarketSettings(ServiceSettings):
    service_name: str = "market"
    aggregation_target: str = "127.0.0.1:50052"
    portfolio_id: str = "default"
    # Capacity bids at or below this price are accepted (pay-as-cleared at this price).
    clearing_price_eur_per_mw: float = Field(default=18.0, ge=0)
