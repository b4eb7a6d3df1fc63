"""The forecasting core: the served model of every site stream and the forecasts computed from them.

Streams and how each is forecast:

* PV and LOAD of a site: the model chosen by ``forecasting.selection`` (the backtested candidate of
  ``forecasting.models.spec``, unless it loses to its seasonal-naive fallback on the latest days). Until
  the background fit of a site stream is done, its fallback serves and every forecast says so
  (``Forecast.fallback_reason``).
* NET of a site (load - pv): *sample-based*, from the site's PV and LOAD quantile sets coupled by a
  Gaussian copula with correlation ``pv_load_error_corr`` (see ``vpp_common.copula``).
* The portfolio (empty site id): never a sum of quantiles. The per-site marginals are coupled by the
  same copula with inter-site error correlations ``pv_inter_site_error_corr`` (PV errors of nearby sites
  share the weather) and ``load_inter_site_error_corr``; quantiles are read off the summed samples.

Once per issue cycle (``refresh``) every site's and the portfolio's forecasts are computed for the full
horizon plus one refresh interval, at ``CACHE_LEVELS``, and handed to the event loop as immutable
``CachedForecast`` values: ``GetForecast`` answers from those (slicing and interpolating, no model, no
store) and never waits for the model thread or a fit. Fits never run here either: they are made
elsewhere (``forecasting.training``) and handed over with ``install``.

Ownership: ``ForecastingCore`` is blocking and deliberately *not* thread-safe; ``ModelWorker``
(``forecasting.model_worker``) gives it one owner, a process of its own in production (see there why).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from vpp.v1 import forecasting_pb2

from forecasting import metrics as m
from forecasting.live_error import LiveError
from forecasting.mapping import LOAD, NET, PV, encoded_points, model_infos
from forecasting.models.quantile_boosting import QUANTILE_GRID
from forecasting.selection import (
    CandidateFactory,
    ModelSummary,
    NoHistory,
    ServedModel,
    default_candidates,
    fallback_model,
    select_model,
)
from forecasting.settings import ForecastingSettings
from forecasting.sites import SiteConfig
from forecasting.store import SLOT, HistoryStore
from vpp_common.copula import GRID_QUANTILES, Marginal, combine, correlation_matrix
from vpp_common.logs import get_logger

log = get_logger(__name__)

MODELLED_STREAMS = (PV, LOAD)  # NET is derived from these two
MAX_HORIZON_MIN = 36 * 60
DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
# Levels every forecast is kept at: the copula's grid plus every level the models are trained at, so a
# level a model predicts is served exactly and any other is linear between neighbours (as the models do).
CACHE_LEVELS: tuple[float, ...] = tuple(sorted(set(GRID_QUANTILES) | set(QUANTILE_GRID)))
READ_CHUNK_SITES = 100  # sites whose prediction history one store query reads

Marginals = dict[tuple[str, int], tuple[pd.DataFrame, str]]


def first_slot(issue: pd.Timestamp) -> pd.Timestamp:
    """The first slot a forecast issued at ``issue`` covers: the next slot start at or after it."""
    return issue.ceil(SLOT)


def column_of(stream: int) -> str:
    return "pv_kw" if stream == PV else "load_kw"


@dataclass(frozen=True)
class CachedForecast:
    """One stream's forecast of one issue cycle at ``CACHE_LEVELS``: immutable, shared with the loop."""

    site_id: str  # "" = the portfolio
    stream: int
    issued_at: pd.Timestamp
    slots_ns: np.ndarray  # slot starts, int64 ns UTC (read-only)
    values_kw: np.ndarray  # (slots, CACHE_LEVELS), non-decreasing per row (read-only)
    model: str
    fallback_reason: str = ""  # why a fallback serves ("" = the backtested model serves)
    fingerprint: str = ""  # the model configuration's fingerprint
    # Each slot at DEFAULT_QUANTILES as the wire bytes of one Forecast.points element, encoded where the
    # forecast is made (the model owner), so a request only joins the bytes of its window.
    default_points: tuple[bytes, ...] = ()

    @staticmethod
    def of(
        site_id: str,
        stream: int,
        issued_at: pd.Timestamp,
        frame: pd.DataFrame,
        model: str,
        fallback_reason: str = "",
        fingerprint: str = "",
    ) -> CachedForecast:
        slots = np.asarray(pd.DatetimeIndex(frame.index).as_unit("ns").asi8, dtype=np.int64)
        values = np.ascontiguousarray(frame[list(CACHE_LEVELS)].to_numpy(dtype=float))
        slots.setflags(write=False)
        values.setflags(write=False)
        entry = CachedForecast(site_id, stream, issued_at, slots, values, model, fallback_reason, fingerprint)
        return dataclasses.replace(entry, default_points=tuple(encoded_points(entry, DEFAULT_QUANTILES)))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.values_kw, index=pd.to_datetime(self.slots_ns, utc=True), columns=list(CACHE_LEVELS))


