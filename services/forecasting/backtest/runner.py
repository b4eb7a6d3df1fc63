"""Rolling-origin backtest engine and the three standard tasks.

Honesty rules enforced here:

* Each retraining period (a local calendar month of target days, or the whole
  test when ``retrain="none"``) fits every model on data strictly before the
  period's first issue time (expanding window, capped by the model's
  ``train_days``).
* Models are then handed the *full* series via ``update``; every forecast reads
  history only through the models' issue-time gate, which
  ``tests/forecasting/test_backtest_*`` checks by perturbing all data after an
  issue time and requiring bit-identical forecasts.
* Quantities fitted from data outside the models follow the same rule: the PV
  effective capacity (``run_pv(capacity_from_data=True)``) comes from the 365
  days before the first fit, never from the test period.
* Every model is scored on its own point forecast (column ``<model>@point``,
  from ``predict_point`` when the model has one, else its median) for MAE and
  RMSE, and on its quantiles (``<model>@<q>``) for pinball loss and coverage.

Tasks
-----
* ``load_day_ahead`` -- UCI household, issued 12:00 on D-1 for the 96 slots of D.
* ``pv_day_ahead`` -- PVDAQ system 50, issued 12:00 local on D-1 for local day D.
* ``pv_intraday`` -- issued every full hour for the next 16 slots (4 h);
  ``lead_bucket`` = hour of the horizon (1..4).
PV scores use daylight slots only (solar elevation > 5 deg at the slot middle).
No weather forecasts are used offline (no archive of real forecasts exists).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecasting.data.pvdaq import site_with_capacity_before
from forecasting.models.base import SLOT, QuantileForecaster, point_forecast
from forecasting.models.baselines import (
    PvClimatologyForecaster,
    PvPersistenceForecaster,
    SmartPersistenceForecaster,
)
from forecasting.models.physics import pv_physics
from forecasting.models.seasonal_naive import SeasonalNaiveForecaster
from forecasting.models.site import PvSite
from forecasting.models.spec import ModelSpec, load_candidate, pv_candidate
from forecasting.models.validation import day_ahead_issues

QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
Plan = list[tuple[pd.Timestamp, pd.DatetimeIndex]]
Progress = Callable[[str], None]


def stderr_progress(msg: str) -> None:
    """Default progress sink: one line per step on stderr."""
    print(msg, file=sys.stderr, flush=True)


@dataclass
class TaskSpec:
    """One forecasting exercise: who forecasts what, when, for which slots."""

    name: str
    plan: Plan
    models: list[str]  # first = the candidate, then the baselines
    timezone: str
    lead_bucket: Callable[[np.ndarray], np.ndarray]  # lead (h) -> bucket label


@dataclass
class TaskResult:
    """Forecasts of one task in long form (one row per issue x slot)."""

    name: str
    frame: pd.DataFrame
    models: list[str]
    quantiles: list[float]
    seconds: float = 0.0
    timezone: str = "UTC"
    notes: list[str] = field(default_factory=list)

    def predictions(self, model: str) -> pd.DataFrame:
        cols = {q: f"{model}@{q}" for q in self.quantiles}
        return self.frame[list(cols.values())].set_axis(list(cols), axis=1)

    def point(self, model: str) -> pd.Series:
        """The model's own point forecast (column ``model@point``): what MAE/RMSE score."""
        return self.frame[f"{model}@point"]


