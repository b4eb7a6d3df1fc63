"""The platform's Kafka topics: one place for names, payloads and partition counts (README has the table).

Site topics (telemetry, commands, acks) and the aggregation partials are partitioned by site with the
same partition count (``ServiceSettings.site_partitions``), so partition ``p`` of each holds the same
sites: the replica that owns a partition's telemetry also owns its acks and its partial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SITE_PARTITIONED = 0  # partitions: the configured site partition count


@dataclass(frozen=True)
class Topic:
    name: str
    key: str
    payload: str  # the Envelope oneof field every record of the topic carries
    partitions: int  # SITE_PARTITIONED for site topics
    # Topic configuration for Apache Kafka (the embedded Tansu ignores retention and compaction).
    config: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def partition_count(self, site_partitions: int) -> int:
        return site_partitions if self.partitions == SITE_PARTITIONED else self.partitions


_HOURS_6_MS = str(6 * 3600 * 1000)
_DAYS_7_MS = str(7 * 24 * 3600 * 1000)

TELEMETRY = Topic(
    "vpp.telemetry.v1", "(partition by site)", "telemetry_batch", SITE_PARTITIONED, {"retention.ms": _DAYS_7_MS}
)
COMMANDS = Topic(
    "vpp.dispatch.commands.v1", "(partition by site)", "command_batch", SITE_PARTITIONED, {"retention.ms": _HOURS_6_MS}
)
ACKS = Topic("vpp.dispatch.acks.v1", "(partition by site)", "ack_batch", SITE_PARTITIONED, {"retention.ms": _DAYS_7_MS})
PARTIALS = Topic(
    "vpp.aggregation.partials.v1",
    "site partition",
    "partition_flexibility",
    SITE_PARTITIONED,
    {"cleanup.policy": "compact"},
)
# Dispatch's lease (who acts) and its run state (what a standby continues from): docs/dispatch.md.
LEASES = Topic("vpp.dispatch.leases.v1", "dispatch group", "dispatch_lease", 1, {"retention.ms": _HOURS_6_MS})
RUNS = Topic("vpp.dispatch.runs.v1", "activation_id", "activation_run", 1, {"cleanup.policy": "compact"})
TRACKING = Topic("vpp.dispatch.tracking.v1", "activation_id", "tracking", 1)
ACTIVATIONS = Topic("vpp.market.activations.v1", "portfolio_id", "activation", 1)
BIDS = Topic("vpp.market.bids.v1", "portfolio_id", "bid", 1)
AWARDS = Topic("vpp.market.awards.v1", "portfolio_id", "award", 1)
# Capacity an award holds per site (bidding -> dispatch, bidding's later offers) and the market's
# settlement of delivered blocks (market -> bidding): docs/markets.md.
RESERVATIONS = Topic("vpp.market.reservations.v1", "award_id", "reservation_set", 1)
SETTLEMENTS = Topic("vpp.market.settlements.v1", "portfolio_id", "settlement", 1)
FLEXIBILITY = Topic("vpp.flexibility.v1", "portfolio_id", "flexibility", 1)
FORECASTS = Topic("vpp.forecasts.v1", "site_id", "forecast", 6)
DEAD_LETTER = Topic("vpp.deadletter.v1", "original key", "(raw bytes + error headers)", 1)

ALL_TOPICS: tuple[Topic, ...] = (
    TELEMETRY,
    COMMANDS,
    ACKS,
    PARTIALS,
    LEASES,
    RUNS,
    TRACKING,
    ACTIVATIONS,
    BIDS,
    AWARDS,
    RESERVATIONS,
    SETTLEMENTS,
    FLEXIBILITY,
    FORECASTS,
    DEAD_LETTER,
)
