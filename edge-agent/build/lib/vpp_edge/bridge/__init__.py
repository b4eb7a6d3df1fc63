"""Bridge layer: owns the bus connection; devices talk to the device only through it."""

from vpp_edge.bridge.modbus import ModbusBridge, ModbusError

__all__ = ["ModbusBridge", "ModbusError"]
