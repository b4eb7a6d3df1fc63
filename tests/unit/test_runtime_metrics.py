"""The two process-health histograms every service exposes: GC pauses and event-loop lag."""

from __future__ import annotations

import asyncio
import gc
import time

from vpp_common import metrics
from vpp_common.app import watch_gc, watch_loop_lag


def _count(histogram: object) -> float:
    for metric in histogram.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return float(sample.value)
    return 0.0


def _buckets() -> dict[str, float]:
    return {
        s.labels["le"]: s.value for m in metrics.LOOP_LAG.collect() for s in m.samples if s.name.endswith("_bucket")
    }


def test_every_full_collection_is_timed_once() -> None:
    watch_gc()
    watch_gc()  # installing twice must not double-count
    child = metrics.GC_PAUSE.labels("2")
    before = _count(child)
    gc.collect()
    assert _count(child) == before + 1


def test_a_blocked_loop_shows_as_lag() -> None:
    async def run() -> None:
        task = asyncio.create_task(watch_loop_lag(interval_s=0.01))
        await asyncio.sleep(0.02)
        time.sleep(0.2)  # noqa: ASYNC251 - the point: the loop is held, the watcher's timer fires ~0.2 s late
        await asyncio.sleep(0.03)
        task.cancel()

    before = _buckets()
    asyncio.run(run())
    after = _buckets()
    # at least one observation above 100 ms, none of them lost
    assert after["+Inf"] - after["0.1"] >= 1 + before["+Inf"] - before["0.1"]
