"""The one owner of the model state: every ``ForecastingCore`` job runs in one place, one at a time.

Why one owner: ``update`` and ``predict`` mutate and read model objects (LightGBM boosters, remembered
histories, live-error bookkeeping) that are not thread-safe. Serialising every job on one worker means
no two ever overlap, so no lock is needed and none can be forgotten; the event loop only awaits it.
Fits are not run here either: the trainer makes a fitted model and hands it over
(``install_and_refresh``), after which only the owner touches it. What comes back is immutable:
``CachedForecast`` values and ``ModelSummary`` snapshots (after every job), so ``ListModels`` and
``GetForecast`` answer from the loop at once, whatever the owner is doing.

Why a process of its own (``model_process``, the default): an issue cycle is numpy and pandas work that
takes the GIL in short bursts all the time; run on a thread of the service process, those bursts stood
between every gRPC request and the CPU (measured with 60 sites: the health check's p99 was 90 ms while a
cycle ran). In its own process the service process only slices cached arrays and builds protos. Metric
updates made there are shipped back with each job's result (``forecasting.metrics.record``). A thread
(``model_process=false``) is kept for tests and for an in-memory store, which a second process cannot see.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pandas as pd

from forecasting import metrics as m
from forecasting.core import CachedForecast, ForecastingCore
from forecasting.selection import CandidateFactory, ModelSummary, ServedModel
from forecasting.settings import ForecastingSettings
from forecasting.sites import SiteConfig
from forecasting.store import HistoryStore

MODEL_PROCESS_NICE = 5  # below the request paths of the platform, above the fits (training_nice)

_core: ForecastingCore | None = None  # in the model process: its one core

Result = tuple[Any, tuple[ModelSummary, ...], list[tuple[str, tuple[str, ...], str, float]]]


def _start(settings: ForecastingSettings, sites: list[SiteConfig], candidates: CandidateFactory) -> None:
    """Model process initializer: lower priority, defer metrics, open the store, build the core."""
    global _core
    with contextlib.suppress(OSError):
        os.nice(MODEL_PROCESS_NICE)
    m.defer()
    _core = ForecastingCore(settings, HistoryStore(settings.store_url), sites, candidates=candidates)


def _remote(name: str, args: tuple[Any, ...]) -> Result:
    if _core is None:
        raise RuntimeError("model process not initialised")
    return _local(_core, name, args)


def _local(core: ForecastingCore, name: str, args: tuple[Any, ...]) -> Result:
    result = getattr(core, name)(*args)
    return result, core.summaries(), m.drain()


class ModelWorker:
    """Async front of the model owner (a process, or a thread of this one)."""

    def __init__(self, core: ForecastingCore, *, process: bool | None = None) -> None:
        # In process mode ``core`` is this process's copy of the configuration (sites, spec, clock, store
        # for reads); the models live in the worker's own core.
        self.core = core
        self.process = core.settings.model_process if process is None else process
        self._executor: Executor
        if self.process:
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),  # never fork a process running gRPC
                initializer=_start,
                initargs=(core.settings, list(core.sites.values()), core.candidates),
            )
        else:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecasting-models")
        self._summaries: tuple[ModelSummary, ...] = ()  # event loop only

    @property
    def site_ids(self) -> list[str]:
        return list(self.core.sites)

    async def refresh(
        self, now: pd.Timestamp | None = None, on_site: Any = None
    ) -> list[CachedForecast]:
        """Every site's forecasts and the portfolio's; ``on_site`` gets each site's as soon as it is done.
        Cancelling it stops after the current site."""
        await self._call("begin_cycle", now if now is not None else self.core.clock())
        out: list[CachedForecast] = []
        for sid in self.site_ids:
            done: list[CachedForecast] = await self._call("cycle_site", sid)
            if on_site is not None and done:
                on_site(done)
            out.extend(done)
        out.extend(await self._call("end_cycle"))
        return out

    async def install(self, served: ServedModel) -> list[CachedForecast]:
        """Hand a fitted model over; the site's forecasts recomputed with it come back."""
        result: list[CachedForecast] = await self._call("install_and_refresh", served, self.core.clock())
        return result

    async def due_for_training(self, now: pd.Timestamp) -> list[tuple[str, int]]:
        result: list[tuple[str, int]] = await self._call("due_for_training", now)
        return result

    def summaries(self) -> tuple[ModelSummary, ...]:
        """The latest snapshot, on the loop: never waits for the owner."""
        return self._summaries

    def close(self) -> None:
        """Drop queued jobs; the one running finishes on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _call(self, name: str, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self.process:
            result, summaries, events = await loop.run_in_executor(self._executor, _remote, name, args)
        else:
            result, summaries, events = await loop.run_in_executor(self._executor, _local, self.core, name, args)
        self._summaries = summaries
        m.apply(events)
        return result
