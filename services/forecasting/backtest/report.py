"""Score backtest results and write Markdown, CSV, JSON and PNG plots.

Files written to the output directory:

* ``report.md`` -- tables for people, with the target checks
* ``metrics.csv`` -- one row per task x lead bucket x model (MAE, RMSE,
  pinball per quantile and mean, P10-P90 coverage), all in kW
* ``skill.csv`` -- skill vs each baseline with day-block bootstrap 95% CI
* ``results.json`` -- all of the above plus the run configuration and timing
* ``forecasts_<task>.csv.gz`` -- every forecast (machine re-scoring)
* ``<task>_good_week.png`` / ``<task>_bad_week.png`` -- 7 days with the lowest /
  highest pinball loss of the candidate model, with its P10-P90 band
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecasting.backtest.metrics import skill_with_ci, slot_losses, summarize
from forecasting.backtest.runner import TaskResult

METRIC_LOSS = {"mae": ("ae", False), "rmse": ("se", True), "pinball": ("pinball", False)}


def score_task(
    res: TaskResult, n_boot: int = 1000, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics, skill) tables of one task: overall ("all") and per lead bucket."""
    f = res.frame[res.frame["scored"]]
    buckets = ["all"] + (sorted(f["lead_bucket"].unique()) if f["lead_bucket"].nunique() > 1
                         else [])
    metric_rows: list[dict[str, Any]] = []
    skill_rows: list[dict[str, Any]] = []
    for bucket in buckets:
        part = f if bucket == "all" else f[f["lead_bucket"] == bucket]
        y = part["y"].to_numpy()
        losses = {m: slot_losses(y, res.predictions(m).loc[part.index], res.quantiles)
                  for m in res.models}
        for m, lo in losses.items():
            metric_rows.append({"task": res.name, "lead": bucket, "model": m, **summarize(lo)})
        cand = res.models[0]
        for base in res.models[1:]:
            for metric, (col, root) in METRIC_LOSS.items():
                sk, lo_, hi_ = skill_with_ci(
                    losses[cand][col].to_numpy(), losses[base][col].to_numpy(),
                    part["day"].to_numpy(), root=root, n_boot=n_boot, seed=seed,
                )
                skill_rows.append({"task": res.name, "lead": bucket, "model": cand,
                                   "baseline": base, "metric": metric, "skill": sk,
                                   "ci_low": lo_, "ci_high": hi_})
    return pd.DataFrame(metric_rows), pd.DataFrame(skill_rows)


def check_targets(metrics: pd.DataFrame, skill: pd.DataFrame) -> list[dict[str, Any]]:
    """The issue's acceptance targets, each with its value and pass/fail."""
    out: list[dict[str, Any]] = []

    def sk(task: str, lead: str, base: str, metric: str) -> pd.Series | None:
        r = skill[(skill.task == task) & (skill.lead == lead) & (skill.baseline == base)
                  & (skill.metric == metric)]
        return None if r.empty else r.iloc[0]

    def cov(task: str, lead: str) -> float | None:
        r = metrics[(metrics.task == task) & (metrics.lead == lead)]
        return None if r.empty else float(r.iloc[0]["coverage"])

    def add(name: str, value: float | None, ok: bool | None, detail: str = "") -> None:
        out.append({"target": name, "value": value, "met": ok, "detail": detail})

    def skill_target(task: str, lead: str, base: str, metric: str, need: float,
                     ci: bool = False) -> None:
        r = sk(task, lead, base, metric)
        if r is None:
            return
        ok = bool(r.skill >= need and (not ci or r.ci_low > 0))
        detail = f"95% CI [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        extra = " and CI low > 0" if ci else ""
        add(f"{task} {lead}: {metric} skill vs {base} >= {need:.2f}{extra}", float(r.skill), ok,
            detail)

    def cov_target(task: str, lead: str) -> None:
        c = cov(task, lead)
        if c is not None:
            add(f"{task} {lead}: P10-P90 coverage in [0.75, 0.85]", c, 0.75 <= c <= 0.85)

    skill_target("load_day_ahead", "all", "seasonal_naive", "pinball", 0.20)
    cov_target("load_day_ahead", "all")
    skill_target("pv_day_ahead", "all", "persistence_d2", "mae", 0.20)
    skill_target("pv_day_ahead", "all", "climatology_30d", "mae", 0.05, ci=True)
    skill_target("pv_day_ahead", "all", "climatology_30d", "pinball", 0.05, ci=True)
    skill_target("pv_day_ahead", "all", "climatology_30d", "rmse", 0.0)
    cov_target("pv_day_ahead", "all")
    leads = sorted(set(skill[skill.task == "pv_intraday"].lead) - {"all"})
    for lead in leads:
        skill_target("pv_intraday", lead, "smart_persistence", "mae", 0.15)
        skill_target("pv_intraday", lead, "smart_persistence", "pinball", 0.20)
    for lead in ["all", *leads]:
        cov_target("pv_intraday", lead)
    return out


