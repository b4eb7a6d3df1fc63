"""Activation tracking as every replica reads it (tracking samples, run states, acks), so
``GetActivationTracking`` has the same answer on the active dispatcher and on a standby. No I/O."""

from __future__ import annotations

import statistics
from collections import OrderedDict
from dataclasses import dataclass, field

from vpp.v1 import dispatch_api_pb2, dispatch_pb2


@dataclass
class RunView:
    activation_id: str
    samples: dict[int, dispatch_pb2.TrackingSample] = field(default_factory=dict)
    latest_run: dispatch_pb2.ActivationRun | None = None
    dropped: dict[str, str] = field(default_factory=dict)  # site -> reason, every site ever dropped
    latencies_ms: list[float] = field(default_factory=list)
    acks: int = 0
    clamped: int = 0
    acked_commands: set[str] = field(default_factory=set)
    refused_reason: str = ""  # the first refusal of any of its steps (kept when later states clear it)

    def mean_abs_error_kw(self) -> float:
        errors = [abs(s.error_kw) for s in self.samples.values() if s.error_kw == s.error_kw]
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

    def on_sample(self, sample: dispatch_pb2.TrackingSample) -> None:
        self._run(sample.activation_id).samples[sample.step] = sample

    def on_run(self, state: dispatch_pb2.ActivationRun) -> None:
        run = self._run(state.activation_id)
        if run.latest_run is None or (state.step, state.leader_epoch) >= (run.latest_run.step, 0):
            run.latest_run = state
        if state.refused_reason and not run.refused_reason:
            run.refused_reason = state.refused_reason
        for site in state.sites:
            if site.dropped:
                run.dropped.setdefault(site.site_id, site.drop_reason)

    def on_ack(self, ack: dispatch_pb2.CommandAck, latency_ms: float | None) -> None:
        if not ack.activation_id:
            return
        run = self._run(ack.activation_id)
        if ack.command_id in run.acked_commands:
            return  # re-delivered
        run.acked_commands.add(ack.command_id)
        run.acks += 1
        if ack.status == dispatch_pb2.ACK_STATUS_CLAMPED:
            run.clamped += 1
        if latency_ms is not None:
            run.latencies_ms.append(latency_ms)

    def response(self, activation_id: str, last_n: int) -> dispatch_api_pb2.GetActivationTrackingResponse | None:
        run = self.runs.get(activation_id)
        if run is None or (not run.samples and run.latest_run is None):
            return None
        resp = dispatch_api_pb2.GetActivationTrackingResponse(
            activation_id=activation_id,
            mean_abs_error_kw=run.mean_abs_error_kw(),
            median_activation_to_write_ms=statistics.median(run.latencies_ms) if run.latencies_ms else 0.0,
            acks_received=run.acks,
            commands_sent=run.latest_run.commands_total if run.latest_run is not None else 0,
            acks_clamped=run.clamped,
            reallocations=len(run.dropped),
            reallocated_sites=sorted(run.dropped),
        )
        if run.latest_run is not None:
            resp.award_id = run.latest_run.award_id
            resp.refused_reason = run.refused_reason or run.latest_run.refused_reason
        steps = sorted(run.samples)
        if last_n:
            steps = steps[-last_n:]
        resp.samples.extend(run.samples[s] for s in steps)
        return resp
