"""The competition the simulated market clears our bids against: per market, product and direction, the
TSO's demand and the other providers' supply curve (``data/competition.toml`` is the shipped demo).

Format (TOML)::

    [markets.entsoe]
    currency = "EUR"
    timezone = "Europe/Berlin"             # the hour of day a block starts is read in this zone
    hour_multiplier = [1.0, ...]           # optional, 24 values: scales the competitors' prices by hour
    [markets.entsoe.products.aFRR.up]      # direction: "up", "down", or "both" (a symmetric product)
    demand_kw = 300.0                      # kW of capacity the TSO buys per block
    supply = [[4.0, 60.0], [6.5, 60.0]]    # [price_per_mw_h, kw]: currency per MW per hour, kW
    hour_multiplier = [...]                # optional: overrides the market's for this curve

Units: demand and steps in kW, prices in the market's currency per MW per hour of the block (the same
unit as ``Bid.capacity_price_per_mw_h``). Unknown keys are refused so a typo cannot fall back to a
default; errors name the file and the field path (e.g. ``markets.entsoe.products.FCR.both.supply.2.1``).
"""

from __future__ import annotations

import math
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from vpp.v1 import common_pb2

from market.clearing import SupplyStep
from vpp_common.validation import known_timezone

Direction = Literal["up", "down", "both"]
DEFAULT_COMPETITION_PATH = Path(__file__).parent / "data" / "competition.toml"
_NAMED_DIRECTIONS: dict[str, Direction] = {"up": "up", "down": "down", "both": "both"}
_PROTO_DIRECTIONS: dict[int, Direction] = {
    common_pb2.DIRECTION_UP: "up",
    common_pb2.DIRECTION_DOWN: "down",
    common_pb2.DIRECTION_UNSPECIFIED: "both",
}


class CompetitionFileError(ValueError):
    """The competition file is missing, not TOML, or has a bad field (named in the message)."""


def _check_hour_multiplier(values: tuple[float, ...] | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    if len(values) != 24:
        raise ValueError(f"needs 24 values (one per hour of day), got {len(values)}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError("every multiplier must be finite and > 0")
    return values


class Curve(BaseModel):
    """One auction's competition: the demand and the other providers' offers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    demand_kw: float = Field(ge=0.0, allow_inf_nan=False)
    supply: tuple[tuple[float, float], ...] = Field(min_length=1)  # (price_per_mw_h, kw)
    hour_multiplier: tuple[float, ...] | None = None

    @field_validator("supply")
    @classmethod
    def _steps(cls, steps: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        for i, (price, kw) in enumerate(steps):
            if not math.isfinite(price) or price < 0:
                raise ValueError(f"step {i}: price_per_mw_h must be finite and >= 0, got {price}")
            if not math.isfinite(kw) or kw <= 0:
                raise ValueError(f"step {i}: kw must be finite and > 0, got {kw}")
        return steps

    @field_validator("hour_multiplier")
    @classmethod
    def _hours(cls, values: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return _check_hour_multiplier(values)


class MarketCompetition(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    currency: str = Field(pattern=r"^[A-Z]{3}$")
    timezone: str = "UTC"
    hour_multiplier: tuple[float, ...] | None = None  # default for the market's curves
    products: dict[str, dict[Direction, Curve]] = Field(min_length=1)

    @field_validator("hour_multiplier")
    @classmethod
    def _hours(cls, values: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return _check_hour_multiplier(values)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_timezone(value)

    @field_validator("products")
    @classmethod
    def _some_direction(cls, products: dict[str, dict[Direction, Curve]]) -> dict[str, dict[Direction, Curve]]:
        for product_id, curves in products.items():
            if not curves:
                raise ValueError(f"product {product_id!r} has no direction (up, down or both)")
        return products


class Competition(BaseModel):
    """All markets' competition; ``curve`` gives the clearing inputs of one auction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    markets: dict[str, MarketCompetition] = Field(min_length=1)

    def curve(self, market_id: str, product_id: str, direction: str | int, hour: int) -> tuple[list[SupplyStep], float]:
        """The competitors' steps (prices scaled by the hour's multiplier) and the demand in kW.

        ``direction`` is "up", "down", "both" or a ``vpp.v1.Direction`` (UNSPECIFIED = both); ``hour`` is
        the hour of day (0-23, market time) the block starts. An "up" or "down" auction of a product
        configured only as "both" uses that curve. Raises LookupError for an unknown market, product or
        direction.
        """
        if not 0 <= hour <= 23:
            raise ValueError(f"hour must be in 0..23, got {hour}")
        market, curve = self._lookup(market_id, product_id, _direction(direction))
        multiplier = curve.hour_multiplier or market.hour_multiplier
        factor = multiplier[hour] if multiplier else 1.0
        return [SupplyStep(price * factor, kw) for price, kw in curve.supply], curve.demand_kw

    def curve_at(
        self, market_id: str, product_id: str, direction: str | int, start_s: float
    ) -> tuple[list[SupplyStep], float]:
        """``curve`` for a block starting at ``start_s`` (Unix seconds), its hour read in the market's zone."""
        market = self.markets.get(market_id)
        if market is None:
            raise LookupError(f"no competition for market {market_id!r}; known: {sorted(self.markets)}")
        hour = datetime.fromtimestamp(start_s, UTC).astimezone(ZoneInfo(market.timezone)).hour
        return self.curve(market_id, product_id, direction, hour)

    def _lookup(self, market_id: str, product_id: str, direction: Direction) -> tuple[MarketCompetition, Curve]:
        market = self.markets.get(market_id)
        if market is None:
            raise LookupError(f"no competition for market {market_id!r}; known: {sorted(self.markets)}")
        curves = market.products.get(product_id)
        if curves is None:
            known = sorted(market.products)
            raise LookupError(f"market {market_id!r}: no competition for product {product_id!r}; known: {known}")
        curve = curves.get(direction) or (curves.get("both") if direction != "both" else None)
        if curve is None:
            raise LookupError(
                f"market {market_id!r} product {product_id!r}: no {direction!r} curve; known: {sorted(curves)}"
            )
        return market, curve


def _direction(direction: str | int) -> Direction:
    if isinstance(direction, str):
        if direction not in _NAMED_DIRECTIONS:
            raise ValueError(f"direction must be up, down or both, got {direction!r}")
        return _NAMED_DIRECTIONS[direction]
    if direction not in _PROTO_DIRECTIONS:
        raise ValueError(f"unknown vpp.v1.Direction {direction}")
    return _PROTO_DIRECTIONS[direction]


def load_competition(path: Path | str = DEFAULT_COMPETITION_PATH) -> Competition:
    """Read and validate a competition file; errors name the file and every bad field."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CompetitionFileError(f"{path}: competition file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CompetitionFileError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Competition.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'markets'}: {err['msg']}" for err in exc.errors()]
        raise CompetitionFileError(f"{path}: {'; '.join(problems)}") from exc
