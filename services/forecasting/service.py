"""The forecasting core and its wiring into ``ServiceApp``.

``ForecastingCore`` is plain blocking code (store reads, model fits, predictions); the asyncio side only
ever calls it through ``run_in_executor``, so a fit never stalls the event loop or the gRPC server.

Streams and how each is forecast:

* PV and LOAD of a site: the model chosen by ``choose_served_model`` from the candidates (PV: the
  physical pvlib model with learnt residuals; LOAD: LightGBM quantile regression), which serves the
  seasonal-naive fallback unless a candidate beats it on the latest ``validation_days``.
* NET of a site (load - pv): *sample-based*, from the site's PV and LOAD quantile sets coupled by a
  Gaussian copula with correlation ``pv_load_error_corr`` (default 0: PV and load forecast errors are
  assumed independent given the forecasts), see ``combine.py``.
* The portfolio (empty site id): never a sum of quantiles. The per-site marginals are coupled by the
  same copula with inter-site error correlations ``pv_inter_site_error_corr`` (PV errors of nearby sites
  share the weather, default 0.8) and ``load_inter_site_error_corr`` (households, default 0.1), and the
  quantiles are read off the summed samples.

Models are refit daily (``retrain_interval_s``) or when missing; between fits every refresh feeds them
the latest measurements with ``update`` (cheap), so lags and the issue time are always current.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp
from vpp.v1 import common_pb2, envelope_pb2, forecast_pb2, forecasting_pb2, forecasting_pb2_grpc

from forecasting import metrics as m
from forecasting.combine import GRID_QUANTILES, Marginal, combine, correlation_matrix
from forecasting.settings import ForecastingSettings
from forecasting.sites import SiteConfig, load_sites
from forecasting.store import SLOT, HistoryStore, Measurement
from vpp_common.app import ServiceApp
from vpp_common.kafka import EventConsumer, EventProducer
from vpp_common.logs import get_logger
from vpp_common.topics import FORECASTS, TELEMETRY

log = get_logger(__name__)

PV: int = common_pb2.FORECAST_STREAM_PV
LOAD: int = common_pb2.FORECAST_STREAM_LOAD
NET: int = common_pb2.FORECAST_STREAM_NET
STREAM_LABEL: dict[int, str] = {PV: "pv", LOAD: "load", NET: "net"}
MODELLED_STREAMS = (PV, LOAD)  # NET is derived from these two
PORTFOLIO_KEY = "portfolio"  # Kafka key and metric label of the portfolio forecast
MAX_HORIZON_MIN = 36 * 60
DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
LIVE_ERROR_WINDOW_S = 86_400.0

CandidateFactory = Callable[[SiteConfig, int, ForecastingSettings], list[Any]]


class NoHistory(RuntimeError):
    """A site stream has no measurement yet, so there is nothing to fit a model on."""


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's day-ahead validation on the latest days (the forecasts the selection rule scored)."""

    pinball_kw: float  # mean pinball loss over P10, P50, P90: the number the selection rule compares
    mae_kw: float  # |P50 - measured|
    coverage_p10_p90: float  # share of measurements inside [P10, P90] (0.8 when calibrated)


