"""Portfolios: which sites bid which products of which market, and how cautiously.

A portfolio is checked against the markets it names when it is loaded (product exists, currency matches,
a site is in one portfolio only), so a typo fails at start-up instead of as a refused bid.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from vpp_common.markets.products import (
    Currency,
    FrozenModel,
    Market,
    MarketConfigError,
    PositiveFloat,
    Product,
    Text,
    read_toml,
    validate_file,
)

SiteId = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class Portfolio(FrozenModel):
    portfolio_id: Annotated[str, Field(strict=True, pattern=r"^[a-z0-9-]{1,40}$")]
    name: Text
    market_id: Text
    currency: Currency
    products: tuple[Text, ...]  # product ids of the market
    sites: tuple[SiteId, ...]
    confidence: Annotated[float, Field(strict=True, ge=0.5, lt=1.0)] = 0.95  # offers deliverable with this probability
    price_margin_pct: Annotated[float, Field(strict=True, ge=0)] = 10.0
    horizon_h: Annotated[int, Field(strict=True, ge=1, le=48)] = 36
    # Demo only: real minimum sizes are MW, demo sites kW. Replaces the product's minimum bid (never above it).
    min_bid_kw_override: PositiveFloat | None = None

    @field_validator("products", "sites")
    @classmethod
    def _non_empty_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one entry")
        duplicates = sorted({v for v in value if value.count(v) > 1})
        if duplicates:
            raise ValueError(f"lists {duplicates} more than once")
        return value

    def min_bid_kw(self, product: Product) -> float:
        """Smallest bid this portfolio may place for ``product`` (the override, where set)."""
        return product.min_bid_kw if self.min_bid_kw_override is None else self.min_bid_kw_override

    def increment_kw(self, product: Product) -> float:
        """Bid step for ``product``: with an override, never coarser than the override itself, so a 1 MW
        step does not swallow a kW-sized demo bid."""
        if self.min_bid_kw_override is None:
            return product.increment_kw
        return min(product.increment_kw, self.min_bid_kw_override)


class _PortfolioFile(FrozenModel):
    portfolios: tuple[Portfolio, ...]


def load_portfolios(path: Path, markets: Mapping[str, Market]) -> dict[str, Portfolio]:
    """The portfolios of one file, validated on their own and against ``markets``."""
    parsed = validate_file(_PortfolioFile, path, read_toml(path))
    problems = cross_check(parsed.portfolios, markets)
    if problems:
        raise MarketConfigError(path, problems)
    return {p.portfolio_id: p for p in parsed.portfolios}


def cross_check(portfolios: tuple[Portfolio, ...], markets: Mapping[str, Market]) -> list[tuple[str, str]]:
    """(field path, problem) for each portfolio rule that involves a market or another portfolio."""
    problems: list[tuple[str, str]] = []
    seen_ids: dict[str, int] = {}
    owner: dict[str, str] = {}
    for i, portfolio in enumerate(portfolios):
        at = f"portfolios[{i}]"
        if portfolio.portfolio_id in seen_ids:
            problems.append(
                (
                    f"{at}.portfolio_id",
                    f"{portfolio.portfolio_id!r} is already used by "
                    f"portfolios[{seen_ids[portfolio.portfolio_id]}]; give each portfolio its own id",
                )
            )
        seen_ids.setdefault(portfolio.portfolio_id, i)
        for j, site in enumerate(portfolio.sites):
            if site in owner:
                problems.append(
                    (
                        f"{at}.sites[{j}]",
                        f"site {site!r} already belongs to portfolio {owner[site]!r}; "
                        "a site can be in one portfolio only, remove it from one of them",
                    )
                )
            else:
                owner[site] = portfolio.portfolio_id
        market = markets.get(portfolio.market_id)
        if market is None:
            problems.append(
                (f"{at}.market_id", f"unknown market {portfolio.market_id!r}; use one of {sorted(markets)}")
            )
            continue
        if portfolio.currency != market.currency:
            problems.append(
                (
                    f"{at}.currency",
                    f"{portfolio.currency!r} does not match market "
                    f"{market.market_id!r}, which settles in {market.currency!r}; set currency = "
                    f'"{market.currency}"',
                )
            )
        known = {p.product_id: p for p in market.products}
        for j, product_id in enumerate(portfolio.products):
            product = known.get(product_id)
            if product is None:
                problems.append(
                    (
                        f"{at}.products[{j}]",
                        f"market {market.market_id!r} has no product {product_id!r}; use one of {sorted(known)}",
                    )
                )
            elif portfolio.min_bid_kw_override is not None and portfolio.min_bid_kw_override > product.min_bid_kw:
                problems.append(
                    (
                        f"{at}.min_bid_kw_override",
                        f"{portfolio.min_bid_kw_override:g} kW is above "
                        f"{product_id}'s own minimum of {product.min_bid_kw:g} kW; an override may only "
                        "lower the minimum, so lower it or remove it",
                    )
                )
    return problems
