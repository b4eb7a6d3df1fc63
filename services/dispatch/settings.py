from __future__ import annotations

from pydantic import Field, model_validator

from dispatch.control import ControlConfig
from vpp_common.settings import MarketCatalogSettings


class DispatchSettings(MarketCatalogSettings):
    service_name: str = "dispatch"
    # A site whose newest sample is older than this is offline (agents batch samples every 10 s at idle).
    stale_after_s: float = Field(default=15.0, gt=0, le=3600)
    # Lease: the active replica renews every lease_renew_s; a standby claims after lease_term_s of silence.
    lease_term_s: float = Field(default=2.0, gt=0.2, le=60)
    lease_renew_s: float = Field(default=0.5, gt=0.05, le=20)
    # Commands stay valid this long (so sites hold their offsets through a takeover) and are re-sent
    # once older than command_refresh_s even when the deadband says nothing changed.
    command_valid_s: float = Field(default=10.0, gt=1, le=600)
    command_refresh_s: float = Field(default=5.0, gt=0.5, le=600)
    # A step executed later than this after the market issued it is counted late.
    late_after_s: float = Field(default=1.0, gt=0, le=60)
    # A step is measured at its end, once every commanded site has sent a sample from its last poll cycle
    # (sample_period_s; agents under dispatch send samples every 2 s and with each ack) or at the timeout.
    close_timeout_s: float = Field(default=3.0, gt=0, le=60)
    sample_period_s: float = Field(default=1.0, gt=0, le=60)
    measure_window_s: float = Field(default=3.0, gt=0, le=60)  # a reading older than this at a step end is not used
    finalize_after_s: float = Field(default=10.0, gt=0, le=600)  # no new step for this long ends a run
    keep_activations: int = Field(default=200, ge=1, le=100_000)  # tracking kept for GetActivationTracking
    # Closed loop (see dispatch.control); closed_loop=false is pro-rata without feedback (benchmark reference).
    closed_loop: bool = True
    efficiency: float = Field(default=0.95, gt=0, le=1)
    headroom_interval_minutes: int = Field(default=15, ge=1, le=240)  # energy a site must hold its offset for
    ramp_pct_per_s: float = Field(default=100.0, gt=0, le=10_000)
    balance_weight: float = Field(default=1.0, ge=0)
    wear_weight: float = Field(default=0.01, ge=0)
    churn_weight: float = Field(default=0.05, ge=0)
    deadband_kw: float = Field(default=0.05, ge=0)
    ack_timeout_s: float = Field(default=2.0, gt=0, le=60)
    settle_s: float = Field(default=2.0, ge=0, le=60)
    shortfall_rel: float = Field(default=0.3, ge=0, le=1)
    shortfall_abs_kw: float = Field(default=0.3, ge=0)
    integral_gain: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> DispatchSettings:
        if self.lease_renew_s * 2 > self.lease_term_s:
            raise ValueError("lease_renew_s must be at most half of lease_term_s (a renewal may be late)")
        if self.command_refresh_s >= self.command_valid_s:
            raise ValueError("command_refresh_s must be below command_valid_s (commands would lapse)")
        if self.balance_weight + self.wear_weight + self.churn_weight <= 0:
            raise ValueError("balance_weight, wear_weight and churn_weight: at least one must be > 0")
        return self

    def control(self) -> ControlConfig:
        return ControlConfig(
            closed_loop=self.closed_loop,
            energy_horizon_h=self.headroom_interval_minutes / 60,
            efficiency=self.efficiency,
            ramp_pct_per_s=self.ramp_pct_per_s,
            balance_weight=self.balance_weight,
            wear_weight=self.wear_weight,
            churn_weight=self.churn_weight,
            deadband_kw=self.deadband_kw,
            ack_timeout_s=self.ack_timeout_s,
            settle_s=self.settle_s,
            shortfall_rel=self.shortfall_rel,
            shortfall_abs_kw=self.shortfall_abs_kw,
            integral_gain=self.integral_gain,
        )
