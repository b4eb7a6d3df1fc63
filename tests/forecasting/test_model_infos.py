"""ListModels: the backtest's scores are shown only for the configuration the backtest ran."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from forecasting.backtest_scores import extract, load_scores, main
from forecasting.mapping import LOAD, model_infos
from forecasting.selection import CandidateScore, ModelSummary

RESULTS = {
    "model_fingerprint": "abc123",
    "splits": {
        "default": {
            "metrics": [
                {"task": "load_day_ahead", "lead": "all", "model": "lightgbm_quantile", "mae_kw": 0.49,
                 "pinball_kw": 0.16, "coverage": 0.82},
                {"task": "load_day_ahead", "lead": "all", "model": "seasonal_naive", "mae_kw": 0.66,
                 "pinball_kw": 0.22, "coverage": 0.80},
            ],
            "skill": [
                {"task": "load_day_ahead", "lead": "all", "model": "lightgbm_quantile",
                 "baseline": "seasonal_naive", "metric": "pinball", "skill": 0.276},
            ],
        }
    },
}
SUMMARY = ModelSummary(
    site_id="site-a",
    stream=LOAD,
    served="lightgbm_quantile",
    trained_at=datetime(2026, 12, 1, tzinfo=UTC),
    scores=(("lightgbm_quantile", CandidateScore(0.1, 0.3, 0.8)), ("seasonal_naive", CandidateScore(0.2, 0.5, 0.7))),
    fallback_name="seasonal_naive",
)


def test_scores_of_the_same_fingerprint_are_reported(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    assert main(["--results", str(tmp_path / "results.json"), "--out", str(tmp_path / "scores.json")]) == 0
    scores = load_scores(tmp_path / "scores.json")
    assert scores is not None and scores.model_fingerprint == "abc123"
    infos = {i.model: i for i in model_infos([SUMMARY], scores, "abc123")}
    served = infos["lightgbm_quantile"]
    assert served.served and served.backtest_task.startswith("load_day_ahead all")
    assert (served.backtest_mae_kw, served.backtest_pinball_kw, served.skill_vs_baseline) == (0.49, 0.16, 0.276)
    assert served.validation_pinball_kw == 0.1 and infos["seasonal_naive"].backtest_pinball_kw == 0.22


def test_another_configuration_borrows_no_scores() -> None:
    infos = model_infos([SUMMARY], extract(RESULTS, "x"), "different")
    assert all(i.backtest_task == "" and i.backtest_pinball_kw == 0.0 for i in infos)
    assert all(i.model_fingerprint == "different" for i in infos)


def test_a_missing_scores_file_is_no_error(tmp_path: Path) -> None:
    assert load_scores(tmp_path / "nope.json") is None
