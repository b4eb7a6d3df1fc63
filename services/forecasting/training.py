"""Fits in the background: every site stream's candidate is fit and validated away from requests.

The trainer walks what ``ForecastingCore.due_for_training`` names (streams never fit first, then the
oldest fits past ``retrain_interval_s``), reads each one's training window on a thread of its own, fits
it in a worker process (``training_processes``, niced by ``training_nice`` so the platform's services
keep their CPU; 0 = a thread of this process) and hands the fitted model to the model thread, which
recomputes that site's forecasts with it at once. A request never waits for any of this: until a site
stream's fit is installed its fallback serves and the forecast says so.

Worker processes are started with ``spawn`` (never ``fork``: this process runs gRPC and Kafka threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import pandas as pd

from forecasting import metrics as m
from forecasting.core import CachedForecast
from forecasting.mapping import STREAM_LABEL
from forecasting.model_worker import ModelWorker
from forecasting.models.spec import ModelSpec
from forecasting.selection import CandidateFactory, NoHistory, ServedModel, default_candidates, select_model
from forecasting.settings import ForecastingSettings
from forecasting.sites import SiteConfig
from vpp_common.logs import get_logger

log = get_logger(__name__)

RETRY_AFTER_S = 600.0  # a stream whose fit failed (or has no history) is tried again after this
IDLE_POLL_S = 60.0


def _lower_priority(nice: int) -> None:
    """Worker initializer: fits yield the CPU to the platform's request paths."""
    with contextlib.suppress(OSError):
        os.nice(nice)


def fit(
    site: SiteConfig,
    stream: int,
    spec: ModelSpec,
    history: pd.Series,
    now: pd.Timestamp,
    candidates: CandidateFactory = default_candidates,
) -> ServedModel:
    """One site stream's fit and validation (in a worker process: arguments and result are pickled)."""
    return select_model(site, stream, history, now, spec, candidates)


class Trainer:
    def __init__(
        self,
        settings: ForecastingSettings,
        models: ModelWorker,
        on_forecasts: Callable[[list[CachedForecast]], None],
        *,
        candidates: CandidateFactory = default_candidates,
        on_round_done: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_round_done = on_round_done
        self.models = models
        self.core = models.core
        self.on_forecasts = on_forecasts
        self.candidates = candidates
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecasting-train-read")
        self._pool: Executor
        if settings.training_processes > 0:
            self._pool = ProcessPoolExecutor(
                max_workers=settings.training_processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_lower_priority,
                initargs=(settings.training_nice,),
            )
        else:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecasting-train")
        self._retry_at: dict[tuple[str, int], float] = {}
        self._wake = asyncio.Event()
        self.fits = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        workers = max(1, self.settings.training_processes)
        while True:
            now_s = time.time()
            due = [
                key
                for key in await self.models.due_for_training(self.core.clock())
                if self._retry_at.get(key, 0.0) <= now_s
            ]
            if due:
                await asyncio.gather(*(self._work(due) for _ in range(workers)))
                if self.on_round_done is not None:  # e.g. an issue cycle, so the portfolio uses the new fits
                    self.on_round_done()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=IDLE_POLL_S)
            self._wake.clear()

    async def _work(self, queue: list[tuple[str, int]]) -> None:
        while queue:
            site_id, stream = queue.pop(0)
            try:
                await self.fit_one(site_id, stream)
            except NoHistory as exc:
                self._retry_at[(site_id, stream)] = time.time() + RETRY_AFTER_S
                log.info("fit_postponed", site_id=site_id, stream=STREAM_LABEL[stream], reason=str(exc))
            except Exception:  # one bad site must not stop the others' fits
                self._retry_at[(site_id, stream)] = time.time() + RETRY_AFTER_S
                log.exception("fit_failed", site_id=site_id, stream=STREAM_LABEL[stream], retry_in_s=RETRY_AFTER_S)

    async def fit_one(self, site_id: str, stream: int) -> ServedModel:
        loop = asyncio.get_running_loop()
        now = self.core.clock()
        history = await loop.run_in_executor(self._reader, self._read, site_id, stream, now)
        started = time.perf_counter()
        served: ServedModel = await loop.run_in_executor(
            self._pool, fit, self.core.sites[site_id], stream, self.core.spec, history, now, self.candidates
        )
        label = STREAM_LABEL[stream]
        m.TRAINING_SECONDS.labels(label).observe(time.perf_counter() - started)
        m.TRAINING_CPU_SECONDS.labels(label).inc(served.summary.fit_cpu_s)
        self.on_forecasts(await self.models.install(served))
        self._retry_at.pop((site_id, stream), None)
        self.fits += 1
        return served

    def _read(self, site_id: str, stream: int, now: pd.Timestamp) -> pd.Series:
        series = self.core.training_history(site_id, stream, now)
        if not series.notna().any():
            raise NoHistory(f"site {site_id!r} has no {STREAM_LABEL[stream]} measurements yet")
        return series

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
