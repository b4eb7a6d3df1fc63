"""Dispatch: activations in, one command per site out, delivery watched through telemetry and acks,
tracking published per step. Every replica is a partition worker (its share of the sites), reads every
plan and every partition result (tracking), and the one the activations group picks is the planner."""

from __future__ import annotations

import math

from prometheus_client import Gauge, Histogram
from vpp.v1 import dispatch_api_pb2_grpc

from dispatch.planner import Planner
from dispatch.servicer import SERVICE_NAME, DispatchServicer
from dispatch.settings import DispatchSettings
from dispatch.tracking import StepView, TrackingView, sample
from dispatch.worker import PartitionWorker
from vpp_common.app import ServiceApp
from vpp_common.kafka import Consumed, EventProducer
from vpp_common.logs import get_logger
from vpp_common.partials import PartitionTotals, PortfolioView
from vpp_common.topics import ACKS, ACTIVATIONS, PARTIALS, PARTITION_STEPS, PLANS, TELEMETRY, TRACKING

log = get_logger(__name__)

TRACKING_ERROR = Gauge("vpp_dispatch_tracking_error_kw", "Requested minus delivered at the last step end")
TRACKING_ABS_ERROR = Histogram(
    "vpp_dispatch_tracking_abs_error_kw", "Absolute tracking error per step", buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 25)
)
DELIVERED = Gauge("vpp_dispatch_delivered_kw", "Portfolio delivery at the last step end")


class Dispatcher:
    """The replica: planner, partition worker and tracking view, wired to their topics."""

    def __init__(self, settings: DispatchSettings, producer: EventProducer) -> None:
        self.settings = settings
        self._producer = producer
        self.view = PortfolioView(partial_stale_after_s=3.0, site_stale_after_s=settings.stale_after_s)
        self.planner = Planner(settings, producer, self.view)
        self.worker = PartitionWorker(settings, producer, self.view)
        self.tracking = TrackingView(settings.keep_activations)

    async def on_activation(self, item: Consumed) -> None:
        """Plan the step; this replica's own partitions act on the plan at once (the others when it
        reaches them through Kafka, where this replica's copy is then recognised and skipped)."""
        plan = await self.planner.plan(item)
        if plan is not None:
            self.tracking.on_plan(plan)
            await self.worker.on_plan(plan)

    async def on_partial(self, item: Consumed) -> None:
        self.view.offer(PartitionTotals.from_proto(item.env.partition_flexibility))

    async def on_plan_or_result(self, item: Consumed) -> None:
        env = item.env
        if env.HasField("step_plan"):
            plan = env.step_plan
            self.tracking.on_plan(plan)
            self.planner.on_plan_seen(plan)
            await self.worker.on_plan(plan)
            return
        result = env.partition_step
        self.planner.on_partition_step(result)
        completed = self.tracking.on_partition_step(result)
        if completed is not None and plan_is_ours(self, result.activation_id):
            self._publish_tracking(result.activation_id, completed)

    def _publish_tracking(self, activation_id: str, step: StepView) -> None:
        step.published = True
        out = sample(activation_id, step)
        if math.isfinite(out.delivered_kw):
            TRACKING_ERROR.set(out.error_kw)
            TRACKING_ABS_ERROR.observe(abs(out.error_kw))
            DELIVERED.set(out.delivered_kw)
        self._producer.publish(TRACKING, activation_id, out)
        log.info(
            "step_tracked",
            activation_id=activation_id,
            step=out.step,
            requested_kw=round(out.requested_kw, 2),
            delivered_kw=round(out.delivered_kw, 2),
            acked=out.sites_acked,
            commanded=out.sites_commanded,
        )


def plan_is_ours(dispatcher: Dispatcher, activation_id: str) -> bool:
    """The replica that plans an activation also publishes its tracking samples (one publisher)."""
    return activation_id in dispatcher.planner.runs and dispatcher.planner.runs[activation_id].planned_here


def build(app: ServiceApp, settings: DispatchSettings) -> DispatchServicer:
    dispatcher = Dispatcher(settings, app.producer)
    servicer = DispatchServicer(dispatcher.tracking)
    app.add_servicer(dispatch_api_pb2_grpc.add_DispatchServiceServicer_to_server, servicer, SERVICE_NAME)
    # Aggregation's partials: partition headroom for the planner, replay offsets for the workers.
    app.add_consumer([PARTIALS], dispatcher.on_partial, name="partials", group=None, start_at="last")
    # This replica's share of the sites: state from telemetry, delivery from acks (same partitions of both).
    app.add_consumer(
        [TELEMETRY, ACKS],
        dispatcher.worker.on_site_record,
        name="sites",
        group="dispatch",
        start_at="committed-or-latest",
        listener=dispatcher.worker,
    )
    # Plans and partition results: every replica reads them all (workers act on their partitions' shares).
    app.add_consumer(
        [PLANS, PARTITION_STEPS],
        dispatcher.on_plan_or_result,
        name="plans",
        group=None,
        start_at="latest",
        fetch_max_wait_ms=settings.kafka_fast_fetch_max_wait_ms,
    )
    # Activations: one shared group, so exactly one replica plans each. From the start of the topic, so a
    # step produced during the group join is not missed; expired ones are skipped.
    app.add_consumer(
        [ACTIVATIONS],
        dispatcher.on_activation,
        name="activations",
        group="dispatch-planner",
        start_at="committed-or-earliest",
        fetch_max_wait_ms=settings.kafka_fast_fetch_max_wait_ms,
    )
    app.add_task(dispatcher.worker.close_loop, name="close-steps")
    return servicer
