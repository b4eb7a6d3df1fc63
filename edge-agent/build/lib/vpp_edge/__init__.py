"""VPP edge agent: reads a SunSpec battery inverter, obeys platform dispatch within a safety
envelope, falls back to self-consumption when the link is down, and streams telemetry upstream."""

__version__ = "0.1.0"
