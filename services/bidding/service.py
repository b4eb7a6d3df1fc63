"""Wire bidding: every replica keeps the latest portfolio flexibility and the latest awards (no
consumer group: each reads every record), so any replica answers BuildBids and ListAwards."""

from __future__ import annotations

from vpp.v1 import bidding_pb2_grpc

from bidding.servicer import SERVICE_NAME, BiddingServicer
from bidding.settings import BiddingSettings
from vpp_common.app import ServiceApp
from vpp_common.topics import AWARDS, FLEXIBILITY


def build(app: ServiceApp, settings: BiddingSettings) -> BiddingServicer:
    servicer = BiddingServicer(settings, app.producer)
    app.add_servicer(bidding_pb2_grpc.add_BiddingServiceServicer_to_server, servicer, SERVICE_NAME)
    app.add_consumer([FLEXIBILITY], servicer.on_flexibility, name="flexibility", group=None, start_at="last")
    app.add_consumer([AWARDS], servicer.on_award, name="awards", group=None, start_at="earliest")
    return servicer
