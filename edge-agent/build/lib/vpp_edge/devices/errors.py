"""Device-layer error types: one for "the device is unavailable", one for "not the SunSpec we need"."""


class DeviceError(Exception):
    """The device could not be read or written this cycle; it is unavailable."""


class SunSpecError(DeviceError):
    """The device does not look like the SunSpec device we expect."""
