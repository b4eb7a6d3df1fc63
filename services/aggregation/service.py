"""Wire aggregation: the telemetry consumer (one group: replicas split the partitions), the partials
consumer (every replica reads every partition's newest partial), the publisher and the gRPC API."""

from __future__ import annotations

from vpp.v1 import aggregation_pb2_grpc

from aggregation.aggregator import Aggregator
from aggregation.servicer import SERVICE_NAME, AggregationServicer
from aggregation.settings import AggregationSettings
from vpp_common.app import ServiceApp
from vpp_common.topics import PARTIALS, TELEMETRY


def build(app: ServiceApp, settings: AggregationSettings) -> AggregationServicer:
    aggregator = Aggregator(settings, app.producer)
    servicer = AggregationServicer(aggregator)
    app.add_servicer(aggregation_pb2_grpc.add_AggregationServiceServicer_to_server, servicer, SERVICE_NAME)
    # Partials first, from each partition's last record: by the time the group hands this replica its
    # partitions it knows where their previous owner's window starts.
    app.add_consumer([PARTIALS], aggregator.on_partial, name="partials", group=None, start_at="last")
    aggregator.telemetry = app.add_consumer(
        [TELEMETRY],
        aggregator.on_telemetry_batch,
        name="telemetry",
        group="aggregation",
        start_at="committed-or-latest",
        listener=aggregator,
    )

    async def started() -> None:
        aggregator.partitions = app.site_partitions

    app.on_start(started)
    app.add_task(aggregator.publish_loop, name="publish-partials")
    app.after_grpc_start(lambda port: setattr(aggregator, "owner_target", settings.advertised_target(port)))
    return servicer
