"""Closed-loop control of one activation, step by step. Pure: the service feeds it site readings, acks
and the market's setpoints, and publishes what it returns; tests drive it the same way.

Every quantity is an *offset* from the site's own baseline (what its local control would set, reported
by the agent every cycle), so a dispatcher that takes over mid-activation starts from the offsets in
force and never from a power that already contains them. Delivery is measured at the meter:
``baseline_grid_kw - grid_power_kw`` per site.

Per step (``plan``):
1. sites that did not ack their last command within ``ack_timeout_s``, nacked it, went offline or were
   found short at the last step end are dropped; what a dropped site still delivers (a stuck output) is
   measured and counted as a fixed part of the delivery, so the rest is moved to sites with headroom;
2. each remaining site's offset range: its battery range now (power- and energy-limited over
   ``energy_horizon_h``) minus its baseline minus what other activations already hold at the site
   (so activations never command more than a site can do in sum), within the ramp reachable in a step;
3. the exact allocator (``dispatch.allocation``) places target + integral - fixed in *delivered* space
   (each site's offset times its estimated gain), balancing time-to-empty, wear and churn.
At each step end (``close``): per-site delivery against its command (gain estimate, shortfall drop), and
the sites still in: what they missed of their commands is integrated into the next target (a dropped
site's miss is not: its share moves instead, so the integral does not wind up and overshoot).
Open loop (``closed_loop=False``, the benchmark's reference): pro-rata over the sites online at the
first step, no drops, no gains, no integral.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from vpp.v1 import dispatch_pb2, telemetry_pb2

from dispatch.allocation import MIN_RANGE_KW, AllocationProblem, allocate, preferred_offsets
from vpp_common.flexibility import allocate_proportional, battery_flexibility
from vpp_common.sites import battery_state

_EPS_KW = 1e-9
NO_ANSWER = "no answer"


@dataclass(frozen=True)
class ControlConfig:
    closed_loop: bool = True
    energy_horizon_h: float = 0.25  # a site's energy must carry its offset this long (the product's duration)
    efficiency: float = 0.95
    ramp_pct_per_s: float = 100.0  # per-site change of offset per second, % of its power rating
    balance_weight: float = 1.0
    wear_weight: float = 0.01
    churn_weight: float = 0.05
    deadband_kw: float = 0.05  # no new command for a smaller change
    ack_timeout_s: float = 2.0  # a commanded site that has not acked by then is dropped ...
    silent_after_s: float = 6.0  # a site under an offset without a sample for this long has stopped answering
    mass_silence_share: float = 0.2  # ... unless more than this share of the waiting sites are late at once
    settle_s: float = 2.0  # a site is judged on readings at least this long after its command
    judge_min_kw: float = 0.3  # smaller commands are not judged (noise)
    shortfall_rel: float = 0.3  # delivering less than (1 - this) of the command at a step end drops the site
    shortfall_abs_kw: float = 0.3
    gain_smoothing: float = 0.5
    gain_min: float = 0.7
    gain_max: float = 1.3
    integral_gain: float = 0.2
    integral_cap_rel: float = 0.1  # of the largest setpoint seen


@dataclass(frozen=True)
class SiteNow:
    """One site as its newest reading shows it (offset range in absolute battery power)."""

    site_id: str
    fresh: bool
    baseline_battery_kw: float
    battery_min_kw: float  # most charging it can hold over the horizon (< 0)
    battery_max_kw: float  # most discharging it can hold over the horizon
    energy_up_kwh: float
    energy_down_kwh: float
    rating_kw: float
    delivered_kw: float  # at the meter: baseline_grid_kw - grid_power_kw
    measured_at_s: float


def meter_delivery_kw(t: telemetry_pb2.Telemetry) -> float:
    """What the grid sees the site deliver: its counterfactual meter reading minus the real one."""
    return t.baseline_grid_kw - t.grid_power_kw


def site_now(t: telemetry_pb2.Telemetry, measured_at_s: float, fresh: bool, cfg: ControlConfig) -> SiteNow:
    """What control needs from one reading: energy-limited battery range (the flexibility maths
    aggregation offers with), baseline, meter delivery."""
    usable = fresh and t.available and t.battery_capacity_kwh > 0
    flex = battery_flexibility(battery_state(t, usable), cfg.energy_horizon_h, cfg.efficiency)
    return SiteNow(
        site_id=t.site_id,
        fresh=usable,
        baseline_battery_kw=t.baseline_battery_kw,
        battery_min_kw=-flex.max_down_abs_kw,
        battery_max_kw=flex.max_up_abs_kw,
        energy_up_kwh=flex.energy_up_kwh,
        energy_down_kwh=flex.energy_down_kwh,
        rating_kw=max(t.max_charge_kw, t.max_discharge_kw, 0.0),
        delivered_kw=meter_delivery_kw(t),
        measured_at_s=measured_at_s,
    )


@dataclass
class SiteRun:
    offset_kw: float = 0.0  # this activation's offset in force at the site
    gain: float = 1.0  # estimated delivered / commanded
    lag_s: float = 0.0  # estimated first-order response time constant (0: not yet seen)
    dropped: str = ""  # why the site was taken out ("" while it is in)
    commanded_at_s: float = 0.0  # when its current command was sent
    moved_at_s: float = 0.0  # when the last command that moved it by more than a trim was sent
    awaiting_ack: bool = False
    delivered_kw: float = 0.0  # this activation's part of its meter delivery at the last step end
    share_at_drop: float = 0.0  # this activation's part of the site's total offset when it was dropped


@dataclass
class StepRecord:
    step: int
    target_kw: float
    issued_at_s: float
    offsets_kw: dict[str, float]  # this activation's offset per site during the step
    totals_kw: dict[str, float]  # every activation's offsets per site during the step
    unallocated_kw: float
    epoch: int
    late: bool
    commanded_at_s: dict[str, float] = field(default_factory=dict)  # when each site's command in force was sent
    closed: bool = False


@dataclass
class Decision:
    offsets_kw: dict[str, float]  # new offset of this activation per site (every site of the run)
    changed: set[str]  # sites whose total offset needs a new command
    unallocated_kw: float
    dropped: list[tuple[str, str]]
    late_acks: int = 0  # sites past the ack timeout not dropped because too many were late at once


@dataclass
class Run:
    """One activation as dispatch runs it."""

    activation_id: str
    product: str = ""
    portfolio_id: str = ""
    award_id: str = ""  # the award it draws on ("" : an unawarded test activation)
    sites: dict[str, SiteRun] = field(default_factory=dict)
    frozen: set[str] | None = None  # open loop: the sites online at the first step
    step: int = 0
    setpoint_kw: float = 0.0
    integral_kw: float = 0.0
    max_abs_setpoint_kw: float = 0.0
    step_period_s: float = 4.0
    history: dict[int, StepRecord] = field(default_factory=dict)
    finished: bool = False

    def site(self, site_id: str) -> SiteRun:
        run = self.sites.get(site_id)
        if run is None:
            run = self.sites[site_id] = SiteRun()
        return run

    def dropped_count(self) -> int:
        return sum(1 for s in self.sites.values() if s.dropped)


def drop(site: SiteRun, reason: str, total_kw: float) -> None:
    if site.dropped:
        return
    site.share_at_drop = site.offset_kw / total_kw if abs(total_kw) > _EPS_KW else 0.0
    site.dropped = reason  # its offset goes to 0 with the next plan (and the site is told so)
    site.awaiting_ack = False


def on_ack(run: Run, site_id: str, status: int, reason: str, total_kw: float, cfg: ControlConfig) -> None:
    """An ack of a command that carried this activation's share."""
    site = run.sites.get(site_id)
    if site is None:
        return
    site.awaiting_ack = False
    if cfg.closed_loop and status in (dispatch_pb2.ACK_STATUS_REJECTED, dispatch_pb2.ACK_STATUS_EXPIRED):
        drop(site, f"nack: {dispatch_pb2.AckStatus.Name(status)} {reason}".strip(), total_kw)
    elif site.dropped.startswith(NO_ANSWER) and status in (
        dispatch_pb2.ACK_STATUS_APPLIED,
        dispatch_pb2.ACK_STATUS_CLAMPED,
    ):
        site.dropped = ""  # it answers again (late, or after a reconnect): back in from the next step


