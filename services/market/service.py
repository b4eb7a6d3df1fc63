"""Wire the market simulator: bids are taken by one replica (the "market" group) from the start of the
topic so none is missed; auctions clear at their gates; dispatch's tracking record is read for the
deliveries this replica sends."""

from __future__ import annotations

from vpp.v1 import market_api_pb2_grpc

from market.servicer import SERVICE_NAME, MarketSimulator
from market.settings import MarketSettings
from vpp_common.app import ServiceApp
from vpp_common.topics import BIDS, TRACKING


def build(app: ServiceApp, settings: MarketSettings) -> MarketSimulator:
    market = MarketSimulator(settings, app.producer)
    app.add_servicer(market_api_pb2_grpc.add_MarketSimulatorServicer_to_server, market, SERVICE_NAME)
    app.add_consumer([BIDS], market.on_bid, name="bids", group="market", start_at="committed-or-earliest")
    app.add_consumer([TRACKING], market.on_tracking, name="tracking", group=None, start_at="last")
    app.add_task(market.gate_loop, name="gates")
    return market
