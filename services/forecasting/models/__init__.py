"""Forecasting models (see ``base`` for the interface shared with the service).

Public API::

    QuantileForecaster                         # protocol (base)
    PvSite, PvForecaster                       # pv
    LoadForecaster, SeasonalNaiveForecaster    # load
    choose_served_model(candidates, history, validation_days) -> (model, scores)
"""

from forecasting.models.base import QuantileForecaster
from forecasting.models.load import (
    LoadForecaster,
    SeasonalNaiveForecaster,
    choose_served_model,
)
from forecasting.models.pv import PvForecaster, PvSite

__all__ = [
    "LoadForecaster",
    "PvForecaster",
    "PvSite",
    "QuantileForecaster",
    "SeasonalNaiveForecaster",
    "choose_served_model",
]