def plan(
    run: Run,
    fleet: list[SiteNow],
    others_kw: dict[str, float],
    target_kw: float,
    now_s: float,
    step_s: float,
    cfg: ControlConfig,
) -> Decision:
    """This step's offsets for ``run``; ``others_kw``: offsets other activations hold per site."""
    dropped: list[tuple[str, str]] = []
    late_acks = 0
    if run.frozen is None and not cfg.closed_loop:
        run.frozen = {s.site_id for s in fleet if s.fresh}
    if cfg.closed_loop:
        # Under an offset an agent sends samples every 2 s: one quiet for silent_after_s has stopped
        # answering, even when no new command (deadband) is waiting for its ack.
        fresh = {s.site_id for s in fleet if s.fresh and now_s - s.measured_at_s <= cfg.silent_after_s}
        silent: list[str] = []
        waiting = 0
        for site_id, site in run.sites.items():
            if site.dropped:
                continue
            total = site.offset_kw + others_kw.get(site_id, 0.0)
            if site_id not in fresh and abs(site.offset_kw) > _EPS_KW:
                drop(site, f"{NO_ANSWER}: no telemetry for {cfg.silent_after_s:g} s", total)
                dropped.append((site_id, site.dropped))
            elif site.awaiting_ack:
                waiting += 1
                if now_s - site.commanded_at_s > cfg.ack_timeout_s:
                    silent.append(site_id)
        # Many sites late at once is the platform's problem (a stalled broker, gateway or this process),
        # not theirs: dropping them all would throw the fleet away for one hiccup.
        if len(silent) <= max(3, cfg.mass_silence_share * waiting):
            for site_id in silent:
                site = run.sites[site_id]
                drop(
                    site,
                    f"{NO_ANSWER}: no ack within {cfg.ack_timeout_s:g} s",
                    site.offset_kw + others_kw.get(site_id, 0.0),
                )
                dropped.append((site_id, site.dropped))
        else:
            late_acks = len(silent)
    run.max_abs_setpoint_kw = max(run.max_abs_setpoint_kw, abs(target_kw))

    n = len(fleet)
    ids = [s.site_id for s in fleet]
    eligible = np.zeros(n, dtype=bool)
    lo = np.zeros(n)
    hi = np.zeros(n)
    prev = np.zeros(n)
    gain = np.ones(n)
    e_up = np.zeros(n)
    e_down = np.zeros(n)
    fixed_kw = 0.0
    for i, s in enumerate(fleet):
        known = run.sites.get(s.site_id)
        if known is not None and known.dropped:
            if s.fresh and now_s - s.measured_at_s <= cfg.silent_after_s:
                # a stuck or partial output still delivers (it still reports): count it, place the rest
                fixed_kw += known.share_at_drop * s.delivered_kw
            continue
        if not s.fresh or (run.frozen is not None and s.site_id not in run.frozen):
            continue
        other = others_kw.get(s.site_id, 0.0)
        own_prev = known.offset_kw if known is not None else 0.0
        range_lo = s.battery_min_kw - s.baseline_battery_kw - other
        range_hi = s.battery_max_kw - s.baseline_battery_kw - other
        ramp_kw = cfg.ramp_pct_per_s / 100.0 * s.rating_kw * step_s
        lo_i, hi_i = max(range_lo, own_prev - ramp_kw), min(range_hi, own_prev + ramp_kw)
        if range_lo > range_hi:  # other activations already hold more than the site can do: no room
            lo_i = hi_i = min(max(own_prev, range_hi), range_lo)
        elif lo_i > hi_i:  # the site's range moved beyond a ramp (baseline, SoC): the range wins
            lo_i = hi_i = min(max(own_prev, range_lo), range_hi)
        eligible[i] = True
        lo[i], hi[i], prev[i] = lo_i, hi_i, own_prev
        gain[i] = known.gain if (known is not None and cfg.closed_loop) else 1.0
        e_up[i], e_down[i] = s.energy_up_kwh, s.energy_down_kwh

    idx = np.flatnonzero(eligible)
    offsets = np.zeros(n)
    if cfg.closed_loop:
        want_kw = target_kw + run.integral_kw - fixed_kw
        g = gain[idx]
        # Weights per kW of each site's range, so a 5 kW home and a 500 kW factory are treated alike.
        per_range = 1.0 / np.maximum(hi[idx] - lo[idx], MIN_RANGE_KW)
        problem = AllocationProblem(
            target_kw=want_kw,
            lo_kw=lo[idx] * g,
            hi_kw=hi[idx] * g,
            preferred_kw=preferred_offsets(want_kw, e_up[idx], e_down[idx]),
            previous_kw=prev[idx] * g,
            balance_weight=cfg.balance_weight * per_range,
            wear_weight=cfg.wear_weight * per_range,
            churn_weight=cfg.churn_weight * per_range,
            deadband_kw=cfg.deadband_kw,
        )
        result = allocate(problem)
        offsets[idx] = result.offsets_kw / g
        unallocated_kw = result.shortfall_kw
    else:
        caps = hi[idx] if target_kw >= 0 else -lo[idx]
        pro_rata = allocate_proportional(target_kw, dict(enumerate(caps.tolist())))
        offsets[idx] = [pro_rata.per_site_kw[j] for j in range(len(idx))]
        unallocated_kw = pro_rata.unallocated_kw

    out: dict[str, float] = {}
    changed: set[str] = set()
    for i, site_id in enumerate(ids):
        new = float(offsets[i])
        current = run.sites.get(site_id)
        old = current.offset_kw if current is not None else 0.0
        if current is None and abs(new) <= _EPS_KW:
            continue
        if abs(new - old) > _EPS_KW:
            changed.add(site_id)
        run.site(site_id).offset_kw = new
        out[site_id] = new
    for site_id, site in run.sites.items():  # dropped or gone from the fleet: offset 0
        if site_id not in out:
            if abs(site.offset_kw) > _EPS_KW:
                changed.add(site_id)
            site.offset_kw = 0.0
            out[site_id] = 0.0
    return Decision(out, changed, unallocated_kw, dropped, late_acks)


