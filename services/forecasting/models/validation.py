"""Day-ahead validation on the latest days of history: the issue plan and the rule choosing the served model.

Shared by the forecasting service (which model serves a site stream) and the backtest (the same
day-ahead issue plan), so neither depends on one model's module.

Public API::

    day_ahead_issues(days, timezone, issue_hour=12) -> [(issue time, slots of day D)]
    choose_served_model(candidates, history, validation_days=28, ...) -> (model, scores)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from forecasting.models.base import (
    DEFAULT_QUANTILES,
    SLOT,
    QuantileForecaster,
    check_quantiles,
    pinball_loss,
    to_grid,
)
from forecasting.models.seasonal_naive import SeasonalNaiveForecaster


def day_ahead_issues(
    days: pd.DatetimeIndex, timezone: str, issue_hour: int = 12
) -> list[tuple[pd.Timestamp, pd.DatetimeIndex]]:
    """(issue time, slots of day D) for each local day D: issued at ``issue_hour`` on D-1."""
    out = []
    for day in days:
        start = pd.Timestamp(day.date()).tz_localize(timezone)
        end = (pd.Timestamp(day.date()) + pd.Timedelta(days=1)).tz_localize(timezone)
        slots = pd.date_range(start.tz_convert("UTC"), end.tz_convert("UTC"), freq=SLOT,
                              inclusive="left")
        issue = (pd.Timestamp(day.date()) - pd.Timedelta(days=1) + pd.Timedelta(hours=issue_hour))
        out.append((issue.tz_localize(timezone).tz_convert("UTC"), slots))
    return out


def choose_served_model(
    candidates: Sequence[QuantileForecaster],
    history: pd.Series,
    validation_days: int = 28,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    timezone: str = "UTC",
    issue_hour: int = 12,
    min_improvement: float = 0.0,
) -> tuple[QuantileForecaster, dict[str, float]]:
    """Pick the model to serve from a day-ahead validation on the last days of history.

    Every candidate is fit on the history before the validation window, fed the
    full history (``update``) and asked for day-ahead forecasts of each of the
    last ``validation_days`` local days.  Score = mean pinball loss (kW) over
    ``quantiles``.  The fallback (the candidate with ``is_fallback``, else a new
    :class:`SeasonalNaiveForecaster`) is served unless another candidate's score
    is lower by more than ``min_improvement`` (relative).  The returned model
    is refit on the whole history.  Returns ``(model, {name: score})``.
    """
    s = to_grid(history)
    qs = check_quantiles(quantiles)
    pool = list(candidates)
    fallback = next((c for c in pool if getattr(c, "is_fallback", False)), None)
    if fallback is None:
        fallback = SeasonalNaiveForecaster()
        pool.append(fallback)
    last_valid = s.dropna().index[-1]
    last_day = (last_valid.tz_convert(timezone) + SLOT).normalize() - pd.Timedelta(days=1)
    days = pd.date_range(last_day - pd.Timedelta(days=validation_days - 1), last_day, freq="D")
    plan = day_ahead_issues(days, timezone, issue_hour)
    first_issue = plan[0][0]
    scores: dict[str, float] = {}
    for model in pool:
        model.fit(s[s.index < first_issue])
        model.update(s)
        losses = []
        for issue, slots in plan:
            fc = model.predict(issue, slots, qs)
            y = s.reindex(slots).to_numpy()
            ok = np.isfinite(y)
            if ok.any():
                losses.append(
                    np.mean([pinball_loss(y[ok], fc[q].to_numpy()[ok], q) for q in qs], axis=0)
                )
        scores[model.name] = float(np.mean(np.concatenate(losses))) if losses else np.inf
    base = scores[fallback.name]
    best = min(pool, key=lambda m: scores[m.name])
    if best is not fallback and not scores[best.name] < base * (1.0 - min_improvement):
        best = fallback
    best.fit(s)
    return best, scores
