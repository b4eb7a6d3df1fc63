"""One activation's allocation and delivery bookkeeping (for the sites of one partition). No I/O: the
service feeds it site states, steps and acks, and publishes what it returns, so the tests can drive it
step by step. A step is closed against that step's own setpoints, once the telemetry that covers the
step's end has arrived (agents send their samples in batches, so that can be after the next step)."""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass, field

from vpp.v1 import dispatch_pb2

from vpp_common.flexibility import BatteryState, allocate_proportional, battery_flexibility


@dataclass
class SiteRun:
    baseline_kw: float
    cap_up_kw: float      # headroom above the baseline
    cap_down_kw: float    # headroom below the baseline (magnitude)
    commanded_kw: float | None = None
    strikes: int = 0
    reallocated: bool = False


@dataclass
class StepRecord:
    step: int
    requested_kw: float
    issued_at_s: float
    commanded_sites: int
    unallocated_kw: float
    delivered_kw: float | None = None
    acked_sites: set[str] = field(default_factory=set)
    commanded_kw: dict[str, float] = field(default_factory=dict)  # each site's setpoint in this step


@dataclass(frozen=True)
class TrackerConfig:
    shortfall_abs_kw: float = 0.3
    shortfall_rel: float = 0.10
    shortfall_strikes: int = 2
    efficiency: float = 0.95
    headroom_interval_h: float = 0.25


class ActivationTracker:
    def __init__(self, activation_id: str, states: list[BatteryState], config: TrackerConfig) -> None:
        self.activation_id = activation_id
        self.config = config
        self.sites: dict[str, SiteRun] = {}
        for s in states:
            if not s.online:
                continue
            flex = battery_flexibility(s, config.headroom_interval_h, config.efficiency)
            self.sites[s.site_id] = SiteRun(s.battery_power_kw, flex.up_kw, flex.down_kw)
        self.steps: dict[int, StepRecord] = {}
        self.commands: dict[str, tuple[int, str]] = {}  # command_id -> (step, site)
        self.latencies_ms: list[float] = []
        self.acks = 0
        self.clamped = 0
        self.reallocations = 0

    def delivered_kw(self, actual_kw: dict[str, float]) -> float:
        """Portfolio delivery relative to the frozen baselines; a silent site counts as baseline."""
        return sum(actual_kw.get(site, run.baseline_kw) - run.baseline_kw for site, run in self.sites.items())

    def open_steps(self) -> list[int]:
        return sorted(r.step for r in self.steps.values() if r.delivered_kw is None)

    def close_step(
        self, actual_kw: dict[str, float], online: set[str], step: int | None = None
    ) -> StepRecord | None:
        """End ``step`` (default: the latest open one): record delivery (``actual_kw``: each site's
        power at the step's end) and judge each site against its setpoint of that step."""
        if step is None:
            open_steps = self.open_steps()
            if not open_steps:
                return None
            step = open_steps[-1]
        record = self.steps.get(step)
        if record is None or record.delivered_kw is not None:
            return None
        record.delivered_kw = self.delivered_kw(actual_kw)
        for site, run in self.sites.items():
            if site not in online:
                run.cap_up_kw = run.cap_down_kw = 0.0
                continue
            commanded_kw = record.commanded_kw.get(site)
            if commanded_kw is None or site not in actual_kw or abs(commanded_kw - run.baseline_kw) < 1e-6:
                continue
            miss_kw = abs(commanded_kw - actual_kw[site])
            allowed_kw = max(self.config.shortfall_abs_kw, self.config.shortfall_rel * abs(commanded_kw))
            run.strikes = run.strikes + 1 if miss_kw > allowed_kw else 0
            if run.strikes >= self.config.shortfall_strikes:
                self._cap_to(run, actual_kw[site], commanded_kw)
                run.strikes = 0
        return record

    def _cap_to(self, run: SiteRun, achieved_kw: float, commanded_kw: float) -> None:
        """The site only reaches ``achieved_kw``: from now on offer only what it showed it can do."""
        delta_kw = achieved_kw - run.baseline_kw
        if commanded_kw > run.baseline_kw:
            run.cap_up_kw = max(0.0, min(run.cap_up_kw, delta_kw))
        else:
            run.cap_down_kw = max(0.0, min(run.cap_down_kw, -delta_kw))
        run.reallocated = True
        self.reallocations += 1

    def plan_step(self, step: int, setpoint_kw: float, issued_at_s: float) -> list[dispatch_pb2.DispatchCommand]:
        """Split this step's request over the sites; every site in the run gets a setpoint (baseline + share)."""
        caps = {s: (r.cap_up_kw if setpoint_kw >= 0 else r.cap_down_kw) for s, r in self.sites.items()}
        allocation = allocate_proportional(setpoint_kw, caps)
        commands = []
        commanded: dict[str, float] = {}
        for site, share_kw in allocation.per_site_kw.items():
            run = self.sites[site]
            run.commanded_kw = run.baseline_kw + share_kw
            commanded[site] = run.commanded_kw
            command_id = uuid.uuid4().hex
            self.commands[command_id] = (step, site)
            commands.append(
                dispatch_pb2.DispatchCommand(
                    command_id=command_id,
                    site_id=site,
                    activation_id=self.activation_id,
                    step=step,
                    battery_setpoint_kw=run.commanded_kw,
                )
            )
        self.steps[step] = StepRecord(
            step, setpoint_kw, issued_at_s, len(commands), allocation.unallocated_kw, commanded_kw=commanded
        )
        return commands

    def on_ack(self, ack: dispatch_pb2.CommandAck) -> float | None:
        """Record an ack; returns activation-to-write latency in ms when it can be computed."""
        ref = self.commands.get(ack.command_id)
        if ref is None:
            return None
        step, site = ref
        record = self.steps[step]
        if site in record.acked_sites:
            return None  # a re-delivered ack
        record.acked_sites.add(site)
        self.acks += 1
        if ack.status == dispatch_pb2.ACK_STATUS_CLAMPED:
            self.clamped += 1
            run = self.sites[site]
            commanded_kw = record.commanded_kw.get(site)
            if commanded_kw is not None and abs(ack.applied_kw - commanded_kw) > 1e-6:
                self._cap_to(run, ack.applied_kw, commanded_kw)
        if not ack.HasField("written_at") or ack.status not in (
            dispatch_pb2.ACK_STATUS_APPLIED,
            dispatch_pb2.ACK_STATUS_CLAMPED,
        ):
            return None
        latency_ms = ack.written_at.ToNanoseconds() / 1e6 - record.issued_at_s * 1e3
        self.latencies_ms.append(latency_ms)
        return latency_ms

    def mean_abs_error_kw(self) -> float:
        errors = [abs(r.requested_kw - r.delivered_kw) for r in self.steps.values() if r.delivered_kw is not None]
        return statistics.fmean(errors) if errors else 0.0

    def median_latency_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else 0.0
