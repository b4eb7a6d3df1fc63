from __future__ import annotations

from pathlib import Path

from pydantic import Field

from vpp_common.settings import MarketCatalogSettings


class MarketSettings(MarketCatalogSettings):
    service_name: str = "market"
    aggregation_target: str = "127.0.0.1:50052"
    # The portfolio an activation without award or portfolio is sized for (operator and test activations).
    portfolio_id: str = "default"
    # Competing supply and TSO demand per market, product and direction (None: the shipped demo curves).
    competition_file: Path | None = None
    # How often the simulator looks for auctions whose gate has closed.
    gate_check_s: float = Field(default=1.0, gt=0, le=60)
    # After a delivery's last step, wait this long for dispatch's last tracking samples before settling.
    settle_wait_s: float = Field(default=10.0, ge=0, le=300)
