"""Activation tracking assembled from what every replica reads (plans and partition step results), so
``GetActivationTracking`` has the same answer on any replica. No I/O."""

from __future__ import annotations

import statistics
from collections import OrderedDict
from dataclasses import dataclass, field

from vpp.v1 import dispatch_api_pb2, dispatch_pb2


@dataclass
class StepView:
    step: int
    requested_kw: float
    issued_at_s: float
    unallocated_kw: float
    partitions: set[int]  # partitions the plan gave a share to
    results: dict[int, dispatch_pb2.PartitionStep] = field(default_factory=dict)
    published: bool = False

    @property
    def complete(self) -> bool:
        return bool(self.partitions) and self.partitions <= set(self.results)

    def delivered_kw(self) -> float | None:
        if not self.complete:
            return None
        return sum(r.delivered_kw for r in self.results.values())

    def commanded(self) -> int:
        return sum(r.sites_commanded for r in self.results.values())

    def acked(self) -> int:
        return sum(r.sites_acked for r in self.results.values())


@dataclass
class RunView:
    activation_id: str
    steps: dict[int, StepView] = field(default_factory=dict)
    latest: dict[int, dispatch_pb2.PartitionStep] = field(default_factory=dict)  # newest result per partition
    latencies_ms: list[float] = field(default_factory=list)

    def mean_abs_error_kw(self) -> float:
        errors = [abs(s.requested_kw - d) for s in self.steps.values() if (d := s.delivered_kw()) is not None]
        return statistics.fmean(errors) if errors else 0.0


class TrackingView:
    def __init__(self, keep_activations: int) -> None:
        self._keep = keep_activations
        self.runs: OrderedDict[str, RunView] = OrderedDict()

    def _run(self, activation_id: str) -> RunView:
        run = self.runs.get(activation_id)
        if run is None:
            run = self.runs[activation_id] = RunView(activation_id)
            while len(self.runs) > self._keep:
                self.runs.popitem(last=False)
        return run

    def on_plan(self, plan: dispatch_pb2.StepPlan) -> None:
        run = self._run(plan.activation_id)
        if plan.step not in run.steps:
            run.steps[plan.step] = StepView(
                plan.step,
                plan.setpoint_kw,
                plan.issued_at.ToNanoseconds() / 1e9,
                plan.unallocated_kw,
                {s.partition for s in plan.shares},
            )

    def on_partition_step(self, result: dispatch_pb2.PartitionStep) -> StepView | None:
        """Record a partition's result; returns the step if this result completed it."""
        run = self._run(result.activation_id)
        previous = run.latest.get(result.partition)
        if previous is None or (previous.step, previous.acks_total) <= (result.step, result.acks_total):
            run.latest[result.partition] = result
        run.latencies_ms.extend(result.ack_latency_ms)
        if not result.step:
            return None
        view = run.steps.get(result.step)
        if view is None or result.partition in view.results:
            return None
        view.results[result.partition] = result
        return view if view.complete else None

    def response(self, activation_id: str, last_n: int) -> dispatch_api_pb2.GetActivationTrackingResponse | None:
        run = self.runs.get(activation_id)
        if run is None:
            return None
        latest = run.latest.values()
        resp = dispatch_api_pb2.GetActivationTrackingResponse(
            activation_id=activation_id,
            mean_abs_error_kw=run.mean_abs_error_kw(),
            median_activation_to_write_ms=statistics.median(run.latencies_ms) if run.latencies_ms else 0.0,
            acks_received=sum(r.acks_total for r in latest),
            commands_sent=sum(r.commands_total for r in latest),
            acks_clamped=sum(r.clamped_total for r in latest),
            reallocations=sum(r.reallocations_total for r in latest),
            reallocated_sites=sorted({s for r in latest for s in r.reallocated_sites}),
        )
        steps = sorted(run.steps.values(), key=lambda s: s.step)
        if last_n:
            steps = steps[-last_n:]
        for s in steps:
            resp.samples.append(sample(activation_id, s))
        return resp


def sample(activation_id: str, step: StepView) -> dispatch_pb2.TrackingSample:
    delivered = step.delivered_kw()
    out = dispatch_pb2.TrackingSample(
        activation_id=activation_id,
        step=step.step,
        requested_kw=step.requested_kw,
        delivered_kw=delivered if delivered is not None else float("nan"),
        error_kw=(step.requested_kw - delivered) if delivered is not None else float("nan"),
        sites_acked=step.acked(),
        sites_commanded=step.commanded(),
    )
    out.at.FromNanoseconds(int(step.issued_at_s * 1e9))
    return out
