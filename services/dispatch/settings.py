from __future__ import annotations

from pydantic import Field

from vpp_common.settings import ServiceSettings


class DispatchSettings(ServiceSettings):
    service_name: str = "dispatch"
    stale_after_s: float = Field(default=15.0, gt=0, le=3600)
    # A site is short when it misses its setpoint by more than this (kW or share of its setpoint) ...
    shortfall_abs_kw: float = Field(default=0.3, ge=0)
    shortfall_rel: float = Field(default=0.10, ge=0, le=1)
    # ... at this many step ends in a row; then its headroom becomes what it delivers.
    shortfall_strikes: int = Field(default=2, ge=1, le=100)
    efficiency: float = Field(default=0.95, gt=0, le=1)
    headroom_interval_minutes: int = Field(default=15, ge=1, le=240)
    keep_activations: int = Field(default=200, ge=1, le=100_000)  # tracking kept for GetActivationTracking
    finalize_after_s: float = Field(default=6.0, gt=0, le=600)  # no new step for this long ends a run
    # A step is measured at its end; its samples arrive with the next step's ack (agents batch), so it is
    # closed once every site has a sample from its last poll cycle (sample_period_s) or at this timeout.
    close_timeout_s: float = Field(default=3.0, gt=0, le=600)
    sample_period_s: float = Field(default=1.0, gt=0, le=60)
