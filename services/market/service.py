"""Wire the market simulator: bids are cleared by one replica (the "market" group), from the start
of the topic so none is missed."""

from __future__ import annotations

from vpp.v1 import market_api_pb2_grpc

from market.servicer import SERVICE_NAME, MarketSimulator
from market.settings import MarketSettings
from vpp_common.app import ServiceApp
from vpp_common.topics import BIDS


def build(app: ServiceApp, settings: MarketSettings) -> MarketSimulator:
    market = MarketSimulator(settings, app.producer)
    app.add_servicer(market_api_pb2_grpc.add_MarketSimulatorServicer_to_server, market, SERVICE_NAME)
    app.add_consumer([BIDS], market.on_bid, name="bids", group="market", start_at="committed-or-earliest")
    return market
