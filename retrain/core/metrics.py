"""Scoring a fitted model on labelled rows: the metrics every stage compares.

The figures are those of :class:`retrain.core.windows.Counts`, the live metrics' own
currency, so a holdout baseline and a live window are the same quantities: the
Sharpe ratio is the per-outcome ratio of the strategy's returns
(:func:`retrain.core.windows.strategy_returns`), present only when returns are given.
"""

from __future__ import annotations

import math
from typing import Any, overload

import numpy as np

from retrain.core.windows import Counts, strategy_returns

__all__ = ["score", "classification_metrics", "finite_metrics"]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, ret: np.ndarray | None = None) -> dict[str, float]:
    """``n``, accuracy, precision, recall, F1 and, with the rows' market returns ``ret``, the Sharpe ratio.

    Precision, recall and F1 without any relevant outcome are 0; the Sharpe ratio of
    fewer than two or of constant returns is ``nan`` (undefined, as in the live windows).

    >>> m = classification_metrics([1, 0, 1, 0], [1, 0, 0, 0], [0.02, -0.01, 0.03, -0.02])
    >>> m["accuracy"], round(m["sharpe"], 3)
    (0.75, 0.21)
    """
    y_pred = np.asarray(y_pred)
    counts = Counts.from_arrays(y_true, y_pred, None if ret is None else strategy_returns(y_pred, ret))
    out = {"n": float(counts.n)}
    for name in ("accuracy", "precision", "recall", "f1"):
        v = counts.metric(name)
        out[name] = 0.0 if math.isnan(v) else v
    if ret is not None:
        out["sharpe"] = counts.sharpe
    return out


def score(estimator: Any, X: np.ndarray, y: np.ndarray, ret: np.ndarray | None = None) -> dict[str, float]:
    return classification_metrics(y, estimator.predict(X), ret)


@overload
def finite_metrics(metrics: dict[str, float]) -> dict[str, float]: ...
@overload
def finite_metrics(metrics: None) -> None: ...
@overload
def finite_metrics(metrics: dict[str, float] | None) -> dict[str, float] | None: ...
def finite_metrics(metrics: dict[str, float] | None) -> dict[str, float] | None:
    """The metrics that are numbers (JSON, and Postgres, have no NaN): undefined ones are left out."""
    if metrics is None:
        return None
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
