"""The example direction model: its training entry point and its data source.

Written the way a user of ``retrain`` would write them, and referenced from
``direction.toml``::

    entry_point = "retrain.examples.direction:train"
    data_source = "retrain.examples.direction:history"

Both receive the model's ``params`` table. Keys used here (all optional):

``C`` (1.0), ``max_iter`` (200)
    logistic-regression settings, used by :func:`train`;
``seed`` (7), ``n_features`` (8), ``rows_per_minute`` (10), ``start``
(2026-01-05T00:00:00+00:00, ISO string or datetime)
    the :class:`~retrain.examples.market.SyntheticMarket` to read, used by
    :func:`history` and :func:`market_from_params`;
``label_delay`` (60)
    seconds (number or ``timedelta``) before a row's label is known: a row's
    return is realised over the minute after its timestamp.
``drift_at_hours``, ``crash_at_hours`` (and ``drift_features``, ``drift_shift_sd``,
``drift_hours``, ``crash_minutes``, ``crash_strength``)
    optional market events, a feature drift and a flash crash, see
    :func:`retrain.examples.market.events_from_params`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from retrain.core.clock import utc
from retrain.examples.market import DEFAULT_START, SyntheticMarket, events_from_params

__all__ = ["train", "history", "market_from_params", "label_delay_from_params"]

DEFAULT_LABEL_DELAY = timedelta(minutes=1)


def train(X: np.ndarray, y: np.ndarray, params: Mapping[str, Any]) -> Pipeline:
    """Fit and return ``Pipeline(StandardScaler, LogisticRegression)`` on ``(X, y)``."""
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "clf",
                LogisticRegression(
                    C=float(params.get("C", 1.0)),
                    max_iter=int(params.get("max_iter", 200)),
                ),
            ),
        ]
    )
    model.fit(np.asarray(X, dtype=np.float64), np.asarray(y).astype(np.int64, copy=False))
    return model


def history(
    now: datetime, lookback: timedelta, params: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labelled market rows visible at ``now``: ``(X, y, ts, ret)``.

    Only rows whose label is already realised are returned, i.e. with
    ``now - label_delay - lookback <= ts <= now - label_delay`` (``ts`` in int64
    epoch seconds), so training never sees the future. ``ret`` is each row's
    market return (``y`` is 1 when it is positive): with it, validation scores the
    strategy's Sharpe ratio beside accuracy. A data source may also return only
    ``(X, y, ts)``; then no version of the model has a Sharpe baseline.
    """
    if lookback < timedelta(0):
        raise ValueError("lookback must be non-negative")
    market = market_from_params(params)
    cutoff = utc(now) - label_delay_from_params(params)
    # rows() is half-open and stamps are whole seconds: +1 s makes the cutoff inclusive.
    rows = market.rows(cutoff - lookback, cutoff + timedelta(seconds=1))
    visible = rows.ts <= cutoff.timestamp()
    return rows.X[visible], rows.y[visible], rows.ts[visible], rows.ret[visible]


def label_delay_from_params(params: Mapping[str, Any]) -> timedelta:
    """``params['label_delay']`` as a timedelta (seconds if numeric); default 1 minute."""
    value = params.get("label_delay", DEFAULT_LABEL_DELAY)
    delay = value if isinstance(value, timedelta) else timedelta(seconds=float(value))
    if delay < timedelta(0):
        raise ValueError("label_delay must be non-negative")
    return delay


def market_from_params(params: Mapping[str, Any]) -> SyntheticMarket:
    """The market described by ``params`` (shared instance per distinct settings)."""
    start = params.get("start", DEFAULT_START)
    if isinstance(start, str):
        start = datetime.fromisoformat(start)
    return _market(
        int(params.get("seed", 7)),
        int(params.get("n_features", 8)),
        int(params.get("rows_per_minute", 10)),
        utc(start),
        events_from_params(params, utc(start)),  # optional drift and flash crash (retrain.examples.market)
    )


# Bounded: one market per distinct settings keeps its block cache warm across
# the repeated history() calls of a controller or demo.
@functools.lru_cache(maxsize=8)
def _market(seed: int, n_features: int, rows_per_minute: int, start: datetime, events: tuple = ()) -> SyntheticMarket:
    return SyntheticMarket(seed=seed, n_features=n_features, rows_per_minute=rows_per_minute, start=start,
                           events=events)
