"""Between the wire (protobuf) and the domain (pandas frames, datetimes): stream enums, timestamps,
forecasts and model descriptions. Pure functions, no state: callable from any thread."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp
from vpp.v1 import common_pb2, forecast_pb2, forecasting_pb2

from forecasting.models.base import interpolate_quantiles
from forecasting.store import SLOT

if TYPE_CHECKING:
    from forecasting.backtest_scores import BacktestScores
    from forecasting.core import CachedForecast
    from forecasting.selection import ModelSummary

PV: int = common_pb2.FORECAST_STREAM_PV
LOAD: int = common_pb2.FORECAST_STREAM_LOAD
NET: int = common_pb2.FORECAST_STREAM_NET
STREAM_LABEL: dict[int, str] = {PV: "pv", LOAD: "load", NET: "net"}


def as_stream(stream: int) -> common_pb2.ForecastStream:
    return cast(common_pb2.ForecastStream, stream)


def to_timestamp(when: pd.Timestamp | datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(pd.Timestamp(when).value))
    return ts


def to_proto(
    site_id: str, stream: int, issued_at: pd.Timestamp, frame: pd.DataFrame, model_name: str
) -> forecast_pb2.Forecast:
    """A forecast frame (slot-start index, one column per quantile level, kW) as a ``vpp.v1.Forecast``."""
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


def encoded_points(entry: CachedForecast, quantiles: Sequence[float]) -> list[bytes]:
    """Each slot of a cached forecast as the wire bytes of one ``Forecast.points`` element at ``quantiles``,
    built once per cycle and level set, so a request only joins the bytes of its window."""
    from forecasting.core import CACHE_LEVELS  # core imports this module

    values = entry.values_kw
    if len(values):
        values = interpolate_quantiles(CACHE_LEVELS, values, quantiles)
    levels = [float(q) for q in quantiles]
    out: list[bytes] = []
    one = forecast_pb2.Forecast()
    for start, row in zip(entry.slots_ns.tolist(), np.round(values, 4).tolist(), strict=True):
        one.Clear()
        point = one.points.add()
        point.start.FromNanoseconds(start)
        point.values.extend(
            forecast_pb2.QuantileValue(quantile=q, power_kw=v) for q, v in zip(levels, row, strict=True)
        )
        out.append(one.SerializeToString())
    return out


def forecast_from_cache(
    entry: CachedForecast,
    start_ns: int,
    n_slots: int,
    quantiles: Sequence[float],
    points: Sequence[bytes] | None = None,
) -> forecast_pb2.Forecast:
    """The request's window of a cached forecast: ``n_slots`` from the slot starting at ``start_ns``, at
    ``quantiles`` (levels the models predict are copied, others linear between neighbours, the models'
    own rule). ``points``: ``encoded_points`` of this entry at these quantiles, if the caller keeps them
    (the window is then merged from bytes: tens of microseconds instead of a millisecond of Python)."""
    first = int(np.searchsorted(entry.slots_ns, start_ns))
    fc = forecast_pb2.Forecast(
        forecast_id=uuid.uuid4().hex,
        site_id=entry.site_id,
        stream=as_stream(entry.stream),
        resolution_s=int(SLOT.total_seconds()),
        model=entry.model,
        fallback_reason=entry.fallback_reason,
        model_fingerprint=entry.fingerprint,
    )
    fc.issued_at.FromNanoseconds(int(entry.issued_at.value))
    window: Sequence[bytes]
    if points is None:
        window = encoded_points(_window(entry, first, n_slots), quantiles)
    else:
        window = points[first : first + n_slots]
    fc.MergeFromString(b"".join(window))
    return fc


def _window(entry: CachedForecast, first: int, n_slots: int) -> CachedForecast:
    """Only the rows a request asks for (so a one-off level set encodes no more than it returns)."""
    return dataclasses.replace(
        entry, slots_ns=entry.slots_ns[first : first + n_slots], values_kw=entry.values_kw[first : first + n_slots]
    )


def model_infos(
    summaries: Iterable[ModelSummary], backtest: BacktestScores | None, fingerprint: str
) -> list[forecasting_pb2.ModelInfo]:
    """Every candidate of every site stream: its own validation, the backtest scores of this very
    configuration (only if the backtest ran it: same fingerprint) and whether it is served."""
    infos: list[forecasting_pb2.ModelInfo] = []
    tested = backtest is not None and backtest.model_fingerprint == fingerprint
    for summary in sorted(summaries, key=lambda s: (s.site_id, s.stream)):
        names = [name for name, _ in summary.scores] or [summary.served]
        scores = dict(summary.scores)
        for name in names:
            info = forecasting_pb2.ModelInfo(
                site_id=summary.site_id,
                stream=as_stream(summary.stream),
                model=name,
                served=name == summary.served,
                model_fingerprint=fingerprint,
                fallback_reason=summary.fallback_reason if name == summary.served else "",
                fit_cpu_s=summary.fit_cpu_s,
            )
            info.trained_at.CopyFrom(to_timestamp(summary.trained_at))
            own = scores.get(name)
            if own is not None:
                info.validation_pinball_kw = _finite(own.pinball_kw)
                info.validation_mae_kw = _finite(own.mae_kw)
                info.validation_coverage_p10_p90 = _finite(own.coverage_p10_p90)
            score = backtest.primary(name, STREAM_LABEL[summary.stream]) if tested and backtest else None
            if score is not None:
                info.backtest_task = score.label()
                info.backtest_mae_kw = score.mae_kw
                info.backtest_pinball_kw = score.pinball_kw
                info.backtest_coverage_p10_p90 = score.coverage_p10_p90
                info.skill_vs_baseline = score.skill_pinball
            infos.append(info)
    return infos


def _finite(value: float) -> float:
    """Proto doubles: an unknown score is sent as 0 (proto3 default), never NaN."""
    return value if math.isfinite(value) else 0.0
