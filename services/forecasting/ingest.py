"""Telemetry in: each ``TelemetryBatch`` record's samples, checked one by one, land in the history store.

A record holds samples of many sites (all of one Kafka partition), so one bad sample must not cost the
good ones: each sample is judged on its own (outcome counted in ``vpp_forecasting_measurements_total``;
an invalid one is also logged and dead-lettered on its own, with the reason), the good ones are
stored in one transaction, and the record itself is refused (ValueError: the consumer dead-letters it
with its bytes) only when it holds no sample or every sample in it is invalid.

A store outage is the database's fault, not the record's: the write is retried with backoff until it
succeeds, so the consumer commits the record's offset only once its samples are stored. When the service
stops meanwhile, the consumer task is cancelled inside the retry's ``asyncio.sleep``: nothing is
committed, and the record is delivered again after the restart (the message ids make that harmless).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC

import pandas as pd
from vpp.v1 import telemetry_pb2

from forecasting import metrics as m
from forecasting.settings import ForecastingSettings
from forecasting.store import HistoryStore, Measurement
from vpp_common.kafka import Consumed
from vpp_common.logs import get_logger

log = get_logger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0


@dataclass(frozen=True)
class Refused:
    """A sample that cannot be stored, and why: it goes to the dead-letter topic on its own."""

    message_id: str
    site_id: str
    reason: str
    record: telemetry_pb2.TelemetryRecord | None = None


@dataclass
class Classified:
    """A batch's samples by outcome."""

    good: list[Measurement]
    refused: list[Refused]
    unknown_site: int = 0
    unavailable: int = 0


class TelemetryIngest:
    """The telemetry consumer's handler. Checks run on the event loop (cheap protobuf reads); the store
    write runs on ``writer``, the service's single store-writer thread, one call per Kafka record."""

    def __init__(
        self,
        settings: ForecastingSettings,
        store: HistoryStore,
        site_ids: Iterable[str],
        writer: Executor,
        *,
        clock: Callable[[], pd.Timestamp] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.site_ids = frozenset(site_ids)
        self._writer = writer
        self._clock = clock or (lambda: pd.Timestamp.now(tz="UTC"))

    async def on_telemetry_batch(self, item: Consumed) -> None:
        """Store the record's usable samples (once per message id); ValueError if none is usable."""
        records = item.env.telemetry_batch.records
        if not records:
            raise ValueError("telemetry batch holds no samples")
        batch = self.classify(records)
        for outcome, count in (("unknown_site", batch.unknown_site), ("unavailable", batch.unavailable)):
            if count:
                m.MEASUREMENTS.labels(outcome).inc(count)
        if batch.refused:
            m.MEASUREMENTS.labels("invalid").inc(len(batch.refused))
            for refused in batch.refused:
                log.warning(
                    "telemetry_sample_refused",
                    site_id=refused.site_id,
                    message_id=refused.message_id,
                    reason=refused.reason,
                    topic=item.topic,
                    partition=item.partition,
                    offset=item.offset,
                )
                if refused.record is not None and len(batch.refused) < len(records):
                    detail = f"{refused.message_id}: {refused.reason}"
                    item.dead_letter("invalid", detail, refused.record.SerializeToString())
            if len(batch.refused) == len(records):
                raise ValueError(f"no usable sample in the batch ({len(records)} refused): {batch.refused[0].reason}")
        if not batch.good:
            return
        stored = await self._store(batch.good)
        m.MEASUREMENTS.labels("stored").inc(stored)
        if stored < len(batch.good):
            m.MEASUREMENTS.labels("duplicate").inc(len(batch.good) - stored)

    def classify(self, records: Sequence[telemetry_pb2.TelemetryRecord]) -> Classified:
        """Each sample judged on its own: not ours, not measured, invalid (with the reason) or good."""
        out = Classified(good=[], refused=[])
        latest_ok = self._clock() + pd.Timedelta(seconds=self.settings.max_clock_skew_s)
        for record in records:
            t = record.telemetry
            if t.site_id not in self.site_ids:
                out.unknown_site += 1
                continue
            if not t.available:
                out.unavailable += 1
                continue
            reason = _invalid(record, latest_ok)
            if reason:
                out.refused.append(Refused(record.message_id, t.site_id, reason, record))
                continue
            out.good.append(
                Measurement(
                    message_id=record.message_id,
                    site_id=t.site_id,
                    measured_at=t.measured_at.ToDatetime(tzinfo=UTC),
                    pv_power_kw=t.pv_power_kw,
                    load_power_kw=t.load_power_kw,
                )
            )
        return out

    async def _store(self, measurements: list[Measurement]) -> int:
        """One transaction on the writer thread, retried with backoff until the database takes it."""
        loop = asyncio.get_running_loop()
        delay_s = RETRY_FIRST_S
        while True:
            try:
                return await loop.run_in_executor(self._writer, self.store.add_measurements, measurements)
            except Exception as exc:  # the database, not the record, is at fault: keep the offset, retry
                m.STORE_ERRORS.inc()
                log.error("store_write_failed", samples=len(measurements), error=repr(exc)[:300], retry_in_s=delay_s)
                await asyncio.sleep(delay_s)  # cancelled when the service stops: nothing is committed
                delay_s = min(delay_s * 2, RETRY_MAX_S)


def _invalid(record: telemetry_pb2.TelemetryRecord, latest_ok: pd.Timestamp) -> str:
    """Why a sample of one of our sites cannot be stored, or "" if it can."""
    t = record.telemetry
    if not record.message_id:
        return "telemetry record has no message_id"
    if not t.HasField("measured_at"):
        return "telemetry.measured_at is missing"
    for name in ("pv_power_kw", "load_power_kw"):
        if not math.isfinite(getattr(t, name)):
            return f"telemetry.{name} is not finite"
    measured_at = t.measured_at.ToDatetime(tzinfo=UTC)
    if measured_at > latest_ok:
        return f"telemetry.measured_at {measured_at.isoformat()} is in the future"
    return ""
