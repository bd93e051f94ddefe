"""A model for orchestration and fault tests, importable by real workers
(``tests.faults.slow_model:train``): it takes as long as asked and says when it ran.

Its ``params`` (the model's table in the model file):

``seconds`` (0)
    how long the fit takes;
``spin`` (false)
    burn CPU for that long instead of sleeping (a CPU-bound training);
``log`` (none)
    a file to which the fit appends ``start``/``end`` lines with the process id and
    ``time.time()``, so a test can measure how many fits overlapped;
``until_file`` (none)
    instead of a fixed time, wait until this file exists (at most 120 s), so a test
    can end a fit exactly when it wants;
``rows`` (400), ``seed`` (0)
    the size and seed of the synthetic data :func:`history` returns.

:func:`broken` always raises, like a model's own code with a bug.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

__all__ = ["train", "history", "broken", "fit_intervals", "max_overlap"]


def history(now: datetime, lookback: timedelta, params: Mapping[str, Any]):
    """``rows`` labelled rows of ``n_features`` features ending at ``now`` (no ingestion needed)."""
    rng = np.random.default_rng(int(params.get("seed", 0)))
    n, k = int(params.get("rows", 400)), int(params.get("n_features", 2))
    X = rng.normal(size=(n, k))
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    ts = now.timestamp() - np.arange(n, 0, -1, dtype=np.float64)
    return X, y, ts


def _log(params: Mapping[str, Any], what: str) -> None:
    path = params.get("log")
    if path:
        with open(path, "a") as f:
            f.write(f"{what} {os.getpid()} {time.time():.6f}\n")


def train(X, y, params: Mapping[str, Any]) -> LogisticRegression:
    _log(params, "start")
    seconds = float(params.get("seconds", 0))
    if params.get("spin"):
        end = time.perf_counter() + seconds
        x = 0
        while time.perf_counter() < end:
            x += 1
    elif params.get("until_file"):
        deadline = time.monotonic() + 120
        while not os.path.exists(params["until_file"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    elif seconds:
        time.sleep(seconds)
    model = LogisticRegression().fit(X, y)
    _log(params, "end")
    return model


def broken(X, y, params: Mapping[str, Any]):
    raise ValueError("the model's own code has a bug")


def fit_intervals(path) -> list[tuple[float, float]]:
    """(start, end) of every finished fit in a ``log`` file, matched per process."""
    open_: dict[str, float] = {}
    out = []
    for line in open(path).read().split("\n"):
        if not line.strip():
            continue
        what, pid, t = line.split()
        if what == "start":
            open_[pid] = float(t)
        elif pid in open_:
            out.append((open_.pop(pid), float(t)))
    return out


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best