class _Recorder:
    """Wraps a candidate to keep the validation forecasts ``choose_served_model`` asks it for, so MAE and
    band coverage are reported from the very forecasts the pinball score (and the choice) came from."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = str(inner.name)
        self.is_fallback = bool(getattr(inner, "is_fallback", False))
        self._rounds: list[list[pd.DataFrame]] = []  # forecasts made after each fit

    def fit(self, history: pd.Series) -> None:
        self._rounds.append([])
        self.inner.fit(history)

    def update(self, history: pd.Series) -> None:
        self.inner.update(history)

    def predict(self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex, quantiles: Sequence[float]) -> pd.DataFrame:
        frame = self.inner.predict(issue_time, slots, quantiles)
        if self._rounds:
            self._rounds[-1].append(frame)
        return frame

    def score(self, pinball_kw: float, history: pd.Series) -> CandidateScore:
        """Scores of the validation round (the fit that was followed by forecasts)."""
        recorded = next((r for r in self._rounds if r), [])
        if not recorded:
            return CandidateScore(pinball_kw, math.nan, math.nan)
        fc = pd.concat(recorded)
        y = history.reindex(fc.index).to_numpy(dtype=float)
        ok = np.isfinite(y)
        if not ok.any():
            return CandidateScore(pinball_kw, math.nan, math.nan)
        cols = sorted(float(c) for c in fc.columns)
        p50 = fc[min(cols, key=lambda q: abs(q - 0.5))].to_numpy()
        lo, hi = fc[cols[0]].to_numpy(), fc[cols[-1]].to_numpy()
        mae = float(np.mean(np.abs(y[ok] - p50[ok])))
        coverage = float(np.mean((y[ok] >= lo[ok]) & (y[ok] <= hi[ok])))
        return CandidateScore(pinball_kw, mae, coverage)


@dataclass
class ServedModel:
    """The model serving one site stream, with the validation that chose it."""

    site_id: str
    stream: int
    model: Any  # forecasting.models.base.QuantileForecaster
    trained_at: datetime
    scores: dict[str, CandidateScore]  # the day-ahead validation of every candidate, by name
    fallback_name: str
    lock: threading.Lock = field(default_factory=threading.Lock)  # update() and predict() mutate/read state

    @property
    def name(self) -> str:
        return str(self.model.name)


def default_candidates(site: SiteConfig, stream: int, settings: ForecastingSettings) -> list[Any]:
    """Candidates per stream; the one marked ``is_fallback`` is served unless another beats it."""
    from forecasting.models.load import LoadForecaster, SeasonalNaiveForecaster
    from forecasting.models.pv import PvForecaster, PvSite

    if stream == PV:
        pv = PvForecaster(
            PvSite(**site.pv.model_dump()), n_estimators=settings.pv_n_estimators, num_threads=settings.model_threads
        )
        # Yesterday's PV is a fairer baseline than last week's: cloudiness persists for days, not weeks.
        return [pv, SeasonalNaiveForecaster(season_days=1)]
    return [
        LoadForecaster(
            timezone=site.pv.timezone, n_estimators=settings.load_n_estimators, num_threads=settings.model_threads
        ),
        SeasonalNaiveForecaster(),
    ]


def choose(candidates: list[Any], history: pd.Series, settings: ForecastingSettings, timezone: str) -> Any:
    """The other engineer's selection rule (kept behind one call so its signature is adapted in one place)."""
    from forecasting.models.load import choose_served_model

    return choose_served_model(candidates, history, validation_days=settings.validation_days, timezone=timezone)


def first_slot(issue: pd.Timestamp) -> pd.Timestamp:
    """The first slot a forecast issued at ``issue`` covers: the next slot start at or after it."""
    return issue.ceil(SLOT)


def as_stream(stream: int) -> common_pb2.ForecastStream:
    return cast(common_pb2.ForecastStream, stream)


def to_timestamp(when: pd.Timestamp | datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(pd.Timestamp(when).value))
    return ts


def to_proto(
    site_id: str, stream: int, issued_at: pd.Timestamp, frame: pd.DataFrame, model_name: str
) -> forecast_pb2.Forecast:
    fc = forecast_pb2.Forecast(
        forecast_id=uuid.uuid4().hex, site_id=site_id, stream=as_stream(stream), resolution_s=int(SLOT.total_seconds())
    )
    fc.issued_at.CopyFrom(to_timestamp(issued_at))
    fc.model = model_name
    levels = [float(q) for q in frame.columns]
    for start, row in zip(frame.index, frame.to_numpy(dtype=float), strict=True):
        point = fc.points.add()
        point.start.CopyFrom(to_timestamp(start))
        point.values.extend(
            forecast_pb2.QuantileValue(quantile=q, power_kw=round(float(v), 4))
            for q, v in zip(levels, row, strict=True)
        )
    return fc


