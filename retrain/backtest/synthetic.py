"""Seeded synthetic histories of the shapes the backtester must handle: long and slow, short and dense.

Used by the scale benchmark (``retrain bench backtest_scale``) and the tests; no download.

>>> d = daily_history(years=1.0)
>>> len(d), d.features, round(d.rows_per_minute * 1440, 2)
(365, ('ret_1d', 'ret_5d', 'vol_20d', 'z_1d'), 1.0)
>>> m = minute_history(rows=1000)
>>> len(m), round(m.rows_per_minute, 2)
(1000, 1.0)
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from retrain.backtest.data import ReplayData, from_arrays

__all__ = ["daily_history", "minute_history", "START"]

START = datetime(2000, 1, 3, 21, 0, tzinfo=timezone.utc)


def daily_history(years: float = 20.0, seed: int = 11, business_days: bool = False) -> ReplayData:
    """Daily closes with lagged-return features; momentum (+0.15) flips to mean reversion at half-time."""
    rng = np.random.default_rng(seed)
    days = np.arange(int(round(years * 365.25)) + 21)
    ts = START.timestamp() + days * 86400.0
    if business_days:
        wd = np.array([(START + timedelta(days=int(d))).weekday() for d in days])
        ts = ts[wd < 5]
    n = len(ts)
    vol = np.empty(n)
    r = np.empty(n)
    vol[0], r[0] = 0.01, 0.0
    phi = np.where(np.arange(n) < n // 2, 0.15, -0.15)
    for i in range(1, n):  # a GARCH-like volatility, an AR(1) mean
        vol[i] = np.sqrt(1e-6 + 0.08 * r[i - 1] ** 2 + 0.9 * vol[i - 1] ** 2)
        r[i] = 0.0002 + phi[i] * r[i - 1] + vol[i] * rng.standard_normal()
    lag1 = r
    lag5 = np.convolve(r, np.ones(5) / 5, mode="full")[:n]
    vol20 = np.sqrt(np.convolve(r ** 2, np.ones(20) / 20, mode="full")[:n])
    nxt = np.append(r[1:], np.nan)  # the return the label is about: the next close's
    X = np.column_stack([lag1, lag5, vol20, lag1 / np.maximum(vol20, 1e-9)])
    keep = slice(20, n - 1)
    return from_arrays(ts[keep], X[keep], (nxt[keep] > 0).astype(int), nxt[keep],
                       features=["ret_1d", "ret_5d", "vol_20d", "z_1d"],
                       source=f"synthetic daily closes ({years:g} years, seed {seed})")


def minute_history(rows: int = 100_000, seed: int = 5, n_features: int = 4) -> ReplayData:
    """One row a minute; ``y = [X.w + noise > 0]`` with ``w`` flipped at half the rows."""
    rng = np.random.default_rng(seed)
    ts = START.timestamp() + 60.0 * np.arange(rows)
    X = rng.standard_normal((rows, n_features))
    w = rng.standard_normal(n_features)
    sign = np.where(np.arange(rows) < rows // 2, 1.0, -1.0)
    z = sign * (X @ w) + 2.0 * rng.standard_normal(rows)
    y = (z > 0).astype(int)
    ret = np.where(y == 1, 1.0, -1.0) * np.abs(rng.normal(0.0005, 0.0003, rows))
    return from_arrays(ts, X, y, ret, features=[f"f{i}" for i in range(n_features)],
                       source=f"synthetic minute stream ({rows} rows, seed {seed}, concept flip half-way)")
