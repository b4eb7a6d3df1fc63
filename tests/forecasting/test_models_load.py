"""Load models on real UCI data: no look-ahead, calibration sanity, fallback logic."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from forecasting.data import load_uci_household
from forecasting.models import (
    LoadForecaster,
    QuantileForecaster,
    SeasonalNaiveForecaster,
    choose_served_model,
)
from forecasting.models.validation import day_ahead_issues

Q = [0.1, 0.5, 0.9]


def small_model(**kw: object) -> LoadForecaster:
    args: dict[str, object] = dict(n_estimators=40, train_days=120, calib_days=21,
                                   quantile_grid=(0.05, 0.1, 0.5, 0.9, 0.95), num_threads=1)
    args.update(kw)
    return LoadForecaster(**args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def load() -> pd.Series:
    return load_uci_household()["2008-06-01":"2009-03-01"]


@pytest.fixture(scope="module")
def fitted(load: pd.Series) -> LoadForecaster:
    m = small_model()
    m.fit(load[load.index < pd.Timestamp("2009-01-01", tz="UTC")])
    return m


@pytest.mark.parametrize("model_kind", ["lgbm", "naive"])
def test_forecast_never_depends_on_data_after_issue(
    load: pd.Series, fitted: LoadForecaster, model_kind: str
) -> None:
    model: QuantileForecaster = fitted if model_kind == "lgbm" else SeasonalNaiveForecaster()
    if model_kind == "naive":
        model.fit(load)
    issue = pd.Timestamp("2009-01-20 12:00", tz="UTC")
    slots = pd.date_range("2009-01-20 12:00", "2009-01-22 00:00", freq="15min", tz="UTC",
                          inclusive="left")
    model.update(load)
    before = model.predict(issue, slots, Q)
    rng = np.random.default_rng(7)
    perturbed = load.copy()
    after = perturbed.index >= issue
    perturbed[after] = rng.random(after.sum()) * 10  # includes the slot starting at issue
    model.update(perturbed)
    again = model.predict(issue, slots, Q)
    assert np.array_equal(before.to_numpy(), again.to_numpy())
    # a change just *before* the issue time must be visible (the gate is not too strict)
    perturbed[issue - pd.Timedelta(minutes=15)] += 5.0
    model.update(perturbed)
    changed = model.predict(issue, slots, Q)
    assert not np.array_equal(before.to_numpy(), changed.to_numpy())
    model.update(load)


def test_quantiles_monotone_nonnegative_any_levels(load: pd.Series, fitted: LoadForecaster) -> None:
    fitted.update(load)
    issue = pd.Timestamp("2009-02-01 12:00", tz="UTC")
    slots = pd.date_range("2009-02-02", periods=96, freq="15min", tz="UTC")
    qs = [0.02, 0.1, 0.3, 0.5, 0.9, 0.97]
    fc = fitted.predict(issue, slots, qs)
    assert list(fc.columns) == qs and fc.index.equals(slots)
    assert (fc.diff(axis=1).iloc[:, 1:] >= 0).all().all()
    assert (fc >= 0).all().all()
    assert (fc[0.9] - fc[0.1]).mean() > 0.1  # a real band, not a point


def test_lightgbm_beats_seasonal_naive_with_sane_coverage(
    load: pd.Series, fitted: LoadForecaster
) -> None:
    naive = SeasonalNaiveForecaster()
    naive.fit(load)
    fitted.update(load)
    days = pd.date_range("2009-01-01", "2009-01-28", freq="D")
    pins: dict[str, list[float]] = {"m": [], "n": []}
    inside = []
    for issue, slots in day_ahead_issues(days, "UTC"):
        y = load.reindex(slots).to_numpy()
        ok = np.isfinite(y)
        for key, model in (("m", fitted), ("n", naive)):
            fc = model.predict(issue, slots, Q)
            for q in Q:
                d = y[ok] - fc[q].to_numpy()[ok]
                pins[key].append(float(np.maximum(q * d, (q - 1) * d).mean()))
            if key == "m":
                inside += list((y[ok] >= fc[0.1].to_numpy()[ok]) & (y[ok] <= fc[0.9].to_numpy()[ok]))
    skill = 1 - np.mean(pins["m"]) / np.mean(pins["n"])
    assert skill > 0.05, skill
    assert 0.6 < np.mean(inside) < 0.95


def test_short_history_uses_the_fallback(load: pd.Series) -> None:
    m = small_model()
    short = load["2008-06-01":"2008-06-14"]
    m.fit(short)
    assert m.fallback is not None
    naive = SeasonalNaiveForecaster()
    naive.fit(short)
    issue = pd.Timestamp("2008-06-14 12:00", tz="UTC")
    slots = pd.date_range("2008-06-15", periods=96, freq="15min", tz="UTC")
    assert m.predict(issue, slots, Q).equals(naive.predict(issue, slots, Q))


class _Zero:
    """A useless model: always 0 kW."""

    name = "zero"
    is_fallback = False

    def fit(self, history: pd.Series) -> None:
        pass

    def update(self, history: pd.Series) -> None:
        pass

    def predict(self, issue_time: pd.Timestamp, slots: pd.DatetimeIndex,
                quantiles: Sequence[float]) -> pd.DataFrame:
        return pd.DataFrame(0.0, index=slots, columns=list(quantiles))


def test_choose_served_model_refuses_a_model_worse_than_fallback(load: pd.Series) -> None:
    hist = load[:"2008-10-31"]
    model, scores = choose_served_model([_Zero()], hist, validation_days=14)
    assert model.name == "seasonal_naive"
    assert scores["zero"] > scores["seasonal_naive"]


def test_choose_served_model_serves_a_better_model(load: pd.Series) -> None:
    hist = load[:"2008-10-31"]
    model, scores = choose_served_model([small_model(), SeasonalNaiveForecaster()], hist,
                                        validation_days=14)
    assert scores["lightgbm_quantile"] < scores["seasonal_naive"]
    assert model.name == "lightgbm_quantile"
    # demanding a 90% improvement makes the same model be refused
    model, _ = choose_served_model([small_model()], hist, validation_days=14,
                                   min_improvement=0.9)
    assert model.name == "seasonal_naive"