class _LiveError:
    """P50 of the latest published forecast issued before each slot, scored once the slot is measured."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, int], dict[pd.Timestamp, float]] = {}
        self._recent: dict[int, deque[tuple[float, float]]] = {s: deque() for s in STREAM_LABEL}

    def remember(self, site_id: str, stream: int, frame: pd.DataFrame) -> None:
        if 0.5 not in frame.columns:
            return
        pending = self._pending.setdefault((site_id, stream), {})
        pending.update({ts: float(v) for ts, v in frame[0.5].items()})  # later issue overwrites

    def score(self, site_id: str, measured: pd.DataFrame, measured_until: pd.Timestamp, now_s: float) -> None:
        """``measured``: slot means (pv_kw, load_kw) for slots before ``measured_until``."""
        net = measured["load_kw"] - measured["pv_kw"]
        actual = {PV: measured["pv_kw"], LOAD: measured["load_kw"], NET: net}
        for stream, series in actual.items():
            pending = self._pending.get((site_id, stream))
            if not pending:
                continue
            for ts in [t for t in pending if t + SLOT <= measured_until]:
                p50 = pending.pop(ts)
                value = series.get(ts, np.nan)
                if value is None or not math.isfinite(float(value)):
                    continue  # never measured: nothing to score
                err = abs(p50 - float(value))
                m.LIVE_ABS_ERROR_KW.labels(STREAM_LABEL[stream]).observe(err)
                self._recent[stream].append((now_s, err))
        for stream, recent in self._recent.items():
            while recent and recent[0][0] < now_s - LIVE_ERROR_WINDOW_S:
                recent.popleft()
            if recent:
                m.LIVE_MAE_KW.labels(STREAM_LABEL[stream]).set(float(np.mean([e for _, e in recent])))


class ForecastingCore:
    """Blocking domain logic, shared by the Kafka consumer thread, the scheduler and the gRPC executor."""

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
        self._clock = clock or (lambda: pd.Timestamp.now(tz="UTC"))
        self._models: dict[tuple[str, int], ServedModel] = {}
        self._train_locks: dict[tuple[str, int], threading.Lock] = {
            (sid, stream): threading.Lock() for sid in self.sites for stream in MODELLED_STREAMS
        }
        self._live = _LiveError()
        self._issued_s: dict[tuple[str, int], float] = {}
        self._issued_lock = threading.Lock()
        self.stopping = threading.Event()

    # -- telemetry in ------------------------------------------------------------------------------

    def on_telemetry(self, env: envelope_pb2.Envelope, _record: Any = None) -> None:
        """Kafka handler (consumer thread): add one snapshot to its 15-min slot, once per message id.

        ValueError marks the record itself as bad (the consumer dead-letters it); a store outage is
        retried here, so the offset is committed only after the measurement is stored."""
        t = env.telemetry
        site_id = t.site_id or env.site_id
        if site_id not in self.sites:
            m.MEASUREMENTS.labels("unknown_site").inc()
            return
        if not t.available:
            m.MEASUREMENTS.labels("unavailable").inc()
            return
        if not t.HasField("measured_at"):
            raise ValueError("telemetry.measured_at is missing")
        for name in ("pv_power_kw", "load_power_kw"):
            if not math.isfinite(getattr(t, name)):
                raise ValueError(f"telemetry.{name} is not finite")
        measured_at = t.measured_at.ToDatetime(tzinfo=UTC)
        if measured_at > self._clock() + pd.Timedelta(seconds=self.settings.max_clock_skew_s):
            raise ValueError(f"telemetry.measured_at {measured_at.isoformat()} is in the future")
        measurement = Measurement(
            message_id=env.message_id,
            site_id=site_id,
            measured_at=measured_at,
            pv_power_kw=t.pv_power_kw,
            load_power_kw=t.load_power_kw,
        )
        delay_s = 0.5
        while True:
            try:
                stored = self.store.add_measurement(measurement)
                break
            except Exception as exc:  # the database, not the record, is at fault: keep the offset, retry
                m.STORE_ERRORS.inc()
                log.error("store_write_failed", site_id=site_id, error=repr(exc)[:300], retry_in_s=delay_s)
                if self.stopping.wait(delay_s):
                    raise
                delay_s = min(delay_s * 2, 10.0)
        m.MEASUREMENTS.labels("stored" if stored else "duplicate").inc()

    # -- models ------------------------------------------------------------------------------------

    def histories(self, site_ids: Sequence[str], now: pd.Timestamp) -> dict[str, pd.DataFrame]:
        """Complete slots only: the slot in progress would look like a drop in power."""
        end = now.floor(SLOT)
        start = end - pd.Timedelta(days=self.settings.train_history_days)
        return self.store.history_many(site_ids, start, end)

    def served(self, site_id: str, stream: int) -> ServedModel | None:
        return self._models.get((site_id, stream))

    def ensure_model(self, site_id: str, stream: int, history: pd.Series, now: pd.Timestamp) -> ServedModel:
        """The served model, fit first if missing or older than ``retrain_interval_s``; else fed ``history``."""
        key = (site_id, stream)
        with self._train_locks[key]:
            current = self._models.get(key)
            age_s = None if current is None else (now.to_pydatetime() - current.trained_at).total_seconds()
            if current is not None and age_s is not None and age_s < self.settings.retrain_interval_s:
                with current.lock:
                    current.model.update(history)
                return current
            served = self._train(site_id, stream, history, now)
            self._models[key] = served
            return served

    def _train(self, site_id: str, stream: int, history: pd.Series, now: pd.Timestamp) -> ServedModel:
        if not history.notna().any():
            raise NoHistory(f"site {site_id!r} has no {STREAM_LABEL[stream]} measurements yet")
        site = self.sites[site_id]
        candidates = self._candidates(site, stream, self.settings)
        fallback = next((c for c in candidates if getattr(c, "is_fallback", False)), candidates[-1])
        started = time.perf_counter()
        recorders = {r.name: r for r in map(_Recorder, candidates)}
        chosen, pinball = choose(list(recorders.values()), history, self.settings, site.pv.timezone)
        model = chosen.inner if isinstance(chosen, _Recorder) else chosen
        scores: dict[str, CandidateScore] = {}
        for name, value in pinball.items():
            recorder = recorders.get(str(name))
            no_record = CandidateScore(float(value), math.nan, math.nan)  # a baseline the rule added itself
            scores[str(name)] = recorder.score(float(value), history) if recorder else no_record
        elapsed_s = time.perf_counter() - started
        m.TRAINING_SECONDS.labels(STREAM_LABEL[stream]).observe(elapsed_s)
        log.info(
            "model_trained",
            site_id=site_id,
            stream=STREAM_LABEL[stream],
            served=model.name,
            pinball_kw=",".join(f"{k}:{v.pinball_kw:.4f}" for k, v in scores.items()),
            history_slots=int(history.notna().sum()),
            seconds=round(elapsed_s, 2),
        )
        return ServedModel(
            site_id=site_id,
            stream=stream,
            model=model,
            trained_at=now.to_pydatetime(),
            scores=scores,
            fallback_name=str(fallback.name),
        )

    def _predict(
        self, served: ServedModel, issue: pd.Timestamp, slots: pd.DatetimeIndex, quantiles: Sequence[float]
    ) -> pd.DataFrame:
        with served.lock:
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
        issue = now if now is not None else self._clock()
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
    ) -> dict[tuple[str, int], tuple[pd.DataFrame, str]]:
        """Grid-quantile forecasts per (site, modelled stream), models fit or updated first."""
        hist = self.histories(site_ids, issue)
        out: dict[tuple[str, int], tuple[pd.DataFrame, str]] = {}
        for sid in site_ids:
            for stream in streams:
                column = "pv_kw" if stream == PV else "load_kw"
                served = self.ensure_model(sid, stream, hist[sid][column], issue)
                out[(sid, stream)] = (self._predict(served, issue, slots, GRID_QUANTILES), served.name)
        return out

    def _assemble(
        self,
        site_id: str,
        stream: int,
        marginals: dict[tuple[str, int], tuple[pd.DataFrame, str]],
        quantiles: Sequence[float],
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

    # -- schedule ----------------------------------------------------------------------------------

    def refresh(self, now: pd.Timestamp | None = None) -> list[forecast_pb2.Forecast]:
        """Every site's PV, LOAD and NET forecast and the portfolio's, for the full 36 h horizon."""
        issue = now if now is not None else self._clock()
        started = time.perf_counter()
        slots = pd.date_range(first_slot(issue), periods=MAX_HORIZON_MIN // 15, freq=SLOT)
        hist = self.histories(list(self.sites), issue)
        marginals: dict[tuple[str, int], tuple[pd.DataFrame, str]] = {}
        out: list[forecast_pb2.Forecast] = []
        for sid in self.sites:
            if self.stopping.is_set():
                return out
            self._live.score(sid, hist[sid], issue.floor(SLOT), time.time())
            try:
                for stream in MODELLED_STREAMS:
                    column = "pv_kw" if stream == PV else "load_kw"
                    served = self.ensure_model(sid, stream, hist[sid][column], issue)
                    marginals[(sid, stream)] = (self._predict(served, issue, slots, GRID_QUANTILES), served.name)
            except NoHistory as exc:
                log.warning("forecast_skipped", site_id=sid, reason=str(exc))
                continue
            for stream in (PV, LOAD, NET):
                frame, name = self._assemble(sid, stream, marginals, DEFAULT_QUANTILES)
                self._live.remember(sid, stream, frame)
                out.append(to_proto(sid, stream, issue, frame, name))
        if marginals and all((sid, PV) in marginals for sid in self.sites):
            for stream in (PV, LOAD, NET):
                frame, name = self._assemble("", stream, marginals, DEFAULT_QUANTILES)
                out.append(to_proto("", stream, issue, frame, name))
        m.REFRESH_SECONDS.observe(time.perf_counter() - started)
        return out

    def seed_missing(self) -> list[str]:
        """Backfill ``seed_days_if_empty`` days of the real series for sites with no history (demo)."""
        days = self.settings.seed_days_if_empty
        empty = [s for sid, s in self.sites.items() if self.store.last_slot(sid) is None]
        if days <= 0 or not empty:
            return []
        from forecasting.seed import seed

        seed(self.store, empty, days, self._clock().to_pydatetime())
        return [s.site_id for s in empty]

    def mark_published(self, fc: forecast_pb2.Forecast) -> None:
        """Start the age gauge of this site stream at the forecast's issue time."""
        key = (fc.site_id or PORTFOLIO_KEY, fc.stream)
        issued_s = fc.issued_at.ToNanoseconds() / 1e9
        with self._issued_lock:
            first = key not in self._issued_s
            self._issued_s[key] = issued_s
        if first:
            m.FORECAST_AGE_SECONDS.labels(key[0], STREAM_LABEL[fc.stream]).set_function(
                lambda: time.time() - self._issued_s[key]
            )

    def model_infos(self) -> list[forecasting_pb2.ModelInfo]:
        """Every candidate of every fitted site stream, its validation score and whether it is served."""
        infos: list[forecasting_pb2.ModelInfo] = []
        for (sid, stream), served in sorted(self._models.items()):
            fallback = served.scores.get(served.fallback_name)
            base = fallback.pinball_kw if fallback else math.nan
            for name, score in served.scores.items():
                info = forecasting_pb2.ModelInfo(
                    site_id=sid,
                    stream=as_stream(stream),
                    model=name,
                    backtest_pinball_kw=_finite(score.pinball_kw),
                    backtest_mae_kw=_finite(score.mae_kw),
                    backtest_coverage_p10_p90=_finite(score.coverage_p10_p90),
                    served=name == served.name,
                )
                info.trained_at.CopyFrom(to_timestamp(served.trained_at))
                if math.isfinite(base) and base > 0 and math.isfinite(score.pinball_kw):
                    info.skill_vs_baseline = 1.0 - score.pinball_kw / base
                infos.append(info)
        return infos


