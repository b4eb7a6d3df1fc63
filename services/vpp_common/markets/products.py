"""Balancing products and markets as validated data (one TOML file per market).

The bidding, market-simulator and settlement code read every market rule from these models instead of
hard-coding them, so a figure lives in exactly one place (the data file) and a wrong one is refused at
load time with the file and field named. Field meanings and units: docs/markets.md.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vpp_common.validation import known_timezone

DOCS_HINT = "see docs/markets.md"
SECONDS_PER_DAY = 86_400

# TOML values are typed, so a string where a number belongs is a mistake, not something to coerce.
PositiveFloat = Annotated[float, Field(strict=True, gt=0)]
NonNegativeFloat = Annotated[float, Field(strict=True, ge=0)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Text = Annotated[str, Field(strict=True, min_length=1)]
Currency = Literal["EUR", "JPY"]
ModelT = TypeVar("ModelT", bound=BaseModel)


class MarketConfigError(ValueError):
    """A market or portfolio file that cannot be used; the message names the file and the field path."""

    def __init__(self, file: Path | str, problems: list[tuple[str, str]]) -> None:
        self.file = Path(file)
        self.problems = problems  # (field path, what is wrong and what to do)
        name = self.file.name
        super().__init__("\n".join(f"{name}: {path}: {what}" if path else f"{name}: {what}" for path, what in problems))


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


class Pricing(StrEnum):
    PAY_AS_BID = "pay_as_bid"
    PAY_AS_CLEARED = "pay_as_cleared"


class ActivationKind(StrEnum):
    FREQUENCY = "frequency"  # FCR / 一次: power proportional to a frequency deviation
    SETPOINT = "setpoint"  # aFRR / 二次: a setpoint series (every 4 s in Europe)
    SCHEDULE = "schedule"  # mFRR / 三次: stepped schedules


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GateClosure(FrozenModel):
    """When bids for a delivery period stop being accepted."""

    kind: Literal["before_delivery", "day_ahead"]
    lead_s: Annotated[int, Field(strict=True, ge=0)] | None = None  # before_delivery: this long before the start
    local_time: str | None = None  # day_ahead: "HH:MM" in the market's time zone ...
    days_before: Annotated[int, Field(strict=True, ge=0, le=14)] = 1  # ... this many days before the delivery day

    @field_validator("local_time")
    @classmethod
    def _hh_mm(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"expected 24-hour 'HH:MM' such as '08:00', got {value!r}")
        return value

    @model_validator(mode="after")
    def _fields_for_kind(self) -> GateClosure:
        if self.kind == "before_delivery":
            if self.lead_s is None:
                raise ValueError("kind 'before_delivery' needs lead_s (seconds before the delivery period starts)")
            if self.local_time is not None or "days_before" in self.model_fields_set:
                raise ValueError("kind 'before_delivery' takes only lead_s; remove local_time/days_before")
        else:
            if self.local_time is None:
                raise ValueError("kind 'day_ahead' needs local_time ('HH:MM' in the market time zone)")
            if self.lead_s is not None:
                raise ValueError("kind 'day_ahead' takes local_time and days_before; remove lead_s")
        return self

    def at(self, delivery_start: datetime, tz: ZoneInfo) -> datetime:
        """Gate closure (aware, UTC) for a delivery period starting at ``delivery_start`` (aware)."""
        start = _require_aware(delivery_start, "delivery_start")
        if self.kind == "before_delivery":
            assert self.lead_s is not None
            return start.astimezone(UTC) - timedelta(seconds=self.lead_s)
        assert self.local_time is not None
        delivery_day = start.astimezone(tz).date()
        gate_day = delivery_day - timedelta(days=self.days_before)
        hour, minute = (int(part) for part in self.local_time.split(":"))
        # A wall time in a DST gap resolves with the offset before the change (fold=0), as zoneinfo does.
        return datetime.combine(gate_day, time(hour, minute), tzinfo=tz).astimezone(UTC)


class Penalty(FrozenModel):
    """Applied per MTU to measured under-delivery (delivered energy below requested energy)."""

    tolerance_pct: Annotated[float, Field(strict=True, ge=0, le=100)]  # shortfall within this % is not penalised
    capacity_clawback_factor: NonNegativeFloat  # x capacity payment of the MTU x shortfall share (1.0 = pro rata)
    undelivered_energy_price_per_mwh: NonNegativeFloat  # market currency per MWh short


class Product(FrozenModel):
    """One balancing product of a market: technical requirements, bid rules, timing, pricing, penalties."""

    product_id: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    name: Text
    name_local: str = ""  # e.g. "一次調整力"
    directions: tuple[Direction, ...]
    symmetric: StrictBool  # one bid covers both directions equally (FCR)
    response_time_s: PositiveFloat
    full_activation_s: PositiveFloat
    sustain_s: PositiveInt  # how long full activation must be sustainable
    mtu_s: PositiveInt  # market time unit
    block_s: PositiveInt  # capacity block; a multiple of mtu_s that tiles the day
    min_bid_kw: PositiveFloat
    increment_kw: PositiveFloat
    max_bid_kw: PositiveFloat | None = None
    divisible: StrictBool  # may the market accept part of a bid
    gate_closure: GateClosure  # capacity bids
    capacity_pricing: Pricing
    energy_bids: StrictBool
    energy_pricing: Pricing | None = Field(default=None, validate_default=True)  # required iff energy_bids
    energy_gate_closure: GateClosure | None = None  # energy bids, where they close apart from capacity bids
    activation: ActivationKind
    activation_step_s: PositiveInt  # 4 for aFRR, 1 for FCR sampling, minutes for schedules
    penalty: Penalty
    assumptions: dict[str, str] = {}  # field path -> why the figure is an assumption
    sources: tuple[str, ...] = ()

    # Set by the Market that holds the product, so blocks() knows where days start.
    _timezone: ZoneInfo | None = PrivateAttr(default=None)

    @field_validator("directions")
    @classmethod
    def _directions_unique(cls, value: tuple[Direction, ...]) -> tuple[Direction, ...]:
        if not value:
            raise ValueError("needs at least one direction: 'up' and/or 'down'")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a direction twice: {[d.value for d in value]}")
        return value

    @field_validator("symmetric")
    @classmethod
    def _symmetric_needs_both(cls, value: bool, info: ValidationInfo) -> bool:
        directions = info.data.get("directions")
        if value and directions is not None and set(directions) != {Direction.UP, Direction.DOWN}:
            raise ValueError("a symmetric product needs directions = ['up', 'down']")
        return value

    @field_validator("full_activation_s")
    @classmethod
    def _full_after_response(cls, value: float, info: ValidationInfo) -> float:
        response = info.data.get("response_time_s")
        if response is not None and value < response:
            raise ValueError(f"must be >= response_time_s ({response:g} s), got {value:g} s")
        return value

    @field_validator("block_s")
    @classmethod
    def _block_tiles_mtu_and_day(cls, value: int, info: ValidationInfo) -> int:
        mtu = info.data.get("mtu_s")
        if mtu is not None and value % mtu:
            raise ValueError(f"must be a multiple of mtu_s ({mtu} s), got {value} s")
        if SECONDS_PER_DAY % value:
            raise ValueError(f"must divide a day (86400 s) so blocks start at local midnight, got {value} s")
        return value

    @field_validator("max_bid_kw")
    @classmethod
    def _max_not_below_min(cls, value: float | None, info: ValidationInfo) -> float | None:
        minimum = info.data.get("min_bid_kw")
        if value is not None and minimum is not None and value < minimum:
            raise ValueError(f"must be >= min_bid_kw ({minimum:g} kW), got {value:g} kW")
        return value

    @field_validator("energy_pricing")
    @classmethod
    def _energy_pricing_iff_energy_bids(cls, value: Pricing | None, info: ValidationInfo) -> Pricing | None:
        energy_bids = info.data.get("energy_bids")
        if energy_bids is True and value is None:
            raise ValueError("required when energy_bids = true ('pay_as_bid' or 'pay_as_cleared')")
        if energy_bids is False and value is not None:
            raise ValueError("must be absent when energy_bids = false")
        return value

    @field_validator("energy_gate_closure")
    @classmethod
    def _energy_gate_needs_energy_bids(cls, value: GateClosure | None, info: ValidationInfo) -> GateClosure | None:
        if value is not None and info.data.get("energy_bids") is False:
            raise ValueError("must be absent when energy_bids = false")
        return value

    @field_validator("assumptions")
    @classmethod
    def _assumptions_name_fields(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_assumptions(cls, value)

    def gate_closure_at(self, block_start: datetime, tz: ZoneInfo | None = None) -> datetime:
        """Capacity gate closure (aware, UTC) for the block starting at ``block_start``.

        ``tz`` defaults to the time zone of the market holding this product.
        """
        return self.gate_closure.at(block_start, self._zone(tz))

    def energy_gate_closure_at(self, mtu_start: datetime, tz: ZoneInfo | None = None) -> datetime:
        """Energy-bid gate closure (aware, UTC) for the MTU starting at ``mtu_start``; the capacity gate
        where the product has no separate energy gate."""
        gate = self.energy_gate_closure or self.gate_closure
        return gate.at(mtu_start, self._zone(tz))

    def blocks(self, start: datetime, end: datetime, tz: ZoneInfo | None = None) -> list[datetime]:
        """Starts (aware, UTC) of the capacity blocks with ``start <= block start < end``.

        Blocks follow the local wall clock from midnight (FCR: 00:00, 04:00, ... local), so on a DST day a
        block is an hour shorter or longer than block_s; its real end is the next block's start.
        """
        zone = self._zone(tz)
        start_utc = _require_aware(start, "start").astimezone(UTC)
        end_utc = _require_aware(end, "end").astimezone(UTC)
        if end_utc <= start_utc:
            return []
        first_day = start_utc.astimezone(zone).date() - timedelta(days=1)
        last_day = end_utc.astimezone(zone).date() + timedelta(days=1)
        starts: set[datetime] = set()
        for day in _days(first_day, last_day):
            midnight = datetime.combine(day, time(0, 0))
            for k in range(SECONDS_PER_DAY // self.block_s):
                wall = midnight + timedelta(seconds=k * self.block_s)
                # Both folds: the repeated hour of an autumn DST change holds two sets of short blocks; a
                # wall time in the spring gap maps onto an existing instant and is de-duplicated.
                for fold in (0, 1):
                    instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
                    if start_utc <= instant < end_utc:
                        starts.add(instant)
        return sorted(starts)

    def _zone(self, tz: ZoneInfo | None) -> ZoneInfo:
        zone = tz or self._timezone
        if zone is None:
            raise ValueError(f"product {self.product_id!r} is not attached to a market: pass tz")
        return zone


class Market(FrozenModel):
    """A balancing market: its currency, time zone, price units and products."""

    market_id: Annotated[str, Field(strict=True, pattern=r"^[a-z0-9-]{1,32}$")]
    name: Text
    operator: Text
    currency: Currency
    timezone: Text  # IANA name; gate closures and block boundaries are local to it
    capacity_price_unit: Text  # as the market publishes it, e.g. "EUR/MW/h"
    capacity_price_to_per_mw_h: PositiveFloat  # published capacity price x this = currency per MW per hour
    energy_price_unit: Text  # as the market publishes it, e.g. "EUR/MWh", "JPY/kWh"
    energy_price_to_per_mwh: PositiveFloat  # published energy price x this = currency per MWh
    products: tuple[Product, ...]
    assumptions: dict[str, str] = {}
    sources: tuple[str, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_timezone(value)

    @field_validator("products")
    @classmethod
    def _unique_products(cls, value: tuple[Product, ...]) -> tuple[Product, ...]:
        if not value:
            raise ValueError("a market needs at least one [[products]] table")
        ids = [p.product_id for p in value]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"product_id used twice: {duplicates}; each product needs its own id")
        return value

    @field_validator("assumptions")
    @classmethod
    def _assumptions_name_fields(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_assumptions(cls, value)

    @model_validator(mode="after")
    def _attach_products(self) -> Market:
        zone = self.tz
        for product in self.products:
            product._timezone = zone
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def product(self, product_id: str) -> Product:
        for product in self.products:
            if product.product_id == product_id:
                return product
        known = ", ".join(p.product_id for p in self.products)
        raise KeyError(f"market {self.market_id!r} has no product {product_id!r} (it has: {known})")

    def capacity_price_per_mw_h(self, published: float) -> float:
        """A capacity price as the market publishes it, in currency per MW per hour."""
        return published * self.capacity_price_to_per_mw_h

    def energy_price_per_mwh(self, published: float) -> float:
        """An energy price as the market publishes it, in currency per MWh."""
        return published * self.energy_price_to_per_mwh


def load_market(path: Path) -> Market:
    """One market file, validated; MarketConfigError names the file and the field path."""
    return validate_file(Market, path, read_toml(path))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise MarketConfigError(path, [("", f"file not found at {path}; check the path")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise MarketConfigError(path, [("", f"not valid TOML ({exc}); fix the syntax")]) from None


def validate_file(model: type[ModelT], path: Path, data: Mapping[str, Any]) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MarketConfigError(path, describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """Pydantic errors as (field path, message with what to do), e.g. ("products[2].min_bid_kw", ...)."""
    problems = []
    for error in exc.errors(include_url=False):
        path = field_path(error["loc"])
        kind = error["type"]
        message = str(error["msg"]).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = f"unknown key; remove it or fix its spelling ({DOCS_HINT})"
        elif kind == "missing":
            message = f"required key is missing; add it ({DOCS_HINT})"
        else:
            got = error.get("input")
            quiet = isinstance(got, dict | list) or kind in {"value_error", "assertion_error"}
            message = f"{message}{'' if quiet else f' (got {got!r})'}; fix the value ({DOCS_HINT})"
        problems.append((path, message))
    return problems


def field_path(loc: Iterable[int | str]) -> str:
    """("products", 2, "min_bid_kw") -> "products[2].min_bid_kw"."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _check_assumptions(model: type[BaseModel], value: dict[str, str]) -> dict[str, str]:
    for key, why in value.items():
        if key in {"assumptions", "sources"} or not _names_field(model, key):
            raise ValueError(
                f"key {key!r} names no field of {model.__name__}; use a field path such as "
                f"'min_bid_kw' or 'penalty.capacity_clawback_factor'"
            )
        if not why.strip():
            raise ValueError(f"key {key!r} needs a reason (why the figure is an assumption)")
    return value


def _names_field(model: type[BaseModel], path: str) -> bool:
    current: type[BaseModel] | None = model
    for segment in path.split("."):
        if current is None or segment not in current.model_fields:
            return False
        current = _nested_model(current.model_fields[segment].annotation)
    return True


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X``, ``X | None`` or ``Annotated[X, ...]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None


def _require_aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value


def _days(first: date, last: date) -> Iterable[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)
