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

from forecasting.backtest.report import SplitRun, score_task, write_report
from forecasting.backtest.runner import TaskResult, run_load, run_pv
from forecasting.data import load_pvdaq_system50, load_uci_household
from forecasting.models.spec import ModelSpec

CFG = ModelSpec(load_n_estimators=50, pv_n_estimators=50, train_days=150,
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


def _same_before(frames: list[pd.DataFrame], cut: pd.Timestamp) -> int:
    """Forecasts (quantiles and points of every model) issued before ``cut`` are
    bit-identical in both runs, later ones are not; returns the rows compared."""
    a, b = frames
    assert a["issue_time"].equals(b["issue_time"]) and a["slot"].equals(b["slot"])
    early = (a["issue_time"] < cut).to_numpy()
    pred_cols = [c for c in a.columns if "@" in c]
    assert any(c.endswith("@point") for c in pred_cols)
    assert np.array_equal(a.loc[early, pred_cols].to_numpy(), b.loc[early, pred_cols].to_numpy())
    assert not np.array_equal(a.loc[~early, pred_cols].to_numpy(),
                              b.loc[~early, pred_cols].to_numpy())
    return int(early.sum())


def _perturb_after(s: pd.Series, cut: pd.Timestamp, scale: float) -> pd.Series:
    out = s.copy()
    after = out.index >= cut
    out[after] = np.random.default_rng(0).random(after.sum()) * scale
    return out


def test_backtest_has_no_look_ahead_end_to_end() -> None:
    """Perturb every measurement from T on: all forecasts issued before T are identical."""
    load = load_uci_household()["2008-07-01":"2009-01-20"]
    cut = pd.Timestamp("2009-01-08 12:00", tz="UTC")
    t = pd.Timestamp
    runs = [run_load(s, t("2009-01-01"), t("2009-01-01"), t("2009-01-15"), CFG,
                     progress=_quiet)[0].frame for s in (load, _perturb_after(load, cut, 8))]
    assert _same_before(runs, cut) == 8 * 96


def test_pv_backtest_has_no_look_ahead_end_to_end_capacity_included() -> None:
    """PV: everything fitted from data -- the effective capacity (kWp), the models, their
    calibration, the clear-sky-index distributions and the baselines' error bands -- only
    sees data before the issue time.  The test period lies inside the data's first year,
    where a capacity estimated from "the first 365 days" would read the perturbed future."""
    kw, site = load_pvdaq_system50()
    kw = kw[:"2011-09-20"]
    cut = pd.Timestamp("2011-09-08 12:00", tz="America/Denver")
    t = pd.Timestamp
    perturbed = _perturb_after(kw, cut, 4 * site.kwp)
    runs = [run_pv(s, site.model_copy(update={"kwp": 1.0}), t("2011-09-01"), t("2011-09-01"),
                   t("2011-09-12"), CFG, progress=_quiet, capacity_from_data=True)
            for s in (kw, perturbed)]
    for a, b in zip(*runs, strict=True):
        assert a.notes == b.notes and "kwp" in a.notes[0]
        n = _same_before([a.frame, b.frame], cut)
        assert n > (7 * 96 if a.name == "pv_day_ahead" else 6 * 12 * 16), (a.name, n)
    kwp = float(runs[0][0].notes[0].split()[1])
    assert 3.0 < kwp < 4.5


def test_report_files(load_result: TaskResult, tmp_path: Path) -> None:
    runs = [SplitRun("a", [load_result], {"x": "1"}), SplitRun("b", [load_result])]
    doc = write_report(runs, tmp_path, {"model_fingerprint": "abc"}, n_boot=50)
    for name in ("report.md", "metrics.csv", "skill.csv", "results.json",
                 "a_load_day_ahead_good_week.png", "b_load_day_ahead_bad_week.png"):
        assert (tmp_path / name).stat().st_size > 100, name
    js = json.loads((tmp_path / "results.json").read_text())
    assert js["model_fingerprint"] == "abc"
    assert set(js["splits"]) == {"a", "b"}
    assert js["splits"]["a"]["targets"] == doc["splits"]["a"]["targets"]
    assert js["splits"]["a"]["metrics"][0]["model"] == "lightgbm_quantile"
    assert all(set(r) >= {"target", "a", "b", "met_all"} for r in js["targets_summary"])
    text = (tmp_path / "report.md").read_text()
    assert "| load_day_ahead |" in text and "## Definitions" in text and "## Split `b`" in text


def test_baselines_are_scored_on_their_own_point(load_result: TaskResult) -> None:
    """MAE of seasonal naive = mean |y - y(t - 7 d)|, not the error of a shifted median."""
    f = load_result.frame[load_result.frame["scored"]]
    m, _ = score_task(load_result, n_boot=10)
    mae = float(m[(m.model == "seasonal_naive") & (m.lead == "all")].mae_kw.iloc[0])
    load = load_uci_household()
    lag = load.reindex(pd.DatetimeIndex(f["slot"]) - pd.Timedelta(days=7)).to_numpy()
    ok = np.isfinite(lag)
    assert ok.mean() > 0.95
    assert np.allclose(f["seasonal_naive@point"].to_numpy()[ok], lag[ok])
    assert abs(mae - float(np.mean(np.abs(f["y"].to_numpy() - f["seasonal_naive@point"])))) < 1e-12
    assert not np.allclose(f["seasonal_naive@point"], f["seasonal_naive@0.5"])
