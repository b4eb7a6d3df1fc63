"""The issue cycle: every ``refresh_interval_s`` (or on demand) every site's and the portfolio's forecasts
are computed on the model thread (models updated with the latest measurements, never fit here), kept in
the ``ForecastCache`` that requests read (each site's as soon as it is done) and published to
``vpp.forecasts.v1``; old dedupe ids are pruned.

Runs as a ``ServiceApp`` task on the event loop; the blocking parts go to their owners' threads (model
work to ``ModelWorker``, store writes to the store-writer thread). A failed refresh (database down, a
produce timing out) is logged and retried at the next interval: the forecasts are republished anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from vpp.v1 import forecast_pb2

from forecasting import metrics as m
from forecasting.core import DEFAULT_QUANTILES, MAX_HORIZON_MIN, CachedForecast, first_slot
from forecasting.forecast_cache import ForecastCache
from forecasting.mapping import STREAM_LABEL, forecast_from_cache
from forecasting.model_worker import ModelWorker
from forecasting.seed import seed_missing
from forecasting.settings import ForecastingSettings
from forecasting.store import HistoryStore
from vpp_common.kafka import EventProducer, ProduceFailed
from vpp_common.logs import get_logger
from vpp_common.topics import FORECASTS

log = get_logger(__name__)

PORTFOLIO_KEY = "portfolio"  # Kafka key and metric label of the portfolio forecast


def _age_s(issued_s: float) -> float:
    return time.time() - issued_s


class Scheduler:
    """Seed (demo), then refresh, publish, prune, sleep; repeat until cancelled."""

    def __init__(
        self,
        settings: ForecastingSettings,
        models: ModelWorker,
        store: HistoryStore,
        writer: Executor,
        producer: EventProducer,
        cache: ForecastCache,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.models = models
        self.store = store
        self.writer = writer
        self.producer = producer
        self._wake = asyncio.Event()
        self.seeded = asyncio.Event()  # the trainer starts once the demo seed (if any) is written
        self.refreshes = 0

    def request_refresh(self) -> None:
        """Refresh now instead of at the next interval (on demand; call on the event loop)."""
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        if settings.seed_days_if_empty > 0:
            await self._seed()
        self.seeded.set()
        while True:
            try:
                cached = await self.models.refresh(on_site=self.cache.put)
                self.cache.put(cached)
                await self._publish([self.published(entry) for entry in cached])
                await loop.run_in_executor(self.writer, self.store.prune_seen, time.time() - settings.dedupe_window_s)
            except Exception:  # one bad refresh (e.g. database down) must not end the schedule
                log.exception("refresh_failed")
            self.refreshes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=settings.refresh_interval_s)
            self._wake.clear()

    async def _seed(self) -> None:
        loop = asyncio.get_running_loop()
        days = self.settings.seed_days_if_empty
        sites = list(self.models.core.sites.values())
        now = self.models.core.clock().to_pydatetime()
        try:
            seeded = await loop.run_in_executor(self.writer, seed_missing, self.store, sites, days, now)
            log.info("history_seeded", sites=",".join(seeded) or "none", days=days)
        except Exception:  # no data files: forecast from what is measured instead
            log.exception("history_seed_failed")

    @staticmethod
    def published(entry: CachedForecast) -> forecast_pb2.Forecast:
        """What goes on the topic: the full horizon from the issue, at P10/P50/P90."""
        start = first_slot(entry.issued_at)
        # The bytes the model owner encoded: building 3,000 forecasts field by field blocked this loop for
        # seconds at the end of a 1,000-site cycle (seen: a 30 s GetForecast deadline missed).
        return forecast_from_cache(
            entry, int(start.value), MAX_HORIZON_MIN // 15, DEFAULT_QUANTILES, entry.default_points or None
        )

    async def _publish(self, forecasts: Sequence[forecast_pb2.Forecast]) -> None:
        """Send them all at once, then count each as the broker acknowledges it."""
        sent = [
            (fc, self.producer.publish(FORECASTS, fc.site_id or PORTFOLIO_KEY, fc, site_id=fc.site_id))
            for fc in forecasts
        ]
        results: list[Any] = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        failed: list[BaseException] = []
        for (fc, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(result)
                continue
            m.FORECASTS_PUBLISHED.labels(STREAM_LABEL[fc.stream]).inc()
            self._mark_published(fc)
        if failed:
            raise ProduceFailed(f"{len(failed)} of {len(sent)} forecasts not published: {failed[0]!r}")
        if forecasts:
            log.info("forecasts_published", count=len(forecasts), issued_at=forecasts[0].issued_at.ToJsonString())

    @staticmethod
    def _mark_published(fc: forecast_pb2.Forecast) -> None:
        """Start the age gauge of this site stream at the forecast's issue time.

        The gauge reads a function bound to the issue time (an immutable float) rather than shared
        state, so the metrics server's thread never reads anything this loop writes."""
        key = fc.site_id or PORTFOLIO_KEY
        issued_s = fc.issued_at.ToNanoseconds() / 1e9
        m.FORECAST_AGE_SECONDS.labels(key, STREAM_LABEL[fc.stream]).set_function(functools.partial(_age_s, issued_s))
