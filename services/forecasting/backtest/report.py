"""Score backtest results and write Markdown, CSV, JSON and PNG plots.

Files written to the output directory:

* ``report.md`` -- definitions, then per split: target checks and tables
* ``metrics.csv`` -- one row per split x task x lead bucket x model (MAE, RMSE
  of the model's point forecast, pinball per quantile and mean, P10-P90
  coverage), all in kW
* ``skill.csv`` -- skill vs each baseline with day-block bootstrap 95% CI
* ``results.json`` -- all of the above per split, plus the run configuration,
  the model fingerprint and timing (layout in :func:`write_report`)
* ``forecasts_<split>_<task>.csv.gz`` -- every forecast (machine re-scoring)
* ``<split>_<task>_good_week.png`` / ``..._bad_week.png`` -- 7 days with the
  lowest / highest pinball loss of the candidate model, with its P10-P90 band
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
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
        losses = {m: slot_losses(y, res.predictions(m).loc[part.index], res.quantiles,
                                 res.point(m).loc[part.index])
                  for m in res.models}
        for m, lo in losses.items():
            metric_rows.append({"task": res.name, "lead": bucket, "model": m, **summarize(lo)})
        cand = res.models[0]
        mean_col = f"{cand}@mean"
        if mean_col in part:  # the candidate's predictive mean as an alternative point
            mean_lo = slot_losses(y, res.predictions(cand).loc[part.index], res.quantiles,
                                  part[mean_col])
            losses[f"{cand}[mean]"] = mean_lo
            metric_rows[-len(res.models)]["mae_of_mean_kw"] = float(mean_lo["ae"].mean())
            metric_rows[-len(res.models)]["rmse_of_mean_kw"] = float(
                np.sqrt(mean_lo["se"].mean()))
        for base in res.models[1:]:
            for metric, (col, root) in METRIC_LOSS.items():
                sk, lo_, hi_ = skill_with_ci(
                    losses[cand][col].to_numpy(), losses[base][col].to_numpy(),
                    part["day"].to_numpy(), root=root, n_boot=n_boot, seed=seed,
                )
                skill_rows.append({"task": res.name, "lead": bucket, "model": cand,
                                   "baseline": base, "metric": metric, "skill": sk,
                                   "ci_low": lo_, "ci_high": hi_})
            if f"{cand}[mean]" in losses:
                for metric, (col, root) in (("mae_of_mean", ("ae", False)),
                                            ("rmse_of_mean", ("se", True))):
                    sk, lo_, hi_ = skill_with_ci(
                        losses[f"{cand}[mean]"][col].to_numpy(), losses[base][col].to_numpy(),
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


def plot_weeks(res: TaskResult, out_dir: Path, prefix: str = "") -> list[str]:
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
        if f"{cand}@point" in part:
            mid = f"{cand}@point"
        ax.plot(x, part[mid], color="tab:blue", lw=1, label="point" if "point" in mid else "P50")
        ax.plot(x, part["y"], color="black", lw=1, label="measured")
        ax.set_ylabel("kW")
        ax.set_xlabel(f"local time ({res.timezone})")
        ax.set_title(f"{prefix}{res.name}: {label} week {a}..{b} (mean pinball {scores[k]:.3f} kW)")
        ax.legend(loc="upper right")
        fig.tight_layout()
        name = f"{prefix}{res.name}_{label}_week.png"
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        files.append(name)
    return files


@dataclass
class SplitRun:
    """The results of one train/test split (``config``: its dates, capacity, ...)."""

    name: str
    results: list[TaskResult]
    config: dict[str, Any] = field(default_factory=dict)


DEFINITIONS = """\
**Point forecast and scores.** Every model is scored on its *own point forecast* for MAE and RMSE
(column `<model>@point` in `forecasts_*.csv.gz`): the persistence value for persistence D-2, the
per-slot mean of days D-2..D-31 for the 30-day climatology, last hour's clear-sky index times the
target slot's clear-sky power for smart persistence, the same slot 7 days earlier for seasonal naive,
and {candidate_points}. For the PV model, `mae_of_mean` / `rmse_of_mean` (metrics and skill tables)
score its predictive mean instead -- informational only, not used for any target: a single point
cannot be both MAE-optimal (the median) and RMSE-optimal (the mean). Pinball loss (mean over P10,
P50, P90) and P10-P90 coverage score the quantiles. Skill = 1 - score(model) / score(baseline)
(RMSE: ratio of the roots), with a 95 % interval from 1,000 bootstrap resamples of whole test days.
Values in kW; PV is scored on daylight slots only (solar elevation > 5 deg at the slot middle), load
on all slots with a measurement.

**Baseline bands** (the standard empirical-error construction, out of sample): band = point + empirical
quantiles of the baseline's own past errors.
- PV baselines: errors `e = (y - point) / P_clear` (clear-sky-scaled, so the band follows the
  daily and seasonal shape) on the daylight slots (elevation > 5 deg, clear-sky power > 1 % of kWp,
  measured) of the **30 days** before the issue time; `P_q = max(0, point + P_clear * Q_q(e))`.
  Grouping: persistence D-2 and climatology pool all daylight hours (one distribution per issue);
  smart persistence has one distribution **per lead** (15-minute step, 16 groups), each error
  recomputed as issued that lead before its slot.
