"""The shipped markets and portfolios, loaded and cross-validated in one call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vpp_common.markets.portfolios import Portfolio, load_portfolios
from vpp_common.markets.products import Market, MarketConfigError, Product, load_market

DATA_DIR = Path(__file__).resolve().parent / "data"
MARKETS_DIR = DATA_DIR / "markets"
PORTFOLIOS_FILE = DATA_DIR / "portfolios.toml"


@dataclass(frozen=True)
class Catalog:
    markets: dict[str, Market]
    portfolios: dict[str, Portfolio]

    def market(self, market_id: str) -> Market:
        try:
            return self.markets[market_id]
        except KeyError:
            raise KeyError(f"no market {market_id!r} (loaded: {sorted(self.markets)})") from None

    def product(self, market_id: str, product_id: str) -> Product:
        return self.market(market_id).product(product_id)

    def portfolio(self, portfolio_id: str) -> Portfolio:
        try:
            return self.portfolios[portfolio_id]
        except KeyError:
            raise KeyError(f"no portfolio {portfolio_id!r} (loaded: {sorted(self.portfolios)})") from None

    def portfolio_products(self, portfolio_id: str) -> tuple[Product, ...]:
        """The Product objects a portfolio bids, in the order it lists them."""
        portfolio = self.portfolio(portfolio_id)
        market = self.market(portfolio.market_id)
        return tuple(market.product(product_id) for product_id in portfolio.products)


def load_catalog(markets_dir: Path | None = None, portfolios_file: Path | None = None) -> Catalog:
    """Every ``*.toml`` in ``markets_dir`` (one market each) and the portfolios file; defaults: shipped data.

    Raises MarketConfigError naming the file and field on the first invalid file.
    """
    directory = MARKETS_DIR if markets_dir is None else markets_dir
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise MarketConfigError(directory, [("", f"no market files (*.toml) in {directory}; add one per market")])
    markets: dict[str, Market] = {}
    origin: dict[str, Path] = {}
    for path in files:
        market = load_market(path)
        if market.market_id in markets:
            raise MarketConfigError(
                path,
                [
                    (
                        "market_id",
                        f"{market.market_id!r} is already defined in "
                        f"{origin[market.market_id].name}; market ids must be unique",
                    )
                ],
            )
        markets[market.market_id] = market
        origin[market.market_id] = path
    portfolios = load_portfolios(PORTFOLIOS_FILE if portfolios_file is None else portfolios_file, markets)
    return Catalog(markets=markets, portfolios=portfolios)
