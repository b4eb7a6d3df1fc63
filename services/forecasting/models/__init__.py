"""Forecasting models (see ``base`` for the interface shared with the service).

Public API::

    QuantileForecaster                         # protocol (base)
    PvSite, PvForecaster                       # pv
    LoadForecaster                             # load
    SeasonalNaiveForecaster                    # seasonal_naive (the fallback)
    choose_served_model(candidates, history, validation_days) -> (model, scores)   # validation
    day_ahead_issues(days, timezone) -> [(issue, slots)]                           # validation
"""

from forecasting.models.base import QuantileForecaster
from forecasting.models.load import LoadForecaster
from forecasting.models.pv import PvForecaster, PvSite
from forecasting.models.seasonal_naive import SeasonalNaiveForecaster
from forecasting.models.validation import choose_served_model, day_ahead_issues

__all__ = [
    "LoadForecaster",
    "PvForecaster",
    "PvSite",
    "QuantileForecaster",
    "SeasonalNaiveForecaster",
    "choose_served_model",
    "day_ahead_issues",
]
