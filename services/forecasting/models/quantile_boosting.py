"""LightGBM quantile regression as the load and PV models both use it: the level grid, deterministic
parameters and one booster per level.

Public API::

    QUANTILE_GRID
    lgb_params(learning_rate, num_leaves, min_data_in_leaf, num_threads, seed) -> dict
    train_quantile_models(X, y, weight, quantile_grid, params, n_estimators) -> {level: Booster}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np

QUANTILE_GRID: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def lgb_params(
    learning_rate: float, num_leaves: int, min_data_in_leaf: int, num_threads: int, seed: int
) -> dict[str, Any]:
    """Deterministic LightGBM settings (fixed seeds, bounded threads)."""
    return {
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "min_data_in_leaf": min_data_in_leaf,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "feature_fraction": 0.9,
        "num_threads": num_threads,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbose": -1,
    }


def train_quantile_models(
    X: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray | None,
    quantile_grid: Sequence[float],
    params: dict[str, Any],
    n_estimators: int,
) -> dict[float, lgb.Booster]:
    """One LightGBM booster per quantile level (objective ``quantile``)."""
    models = {}
    for q in quantile_grid:
        data = lgb.Dataset(X, label=y, weight=weight, params={"verbose": -1})
        p = dict(params, objective="quantile", alpha=float(q))
        models[float(q)] = lgb.train(p, data, num_boost_round=n_estimators)
    return models
