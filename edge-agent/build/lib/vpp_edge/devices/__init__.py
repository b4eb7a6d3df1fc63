"""Device layer: registers mapped to typed values with units, plus the device's own limits."""

from vpp_edge.devices.errors import DeviceError, SunSpecError
from vpp_edge.devices.hybrid import HybridInverter, WriteResult
from vpp_edge.devices.snapshot import DeviceSnapshot

__all__ = ["DeviceError", "DeviceSnapshot", "HybridInverter", "SunSpecError", "WriteResult"]
