"""The demo portfolio: five microgrids of different sizes (homes, a school, a farm, a factory)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SiteSpec(BaseModel):
    site_id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    kind: str
    pv_kwp: float = Field(gt=0)
    battery_capacity_kwh: float = Field(gt=0)
    battery_max_kw: float = Field(gt=0)
    load_scale: float = Field(gt=0)  # multiplies the real household's load
    soc_pct: float = Field(ge=0, le=100)
    # Fault injection: the hardware delivers only this share of what its registers advertise.
    derate_pct: float = Field(default=100.0, ge=0, le=100)
    latitude: float = 39.74  # Golden, Colorado: where the real PV series was measured
    longitude: float = -105.18
    altitude_m: float = 1730.0
    tilt_deg: float = 45.0
    azimuth_deg: float = 158.0
    timezone: str = "America/Denver"


DEMO_SITES: tuple[SiteSpec, ...] = (
    SiteSpec(
        site_id="home-01", kind="home", pv_kwp=5, battery_capacity_kwh=10, battery_max_kw=5, load_scale=1.0, soc_pct=55
    ),
    SiteSpec(
        site_id="home-02",
        kind="home",
        pv_kwp=8,
        battery_capacity_kwh=13.5,
        battery_max_kw=5,
        load_scale=1.3,
        soc_pct=70,
    ),
    SiteSpec(
        site_id="school-01",
        kind="school",
        pv_kwp=30,
        battery_capacity_kwh=60,
        battery_max_kw=30,
        load_scale=6.0,
        soc_pct=50,
        tilt_deg=30,
        azimuth_deg=180,
    ),
    SiteSpec(
        site_id="farm-01",
        kind="farm",
        pv_kwp=50,
        battery_capacity_kwh=100,
        battery_max_kw=40,
        load_scale=4.0,
        soc_pct=65,
        derate_pct=60.0,  # a hot inverter: dispatch has to notice and move its share
        tilt_deg=25,
        azimuth_deg=170,
    ),
    SiteSpec(
        site_id="factory-01",
        kind="factory",
        pv_kwp=100,
        battery_capacity_kwh=200,
        battery_max_kw=100,
        load_scale=20.0,
        soc_pct=60,
        tilt_deg=10,
        azimuth_deg=180,
    ),
)
