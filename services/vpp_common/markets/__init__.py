"""Balancing markets, their products and the portfolios that bid them, as validated data files.

``load_catalog()`` reads the shipped ``data/`` directory; schema and figures: docs/markets.md.
"""

from vpp_common.markets.catalog import DATA_DIR, MARKETS_DIR, PORTFOLIOS_FILE, Catalog, load_catalog
from vpp_common.markets.portfolios import Portfolio, load_portfolios
from vpp_common.markets.products import (
    ActivationKind,
    Direction,
    GateClosure,
    Market,
    MarketConfigError,
    Penalty,
    Pricing,
    Product,
    load_market,
)

__all__ = [
    "DATA_DIR",
    "MARKETS_DIR",
    "PORTFOLIOS_FILE",
    "ActivationKind",
    "Catalog",
    "Direction",
    "GateClosure",
    "Market",
    "MarketConfigError",
    "Penalty",
    "Portfolio",
    "Pricing",
    "Product",
    "load_catalog",
    "load_market",
    "load_portfolios",
]
