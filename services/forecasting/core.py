"""The forecasting core: the served models of every site stream and the forecasts computed from them.

Streams and how each is forecast:

* PV and LOAD of a site: the model chosen by ``forecasting.selection`` from the candidates, which
  serves the seasonal-naive fallback unless a candidate beats it on the latest ``validation_days``.
* NET of a site (load - pv): *sample-based*, from the site's PV and LOAD quantile sets coupled by a
  Gaussian copula with correlation ``pv_load_error_corr`` (default 0: PV and load forecast errors are
  assumed independent given the forecasts), see ``combine.py``.
* The portfolio (empty site id): never a sum of quantiles. The per-site marginals are coupled by the
  same copula with inter-site error correlations ``pv_inter_site_error_corr`` (PV errors of nearby sites
  share the weather, default 0.8) and ``load_inter_site_error_corr`` (households, default 0.1), and the
  quantiles are read off the summed samples.

Models are refit daily (``retrain_interval_s``) or when missing; between fits every refresh feeds them
the latest measurements with ``update`` (cheap), so lags and the issue time are always current.

Threads: ``ForecastingCore`` is blocking and deliberately *not* thread-safe; ``ModelThread`` gives it
one owner thread (see its docstring for why that replaces every lock).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from vpp.v1 import forecast_pb2, forecasting_pb2

from forecasting import metrics as m
from forecasting.combine import GRID_QUANTILES, Marginal, combine, correlation_matrix
from forecasting.live_error import LiveError
from forecasting.mapping import LOAD, NET, PV, model_infos, to_proto
from forecasting.selection import (
    CandidateFactory,
    ModelSummary,
    NoHistory,
    ServedModel,
    default_candidates,
    select_model,
)
from forecasting.settings import ForecastingSettings
from forecasting.sites import SiteConfig
from forecasting.store import SLOT, HistoryStore
from vpp_common.logs import get_logger

log = get_logger(__name__)

MODELLED_STREAMS = (PV, LOAD)  # NET is derived from these two
MAX_HORIZON_MIN = 36 * 60
DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)

Marginals = dict[tuple[str, int], tuple[pd.DataFrame, str]]
T = TypeVar("T")


def first_slot(issue: pd.Timestamp) -> pd.Timestamp:
    """The first slot a forecast issued at ``issue`` covers: the next slot start at or after it."""
    return issue.ceil(SLOT)


@dataclass
class RefreshRun:
    """One scheduled refresh in progress, done one site per step so other work can run in between.

    Created and advanced on the model thread only; the event loop merely holds it between steps."""

    issue: pd.Timestamp
    slots: pd.DatetimeIndex
    history: dict[str, pd.DataFrame]
    started_s: float
    marginals: Marginals = field(default_factory=dict)


class ForecastingCore:
    """Blocking domain logic on the model state. Not thread-safe by design: call it from one thread
    (``ModelThread`` in the service, the test's own thread in tests)."""

    def __init__(
        self,
        settings: ForecastingSettings,
        store: HistoryStore,
        sites: Sequence[SiteConfig],
        *,
        candidates: CandidateFactory = default_candidates,
        clock: Callable[[], pd.Timestamp] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sites = {s.site_id: s for s in sites}
        self._candidates = candidates
        self.clock = clock or (lambda: pd.Timestamp.now(tz="UTC"))
        self._models: dict[tuple[str, int], ServedModel] = {}
        self._live = LiveError()

    # -- models ------------------------------------------------------------------------------------

    def histories(self, site_ids: Sequence[str], now: pd.Timestamp) -> dict[str, pd.DataFrame]:
        """Complete slots only: the slot in progress would look like a drop in power."""
        end = now.floor(SLOT)
        start = end - pd.Timedelta(days=self.settings.train_history_days)
        return self.store.history_many(site_ids, start, end)

    def served(self, site_id: str, stream: int) -> ServedModel | None:
        return self._models.get((site_id, stream))

    def summaries(self) -> tuple[ModelSummary, ...]:
        """What serves each fitted site stream: immutable, safe to hand to another thread."""
        return tuple(served.summary for served in self._models.values())

    def model_infos(self) -> list[forecasting_pb2.ModelInfo]:
        """Every candidate of every fitted site stream, its validation score and whether it is served."""
        return model_infos(self.summaries())

    def ensure_model(self, site_id: str, stream: int, history: pd.Series, now: pd.Timestamp) -> ServedModel:
        """The served model, fit first if missing or older than ``retrain_interval_s``; else fed ``history``."""
        key = (site_id, stream)
        current = self._models.get(key)
        age_s = None if current is None else (now.to_pydatetime() - current.trained_at).total_seconds()
        if current is not None and age_s is not None and age_s < self.settings.retrain_interval_s:
            current.model.update(history)
            return current
        served = select_model(self.sites[site_id], stream, history, now, self.settings, self._candidates)
        self._models[key] = served
        return served

    def _predict(
        self, served: ServedModel, issue: pd.Timestamp, slots: pd.DatetimeIndex, quantiles: Sequence[float]
    ) -> pd.DataFrame:
        frame = served.model.predict(issue, slots, list(quantiles))
        frame = frame.clip(lower=0.0)  # both modelled streams are powers that cannot be negative
        values = np.sort(frame.to_numpy(dtype=float), axis=1)  # non-crossing, whatever the model did
        if served.stream == PV:
            # No PV while the sun is down, whatever a statistical fallback's error band says.
            values[~self._sun_up(served.site_id, slots)] = 0.0
        return pd.DataFrame(values, index=slots, columns=[float(q) for q in quantiles])

    def _sun_up(self, site_id: str, slots: pd.DatetimeIndex) -> np.ndarray:
        from forecasting.models.physics import pv_physics
        from forecasting.models.pv import PvSite

        phys = pv_physics(PvSite(**self.sites[site_id].pv.model_dump()), slots)
        return np.asarray(phys["ac_clear_kw"].to_numpy(dtype=float) > 0.0)

    # -- forecasts ---------------------------------------------------------------------------------

    def forecast(
        self,
        site_id: str,
        stream: int,
        horizon_minutes: int = MAX_HORIZON_MIN,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        now: pd.Timestamp | None = None,
    ) -> forecast_pb2.Forecast:
        """One forecast, computed now from the current models and the latest measurements."""
        issue = now if now is not None else self.clock()
        slots = pd.date_range(first_slot(issue), periods=horizon_minutes // 15, freq=SLOT)
        qs = sorted({float(q) for q in quantiles})
        if site_id and stream in MODELLED_STREAMS:
            # Asked of the model itself: it interpolates its own quantile grid, so any level is served
            # the way the published forecast's levels are.
            column = "pv_kw" if stream == PV else "load_kw"
            served = self.ensure_model(site_id, stream, self.histories([site_id], issue)[site_id][column], issue)
            return to_proto(site_id, stream, issue, self._predict(served, issue, slots, qs), served.name)
        site_ids = [site_id] if site_id else list(self.sites)
        streams = (stream,) if stream in MODELLED_STREAMS else MODELLED_STREAMS
        marginals = self._marginals(site_ids, streams, issue, slots)
        frame, name = self._assemble(site_id, stream, marginals, qs)
        return to_proto(site_id, stream, issue, frame, name)

    def _marginals(
        self, site_ids: Sequence[str], streams: Sequence[int], issue: pd.Timestamp, slots: pd.DatetimeIndex
    ) -> Marginals:
        """Grid-quantile forecasts per (site, modelled stream), models fit or updated first."""
        hist = self.histories(site_ids, issue)
        out: Marginals = {}
        for sid in site_ids:
            for stream in streams:
                column = "pv_kw" if stream == PV else "load_kw"
                served = self.ensure_model(sid, stream, hist[sid][column], issue)
                out[(sid, stream)] = (self._predict(served, issue, slots, GRID_QUANTILES), served.name)
        return out

    def _assemble(
        self, site_id: str, stream: int, marginals: Marginals, quantiles: Sequence[float]
    ) -> tuple[pd.DataFrame, str]:
        """The wanted stream's quantiles from the grid marginals (see the module docstring)."""
        s = self.settings
        site_ids = [site_id] if site_id else list(self.sites)
        streams = (stream,) if stream in MODELLED_STREAMS else MODELLED_STREAMS
        if site_id and stream in MODELLED_STREAMS:
            grid, name = marginals[(site_id, stream)]
            return grid[list(quantiles)], name
        parts: list[Marginal] = []
        groups: list[str] = []
        owners: list[str] = []
        for sid in site_ids:
            for st in streams:
                grid, _ = marginals[(sid, st)]
                weight = -1.0 if (stream == NET and st == PV) else 1.0
                parts.append(Marginal(grid, weight, "pv" if st == PV else "load"))
                groups.append("pv" if st == PV else "load")
                owners.append(sid)
        corr = correlation_matrix(
            groups,
            owners,
            pv_load=s.pv_load_error_corr,
            pv_pv=s.pv_inter_site_error_corr,
            load_load=s.load_inter_site_error_corr,
        )
        lower = None if stream == NET else 0.0
        frame = combine(parts, corr, quantiles, n_samples=s.combine_samples, lower_kw=lower)
        if site_id:
            pv_name, load_name = marginals[(site_id, PV)][1], marginals[(site_id, LOAD)][1]
            name = f"copula(load={load_name}-pv={pv_name},rho={s.pv_load_error_corr:g})"
        else:
            name = (
                f"portfolio-copula(sites={len(site_ids)},rho_pv={s.pv_inter_site_error_corr:g},"
                f"rho_load={s.load_inter_site_error_corr:g},rho_pv_load={s.pv_load_error_corr:g})"
            )
        return frame, name

    # -- the scheduled refresh, in steps -----------------------------------------------------------

    def start_refresh(self, now: pd.Timestamp | None = None) -> RefreshRun:
        """Read every site's history once (one query) for a refresh issued ``now``."""
        issue = now if now is not None else self.clock()
        slots = pd.date_range(first_slot(issue), periods=MAX_HORIZON_MIN // 15, freq=SLOT)
        return RefreshRun(issue, slots, self.histories(list(self.sites), issue), time.perf_counter())

    def refresh_site(self, run: RefreshRun, site_id: str) -> list[forecast_pb2.Forecast]:
        """One site's PV, LOAD and NET forecasts for the full 36 h horizon (none without history)."""
        hist = run.history[site_id]
        self._live.score(site_id, hist, run.issue.floor(SLOT), time.time())
        try:
            for stream in MODELLED_STREAMS:
                column = "pv_kw" if stream == PV else "load_kw"
                served = self.ensure_model(site_id, stream, hist[column], run.issue)
                grid = self._predict(served, run.issue, run.slots, GRID_QUANTILES)
                run.marginals[(site_id, stream)] = (grid, served.name)
        except NoHistory as exc:
            log.warning("forecast_skipped", site_id=site_id, reason=str(exc))
            return []
        out: list[forecast_pb2.Forecast] = []
        for stream in (PV, LOAD, NET):
            frame, name = self._assemble(site_id, stream, run.marginals, DEFAULT_QUANTILES)
            self._live.remember(site_id, stream, frame)
            out.append(to_proto(site_id, stream, run.issue, frame, name))
        return out

    def finish_refresh(self, run: RefreshRun) -> list[forecast_pb2.Forecast]:
        """The portfolio's forecasts, if every site has its marginals (never a portfolio missing a site)."""
        out: list[forecast_pb2.Forecast] = []
        if run.marginals and all((sid, PV) in run.marginals for sid in self.sites):
            for stream in (PV, LOAD, NET):
                frame, name = self._assemble("", stream, run.marginals, DEFAULT_QUANTILES)
                out.append(to_proto("", stream, run.issue, frame, name))
        m.REFRESH_SECONDS.observe(time.perf_counter() - run.started_s)
        return out

    def refresh(self, now: pd.Timestamp | None = None) -> list[forecast_pb2.Forecast]:
        """Every site's PV, LOAD and NET forecast and the portfolio's, in one call (the owner's thread)."""
        run = self.start_refresh(now)
        out: list[forecast_pb2.Forecast] = []
        for sid in self.sites:
            out.extend(self.refresh_site(run, sid))
        out.extend(self.finish_refresh(run))
        return out


class ModelThread:
    """The one owner of the model state: every ``ForecastingCore`` call runs on a single dedicated thread.

    Why: fits, ``update`` and ``predict`` mutate and read model objects (LightGBM boosters, remembered
    histories, live-error bookkeeping) that are not thread-safe. Serialising all of them on one worker
    thread means no two of them ever overlap, so no lock is needed and none can be forgotten; the event
    loop never blocks because it only awaits that thread. The only thing that leaves the thread is
    immutable: forecasts (new protos) and ``ModelSummary`` snapshots, which it posts to the loop after
    every job so ``ListModels`` answers from the loop at once, even during a fit.

    Cost, accepted for now: a ``GetForecast`` queues behind the job running on the thread. The scheduled
    refresh is submitted one site per job, so a request waits for at most one site's fit/predict rather
    than the whole refresh (serving precomputed forecasts, a later issue, removes the wait).
    """

    def __init__(self, core: ForecastingCore) -> None:
        self.core = core
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecasting-models")
        self._summaries: tuple[ModelSummary, ...] = ()  # event loop only

    @property
    def site_ids(self) -> list[str]:
        return list(self.core.sites)

    async def refresh(self, now: pd.Timestamp | None = None) -> list[forecast_pb2.Forecast]:
        """Every site's forecasts and the portfolio's; cancelling it stops after the current site."""
        run = await self._run(self.core.start_refresh, now)
        out: list[forecast_pb2.Forecast] = []
        for sid in self.site_ids:
            out.extend(await self._run(self.core.refresh_site, run, sid))
        out.extend(await self._run(self.core.finish_refresh, run))
        return out

    async def forecast(
        self, site_id: str, stream: int, horizon_minutes: int, quantiles: Sequence[float]
    ) -> forecast_pb2.Forecast:
        """``ForecastingCore.forecast`` on the model thread (raises ``NoHistory`` like it)."""
        return await self._run(self.core.forecast, site_id, stream, horizon_minutes, quantiles)

    def model_infos(self) -> list[forecasting_pb2.ModelInfo]:
        """From the latest snapshot, on the loop: never waits for the model thread."""
        return model_infos(self._summaries)

    def close(self) -> None:
        """Drop queued jobs; the one running finishes on its own (a fit cannot be interrupted)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """One job on the model thread; the model summaries it leaves come back with its result (a
        cancelled caller's are picked up by the next job)."""
        loop = asyncio.get_running_loop()
        error, result, summaries = await loop.run_in_executor(self._executor, self._job, functools.partial(fn, *args))
        self._summaries = summaries
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def _job(self, call: Callable[[], T]) -> tuple[BaseException | None, T | None, tuple[ModelSummary, ...]]:
        """On the model thread: the call, and a snapshot of the summaries after it."""
        try:
            result: T | None = call()
            error: BaseException | None = None
        except Exception as exc:
            result, error = None, exc
        return error, result, self.core.summaries()

