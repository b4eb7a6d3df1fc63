"""Wire bidding: offers are re-planned on a schedule; awards and settlements are each handled by one
replica (consumer groups) and made durable in the market store before their offsets are committed, so
any replica answers every query from the store."""

from __future__ import annotations

from vpp.v1 import bidding_pb2_grpc

from bidding.market_adapter import SimulatorAdapter
from bidding.servicer import SERVICE_NAME, BiddingServicer
from bidding.settings import BiddingSettings
from vpp_common.app import ServiceApp
from vpp_common.topics import AWARDS, RUNS, SETTLEMENTS


def build(app: ServiceApp, settings: BiddingSettings) -> BiddingServicer:
    servicer = BiddingServicer(settings, app.producer, SimulatorAdapter(app.producer))
    app.add_servicer(bidding_pb2_grpc.add_BiddingServiceServicer_to_server, servicer, SERVICE_NAME)
    app.on_start(servicer.start)
    app.on_stop(servicer.stop)
    app.add_consumer(
        [AWARDS], servicer.on_award, name="awards", group="bidding-awards", start_at="committed-or-earliest"
    )
    app.add_consumer(
        [SETTLEMENTS],
        servicer.on_settlement,
        name="settlements",
        group="bidding-settlements",
        start_at="committed-or-earliest",
    )
    # Dispatch's run states: each site's measured part of an awarded activation (settlement shares).
    app.add_consumer([RUNS], servicer.on_run_state, name="runs", group=None, start_at="last")
    app.add_task(servicer.refresh_loop, name="offers")
    return servicer
