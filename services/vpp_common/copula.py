"""Joint samples of several quantile forecasts, and quantiles of their sum, by sampling.

Quantiles are not additive: the P10 of ``load - pv`` is not ``P10(load) - P90(pv)``, nor anything else
read off the two quantile sets alone; it depends on how the two forecast errors move together. So each
marginal forecast (one quantile set per slot) is turned into an inverse CDF by linear interpolation
between its quantile levels (flat beyond the outermost level, i.e. tails are not extrapolated), the
marginals are coupled by a **Gaussian copula** whose correlation matrix is the stated dependence
assumption, and the wanted quantiles are read off the weighted sum of the joint samples.

Correlation 0 means independent errors; 1 means comonotone errors (the only case where summing
quantiles would be right). The random stream is seeded, so the same inputs give the same forecast.

One uniform per marginal and sample serves every slot of the horizon: within a sample a forecast's
error sits at the same quantile all day (errors persist over hours, as weather does). The forecasting
service sums the samples into net and portfolio quantiles (``combine``); bidding runs each sample's
battery path through the hours to size offers that hold with a stated probability (``joint_samples``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr

# Levels every marginal is predicted at, so the interpolated inverse CDF has a usable shape.
GRID_QUANTILES: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclass(frozen=True)
class Marginal:
    """One quantity's quantile forecast (rows = slots, columns = quantile levels) and its sign in the sum."""

    quantiles: pd.DataFrame
    weight: float  # +1 adds the quantity, -1 subtracts it (NET = load - pv)
    group: str  # "pv" or "load": picks the correlation with the other marginals


def correlation_matrix(
    groups: Sequence[str], sites: Sequence[str], *, pv_load: float, pv_pv: float, load_load: float
) -> np.ndarray:
    """Error correlation between marginals: same-group pairs across sites get ``pv_pv``/``load_load``,
    PV and load of the same site get ``pv_load``, PV and load of different sites are independent."""
    g = np.asarray(groups)
    o = np.asarray(sites)
    same_group = g[:, None] == g[None, :]
    pv_row = (g == "pv")[:, None]
    corr = np.where(same_group, np.where(pv_row, pv_pv, load_load), np.where(o[:, None] == o[None, :], pv_load, 0.0))
    np.fill_diagonal(corr, 1.0)
    return corr  # ``combine`` repairs it if the chosen mix is not positive definite


def _nearest_psd(corr: np.ndarray) -> np.ndarray:
    """Clip negative eigenvalues so a user-chosen mix of correlations is always a valid matrix."""
    vals, vecs = np.linalg.eigh(corr)
    if vals.min() > 1e-10:
        return corr
    fixed = vecs @ np.diag(np.clip(vals, 1e-8, None)) @ vecs.T
    d = np.sqrt(np.diag(fixed))
    return fixed / np.outer(d, d)


def joint_samples(
    marginals: Sequence[Marginal],
    corr: np.ndarray,
    *,
    n_samples: int = 2000,
    seed: int = 20240601,
) -> np.ndarray:
    """Samples of every marginal under a Gaussian copula with correlation ``corr``: an array
    (marginals, slots, samples). All marginals must share the same slot index."""
    if not marginals:
        raise ValueError("nothing to sample")
    index = marginals[0].quantiles.index
    rng = np.random.default_rng(seed)
    try:
        chol = np.linalg.cholesky(corr)
    except np.linalg.LinAlgError:  # a user-chosen mix that is not positive definite
        chol = np.linalg.cholesky(_nearest_psd(corr))
    z = rng.standard_normal((n_samples, len(marginals))) @ chol.T
    u = ndtr(z)  # (samples, marginals) uniforms with the wanted dependence
    out = np.empty((len(marginals), len(index), n_samples))
    for k, m in enumerate(marginals):
        if not m.quantiles.index.equals(index):
            raise ValueError("marginals must share one slot index")
        levels = np.asarray(m.quantiles.columns, dtype=float)
        order = np.argsort(levels)
        levels = levels[order]
        values = np.sort(m.quantiles.to_numpy(dtype=float)[:, order], axis=1)  # repair any crossing
        # np.interp for every slot at once (the same uniforms serve every slot): flat beyond the ends.
        at = np.clip(np.searchsorted(levels, u[:, k], side="right") - 1, 0, len(levels) - 2)
        w = np.clip((u[:, k] - levels[at]) / (levels[at + 1] - levels[at]), 0.0, 1.0)
        out[k] = values[:, at] * (1.0 - w) + values[:, at + 1] * w
    return out


def combine(
    marginals: Sequence[Marginal],
    corr: np.ndarray,
    quantiles: Sequence[float],
    *,
    n_samples: int = 2000,
    seed: int = 20240601,
    lower_kw: float | None = None,
) -> pd.DataFrame:
    """Quantiles of ``sum(weight_i * X_i)`` per slot under a Gaussian copula with correlation ``corr``.

    All marginals must share the same slot index. ``lower_kw`` clips the result from below (e.g. 0 for
    a sum of PV powers). Returns rows = slots, columns = ``quantiles``."""
    if not marginals:
        raise ValueError("nothing to combine")
    samples = joint_samples(marginals, corr, n_samples=n_samples, seed=seed)
    weights = np.asarray([m.weight for m in marginals], dtype=float)
    total = np.einsum("k,kts->ts", weights, samples)
    out = np.quantile(total, np.asarray(quantiles, dtype=float), axis=1).T
    if lower_kw is not None:
        out = np.maximum(out, lower_kw)
    return pd.DataFrame(out, index=marginals[0].quantiles.index, columns=list(quantiles))
