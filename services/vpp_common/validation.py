"""Small checks shared by the services' pydantic models and stores, so each rule is written once."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def known_timezone(value: str) -> str:
    """``value`` if it names an IANA time zone; ValueError saying what to use otherwise."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {value!r}; use a name such as 'Europe/Berlin'") from None
    return value


def normalise_store_url(value: str) -> str:
    """A SQLAlchemy URL from a full URL, a plain SQLite file path or ``:memory:``."""
    if value in (":memory:", "sqlite://"):
        return "sqlite://"
    if "://" not in value:
        return f"sqlite:///{value}"
    return value