def _finite(value: float) -> float:
    """Proto doubles: an unknown score is sent as 0 (proto3 default), never NaN."""
    return value if math.isfinite(value) else 0.0


class Scheduler:
    """Asyncio side of the schedule: refresh in a worker thread, publish, sleep, repeat."""

    def __init__(self, core: ForecastingCore, producer: EventProducer, executor: ThreadPoolExecutor) -> None:
        self.core = core
        self.producer = producer
        self.executor = executor
        self._wake = asyncio.Event()
        self.refreshes = 0

    def request_refresh(self) -> None:
        """Refresh now instead of at the next interval (on demand)."""
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.core.settings
        try:
            if settings.seed_days_if_empty > 0:
                try:
                    seeded = await loop.run_in_executor(self.executor, self.core.seed_missing)
                    log.info("history_seeded", sites=",".join(seeded) or "none", days=settings.seed_days_if_empty)
                except Exception:  # no data files: forecast from what is measured instead
                    log.exception("history_seed_failed")
            while True:
                try:
                    forecasts = await loop.run_in_executor(self.executor, self.core.refresh)
                    await self._publish(forecasts)
                    await loop.run_in_executor(
                        self.executor, self.core.store.prune_seen, time.time() - settings.dedupe_window_s
                    )
                except Exception:  # one bad refresh (e.g. database down) must not end the schedule
                    log.exception("refresh_failed")
                self.refreshes += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=settings.refresh_interval_s)
                self._wake.clear()
        finally:
            self.core.stopping.set()

    async def _publish(self, forecasts: Sequence[forecast_pb2.Forecast]) -> None:
        for fc in forecasts:
            key = fc.site_id or PORTFOLIO_KEY
            await self.producer.publish_async(FORECASTS, key, fc, site_id=fc.site_id)
            m.FORECASTS_PUBLISHED.labels(STREAM_LABEL[fc.stream]).inc()
            self.core.mark_published(fc)
        if forecasts:
            log.info("forecasts_published", count=len(forecasts), issued_at=forecasts[0].issued_at.ToJsonString())


