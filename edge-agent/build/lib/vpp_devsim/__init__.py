"""Modbus TCP simulator of a SunSpec hybrid inverter (PV + battery) behind one grid meter.

It lets the edge agent, the demo and the tests talk to a real Modbus server without hardware.
"""

from vpp_devsim.physics import BatteryParams, SitePhysics
from vpp_devsim.profile import Profile
from vpp_devsim.server import DeviceSimulator, SimulatorConfig

__all__ = ["BatteryParams", "DeviceSimulator", "Profile", "SimulatorConfig", "SitePhysics"]
