"""Forecast scores and skill with day-block bootstrap confidence intervals.

MAE and RMSE score each model's own point forecast; pinball loss (mean over
the quantiles) and P10-P90 coverage score its quantiles.

Skill = 1 - score / baseline score.  The 95% interval resamples whole test
days with replacement (errors within a day are strongly correlated, so
resampling slots would give intervals that are far too narrow).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from forecasting.models.base import pinball_loss


def point_column(quantiles: Sequence[float]) -> float:
    """The quantile used as point forecast (the median, or the closest level)."""
    return min(quantiles, key=lambda q: abs(q - 0.5))


def slot_losses(
    y: np.ndarray, pred: pd.DataFrame, quantiles: Sequence[float],
    point: np.ndarray | pd.Series | None = None,
) -> pd.DataFrame:
    """Per-slot absolute and squared error of the point forecast (``point``; default the
    median column), pinball per quantile and mean, band hit."""
    p = np.asarray(point if point is not None else pred[point_column(quantiles)], dtype=float)
    out = {"ae": np.abs(y - p), "se": (y - p) ** 2}
    pins = []
    for q in quantiles:
        pl = pinball_loss(y, pred[q].to_numpy(), q)
        out[f"pinball_q{round(q * 100):02d}"] = pl
        pins.append(pl)
    out["pinball"] = np.mean(pins, axis=0)
    lo, hi = min(quantiles), max(quantiles)
    out["inside"] = ((y >= pred[lo].to_numpy()) & (y <= pred[hi].to_numpy())).astype(float)
    return pd.DataFrame(out, index=pred.index)


def summarize(losses: pd.DataFrame) -> dict[str, float]:
    """Mean scores over the rows of :func:`slot_losses` (RMSE from the mean squared error)."""
    res = {
        "n": float(len(losses)),
        "mae_kw": float(losses["ae"].mean()),
        "rmse_kw": float(np.sqrt(losses["se"].mean())),
    }
    for col in losses.columns:
        if col.startswith("pinball"):
            res[f"{col}_kw"] = float(losses[col].mean())
    res["coverage"] = float(losses["inside"].mean())
    return res


def skill_with_ci(
    model: np.ndarray,
    base: np.ndarray,
    days: np.ndarray,
    root: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Skill ``1 - mean(model)/mean(base)`` and a day-block bootstrap 95% interval.

    ``model``/``base``: per-slot losses (same rows); ``days``: the block label of
    each row.  ``root=True`` compares square roots (RMSE from squared errors).
    """
    df = pd.DataFrame({"m": model, "b": base, "d": days})
    per_day = df.groupby("d").agg(m=("m", "sum"), b=("b", "sum"), n=("m", "size"))
    m, b, n = (per_day[c].to_numpy(dtype=float) for c in ("m", "b", "n"))

    if len(m) == 0:
        return float("nan"), float("nan"), float("nan")

    def skill(ms: np.ndarray, bs: np.ndarray, ns: np.ndarray) -> np.ndarray:
        mm, bb = ms / ns, bs / ns
        if root:
            mm, bb = np.sqrt(mm), np.sqrt(bb)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 - mm / bb

    point = float(skill(m.sum(), b.sum(), n.sum()))
    if len(m) < 2:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(m), size=(n_boot, len(m)))
    boot = skill(m[idx].sum(1), b[idx].sum(1), n[idx].sum(1))
    lo, hi = np.nanquantile(boot, [0.025, 0.975])
    return point, float(lo), float(hi)
