"""The platform's Kafka topics: one place for names, keys and partition counts (README has the table)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str
    key: str
    payload: str
    partitions: int


TELEMETRY = Topic("vpp.telemetry.v1", "site_id", "Telemetry", 6)
COMMANDS = Topic("vpp.dispatch.commands.v1", "site_id", "DispatchCommand", 6)
ACKS = Topic("vpp.dispatch.acks.v1", "site_id", "CommandAck", 6)
TRACKING = Topic("vpp.dispatch.tracking.v1", "activation_id", "TrackingSample", 1)
ACTIVATIONS = Topic("vpp.market.activations.v1", "portfolio_id", "Activation", 1)
BIDS = Topic("vpp.market.bids.v1", "portfolio_id", "Bid", 1)
AWARDS = Topic("vpp.market.awards.v1", "portfolio_id", "Award", 1)
FLEXIBILITY = Topic("vpp.flexibility.v1", "portfolio_id", "PortfolioFlexibility", 1)
FORECASTS = Topic("vpp.forecasts.v1", "site_id", "Forecast", 6)
DEAD_LETTER = Topic("vpp.deadletter.v1", "original key", "raw bytes + error headers", 1)

ALL_TOPICS: tuple[Topic, ...] = (
    TELEMETRY,
    COMMANDS,
    ACKS,
    TRACKING,
    ACTIVATIONS,
    BIDS,
    AWARDS,
    FLEXIBILITY,
    FORECASTS,
    DEAD_LETTER,
)