- Seasonal naive (load): errors `y(t) - y(t - 7 d)` over **all slots** (no grouping by hour) of the
  **56 days** before the issue time; `P_q = max(0, point + Q_q(e))`.

**No look-ahead.** Models are refit monthly on data before the month's first issue time (expanding
window, capped at the training window); every forecast reads measurements only through the issue-time
gate. Everything fitted from data -- PV effective capacity (365 days before the split's first fit),
conformal calibration, clear-sky-index distributions, baseline error bands -- uses data before the
issue time. Tests perturb every measurement after an issue time and require bit-identical forecasts
(load and PV, the PV capacity estimate included).
"""


def _targets_md(targets: list[dict[str, Any]]) -> str:
    tg = pd.DataFrame(targets)
    if tg.empty:
        return "(no targets for these tasks)"
    tg["met"] = tg["met"].map({True: "yes", False: "**NO**"})
    return _md_table(tg)


def write_report(
    runs: Sequence[SplitRun],
    out_dir: Path,
    config: dict[str, Any],
    n_boot: int = 1000,
    seed: int = 0,
    save_forecasts: bool = True,
    candidate_points: str = "the P50 for the quantile models",
) -> dict[str, Any]:
    """Score every split's tasks and write all output files; returns the JSON document.

    Layout of ``results.json``::

        {"model_fingerprint": str, "config": {...},
         "splits": {name: {"config": {...}, "timing_s": {task: s}, "notes": {task: [str]},
                           "metrics": [row], "skill": [row], "targets": [row],
                           "targets_met": int, "targets_total": int, "plots": [file]}},
         "targets_summary": [{"target": str, "<split>": {"value", "met"}, ..., "met_all": bool}],
         "definitions": str}
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"model_fingerprint": config.get("model_fingerprint"),
                           "config": config, "splits": {}}
    all_m, all_s = [], []
    summary: dict[str, dict[str, Any]] = {}
    body: list[str] = []
    for run in runs:
        mets, skills, plots = [], [], []
        for res in run.results:
            m, sk_ = score_task(res, n_boot=n_boot, seed=seed)
            mets.append(m)
            skills.append(sk_)
            plots += plot_weeks(res, out_dir, prefix=f"{run.name}_")
            if save_forecasts:
                res.frame.to_csv(out_dir / f"forecasts_{run.name}_{res.name}.csv.gz", index=False)
        metrics = pd.concat(mets, ignore_index=True)
        skill = pd.concat(skills, ignore_index=True)
        targets = check_targets(metrics, skill)
        for t in targets:
            row = summary.setdefault(t["target"], {"target": t["target"]})
            row[run.name] = {"value": t["value"], "met": t["met"]}
        all_m.append(metrics.assign(split=run.name))
        all_s.append(skill.assign(split=run.name))
        doc["splits"][run.name] = {
            "config": run.config,
            "timing_s": {r.name: round(r.seconds, 1) for r in run.results},
            "notes": {r.name: r.notes for r in run.results},
            "metrics": metrics.to_dict(orient="records"),
            "skill": skill.to_dict(orient="records"),
            "targets": targets,
            "targets_met": sum(bool(t["met"]) for t in targets),
            "targets_total": len(targets),
            "plots": plots,
        }
        body += [f"## Split `{run.name}`", ""]
        body += [f"- {k}: `{v}`" for k, v in run.config.items()]
        notes = sorted({n for r in run.results for n in r.notes})
        body += [f"- note: {n}" for n in notes]
        body += ["", f"### Targets ({doc['splits'][run.name]['targets_met']} of {len(targets)} met)",
                 "", _targets_md(targets)]
        body += ["", "### Scores (kW; MAE/RMSE on each model's point forecast)", ""]
        show = metrics.drop(columns=["n"]).copy()
        show.insert(3, "n", metrics["n"].astype(int))
        body.append(_md_table(show))
        body += ["", "### Skill (1 - model/baseline; day-block bootstrap 95% CI)", ""]
        sk = skill.copy()
        sk["95% CI"] = [f"[{a:.3f}, {b:.3f}]" for a, b in zip(sk.ci_low, sk.ci_high, strict=True)]
        body.append(_md_table(sk.drop(columns=["ci_low", "ci_high"])))
        body += ["", "### Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    names = [r.name for r in runs]
    for row in summary.values():
        row["met_all"] = all(bool(row.get(n, {}).get("met")) for n in names)
    doc["targets_summary"] = list(summary.values())
    definitions = DEFINITIONS.format(candidate_points=candidate_points)
    doc["definitions"] = definitions
    pd.concat(all_m, ignore_index=True).to_csv(out_dir / "metrics.csv", index=False)
    pd.concat(all_s, ignore_index=True).to_csv(out_dir / "skill.csv", index=False)
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    lines = ["# Forecast backtest", ""]
    lines += [f"- {k}: `{v}`" for k, v in config.items()]
    lines += ["", "## Definitions", "", definitions]
    lines += ["## Targets on every split", ""]
    head = ["target", *names, "met on all"]
    rows = []
    for row in summary.values():
        cells = []
        for n in names:
            v = row.get(n)
            cells.append("" if v is None else
                         f"{v['value']:.3f} {'yes' if v['met'] else '**NO**'}")
        rows.append([row["target"], *cells, "yes" if row["met_all"] else "**NO**"])
    lines.append(_md_table(pd.DataFrame(rows, columns=head)))
    lines += ["", *body]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return doc