@dataclass
class RefreshRun:
    """One issue cycle in progress, done one site per step so other work can run in between.

    Created and advanced on the model thread only; the event loop merely holds it between steps."""

    issue: pd.Timestamp
    slots: pd.DatetimeIndex
    started_s: float
    history: dict[str, pd.DataFrame] = field(default_factory=dict)
    marginals: Marginals = field(default_factory=dict)
    reasons: dict[tuple[str, int], str] = field(default_factory=dict)


class ForecastingCore:
    """Blocking domain logic on the model state. Not thread-safe by design: call it from one thread
    (``ModelWorker`` in the service, the test's own thread in tests)."""

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
        self.spec = settings.model
        self.store = store
        self.sites = {s.site_id: s for s in sites}
        self._order = list(self.sites)
        self.candidates = candidates
        self.clock = clock or (lambda: pd.Timestamp.now(tz="UTC"))
        self._models: dict[tuple[str, int], ServedModel] = {}
        self._live = LiveError()
        self._daylight: dict[str, tuple[int, np.ndarray]] = {}  # site -> (first slot ns, sun up per slot)
        self._cycle: RefreshRun | None = None

    # -- history -----------------------------------------------------------------------------------

    def histories(self, site_ids: Sequence[str], now: pd.Timestamp, days: int) -> dict[str, pd.DataFrame]:
        """Complete slots only (the slot in progress would look like a drop in power), ``days`` back."""
        end = now.floor(SLOT)
        return self.store.history_many(site_ids, end - pd.Timedelta(days=days), end)

    def training_days(self) -> int:
        """A fit reads its training window plus the look-back of the features at the window's start, so
        the rows it trains on are the backtest's rows (whose series reaches further back)."""
        return self.spec.history_days + self.settings.predict_history_days

    # -- models ------------------------------------------------------------------------------------

    def served(self, site_id: str, stream: int) -> ServedModel | None:
        return self._models.get((site_id, stream))

    def summaries(self) -> tuple[ModelSummary, ...]:
        """What serves each site stream: immutable, safe to hand to another thread."""
        return tuple(served.summary for served in self._models.values())

    def model_infos(self) -> list[forecasting_pb2.ModelInfo]:
        return model_infos(self.summaries(), None, self.spec.fingerprint())

    def due_for_training(self, now: pd.Timestamp) -> list[tuple[str, int]]:
        """Site streams to fit: never fit first (serving their fallback), then the oldest fits."""
        never: list[tuple[str, int]] = []
        old: list[tuple[float, tuple[str, int]]] = []
        for sid in self._order:
            for stream in MODELLED_STREAMS:
                served = self._models.get((sid, stream))
                if served is None or not served.summary.fitted:
                    never.append((sid, stream))
                    continue
                age_s = (now.to_pydatetime() - served.trained_at).total_seconds()
                if age_s >= self.settings.retrain_interval_s:
                    old.append((served.trained_at.timestamp(), (sid, stream)))
        return never + [key for _, key in sorted(old)]

    def training_history(self, site_id: str, stream: int, now: pd.Timestamp) -> pd.Series:
        """What a fit of this site stream at ``now`` reads (store only: safe from any thread)."""
        return self.histories([site_id], now, self.training_days())[site_id][column_of(stream)]

    def train(self, site_id: str, stream: int, now: pd.Timestamp | None = None) -> ServedModel:
        """Fit and validate one site stream here and now (blocking; tests)."""
        issue = now if now is not None else self.clock()
        history = self.training_history(site_id, stream, issue)
        served = select_model(self.sites[site_id], stream, history, issue, self.spec, self.candidates)
        self.install(served)
        return served

    def install(self, served: ServedModel) -> None:
        """Hand a fitted model over to this thread (the trainer keeps no reference to it)."""
        self._models[(served.site_id, served.stream)] = served

    def _ensure_served(self, site_id: str, stream: int, history: pd.Series, issue: pd.Timestamp) -> ServedModel:
        """The installed model fed the latest measurements, or the fallback (fit at once) if none is."""
        key = (site_id, stream)
        current = self._models.get(key)
        if current is None:
            current = fallback_model(self.sites[site_id], stream, self.spec, history, issue)
            self._models[key] = current
            return current
        current.model.update(history)
        return current

    def _predict(self, served: ServedModel, issue: pd.Timestamp, slots: pd.DatetimeIndex) -> pd.DataFrame:
        frame = served.model.predict(issue, slots, list(CACHE_LEVELS))
        frame = frame.clip(lower=0.0)  # both modelled streams are powers that cannot be negative
        values = np.sort(frame.to_numpy(dtype=float), axis=1)  # non-crossing, whatever the model did
        if served.stream == PV and getattr(served.model, "is_fallback", False):
            # No PV while the sun is down, whatever a statistical fallback's error band says.
            values[~self._sun_up(served.site_id, slots)] = 0.0
        return pd.DataFrame(values, index=slots, columns=list(CACHE_LEVELS))

    def _sun_up(self, site_id: str, slots: pd.DatetimeIndex) -> np.ndarray:
        """Whether the clear-sky array makes power, from a 4-day window computed once a day per site
        (pvlib costs ~150 ms a call; an issue cycle of 1,000 sites cannot pay it every time)."""
        from forecasting.models.physics import pv_physics
        from forecasting.models.pv import PvSite

        step = SLOT.value
        cached = self._daylight.get(site_id)
        if cached is None or slots[0].value < cached[0] or slots[-1].value >= cached[0] + len(cached[1]) * step:
            start = slots[0].floor("D")
            grid = pd.date_range(start, periods=4 * 96, freq=SLOT)
            phys = pv_physics(PvSite(**self.sites[site_id].pv.model_dump()), grid)
            cached = (int(start.value), np.asarray(phys["ac_clear_kw"].to_numpy(dtype=float) > 0.0))
            self._daylight[site_id] = cached
        return cached[1][(np.asarray(slots.as_unit("ns").asi8) - cached[0]) // step]

    # -- the issue cycle, in steps -----------------------------------------------------------------

    def cache_slots(self, issue: pd.Timestamp) -> pd.DatetimeIndex:
        """The full horizon plus one refresh interval, so a request until the next cycle is covered."""
        extra = math.ceil(self.settings.refresh_interval_s / SLOT.total_seconds()) + 1
        return pd.date_range(first_slot(issue), periods=MAX_HORIZON_MIN // 15 + extra, freq=SLOT)

    def start_refresh(self, now: pd.Timestamp | None = None) -> RefreshRun:
        issue = now if now is not None else self.clock()
        return RefreshRun(issue, self.cache_slots(issue), time.perf_counter())

    def _history_of(self, run: RefreshRun, site_id: str) -> pd.DataFrame:
        """The site's prediction window, read with the next sites' in one query (bounded memory)."""
        if site_id not in run.history:
            run.history.clear()
            at = self._order.index(site_id)
            chunk = self._order[at : at + READ_CHUNK_SITES]
            run.history.update(self.histories(chunk, run.issue, self.settings.predict_history_days))
        return run.history[site_id]

    def refresh_site(self, run: RefreshRun, site_id: str) -> list[CachedForecast]:
        """One site's PV, LOAD and NET forecasts (none without history): models updated, never fit."""
        hist = self._history_of(run, site_id)
        self._live.score(site_id, hist, run.issue.floor(SLOT), time.time())
        fingerprint = self.spec.fingerprint()
        try:
            for stream in MODELLED_STREAMS:
                served = self._ensure_served(site_id, stream, hist[column_of(stream)], run.issue)
                run.marginals[(site_id, stream)] = (self._predict(served, run.issue, run.slots), served.name)
                run.reasons[(site_id, stream)] = served.summary.fallback_reason
        except NoHistory as exc:
            log.warning("forecast_skipped", site_id=site_id, reason=str(exc))
            return []
        out: list[CachedForecast] = []
        for stream in (PV, LOAD, NET):
            frame, name = self._assemble(site_id, stream, run.marginals)
            reason = "; ".join(
                f"{'pv' if st == PV else 'load'}: {run.reasons[(site_id, st)]}"
                for st in MODELLED_STREAMS
                if (stream in (st, NET)) and run.reasons[(site_id, st)]
            )
            self._live.remember(site_id, stream, frame)
            out.append(CachedForecast.of(site_id, stream, run.issue, frame, name, reason, fingerprint))
        return out

    def finish_refresh(self, run: RefreshRun) -> list[CachedForecast]:
        """The portfolio's forecasts, if every site has its marginals (never a portfolio missing a site)."""
        out: list[CachedForecast] = []
        if run.marginals and all((sid, PV) in run.marginals for sid in self.sites):
            fallbacks = sum(1 for reason in run.reasons.values() if reason)
            reason = f"{fallbacks} of {len(run.reasons)} site streams served by their fallback" if fallbacks else ""
            for stream in (PV, LOAD, NET):
                frame, name = self._assemble("", stream, run.marginals)
                out.append(CachedForecast.of("", stream, run.issue, frame, name, reason, self.spec.fingerprint()))
        m.record(m.REFRESH_SECONDS, (), "observe", time.perf_counter() - run.started_s)
        run.history.clear()
        return out

    def refresh(self, now: pd.Timestamp | None = None) -> list[CachedForecast]:
        """Every site's PV, LOAD and NET forecast and the portfolio's, in one call (the owner's thread)."""
        run = self.start_refresh(now)
        out: list[CachedForecast] = []
        for sid in self.sites:
            out.extend(self.refresh_site(run, sid))
        out.extend(self.finish_refresh(run))
        return out

    # -- the same, in steps the owner can interleave with other jobs (no run object crosses over) ----

    def begin_cycle(self, now: pd.Timestamp | None = None) -> None:
        self._cycle = self.start_refresh(now)

    def cycle_site(self, site_id: str) -> list[CachedForecast]:
        if self._cycle is None:
            raise RuntimeError("begin_cycle first")
        return self.refresh_site(self._cycle, site_id)

    def end_cycle(self) -> list[CachedForecast]:
        if self._cycle is None:
            raise RuntimeError("begin_cycle first")
        run, self._cycle = self._cycle, None
        return self.finish_refresh(run)

    def install_and_refresh(self, served: ServedModel, now: pd.Timestamp | None = None) -> list[CachedForecast]:
        """Take a fitted model over and recompute that site's forecasts with it at once (a run of its own:
        a cycle in progress is not disturbed)."""
        self.install(served)
        return self.refresh_site(self.start_refresh(now), served.site_id)

    def _assemble(self, site_id: str, stream: int, marginals: Marginals) -> tuple[pd.DataFrame, str]:
        """The wanted stream at ``CACHE_LEVELS`` from the marginals (see the module docstring)."""
        s = self.settings
        if site_id and stream in MODELLED_STREAMS:
            return marginals[(site_id, stream)]
        site_ids = [site_id] if site_id else list(self.sites)
        streams = (stream,) if stream in MODELLED_STREAMS else MODELLED_STREAMS
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
        frame = combine(parts, corr, CACHE_LEVELS, n_samples=s.combine_samples, lower_kw=lower)
        if site_id:
            pv_name, load_name = marginals[(site_id, PV)][1], marginals[(site_id, LOAD)][1]
            name = f"copula(load={load_name}-pv={pv_name},rho={s.pv_load_error_corr:g})"
        else:
            name = (
                f"portfolio-copula(sites={len(site_ids)},rho_pv={s.pv_inter_site_error_corr:g},"
                f"rho_load={s.load_inter_site_error_corr:g},rho_pv_load={s.pv_load_error_corr:g})"
            )
        return frame, name
