"""One Kafka hop through the platform's runtime (``EventProducer`` -> broker -> ``EventConsumer``
handler) against the consumer's fetch wait, on a fresh embedded broker: what the fetch wait costs in
latency on a broker that does not always answer a waiting fetch early (docs/scaling.md).

    python -m vpp_demo.hop_latency [--waits 50,100,250,500] [--records 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from vpp.v1 import dispatch_pb2

from vpp_common.kafka import Consumed, ConsumerSpec, EventConsumer, EventProducer, ensure_topics
from vpp_common.settings import ServiceSettings
from vpp_common.topics import COMMANDS
from vpp_devtools.broker import EmbeddedBroker


async def hop_ms(bootstrap: str, fetch_wait_ms: int, records: int, partitions: int) -> list[float]:
    """Produced-at to handler, one record at a time at random moments across all partitions."""
    settings = ServiceSettings(kafka_bootstrap_servers=bootstrap, kafka_fetch_max_wait_ms=fetch_wait_ms)
    producer = EventProducer(settings)
    await producer.start()
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def handler(item: Consumed) -> None:
        arrived.put_nowait(time.time() - item.env.produced_at.ToNanoseconds() / 1e9)

    spec = ConsumerSpec([COMMANDS], handler, "hop", None, start_at="latest", partitions={COMMANDS.name: partitions})
    consumer = EventConsumer(settings, spec, producer)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(3)  # assigned and polling
    out = []
    for i in range(records):
        await asyncio.sleep(random.uniform(0.1, 0.35))  # no phase lock with the fetch cycle
        await producer.publish(COMMANDS, f"site-{i}", dispatch_pb2.DispatchCommandBatch(), partition=i % partitions)
        out.append(await asyncio.wait_for(arrived.get(), 10) * 1000.0)
    consumer.stop()
    await asyncio.wait_for(task, 15)
    await producer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waits", default="50,100,250,500", help="fetch_max_wait_ms values to try")
    parser.add_argument("--records", type=int, default=60)
    parser.add_argument("--partitions", type=int, default=48)
    args = parser.parse_args()
    broker = EmbeddedBroker().start()
    try:
        ensure_topics(broker.bootstrap_servers, args.partitions, [COMMANDS])
        for wait in (int(w) for w in args.waits.split(",")):
            got = sorted(asyncio.run(hop_ms(broker.bootstrap_servers, wait, args.records, args.partitions)))
            print(
                f"fetch wait {wait:4d} ms: hop median {statistics.median(got):6.1f} ms, "
                f"p90 {got[int(0.9 * len(got))]:6.1f} ms ({len(got)} records, {args.partitions} partitions)"
            )
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