def lag_estimate(
    samples: list[tuple[float, float]], commanded_at_s: float, before_kw: float, after_kw: float
) -> float | None:
    """First-order time constant from the first sample after a command changed a site's total offset
    from ``before_kw`` to ``after_kw``: the fraction f of the change delivered after dt gives
    tau = -dt / ln(1 - f). ``samples``: (measured_at_s, delivered_kw) in time order. None when the
    change is too small to read or no sample falls inside the first 3 s."""
    change = after_kw - before_kw
    if abs(change) < 1.0:
        return None
    for at_s, delivered in samples:
        dt = at_s - commanded_at_s
        if dt < 0.2:
            continue
        if dt > 3.0:
            return None
        fraction = (delivered - before_kw) / change
        if fraction >= 0.98:
            return min(dt / 4.0, 0.25)  # all there at the first look: fast
        if fraction <= 0.02:
            return None  # not moving at all is not a lag: the shortfall judgement deals with it
        return float(min(3.0, -dt / math.log(1.0 - fraction)))
    return None


def close(
    run: Run,
    record: StepRecord,
    readings: dict[str, SiteNow],
    end_s: float,
    cfg: ControlConfig,
    responses: dict[str, float] | None = None,
    previous: StepRecord | None = None,
    starts: dict[str, float] | None = None,
) -> float:
    """Measure ``record``'s step at its end from each site's reading at or before ``end_s``; judge the
    sites and update gains, lag estimates (``responses``: site -> time constant seen in this step) and
    the integral (closed loop). Returns the delivered kW of this activation.

    A site is judged against what a first-order response with its estimated lag has reached by the
    reading, from where it stood when the command left (``starts``: its delivery then; else its total
    in ``previous``, the step before) to its total now: a slow site in a ramp is neither dropped nor
    de-rated for its lag, which would make the next steps overshoot."""
    for site_id, lag_s in (responses or {}).items():
        site = run.sites.get(site_id)
        if site is not None:
            site.lag_s = lag_s if site.lag_s <= 0 else site.lag_s + cfg.gain_smoothing * (lag_s - site.lag_s)
    delivered = 0.0
    residual_kw = 0.0  # expected minus delivered by the sites still in: the error the integral may chase
    for site_id, site in run.sites.items():
        reading = readings.get(site_id)
        own = record.offsets_kw.get(site_id, 0.0)
        total = record.totals_kw.get(site_id, own)
        if reading is None or not reading.fresh:
            continue
        if abs(total) > _EPS_KW:
            part = reading.delivered_kw * own / total
        elif site.dropped:
            part = reading.delivered_kw * site.share_at_drop
        else:
            part = 0.0
        site.delivered_kw = part
        delivered += part
        if not cfg.closed_loop or site.dropped or abs(total) <= _EPS_KW:
            continue
        commanded_at_s = record.commanded_at_s.get(site_id, site.commanded_at_s)
        elapsed_s = reading.measured_at_s - commanded_at_s
        judge_kw = max(cfg.judge_min_kw, 0.1 * reading.rating_kw)
        # The integral re-trims a site's command nearly every step; a trim does not restart its response,
        # so the time it has had to settle counts from the last command that really moved it. Counting
        # from each trim instead left a site re-trimmed every 4 s and read every 2 s unjudged for whole
        # phases whenever its samples fell early in the step (seen under CPU load: a capped site never dropped).
        previous_total = previous.totals_kw.get(site_id, 0.0) if previous is not None else 0.0
        if site.moved_at_s <= 0.0 or abs(total - previous_total) > max(judge_kw, 0.2 * abs(total)):
            site.moved_at_s = commanded_at_s
        settled_s = reading.measured_at_s - min(site.moved_at_s, commanded_at_s)
        expected = total
        if commanded_at_s >= record.issued_at_s - 1e-6 and site.lag_s > 0 and previous is not None:
            before = (starts or {}).get(site_id, previous_total)
            expected = total - (total - before) * math.exp(-max(0.0, elapsed_s) / site.lag_s)
        residual_kw += site.gain * expected * own / total - part
        if abs(expected) < judge_kw or abs(total) < judge_kw:
            continue
        # Judged within its step whatever the lag estimate says (a step is 4 s): the expected value
        # above already allows for the lag.
        if settled_s < min(max(cfg.settle_s, 2.0 * site.lag_s), 3.5) or reading.measured_at_s > end_s:
            continue  # not settled enough to judge: judged at a later step end
        ratio = reading.delivered_kw / expected
        miss_kw = abs(expected - reading.delivered_kw)
        if ratio < 1.0 - cfg.shortfall_rel and miss_kw > cfg.shortfall_abs_kw:
            drop(site, f"short: delivered {reading.delivered_kw:.2f} of {total:.2f} kW", total)
            residual_kw -= site.gain * expected * own / total - part  # explained: its share moves instead
            continue
        # A small command says little about the gain (noise, the baseline's own moves): weigh by size.
        weight = cfg.gain_smoothing * min(1.0, abs(expected) / max(0.25 * reading.rating_kw, judge_kw))
        observed = min(max(ratio, cfg.gain_min), cfg.gain_max)
        site.gain += weight * (observed - site.gain)
    record.closed = True
    if cfg.closed_loop:
        # Only what the sites still in fell short of (or beyond) their expected delivery is integrated: a
        # dropped site's miss is handled by moving its share, and the unallocated part has nowhere to go.
        cap = cfg.integral_cap_rel * run.max_abs_setpoint_kw
        run.integral_kw = min(cap, max(-cap, run.integral_kw + cfg.integral_gain * residual_kw))
    return delivered


def totals_by_site(runs: Iterable[Run], exclude: str = "") -> dict[str, float]:
    """Offsets every (other) running activation holds per site."""
    out: dict[str, float] = {}
    for run in runs:
        if run.activation_id == exclude or run.finished:
            continue
        for site_id, site in run.sites.items():
            if abs(site.offset_kw) > _EPS_KW:
                out[site_id] = out.get(site_id, 0.0) + site.offset_kw
    return out