@dataclass
class Built:
    """What ``build`` wired up, for tests and the CLI."""

    core: ForecastingCore
    scheduler: Scheduler
    servicer: Any
    store: HistoryStore
    consumer: EventConsumer


def build(
    app: ServiceApp,
    settings: ForecastingSettings,
    *,
    sites: Sequence[SiteConfig] | None = None,
    candidates: CandidateFactory = default_candidates,
) -> Built:
    """Open the store, load the sites (unless given), register the servicer, the telemetry consumer and
    the scheduler."""
    from forecasting.servicer import SERVICE_NAME, ForecastingServicer

    sites = load_sites(settings.sites_file) if sites is None else sites
    store = HistoryStore(settings.store_url)
    store.create_schema()
    core = ForecastingCore(settings, store, sites, candidates=candidates)
    executor = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="forecasting")
    scheduler = Scheduler(core, app.producer, executor)
    servicer = ForecastingServicer(core, executor)
    app.add_servicer(forecasting_pb2_grpc.add_ForecastingServiceServicer_to_server, servicer, SERVICE_NAME)
    # One group for all replicas: each slot's samples must be counted by exactly one of them.
    consumer = app.add_consumer({TELEMETRY: "telemetry"}, core.on_telemetry, group_id="forecasting-history")
    app.add_task(scheduler.run)
    log.info("forecasting_built", sites=len(sites), store=store.engine.url.render_as_string(hide_password=True))
    return Built(core, scheduler, servicer, store, consumer)
