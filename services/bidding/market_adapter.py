"""The boundary to a balancing market: one interface, the simulator behind it, so a real market's API
(regelleistung.net's, EPRX's) can take its place without touching offers, bids or reservations.

An adapter submits bids and brings the market's answers back as ``Award`` records on the awards topic
(which is what the simulator publishes); the bidding service reads that topic whatever the adapter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vpp.v1 import market_pb2

from vpp_common.kafka import EventProducer
from vpp_common.topics import BIDS


class MarketAdapter(Protocol):
    async def submit(self, bids: Sequence[market_pb2.Bid]) -> None:
        """Hand ``bids`` to the market; returns once the market (or its inbox) has them durably."""
        ...


class SimulatorAdapter:
    """The market simulator's inbox is the bids topic: a bid is submitted once the broker has it."""

    def __init__(self, producer: EventProducer) -> None:
        self._producer = producer

    async def submit(self, bids: Sequence[market_pb2.Bid]) -> None:
        futures = [self._producer.publish(BIDS, bid.portfolio_id, bid) for bid in bids]
        await self._producer.settle(futures)
