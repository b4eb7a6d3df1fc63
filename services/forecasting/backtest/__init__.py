"""Rolling-origin backtests of the forecasting models on real measurements.

Run ``python -m forecasting.backtest.cli --help``.
"""
