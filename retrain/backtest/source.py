"""The backtest's data source: the replay's own rows whose labels are visible at the simulated time.

A model file names its data source as ``package.module:function`` called with
``(now, lookback, params)``. During a replay the model's ``data_source`` is
:data:`DATA_SOURCE` and ``params[PARAM]`` names the replay's rows, registered
here for the replay's duration. A row is visible at ``now`` only when its label
is, i.e. ``ts + label_delay <= now``; the window is the ``lookback`` before that
cutoff, as :func:`retrain.examples.direction.history` does for the live market.
Every read is logged (``VisibleHistory.reads``) so that tests can check that no
training ever saw a row from its future.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from retrain.backtest.data import ReplayData
from retrain.core.errors import ConfigError

__all__ = ["DATA_SOURCE", "PARAM", "VisibleHistory", "Read", "visible_history", "registered"]

DATA_SOURCE = "retrain.backtest.source:visible_history"
PARAM = "backtest_source"

_LOCK = threading.Lock()
_REGISTRY: dict[str, VisibleHistory] = {}
_IDS = itertools.count(1)


@dataclass(frozen=True)
class Read:
    """One call of the data source: when, how many rows, and the newest row's time (epoch s)."""

    at: datetime
    rows: int
    newest_ts: float | None


class VisibleHistory:
    """The rows of one replay, cut at ``now - label_delay``."""

    def __init__(self, data: ReplayData, label_delay: timedelta) -> None:
        self.data = data
        self.delay_s = label_delay.total_seconds()
        self.reads: list[Read] = []

    def rows(self, now: datetime, lookback: timedelta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cutoff = now.timestamp() - self.delay_s
        ts = self.data.ts
        lo = int(np.searchsorted(ts, cutoff - lookback.total_seconds(), side="left"))
        hi = int(np.searchsorted(ts, cutoff, side="right"))
        self.reads.append(Read(now, hi - lo, float(ts[hi - 1]) if hi > lo else None))
        return self.data.X[lo:hi], self.data.y[lo:hi].astype(np.int64), ts[lo:hi]


class registered:
    """``with registered(history) as token:`` the history is readable under ``params[PARAM] = token``."""

    def __init__(self, history: VisibleHistory) -> None:
        self.history = history
        self.token = f"replay-{next(_IDS)}"

    def __enter__(self) -> str:
        with _LOCK:
            _REGISTRY[self.token] = self.history
        return self.token

    def __exit__(self, *exc) -> None:
        with _LOCK:
            _REGISTRY.pop(self.token, None)


def visible_history(now: datetime, lookback: timedelta, params: Mapping[str, Any]):
    """The data source entry point: ``(X, y, ts)`` visible at ``now`` in the replay named by ``params``."""
    token = params.get(PARAM)
    with _LOCK:
        history = _REGISTRY.get(token) if isinstance(token, str) else None
    if history is None:
        raise ConfigError(f"data_source {DATA_SOURCE}: no replay registered under params.{PARAM}={token!r}; "
                          "it only serves a running backtest")
    return history.rows(now, lookback)