def run_rolling(
    series: pd.Series,
    factories: dict[str, Callable[[], QuantileForecaster]],
    tasks: Sequence[TaskSpec],
    train_end: pd.Timestamp,
    retrain: str = "monthly",
    quantiles: Sequence[float] = QUANTILES,
    scored: pd.Series | None = None,
    progress: Progress = stderr_progress,
) -> list[TaskResult]:
    """Run the tasks with shared, periodically refit models; see module docstring."""
    qs = [float(q) for q in quantiles]
    models = {name: make() for name, make in factories.items()}
    needed = {m for t in tasks for m in t.models}
    tz = tasks[0].timezone
    period: dict[str, list[tuple[int, int]]] = {}
    for ti, task in enumerate(tasks):
        for k, (_, slots) in enumerate(task.plan):  # period = month of the target slots
            key = "all" if retrain == "none" else slots[0].tz_convert(tz).strftime("%Y-%m")
            period.setdefault(key, []).append((ti, k))
    rows: list[list[dict[str, np.ndarray]]] = [[] for _ in tasks]
    total = sum(len(t.plan) for t in tasks)
    done, last_pct, t0 = 0, -1, time.perf_counter()
    task_seconds = [0.0 for _ in tasks]
    keys = sorted(period, key=lambda k: min(tasks[ti].plan[i][0] for ti, i in period[k]))
    for p_no, key in enumerate(keys, 1):
        members = period[key]
        first_issue = min(tasks[ti].plan[k][0] for ti, k in members)
        cutoff = min(first_issue, train_end) if p_no == 1 else first_issue
        tf = time.perf_counter()
        for name in needed:
            models[name].fit(series[series.index < cutoff])
            models[name].update(series)
        progress(
            f"[fit] period {key} ({p_no}/{len(keys)}): models fit on data before "
            f"{cutoff.isoformat()} in {time.perf_counter() - tf:.1f}s"
        )
        for ti, k in members:
            task = tasks[ti]
            issue, slots = task.plan[k]
            ts = time.perf_counter()
            rec: dict[str, np.ndarray] = {
                "issue_time": np.full(len(slots), issue.tz_convert("UTC").as_unit("ns").value),
                "slot": slots.tz_convert("UTC").as_unit("ns").asi8,
                "y": series.reindex(slots).to_numpy(dtype=float),
            }
            for name in task.models:
                fc = models[name].predict(issue, slots, qs)
                for q in qs:
                    rec[f"{name}@{q}"] = fc[q].to_numpy()
                rec[f"{name}@point"] = point_forecast(models[name], issue, slots, fc).to_numpy()
                mean = getattr(models[name], "predict_mean", None)
                if mean is not None and name == task.models[0]:  # informational
                    rec[f"{name}@mean"] = mean(issue, slots).to_numpy()
            rows[ti].append(rec)
            task_seconds[ti] += time.perf_counter() - ts
            done += 1
            pct = int(100 * done / total)
            if pct != last_pct and pct % 5 == 0:
                last_pct = pct
                progress(
                    f"[forecast] {pct:3d}% ({done}/{total} issues, "
                    f"{time.perf_counter() - t0:.0f}s elapsed)"
                )
    results = []
    for ti, task in enumerate(tasks):
        frame = pd.DataFrame({c: np.concatenate([r[c] for r in rows[ti]]) for c in rows[ti][0]})
        frame["issue_time"] = pd.to_datetime(frame["issue_time"], unit="ns", utc=True)
        frame["slot"] = pd.to_datetime(frame["slot"], unit="ns", utc=True)
        lead_h = (frame["slot"] - frame["issue_time"]) / pd.Timedelta(hours=1)
        frame["lead_h"] = lead_h.to_numpy()
        frame["lead_bucket"] = task.lead_bucket(lead_h.to_numpy())
        frame["day"] = frame["slot"].dt.tz_convert(task.timezone).dt.strftime("%Y-%m-%d")
        ok = np.isfinite(frame["y"].to_numpy())
        if scored is not None:
            ok &= scored.reindex(pd.DatetimeIndex(frame["slot"])).fillna(False).to_numpy(bool)
        frame["scored"] = ok
        results.append(
            TaskResult(task.name, frame, task.models, qs, task_seconds[ti], task.timezone)
        )
    return results


def local_days(start: pd.Timestamp, end: pd.Timestamp, tz: str) -> pd.DatetimeIndex:
    """Local calendar days D with start <= D < end (dates given as naive or aware)."""
    s = pd.Timestamp(start.date()) if start.tz is None else start.tz_convert(tz).tz_localize(None)
    e = pd.Timestamp(end.date()) if end.tz is None else end.tz_convert(tz).tz_localize(None)
    return pd.date_range(s.normalize(), e.normalize(), freq="D", inclusive="left")


def intraday_plan(
    start: pd.Timestamp, end: pd.Timestamp, tz: str, daylight: pd.Series, horizon_slots: int = 16
) -> Plan:
    """Hourly issues in [start, end) (local) with at least one daylight slot ahead."""
    s = pd.Timestamp(start.date()).tz_localize(tz).tz_convert("UTC")
    e = pd.Timestamp(end.date()).tz_localize(tz).tz_convert("UTC")
    plan = []
    for issue in pd.date_range(s, e, freq="1h", inclusive="left"):
        slots = pd.date_range(issue, periods=horizon_slots, freq=SLOT)
        if daylight.reindex(slots).fillna(False).any():
            plan.append((issue, slots))
    return plan


def aware(ts: pd.Timestamp, tz: str) -> pd.Timestamp:
    """A naive timestamp is local time in ``tz``; returned in UTC."""
    return (ts.tz_localize(tz) if ts.tz is None else ts).tz_convert("UTC")


