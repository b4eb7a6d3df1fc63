"""What the gateway's command fan-out costs a replica: every replica reads every partition's
``DispatchCommandBatch`` and skips the commands of sites it does not hold (docs/scaling.md, "Gateway").

Measured in-process on the real code path (``unwrap`` of the Kafka record, then
``EdgeGatewayServicer.on_command_batch``), so the figure is the CPU a replica spends per command it
does not deliver; multiplied by a fleet's command rate it says whether routing by partition would pay.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, cast

from vpp.v1 import dispatch_pb2

from gateway.servicer import EdgeGatewayServicer
from gateway.sessions import SessionRegistry
from vpp_common.batching import PartitionBatcher
from vpp_common.envelope import now_timestamp, unwrap, wrap
from vpp_common.kafka import Consumed, EventProducer
from vpp_common.topics import ACKS, TELEMETRY

STEP_S = 4.0  # one command per site per aFRR step


def command_record(partition: int, sites: int) -> bytes:
    """One partition's command batch for one step, as dispatch writes it."""
    issued = now_timestamp()
    valid = now_timestamp()
    valid.FromNanoseconds(issued.ToNanoseconds() + 8_000_000_000)
    batch = dispatch_pb2.DispatchCommandBatch(
        commands=[
            dispatch_pb2.DispatchCommand(
                command_id=f"act-0001:17:site-{partition:02d}-{i:05d}",
                site_id=f"site-{partition:02d}-{i:05d}",
                activation_id="act-0001",
                step=17,
                battery_setpoint_kw=3.25,
                issued_at=issued,
                valid_until=valid,
            )
            for i in range(sites)
        ]
    )
    return wrap(batch, source="dispatch").SerializeToString()


def _servicer() -> EdgeGatewayServicer:
    producer = cast(EventProducer, None)  # the batchers are never flushed here
    return EdgeGatewayServicer(
        secret="x",
        gateway_id="bench",
        registry=SessionRegistry(max_unacked=64, queue_size=256),
        telemetry=PartitionBatcher(producer, TELEMETRY, "bench"),
        acks=PartitionBatcher(producer, ACKS, "bench"),
    )


def measure(fleet_sites: int = 10_000, partitions: int = 48, rounds: int = 200) -> dict[str, Any]:
    """CPU (µs) per command a replica reads but does not deliver, and what that is for ``fleet_sites``."""
    per_partition = max(1, fleet_sites // partitions)
    raw = command_record(0, per_partition)
    servicer = _servicer()

    async def one(record: bytes) -> None:
        env = unwrap(record, "command_batch")
        await servicer.on_command_batch(Consumed(env, "vpp.dispatch.commands.v1", 0, 0, None, 0))

    async def run() -> list[float]:
        for _ in range(10):
            await one(raw)
        samples = []
        for _ in range(rounds):
            t0 = time.process_time_ns()
            await one(raw)
            samples.append((time.process_time_ns() - t0) / 1000 / per_partition)
        return samples

    samples = asyncio.run(run())
    us = statistics.median(samples)
    commands_per_s = fleet_sites / STEP_S
    return {
        "commands_per_record": per_partition,
        "record_bytes": len(raw),
        "us_per_command_not_held": round(us, 2),
        "fleet_sites": fleet_sites,
        "commands_per_s": commands_per_s,
        "pct_of_core_per_replica": round(commands_per_s * us / 1e4, 2),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(measure(), indent=2))
