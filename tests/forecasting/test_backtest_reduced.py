"""Reduced rolling-origin backtests on real data, run as regression tests.

Small models and a few test weeks keep this under ~30 s; the assertions are on
real computed scores (skill against the baselines, coverage) and on the
end-to-end no-look-ahead property of the whole backtest pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecasting.backtest.report import score_task, write_report
from forecasting.backtest.runner import ModelConfig, TaskResult, run_load, run_pv
from forecasting.data import load_pvdaq_system50, load_uci_household

CFG = ModelConfig(n_estimators_load=50, n_estimators_pv=50, train_days=150,
                  load_calib_days=21, pv_calib_days=21, load_max_rows=12_000,
                  pv_max_rows=8_000, num_threads=1)


def _quiet(msg: str) -> None:
    pass


def _skill(res: TaskResult, base: str, metric: str, lead: str = "all") -> float:
    _, sk = score_task(res, n_boot=100)
    row = sk[(sk.baseline == base) & (sk.metric == metric) & (sk.lead == lead)]
    return float(row.skill.iloc[0])


@pytest.fixture(scope="module")
def load_result() -> TaskResult:
    load = load_uci_household()["2008-07-01":"2009-02-15"]
    t = pd.Timestamp
    return run_load(load, t("2009-01-01"), t("2009-01-01"), t("2009-01-22"), CFG,
                    progress=_quiet)[0]


@pytest.fixture(scope="module")
def pv_results() -> dict[str, TaskResult]:
    kw, site = load_pvdaq_system50()
    kw = kw["2012-09-01":"2013-06-01"]
    t = pd.Timestamp
    res = run_pv(kw, site, t("2013-05-01"), t("2013-05-01"), t("2013-05-15"), CFG,
                 progress=_quiet)
    return {r.name: r for r in res}


def test_load_day_ahead_beats_seasonal_naive(load_result: TaskResult) -> None:
    assert _skill(load_result, "seasonal_naive", "pinball") > 0.05
    m, _ = score_task(load_result, n_boot=10)
    cov = float(m[m.model == "lightgbm_quantile"].coverage.iloc[0])
    assert 0.6 < cov < 0.95
    assert load_result.frame["scored"].sum() > 0.9 * 21 * 96


def test_pv_day_ahead_beats_persistence(pv_results: dict[str, TaskResult]) -> None:
    res = pv_results["pv_day_ahead"]
    assert _skill(res, "persistence_d2", "mae") > 0.05
    assert _skill(res, "persistence_d2", "pinball") > 0.05
    m, _ = score_task(res, n_boot=10)
    assert 0.55 < float(m[m.model == "pv_physics_lgbm"].coverage.iloc[0]) < 0.97
    # only daylight slots are scored
    assert res.frame.loc[res.frame["scored"], "y"].mean() > 0.5


def test_pv_intraday_beats_smart_persistence(pv_results: dict[str, TaskResult]) -> None:
    res = pv_results["pv_intraday"]
    assert set(res.frame["lead_bucket"]) == {"1h", "2h", "3h", "4h"}
    assert _skill(res, "smart_persistence", "pinball") > 0.0
    assert _skill(res, "smart_persistence", "pinball", lead="4h") > 0.0


def test_backtest_has_no_look_ahead_end_to_end() -> None:
    """Perturb every measurement from T on: all forecasts issued before T are identical."""
    load = load_uci_household()["2008-07-01":"2009-01-20"]
    cut = pd.Timestamp("2009-01-08 12:00", tz="UTC")
    perturbed = load.copy()
    after = perturbed.index >= cut
    perturbed[after] = np.random.default_rng(0).random(after.sum()) * 8
    t = pd.Timestamp
    runs = [run_load(s, t("2009-01-01"), t("2009-01-01"), t("2009-01-15"), CFG,
                     progress=_quiet)[0].frame for s in (load, perturbed)]
    early = runs[0]["issue_time"] < cut
    pred_cols = [c for c in runs[0].columns if "@" in c]
    assert early.sum() == 8 * 96
    assert np.array_equal(runs[0].loc[early, pred_cols].to_numpy(),
                          runs[1].loc[early, pred_cols].to_numpy())
    assert not np.array_equal(runs[0].loc[~early, pred_cols].to_numpy(),
                              runs[1].loc[~early, pred_cols].to_numpy())


def test_report_files(load_result: TaskResult, tmp_path: Path) -> None:
    doc = write_report([load_result], tmp_path, {"test": "yes"}, n_boot=50)
    for name in ("report.md", "metrics.csv", "skill.csv", "results.json",
                 "load_day_ahead_good_week.png", "load_day_ahead_bad_week.png"):
        assert (tmp_path / name).stat().st_size > 100, name
    assert json.loads((tmp_path / "results.json").read_text())["targets"] == doc["targets"]
    assert "| load_day_ahead |" in (tmp_path / "report.md").read_text()
