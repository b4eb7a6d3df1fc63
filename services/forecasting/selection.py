"""Which model serves a site stream: the candidates, the day-ahead validation that chooses between them,
and the scores it leaves behind for ``ListModels``.

PV: the physical pvlib model with learnt residuals; LOAD: LightGBM quantile regression. Each is served
only if it beats its seasonal-naive fallback on the latest ``validation_days``
(``forecasting.models.validation.choose_served_model``); otherwise the fallback is served.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from forecasting.mapping import PV, STREAM_LABEL
from forecasting.models.spec import ModelSpec, load_candidate, load_fallback, pv_candidate, pv_fallback
from forecasting.sites import SiteConfig
from vpp_common.logs import get_logger

log = get_logger(__name__)

CandidateFactory = Callable[[SiteConfig, int, ModelSpec], list[Any]]


class NoHistory(RuntimeError):
    """A site stream has no measurement yet, so there is nothing to fit a model on."""


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's day-ahead validation on the latest days (the forecasts the selection rule scored)."""

    pinball_kw: float  # mean pinball loss over P10, P50, P90: the number the selection rule compares
    mae_kw: float  # |P50 - measured|
    coverage_p10_p90: float  # share of measurements inside [P10, P90] (0.8 when calibrated)


@dataclass(frozen=True)
class ModelSummary:
    """What was chosen for one site stream and why: immutable, so it can be handed from the model thread
    to the event loop (``ListModels``) without sharing the model itself."""

    site_id: str
    stream: int
    served: str  # name of the served model
    trained_at: datetime
    scores: tuple[tuple[str, CandidateScore], ...]  # every candidate's validation, in the rule's order
    fallback_name: str
    # Why the fallback serves ("" when the candidate does): no fit yet, or it lost the validation.
    fallback_reason: str = ""
    fit_cpu_s: float = 0.0  # CPU time of the fit and validation that chose this model
    fitted: bool = True  # False: the stand-in served until the background fit is installed


@dataclass
class ServedModel:
    """The model serving one site stream. ``model`` is mutable (``update``/``predict`` change and read its
    state): only the model thread touches it (see ``forecasting.core``)."""

    model: Any  # forecasting.models.base.QuantileForecaster
    summary: ModelSummary

    @property
    def name(self) -> str:
        return str(self.model.name)

    @property
    def site_id(self) -> str:
        return self.summary.site_id

    @property
    def stream(self) -> int:
        return self.summary.stream

    @property
    def trained_at(self) -> datetime:
        return self.summary.trained_at

    @property
    def scores(self) -> dict[str, CandidateScore]:
        return dict(self.summary.scores)


class Recorder:
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


def default_candidates(site: SiteConfig, stream: int, spec: ModelSpec) -> list[Any]:
    """The backtested candidate and its fallback, built by the spec's factories (the backtest's own)."""
    from forecasting.models.site import PvSite

    if stream == PV:
        return [pv_candidate(spec, PvSite(**site.pv.model_dump())), pv_fallback(spec)]
    return [load_candidate(spec, site.pv.timezone), load_fallback(spec)]


def fallback_model(
    site: SiteConfig, stream: int, spec: ModelSpec, history: pd.Series, now: pd.Timestamp
) -> ServedModel:
    """The fallback alone, fit at once (milliseconds): what serves a site stream until its fit is done."""
    if not history.notna().any():
        raise NoHistory(f"site {site.site_id!r} has no {STREAM_LABEL[stream]} measurements yet")
    model = pv_fallback(spec) if stream == PV else load_fallback(spec)
    model.fit(history)
    summary = ModelSummary(
        site_id=site.site_id,
        stream=stream,
        served=str(model.name),
        trained_at=now.to_pydatetime(),
        scores=(),
        fallback_name=str(model.name),
        fallback_reason="model not fit yet (training in the background)",
        fitted=False,
    )
    return ServedModel(model=model, summary=summary)


def choose(candidates: list[Any], history: pd.Series, spec: ModelSpec, timezone: str) -> Any:
    """The models package's selection rule (kept behind one call so its signature is adapted in one place)."""
    from forecasting.models.validation import choose_served_model

    return choose_served_model(candidates, history, validation_days=spec.validation_days, timezone=timezone)


def select_model(
    site: SiteConfig,
    stream: int,
    history: pd.Series,
    now: pd.Timestamp,
    spec: ModelSpec,
    candidates: CandidateFactory = default_candidates,
) -> ServedModel:
    """Fit every candidate, validate them day-ahead on the latest days and return the one to serve.

    Blocking and CPU-heavy (seconds to minutes): run it on the model thread, never on the event loop."""
    if not history.notna().any():
        raise NoHistory(f"site {site.site_id!r} has no {STREAM_LABEL[stream]} measurements yet")
    pool = candidates(site, stream, spec)
    fallback = next((c for c in pool if getattr(c, "is_fallback", False)), pool[-1])
    started = time.perf_counter()
    cpu_started = time.process_time()
    recorders = {r.name: r for r in map(Recorder, pool)}
    chosen, pinball = choose(list(recorders.values()), history, spec, site.pv.timezone)
    model = chosen.inner if isinstance(chosen, Recorder) else chosen
    scores: list[tuple[str, CandidateScore]] = []
    for name, value in pinball.items():
        recorder = recorders.get(str(name))
        no_record = CandidateScore(float(value), math.nan, math.nan)  # a baseline the rule added itself
        scores.append((str(name), recorder.score(float(value), history) if recorder else no_record))
    elapsed_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    log.info(
        "model_trained",
        site_id=site.site_id,
        stream=STREAM_LABEL[stream],
        served=model.name,
        pinball_kw=",".join(f"{k}:{v.pinball_kw:.4f}" for k, v in scores),
        history_slots=int(history.notna().sum()),
        seconds=round(elapsed_s, 2),
        cpu_seconds=round(cpu_s, 2),
    )
    reason = ""
    if model is fallback:
        by_name = dict(scores)
        fb = by_name.get(str(fallback.name))
        cand = next((v for k, v in scores if k != str(fallback.name)), None)
        reason = (
            f"candidate not better than the fallback on the latest {spec.validation_days} days "
            f"(pinball {cand.pinball_kw:.4f} vs {fb.pinball_kw:.4f} kW)"
            if cand is not None and fb is not None
            else "the candidate could not be validated"
        )
    summary = ModelSummary(
        site_id=site.site_id,
        stream=stream,
        served=str(model.name),
        trained_at=now.to_pydatetime(),
        scores=tuple(scores),
        fallback_name=str(fallback.name),
        fallback_reason=reason,
        fit_cpu_s=cpu_s,
    )
    return ServedModel(model=model, summary=summary)