def _day_bucket(lead_h: np.ndarray) -> np.ndarray:
    return np.full(len(lead_h), "day-ahead", dtype=object)


def _hour_bucket(lead_h: np.ndarray) -> np.ndarray:
    return np.array([f"{int(h) + 1}h" for h in lead_h], dtype=object)


def run_load(
    series: pd.Series,
    train_end: pd.Timestamp,
    test_start: pd.Timestamp,
    test_end: pd.Timestamp,
    cfg: ModelSpec | None = None,
    retrain: str = "monthly",
    progress: Progress = stderr_progress,
) -> list[TaskResult]:
    """Load day-ahead backtest (file clock tagged UTC, see ``forecasting.data.uci``)."""
    cfg = cfg or ModelSpec()
    tz = "UTC"
    plan = day_ahead_issues(local_days(test_start, test_end, tz), tz)
    factories: dict[str, Callable[[], QuantileForecaster]] = {
        "lightgbm_quantile": lambda: load_candidate(cfg, tz),
        "seasonal_naive": SeasonalNaiveForecaster,
    }
    task = TaskSpec("load_day_ahead", plan, list(factories), tz, _day_bucket)
    t0 = time.perf_counter()
    res = run_rolling(series, factories, [task], aware(train_end, tz), retrain, progress=progress)
    res[0].seconds = time.perf_counter() - t0
    return res


def run_pv(
    series: pd.Series,
    site: PvSite,
    train_end: pd.Timestamp,
    test_start: pd.Timestamp,
    test_end: pd.Timestamp,
    cfg: ModelSpec | None = None,
    retrain: str = "monthly",
    tasks: Sequence[str] = ("pv_day_ahead", "pv_intraday"),
    progress: Progress = stderr_progress,
    capacity_from_data: bool = False,
    only_candidate: bool = False,
) -> list[TaskResult]:
    """PV day-ahead and intraday backtests sharing one monthly-refit model.

    ``capacity_from_data``: replace ``site.kwp`` by the effective capacity
    estimated from the 365 days of ``series`` before the first fit (the train
    end, or the first issue if earlier) -- never from the test period.
    ``only_candidate``: run the PV model without the baselines (model experiments).
    """
    cfg = cfg or ModelSpec()
    tz = site.timezone
    grid = pd.date_range(
        pd.Timestamp(test_start.date()).tz_localize(tz) - pd.Timedelta(days=2),
        pd.Timestamp(test_end.date()).tz_localize(tz) + pd.Timedelta(days=2),
        freq=SLOT,
    ).tz_convert("UTC")
    daylight = pv_physics(site, grid)["daylight"]
    specs = []
    if "pv_day_ahead" in tasks:
        plan = day_ahead_issues(local_days(test_start, test_end, tz), tz)
        specs.append(
            TaskSpec("pv_day_ahead", plan, ["pv_physics_lgbm", "persistence_d2",
                                            "climatology_30d"], tz, _day_bucket)
        )
    if "pv_intraday" in tasks:
        plan = intraday_plan(test_start, test_end, tz, daylight)
        specs.append(
            TaskSpec("pv_intraday", plan, ["pv_physics_lgbm", "smart_persistence"], tz,
                     _hour_bucket)
        )
    notes = []
    if capacity_from_data:  # the first fit's cutoff, as in run_rolling
        before = min([aware(train_end, tz)] + [s.plan[0][0] for s in specs if s.plan])
        site = site_with_capacity_before(series, site, before)
        notes.append(f"kwp {site.kwp} estimated from the 365 days before {before.isoformat()}")
    factories: dict[str, Callable[[], QuantileForecaster]] = {
        "pv_physics_lgbm": lambda: pv_candidate(cfg, site),
        "persistence_d2": lambda: PvPersistenceForecaster(site, lag_days=2),
        "climatology_30d": lambda: PvClimatologyForecaster(site, days=30),
        "smart_persistence": lambda: SmartPersistenceForecaster(site),
    }
    needed = {m for s in specs for m in s.models}
    if only_candidate:
        needed = {"pv_physics_lgbm"}
        for spec in specs:
            spec.models = ["pv_physics_lgbm"]
    factories = {k: v for k, v in factories.items() if k in needed}
    t0 = time.perf_counter()
    res = run_rolling(series, factories, specs, aware(train_end, tz), retrain, scored=daylight,
                      progress=progress)
    for r in res:
        r.seconds = time.perf_counter() - t0  # shared fits: wall time of the joint run
        r.notes += notes
    return res
