"""Physics chain for PV: pvlib clear sky -> plane of array -> cell temperature -> PVWatts.

Everything is evaluated at the *middle* of each 15-minute slot (slot start +
7.5 min) so the result approximates the slot's mean power.  Optional weather
(a forecast feed) replaces the clear-sky irradiance and the default air
temperature; accepted columns (any subset):

* ``ghi``, ``dni``, ``dhi`` -- W/m^2; missing DNI/DHI are split from GHI (Erbs)
* ``cloud_cover`` -- percent 0..100, used for GHI when ``ghi`` is absent
  (Kasten-Czeplak: GHI = GHI_clear * (1 - 0.75 * (cc/100)**3.4))
* ``temp_air`` -- deg C, ``wind_speed`` -- m/s
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pvlib

from forecasting.models.site import PvSite

SLOT = pd.Timedelta(minutes=15)
HALF_SLOT = pd.Timedelta(minutes=7.5)
GAMMA_PDC_PER_C = -0.0037  # crystalline-Si power temperature coefficient
SYSTEM_LOSSES = 0.14  # PVWatts default losses (soiling, wiring, mismatch...)
DEFAULT_TEMP_AIR_C = 15.0
DEFAULT_WIND_M_S = 1.0
DAYLIGHT_ELEVATION_DEG = 5.0  # slots scored / modelled as daylight


def _align_weather(weather: pd.DataFrame, times: pd.DatetimeIndex) -> pd.DataFrame:
    """Interpolate a weather frame (any resolution, tz-aware) onto ``times``."""
    w = weather.copy()
    if w.index.tz is None:
        raise ValueError("weather index must be tz-aware")
    w.index = w.index.tz_convert("UTC")
    w = w[~w.index.duplicated()].sort_index().astype(float)
    union = w.index.union(times)
    return w.reindex(union).interpolate("time", limit_area="inside").reindex(times)


def _ac_kw(
    site: PvSite,
    solpos: pd.DataFrame,
    dni: pd.Series,
    ghi: pd.Series,
    dhi: pd.Series,
    dni_extra: pd.Series,
    temp_air_c: pd.Series | float,
    wind_m_s: pd.Series | float,
) -> tuple[pd.Series, pd.Series]:
    """AC power (kW) and POA global irradiance (W/m^2) of the array."""
    poa = pvlib.irradiance.get_total_irradiance(
        site.tilt_deg,
        site.azimuth_deg,
        solpos["apparent_zenith"],
        solpos["azimuth"],
        dni,
        ghi,
        dhi,
        dni_extra=dni_extra,
        model="haydavies",
    )
    aoi = pvlib.irradiance.aoi(
        site.tilt_deg, site.azimuth_deg, solpos["apparent_zenith"], solpos["azimuth"]
    )
    iam = pvlib.iam.physical(aoi)
    effective = (poa["poa_direct"] * iam + poa["poa_diffuse"]).clip(lower=0).fillna(0)
    poa_global = poa["poa_global"].clip(lower=0).fillna(0)
    temp_cell = pvlib.temperature.faiman(poa_global, temp_air_c, wind_m_s)
    pdc_kw = pvlib.pvsystem.pvwatts_dc(effective, temp_cell, site.kwp, GAMMA_PDC_PER_C)
    pdc_kw = pdc_kw * (1 - SYSTEM_LOSSES)
    # inverter sized 20% above the array so the model itself never clips
    pac_kw = pvlib.inverter.pvwatts(pdc_kw, site.kwp * 1.2)
    return pac_kw.clip(lower=0).fillna(0), poa_global


def pv_physics(
    site: PvSite, slot_starts: pd.DatetimeIndex, weather: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per-slot physics: solar geometry, clear-sky AC kW and, with weather, weather AC kW.

    Columns: ``elevation_deg``, ``azimuth_deg``, ``cos_aoi``, ``poa_clear_w_m2``,
    ``ac_clear_kw``, ``daylight`` (elevation > 5 deg) and, when ``weather`` is
    given, ``ac_weather_kw`` and ``temp_air_c``.  Index = ``slot_starts``.
    """
    if slot_starts.tz is None:
        raise ValueError("slot_starts must be tz-aware")
    times = slot_starts.tz_convert("UTC") + HALF_SLOT
    loc = pvlib.location.Location(site.latitude, site.longitude, altitude=site.altitude_m)
    solpos = loc.get_solarposition(times)
    cs = loc.get_clearsky(times, model="ineichen", solar_position=solpos)
    dni_extra = pvlib.irradiance.get_extra_radiation(times)
    temp_air: pd.Series | float = DEFAULT_TEMP_AIR_C
    wind: pd.Series | float = DEFAULT_WIND_M_S
    out = pd.DataFrame(index=times)
    out["elevation_deg"] = 90.0 - solpos["apparent_zenith"]
    out["azimuth_deg"] = solpos["azimuth"]
    aoi = pvlib.irradiance.aoi(
        site.tilt_deg, site.azimuth_deg, solpos["apparent_zenith"], solpos["azimuth"]
    )
    out["cos_aoi"] = np.cos(np.radians(aoi)).clip(lower=0)
    if weather is not None and len(weather.columns) > 0:
        w = _align_weather(weather, times)
        if "temp_air" in w:
            temp_air = w["temp_air"].fillna(DEFAULT_TEMP_AIR_C)
        if "wind_speed" in w:
            wind = w["wind_speed"].fillna(DEFAULT_WIND_M_S)
    ac_clear, poa_clear = _ac_kw(
        site, solpos, cs["dni"], cs["ghi"], cs["dhi"], dni_extra, temp_air, wind
    )
    out["poa_clear_w_m2"] = poa_clear
    out["ac_clear_kw"] = ac_clear
    out["daylight"] = out["elevation_deg"] > DAYLIGHT_ELEVATION_DEG
    if weather is not None and len(weather.columns) > 0:
        if "ghi" in w:
            ghi = w["ghi"].clip(lower=0)
        elif "cloud_cover" in w:
            cc = (w["cloud_cover"].clip(0, 100) / 100.0).fillna(0)
            ghi = cs["ghi"] * (1 - 0.75 * cc**3.4)
        else:
            ghi = cs["ghi"]
        ghi = ghi.fillna(cs["ghi"])  # gaps in the feed: fall back to clear sky
        if "dni" in w and "dhi" in w:
            dni = w["dni"].fillna(cs["dni"]).clip(lower=0)
            dhi = w["dhi"].fillna(cs["dhi"]).clip(lower=0)
        else:
            split = pvlib.irradiance.erbs(ghi, solpos["zenith"], times)
            dni, dhi = split["dni"].fillna(0), split["dhi"].fillna(0)
        ac_w, _ = _ac_kw(site, solpos, dni, ghi, dhi, dni_extra, temp_air, wind)
        out["ac_weather_kw"] = ac_w
        out["temp_air_c"] = temp_air if isinstance(temp_air, pd.Series) else DEFAULT_TEMP_AIR_C
    out.index = slot_starts
    return out
