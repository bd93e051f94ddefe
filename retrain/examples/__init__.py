"""Example model shipped with ``retrain``: a direction classifier on a synthetic market.

``market`` generates a deterministic market stream with regime changes,
``direction`` holds the model's training entry point and data source written the
way a user would write them, and ``direction.toml`` is the matching model file.
The demo, the tests and the backtester all use them.
"""
