"""Simulator physics and register image: SoC integration, the device's own limits, profiles,
and a register map that matches pysunspec2's model definitions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sunspec2

from vpp_devsim.physics import BatteryParams, SitePhysics
from vpp_devsim.profile import Profile, ProfilePoint
from vpp_devsim.registers import END_MODEL_ID, SUNS_MARKER, RegisterImage, model_layout
from vpp_devsim.server import MODEL_IDS, DeviceSimulator, SimulatorConfig

PARAMS = BatteryParams(capacity_kwh=10.0, max_charge_kw=5.0, max_discharge_kw=4.0, soc_min_pct=10.0,
                       soc_max_pct=90.0, round_trip_efficiency=0.81, tau_s=0.0)


def run_for(physics: SitePhysics, seconds: float, dt_s: float = 1.0, pv_kw: float = 0.0, load_kw: float = 0.0) -> None:
    for _ in range(int(seconds / dt_s)):
        physics.step(dt_s, pv_kw, load_kw)


def test_soc_integrates_discharge_with_efficiency() -> None:
    physics = SitePhysics(PARAMS, soc_pct=50.0)
    physics.command_kw = 2.0
    run_for(physics, 1800)  # 2 kW for 0.5 h = 1 kWh delivered, 1/0.9 kWh taken from the cells
    assert physics.soc_pct == pytest.approx(50.0 - 1.0 / 0.9 * 10.0, abs=0.01)


def test_soc_integrates_charge_with_efficiency() -> None:
    physics = SitePhysics(PARAMS, soc_pct=50.0)
    physics.command_kw = -2.0
    run_for(physics, 1800)
    assert physics.soc_pct == pytest.approx(50.0 + 1.0 * 0.9 * 10.0, abs=0.01)


def test_power_limits_honoured() -> None:
    physics = SitePhysics(PARAMS, soc_pct=50.0)
    physics.command_kw = 99.0
    run_for(physics, 10)
    assert physics.battery_kw == pytest.approx(4.0)
    physics.command_kw = -99.0
    run_for(physics, 10)
    assert physics.battery_kw == pytest.approx(-5.0)


def test_derated_hardware_delivers_less_than_it_advertises() -> None:
    site = SitePhysics(BatteryParams(max_discharge_kw=10.0, max_charge_kw=10.0, tau_s=0.0, derate_pct=60.0), 50.0)
    site.command_kw = 8.0
    site.step(1.0, pv_kw=0.0, load_kw=0.0)
    assert site.battery_kw == pytest.approx(6.0)
    site.command_kw = -9.0
    site.step(1.0, pv_kw=0.0, load_kw=0.0)
    assert site.battery_kw == pytest.approx(-6.0)
    with pytest.raises(ValueError):
        BatteryParams(derate_pct=120.0)


def test_battery_stops_at_soc_floor_and_ceiling() -> None:
    physics = SitePhysics(PARAMS, soc_pct=12.0)
    physics.command_kw = 4.0
    run_for(physics, 3600)
    assert physics.soc_pct == pytest.approx(10.0)
    assert physics.battery_kw == 0.0
    physics.command_kw = -5.0
    run_for(physics, 4 * 3600)
    assert physics.soc_pct == pytest.approx(90.0)
    assert physics.battery_kw == 0.0


def test_first_order_lag_and_grid_balance() -> None:
    params = BatteryParams(tau_s=1.0)
    physics = SitePhysics(params, soc_pct=50.0)
    physics.command_kw = 2.0
    physics.step(1.0, pv_kw=3.0, load_kw=1.0)
    assert physics.battery_kw == pytest.approx(2.0 * (1 - math.exp(-1.0)))
    assert physics.grid_kw == pytest.approx(1.0 - 3.0 - physics.battery_kw)


def test_profile_interpolates_and_loops(tmp_path: Path) -> None:
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("offset_s,pv_kw,load_kw\n0,0,1\n10,2,3\n20,4,1\n")
    profile = Profile.from_csv(csv_path, time_scale=1.0)
    assert profile.period_s == 30.0
    assert profile.at(5.0) == pytest.approx((1.0, 2.0))
    assert profile.at(25.0) == pytest.approx((2.0, 1.0))  # wraps back toward the first point
    assert profile.at(35.0) == pytest.approx(profile.at(5.0))
    fast = Profile.from_csv(csv_path, time_scale=2.0)
    assert fast.at(2.5) == pytest.approx(profile.at(5.0))


def test_default_profile_is_deterministic() -> None:
    a = Profile.default(6.0, start_offset_s=12 * 3600, seed=3, noise_pct=1.0)
    b = Profile.default(6.0, start_offset_s=12 * 3600, seed=3, noise_pct=1.0)
    assert [a.at(t) for t in range(5)] == [b.at(t) for t in range(5)]
    pv_noon, _ = Profile.default(6.0, start_offset_s=12 * 3600).at(0)
    pv_night, _ = Profile.default(6.0, start_offset_s=0).at(0)
    assert pv_noon == pytest.approx(6.0, rel=0.01)
    assert pv_night == 0.0
    with pytest.raises(ValueError):
        Profile([ProfilePoint(0, 0, 0)])


def test_register_image_matches_pysunspec2_definitions() -> None:
    image = RegisterImage(MODEL_IDS)
    assert tuple(image.regs[:2]) == SUNS_MARKER
    index = 2
    models_dir = Path(sunspec2.__file__).parent / "models" / "json"
    for model_id in MODEL_IDS:
        model_def = json.loads((models_dir / f"model_{model_id}.json").read_text())
        length = sum(p["size"] for p in model_def["group"]["points"]) - 2
        assert image.regs[index] == model_id
        assert image.regs[index + 1] == length == model_layout(model_id).length
        index += 2 + length
    assert image.regs[index : index + 2] == [END_MODEL_ID, 0]
    assert len(image.regs) == index + 2


def test_simulator_encodes_physics_into_registers() -> None:
    sim = DeviceSimulator(SimulatorConfig(soc_pct=42.0, pv_kwp=6.0))
    assert sim.image.get_point(802, "SoC") == 420
    assert sim.image.get_point(802, "SoC_SF") == -1
    sim.physics.command_kw = 3.0
    sim.physics.step(10.0, pv_kw=2.0, load_kw=1.0)
    sim._refresh_registers()
    battery_w = sim.image.get_point(802, "W")
    grid_w = sim.image.get_point(203, "W")
    assert isinstance(battery_w, int) and isinstance(grid_w, int)
    assert battery_w * 10**sim.power_sf == pytest.approx(3000, abs=10)
    assert grid_w * 10**sim.power_sf == pytest.approx(1000 - 2000 - 3000, abs=10)
