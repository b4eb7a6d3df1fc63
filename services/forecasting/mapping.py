"""Between the wire (protobuf) and the domain (pandas frames, datetimes): stream enums, timestamps,
forecasts and model descriptions. Pure functions, no state: callable from any thread."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, cast

import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp
from vpp.v1 import common_pb2, forecast_pb2, forecasting_pb2

from forecasting.store import SLOT

if TYPE_CHECKING:
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


def model_infos(summaries: Iterable[ModelSummary]) -> list[forecasting_pb2.ModelInfo]:
    """Every candidate of every fitted site stream, its validation scores and whether it is served."""
    infos: list[forecasting_pb2.ModelInfo] = []
    for summary in sorted(summaries, key=lambda s: (s.site_id, s.stream)):
        scores = dict(summary.scores)
        fallback = scores.get(summary.fallback_name)
        base = fallback.pinball_kw if fallback else math.nan
        for name, score in summary.scores:
            info = forecasting_pb2.ModelInfo(
                site_id=summary.site_id,
                stream=as_stream(summary.stream),
                model=name,
                backtest_pinball_kw=_finite(score.pinball_kw),
                backtest_mae_kw=_finite(score.mae_kw),
                backtest_coverage_p10_p90=_finite(score.coverage_p10_p90),
                served=name == summary.served,
            )
            info.trained_at.CopyFrom(to_timestamp(summary.trained_at))
            if math.isfinite(base) and base > 0 and math.isfinite(score.pinball_kw):
                info.skill_vs_baseline = 1.0 - score.pinball_kw / base
            infos.append(info)
    return infos


def _finite(value: float) -> float:
    """Proto doubles: an unknown score is sent as 0 (proto3 default), never NaN."""
    return value if math.isfinite(value) else 0.0
