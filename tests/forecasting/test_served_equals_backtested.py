"""Served = backtested: the forecast the service keeps for an issue time is the backtest's forecast for
that issue time on the same history (to floating-point rounding), and nothing measured after the issue
time changes it (bit for bit).

The history is real (the UCI household and PVDAQ series the demo seeds), written to the service's own
store; the backtest reads it back from there, so both see the same numbers. The spec forces row
subsampling (as the 730-day production fits do) so the training rows must match too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import SITE_A, seed_store, small_settings, write_sites
from forecasting.backtest.runner import TaskSpec, run_rolling
from forecasting.core import CACHE_LEVELS, ForecastingCore
from forecasting.mapping import LOAD, PV
from forecasting.models.site import PvSite
from forecasting.models.spec import ModelSpec, load_candidate, load_fallback, pv_candidate, pv_fallback
from forecasting.sites import load_sites
from forecasting.store import SLOT, HistoryStore

SPEC = ModelSpec(
    train_days=60,
    load_calib_days=14,
    pv_calib_days=14,
    load_n_estimators=30,
    pv_n_estimators=30,
    load_max_rows=4000,  # below the rows 60 days give: subsampled, like production
    pv_max_rows=4000,
    validation_days=3,
)
PREDICT_DAYS = 40
# Noon local (America/Denver, SITE_A's zone) on a slot boundary: the day-ahead issue of the backtest.
ISSUE = pd.Timestamp("2025-06-12 12:00", tz="America/Denver").tz_convert("UTC")
LEVELS = (0.1, 0.5, 0.9)


def make_core(tmp_path: Path, real: tuple[pd.Series, pd.Series]) -> ForecastingCore:
    settings = small_settings(
        store_url=f"sqlite:///{tmp_path / 'h.sqlite'}", model=SPEC, predict_history_days=PREDICT_DAYS
    )
    sites = load_sites(write_sites(tmp_path / "sites.json", SITE_A))
    store = HistoryStore(settings.store_url)
    store.create_schema()
    # History reaching past the issue time (the service must not read it) and further back than a fit's
    # window plus its look-back (the backtest's series starts earlier, as on real data).
    seed_store(store, sites, real, SPEC.train_days + PREDICT_DAYS + 20, ISSUE + pd.Timedelta(days=3))
    return ForecastingCore(settings, store, sites, clock=lambda: ISSUE)


def served_frame(core: ForecastingCore, stream: int) -> tuple[str, pd.DataFrame]:
    served = core.train("site-a", stream, ISSUE)
    entry = next(fc for fc in core.refresh(ISSUE) if fc.site_id == "site-a" and fc.stream == stream)
    columns = [CACHE_LEVELS.index(q) for q in LEVELS]
    frame = pd.DataFrame(entry.values_kw[:, columns], index=pd.to_datetime(entry.slots_ns, utc=True), columns=LEVELS)
    return served.name, frame


def backtest_frame(core: ForecastingCore, stream: int, name: str) -> pd.DataFrame:
    history = core.store.history("site-a", ISSUE - pd.Timedelta(days=400), ISSUE + pd.Timedelta(days=3))
    series = history["pv_kw" if stream == PV else "load_kw"]
    site = PvSite(**core.sites["site-a"].pv.model_dump())
    factories: dict[str, Callable[[], Any]] = (
        {"pv_physics_lgbm": lambda: pv_candidate(SPEC, site), "seasonal_naive_1d": lambda: pv_fallback(SPEC)}
        if stream == PV
        else {
            "lightgbm_quantile": lambda: load_candidate(SPEC, site.timezone),
            "seasonal_naive": lambda: load_fallback(SPEC),
        }
    )
    chosen = {n: f for n, f in factories.items() if f().name == name}
    assert chosen, f"served model {name!r} is not one the backtest runs"
    slots = pd.date_range(ISSUE, periods=144, freq=SLOT)
    task = TaskSpec("served", [(ISSUE, slots)], list(chosen), site.timezone, lambda h: np.full(len(h), "all"))
    result = run_rolling(series, chosen, [task], ISSUE, quantiles=LEVELS, progress=lambda _: None)[0]
    out = result.predictions(next(iter(chosen)))
    out.index = pd.DatetimeIndex(result.frame["slot"])
    return out


@pytest.mark.parametrize("stream", [PV, LOAD], ids=["pv", "load"])
def test_the_served_forecast_is_the_backtest_forecast(
    tmp_path: Path, real: tuple[pd.Series, pd.Series], stream: int
) -> None:
    core = make_core(tmp_path, real)
    name, served = served_frame(core, stream)
    assert name in ("pv_physics_lgbm", "lightgbm_quantile"), f"the candidate lost its validation: {name}"
    expected = backtest_frame(core, stream, name)
    both = served.index.intersection(expected.index)
    assert len(both) == 144
    # Equal to the last bits: window features are differences of cumulative sums, and the backtest's
    # series starts earlier than the service's window, so their rounding differs (seen: 5e-13 kW).
    np.testing.assert_allclose(served.loc[both].to_numpy(), expected.loc[both].to_numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("stream", [PV, LOAD], ids=["pv", "load"])
def test_nothing_after_the_issue_time_changes_the_served_forecast(
    tmp_path: Path, real: tuple[pd.Series, pd.Series], stream: int
) -> None:
    core = make_core(tmp_path, real)
    _, before = served_frame(core, stream)
    after_issue = core.store.history("site-a", ISSUE, ISSUE + pd.Timedelta(days=3))
    rng = np.random.default_rng(7)
    core.store.put_slot_means("site-a", after_issue * rng.uniform(0.0, 3.0, after_issue.shape))
    _, again = served_frame(core, stream)  # refit and re-predicted on the perturbed store
    np.testing.assert_array_equal(before.to_numpy(), again.to_numpy())