def _fmt(v: Any, nd: int = 3) -> str:
    if isinstance(v, float):
        return "" if np.isnan(v) else f"{v:.{nd}f}"
    return str(v)


def _md_table(df: pd.DataFrame, nd: int = 3) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(_fmt(v, nd) for v in row) + " |" for row in df.itertuples(False)]
    return "\n".join([head, sep, *body])


def plot_weeks(res: TaskResult, out_dir: Path) -> list[str]:
    """Good and bad week plots of the candidate model (lead 1 h for intraday)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = res.frame
    if f["lead_bucket"].nunique() > 1:
        f = f[f["lead_bucket"] == "1h"]
    f = f.drop_duplicates("slot", keep="last").set_index("slot").sort_index()
    cand = res.models[0]
    qs = res.quantiles
    cols = {q: f"{cand}@{q}" for q in qs}
    sc = f[f["scored"]]
    loss = slot_losses(sc["y"].to_numpy(), sc[list(cols.values())].set_axis(qs, axis=1), qs)
    daily = loss["pinball"].groupby(sc["day"].to_numpy()).mean()
    days = sorted(daily.index)
    if len(days) < 7:
        windows = [(days[0], days[-1])] if days else []
        scores = [float(daily.mean())] if days else []
    else:
        windows = [(days[k], days[k + 6]) for k in range(len(days) - 6)]
        scores = [float(daily.loc[a:b].mean()) for a, b in windows]
    files: list[str] = []
    if not windows:
        return files
    picks = {"good": int(np.argmin(scores)), "bad": int(np.argmax(scores))}
    for label, k in picks.items():
        a, b = windows[k]
        part = f[(f["day"] >= a) & (f["day"] <= b)]
        x = part.index.tz_convert(res.timezone).tz_localize(None)
        fig, ax = plt.subplots(figsize=(12, 4))
        lo, mid, hi = cols[min(qs)], cols[min(qs, key=lambda q: abs(q - 0.5))], cols[max(qs)]
        ax.fill_between(x, part[lo], part[hi], color="tab:blue", alpha=0.25,
                        label=f"P{round(min(qs) * 100)}-P{round(max(qs) * 100)}")
        ax.plot(x, part[mid], color="tab:blue", lw=1, label="P50")
        ax.plot(x, part["y"], color="black", lw=1, label="measured")
        ax.set_ylabel("kW")
        ax.set_xlabel(f"local time ({res.timezone})")
        ax.set_title(f"{res.name}: {label} week {a}..{b} (mean pinball {scores[k]:.3f} kW)")
        ax.legend(loc="upper right")
        fig.tight_layout()
        name = f"{res.name}_{label}_week.png"
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        files.append(name)
    return files


def write_report(
    results: Sequence[TaskResult],
    out_dir: Path,
    config: dict[str, Any],
    n_boot: int = 1000,
    seed: int = 0,
    save_forecasts: bool = True,
) -> dict[str, Any]:
    """Score every task and write all output files; returns the JSON document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mets, skills, plots = [], [], []
    for res in results:
        m, s = score_task(res, n_boot=n_boot, seed=seed)
        mets.append(m)
        skills.append(s)
        plots += plot_weeks(res, out_dir)
        if save_forecasts:
            res.frame.to_csv(out_dir / f"forecasts_{res.name}.csv.gz", index=False)
    metrics = pd.concat(mets, ignore_index=True)
    skill = pd.concat(skills, ignore_index=True)
    targets = check_targets(metrics, skill)
    metrics.to_csv(out_dir / "metrics.csv", index=False)
    skill.to_csv(out_dir / "skill.csv", index=False)
    doc = {
        "config": config,
        "timing_s": {r.name: round(r.seconds, 1) for r in results},
        "metrics": metrics.to_dict(orient="records"),
        "skill": skill.to_dict(orient="records"),
        "targets": targets,
        "plots": plots,
    }
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    lines = ["# Forecast backtest", ""]
    lines += [f"- {k}: `{v}`" for k, v in config.items()]
    lines += ["", "## Scores (kW; P50 for MAE/RMSE)", ""]
    show = metrics.drop(columns=["n"]).copy()
    show.insert(3, "n", metrics["n"].astype(int))
    lines.append(_md_table(show))
    lines += ["", "## Skill (1 - model/baseline; day-block bootstrap 95% CI)", ""]
    sk = skill.copy()
    sk["95% CI"] = [f"[{a:.3f}, {b:.3f}]" for a, b in zip(sk.ci_low, sk.ci_high, strict=True)]
    lines.append(_md_table(sk.drop(columns=["ci_low", "ci_high"])))
    lines += ["", "## Targets", ""]
    tg = pd.DataFrame(targets)
    if not tg.empty:
        tg["met"] = tg["met"].map({True: "yes", False: "NO"})
        lines.append(_md_table(tg))
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return doc
