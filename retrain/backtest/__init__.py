"""Backtest (placeholder docstring, replaced below)."""

from retrain.backtest.data import ReplayData, from_arrays, load_data, market_data, write_csv
from retrain.backtest.run import BacktestSettings, run_backtest, run_comparison, summary_text, write_report

__all__ = ["ReplayData", "from_arrays", "load_data", "market_data", "write_csv", "BacktestSettings", "run_backtest",
           "run_comparison", "summary_text", "write_report"]
