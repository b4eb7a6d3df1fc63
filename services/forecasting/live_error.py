"""Live forecast error: how far the published P50 was from what was then measured, per stream.

The validation scores say how a model did on past days when it was chosen; this says how the forecasts
actually published are doing now (``vpp_forecasting_live_abs_error_kw``, ``..._live_mae_kw``).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pandas as pd

from forecasting import metrics as m
from forecasting.mapping import LOAD, NET, PV, STREAM_LABEL
from forecasting.store import SLOT

LIVE_ERROR_WINDOW_S = 86_400.0


class LiveError:
    """P50 of the latest published forecast issued before each slot, scored once the slot is measured.

    Plain mutable state, no lock: the model thread alone uses it (it is part of the refresh)."""

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
                m.record(m.LIVE_ABS_ERROR_KW, (STREAM_LABEL[stream],), "observe", err)
                self._recent[stream].append((now_s, err))
        for stream, recent in self._recent.items():
            while recent and recent[0][0] < now_s - LIVE_ERROR_WINDOW_S:
                recent.popleft()
            if recent:
                m.record(m.LIVE_MAE_KW, (STREAM_LABEL[stream],), "set", float(np.mean([e for _, e in recent])))
