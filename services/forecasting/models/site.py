"""Site metadata for PV forecasting (re-exported by ``forecasting.models.pv``)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PvSite(BaseModel):
    """A fixed-tilt PV array.

    ``azimuth_deg`` is pvlib's convention (degrees east of north, 180 = south).
    ``kwp`` is the DC nameplate (or, for a measured site, the *effective*
    capacity that makes the PVWatts clear-sky model match the measurements).
    ``timezone`` (IANA name) defines local days for day-ahead issue times.
    """

    model_config = ConfigDict(frozen=True)

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    altitude_m: float = 0.0
    tilt_deg: float = Field(ge=0, le=90)
    azimuth_deg: float = Field(ge=0, le=360)
    kwp: float = Field(gt=0)
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_tz(cls, value: str) -> str:
        ZoneInfo(value)  # raises for unknown names
        return value
