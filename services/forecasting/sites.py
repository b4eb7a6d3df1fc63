"""The sites file: which sites the service forecasts, with the PV metadata the physical model needs.

Format (JSON)::

    {"sites": [
      {"site_id": "site-001",
       "pv": {"latitude": 52.52, "longitude": 13.40, "altitude_m": 34, "tilt_deg": 30,
              "azimuth_deg": 180, "kwp": 8.0, "timezone": "Europe/Berlin"},
       "load_scale": 1.0}
    ]}

``azimuth_deg`` is the compass bearing the modules face (180 = south). ``load_scale`` multiplies the
reference household load used by the seed backfill (1.0 = one UCI household, ~1.1 kW mean).
Unknown keys are refused so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vpp_common.validation import known_timezone


class SitesFileError(ValueError):
    """The sites file is missing, not JSON, or has a bad field (named in the message)."""


class PvMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    latitude: float = Field(ge=-90.0, le=90.0)
    longitude: float = Field(ge=-180.0, le=180.0)
    altitude_m: float = Field(default=0.0, ge=-500.0, le=9000.0)
    tilt_deg: float = Field(ge=0.0, le=90.0)
    azimuth_deg: float = Field(ge=0.0, le=360.0)
    kwp: float = Field(gt=0.0, le=100_000.0)
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_timezone(value)


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    site_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    pv: PvMeta
    load_scale: float = Field(default=1.0, gt=0.0, le=10_000.0)


class SitesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sites: list[SiteConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> SitesFile:
        seen: set[str] = set()
        for site in self.sites:
            if site.site_id in seen:
                raise ValueError(f"sites: duplicate site_id {site.site_id!r}")
            seen.add(site.site_id)
        return self


def load_sites(path: Path | str) -> list[SiteConfig]:
    """Read and validate the sites file; errors name the file and the bad field (e.g. ``sites.0.pv.kwp``)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SitesFileError(f"{path}: sites file not found; set VPP_SITES_FILE") from exc
    except json.JSONDecodeError as exc:
        raise SitesFileError(f"{path}: not valid JSON: {exc}") from exc
    try:
        return list(SitesFile.model_validate(raw).sites)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "sites"
        raise SitesFileError(f"{path}: {field}: {err['msg']}") from exc
