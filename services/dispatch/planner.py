"""The planner: one replica (the consumer group on the activations topic picks it) splits each step's
portfolio setpoint over the site partitions in proportion to each partition's headroom, and publishes
the split as a ``StepPlan`` that every replica reads; the owner of each partition turns its share into
per-site commands (``worker.py``).

Proportional allocation is separable: site i gets setpoint * cap_i / sum(cap), which is exactly
partition p's share (setpoint * cap_p / sum(cap)) split over p's sites in proportion to their caps. The
partition caps come from aggregation's partials (the same flexibility maths, the same telemetry),
frozen at the activation's first step and cut where a partition reports a shortfall. A planner that
takes over mid-activation continues from the caps of the last plan it saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge
from vpp.v1 import dispatch_pb2, market_pb2

from dispatch.settings import DispatchSettings
from vpp_common.flexibility import allocate_proportional
from vpp_common.kafka import Consumed, EventProducer
from vpp_common.logs import get_logger
from vpp_common.partials import MILLI, PortfolioView, maintained_interval
from vpp_common.topics import PLANS

log = get_logger(__name__)

STALE_ACTIVATIONS = Counter("vpp_dispatch_stale_activations_total", "Activation steps ignored as expired")
PLANS_OUT = Counter("vpp_dispatch_plans_total", "Step plans published by this replica as planner")
REQUESTED = Gauge("vpp_dispatch_requested_kw", "Portfolio setpoint of the current step")
UNALLOCATED = Gauge("vpp_dispatch_unallocated_kw", "Part of the request no partition had headroom for")


@dataclass
class PlanRun:
    """What the planner keeps per activation: the partition caps and the steps planned."""

    activation_id: str
    caps: dict[int, tuple[float, float]]  # partition -> (up_kw, down_kw)
    steps: set[int] = field(default_factory=set)
    last_seen_s: float = field(default_factory=time.monotonic)
    planned_here: bool = False  # this replica planned a step of it (and so publishes its tracking)


class Planner:
    def __init__(self, settings: DispatchSettings, producer: EventProducer, view: PortfolioView) -> None:
        self._settings = settings
        self._producer = producer
        self._view = view
        self.runs: dict[str, PlanRun] = {}

    def _frozen_caps(self) -> dict[int, tuple[float, float]]:
        """Every partition with a site online, with its headroom over dispatch's headroom interval."""
        now_s = time.time()
        caps: dict[int, tuple[float, float]] = {}
        for partition, totals in self._view.latest.items():
            if totals.sites_online == 0 or now_s - totals.published_at_s > self._settings.stale_after_s:
                continue
            interval = maintained_interval(tuple(totals.up_mw), self._settings.headroom_interval_minutes)
            caps[partition] = (totals.up_mw.get(interval, 0) / MILLI, totals.down_mw.get(interval, 0) / MILLI)
        return caps

    async def plan(self, item: Consumed) -> dispatch_pb2.StepPlan | None:
        """Plan one activation step and publish the plan; None for a stale or re-delivered step."""
        act: market_pb2.Activation = item.env.activation
        if not act.activation_id:
            raise ValueError("activation.activation_id is empty")
        if act.HasField("valid_until") and act.valid_until.ToNanoseconds() / 1e9 < time.time():
            STALE_ACTIVATIONS.inc()  # replayed from before this replica started: never act on it
            return None
        run = self.runs.get(act.activation_id)
        if run is None:
            run = PlanRun(act.activation_id, self._frozen_caps())
            self.runs[act.activation_id] = run
            self._bound()
            log.info(
                "activation_started",
                activation_id=act.activation_id,
                partitions=len(run.caps),
                up_kw=round(sum(c[0] for c in run.caps.values()), 2),
                down_kw=round(sum(c[1] for c in run.caps.values()), 2),
            )
            if not run.caps:
                log.warning(
                    "activation_without_headroom",
                    activation_id=act.activation_id,
                    hint="no partition flexibility known: is aggregation running and are sites online?",
                )
        if act.step in run.steps:
            return None  # a re-delivered step
        run.steps.add(act.step)
        run.planned_here = True
        run.last_seen_s = time.monotonic()
        up = act.setpoint_kw >= 0
        allocation = allocate_proportional(act.setpoint_kw, {p: (c[0] if up else c[1]) for p, c in run.caps.items()})
        plan = dispatch_pb2.StepPlan(
            activation_id=act.activation_id,
            step=act.step,
            product=act.product,
            setpoint_kw=act.setpoint_kw,
            unallocated_kw=allocation.unallocated_kw,
            planner=self._settings.instance_id,
        )
        plan.issued_at.CopyFrom(act.issued_at)
        if act.HasField("valid_until"):
            plan.valid_until.CopyFrom(act.valid_until)
        for partition in sorted(run.caps):
            cap_up, cap_down = run.caps[partition]
            plan.shares.add(
                partition=partition,
                share_kw=allocation.per_site_kw.get(partition, 0.0),
                cap_up_kw=cap_up,
                cap_down_kw=cap_down,
            )
        self._producer.publish(PLANS, act.activation_id, plan)  # durable before the offset commits
        PLANS_OUT.inc()
        REQUESTED.set(act.setpoint_kw)
        UNALLOCATED.set(allocation.unallocated_kw)
        return plan

    def on_plan_seen(self, plan: dispatch_pb2.StepPlan) -> None:
        """Plans of other planners (or our own, before a restart): continue from their caps on takeover."""
        run = self.runs.get(plan.activation_id)
        if run is None:
            run = PlanRun(plan.activation_id, {s.partition: (s.cap_up_kw, s.cap_down_kw) for s in plan.shares})
            self.runs[plan.activation_id] = run
            self._bound()
        run.steps.add(plan.step)

    def on_partition_step(self, result: dispatch_pb2.PartitionStep) -> None:
        """A partition fell short: plan its later shares from what it can deliver."""
        run = self.runs.get(result.activation_id)
        if run is not None and result.partition in run.caps:
            run.caps[result.partition] = (result.cap_up_kw, result.cap_down_kw)

    def _bound(self) -> None:
        while len(self.runs) > self._settings.keep_activations:
            self.runs.pop(next(iter(self.runs)))
