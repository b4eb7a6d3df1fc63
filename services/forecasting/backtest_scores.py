"""The backtest's scores of the served configuration, as ``ListModels`` reports them.

``make bench-forecast`` runs the backtest (``out/backtest/results.json``) and then this module, which
keeps the scores of every model on every task and split, with the run's model fingerprint, in
``forecasting/backtest_scores.json`` (shipped with the service, so the image has it). The service shows
them only for the fingerprint it runs (``forecasting.mapping.model_infos``).

    python -m forecasting.backtest_scores [--results out/backtest/results.json] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from vpp_common.logs import get_logger

log = get_logger(__name__)

DEFAULT_OUT = Path(__file__).with_name("backtest_scores.json")
# The task whose scores stand for a model of each stream (day-ahead: what the market loop buys on).
PRIMARY_TASK = {"pv": "pv_day_ahead", "load": "load_day_ahead"}


class BacktestScore(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    split: str
    lead: str
    mae_kw: float
    pinball_kw: float
    coverage_p10_p90: float
    skill_pinball: float = 0.0  # vs the task's first baseline
    baseline: str = ""

    def label(self) -> str:
        return f"{self.task} {self.lead} (split {self.split})"


class BacktestScores(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model_fingerprint: str
    source: str
    scores: dict[str, list[BacktestScore]]  # model name -> every task/split/lead it was scored on

    def primary(self, model: str, stream: str) -> BacktestScore | None:
        """The model's score on its stream's day-ahead task, all leads, first split."""
        task = PRIMARY_TASK.get(stream, "")
        rows = [s for s in self.scores.get(model, []) if s.task == task and s.lead == "all"]
        return rows[0] if rows else None


def load_scores(path: Path) -> BacktestScores | None:
    """The scores file, or None (logged, with what to run) if it is missing or unreadable."""
    try:
        return BacktestScores.model_validate_json(path.read_text())
    except FileNotFoundError:
        log.warning("backtest_scores_missing", path=str(path), fix="run `make bench-forecast`")
    except ValidationError as exc:
        log.warning("backtest_scores_invalid", path=str(path), error=str(exc), fix="rerun `make bench-forecast`")
    return None


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0.0
    return f if math.isfinite(f) else 0.0


def extract(results: dict[str, Any], source: str) -> BacktestScores:
    """From the backtest's results.json: per split (or the one run) metrics and pinball skill rows."""
    fingerprint = str(results.get("model_fingerprint") or results.get("config", {}).get("model_fingerprint", ""))
    splits = results.get("splits")
    runs: dict[str, dict[str, Any]] = splits if isinstance(splits, dict) else {"default": results}
    scores: dict[str, list[BacktestScore]] = {}
    for split, run in runs.items():
        skill: dict[tuple[str, str, str], dict[str, Any]] = {}
        for r in run.get("skill", []):  # the first baseline of each task is the reference
            if r.get("metric") == "pinball":
                skill.setdefault((r["task"], str(r["lead"]), r["model"]), r)
        for row in run.get("metrics", []):
            sk = skill.get((row["task"], str(row["lead"]), row["model"]))
            scores.setdefault(row["model"], []).append(
                BacktestScore(
                    task=row["task"],
                    split=split,
                    lead=str(row["lead"]),
                    mae_kw=_finite(row.get("mae_kw")),
                    pinball_kw=_finite(row.get("pinball_kw")),
                    coverage_p10_p90=_finite(row.get("coverage")),
                    skill_pinball=_finite(sk["skill"]) if sk else 0.0,
                    baseline=str(sk["baseline"]) if sk else "",
                )
            )
    return BacktestScores(model_fingerprint=fingerprint, source=source, scores=scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forecasting.backtest_scores", description=__doc__)
    parser.add_argument("--results", type=Path, default=Path("out/backtest/results.json"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.results.exists():
        parser.error(f"{args.results} not found: run `make bench-forecast` first")
    doc = extract(json.loads(args.results.read_text()), str(args.results))
    args.out.write_text(doc.model_dump_json(indent=1) + "\n")
    print(f"wrote {args.out} (fingerprint {doc.model_fingerprint}, {len(doc.scores)} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
