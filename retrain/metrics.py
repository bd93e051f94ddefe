"""Scoring a fitted model on labelled rows: the metrics every stage compares."""

from __future__ import annotations

import numpy as np

__all__ = ["score", "classification_metrics"]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, ret: np.ndarray | None = None) -> dict[str, float]:
    y_true = np.asarray(y_true).astype(np.int8)
    y_pred = np.asarray(y_pred).astype(np.int8)
    n = len(y_true)
    tp = int(np.sum((y_pred == 1) & (y_true == 1)))
    fp = int(np.sum((y_pred == 1) & (y_true == 0)))
    fn = int(np.sum((y_pred == 0) & (y_true == 1)))
    acc = float(np.mean(y_true == y_pred)) if n else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {"n": float(n), "accuracy": acc, "precision": precision, "recall": recall, "f1": f1}
    if ret is not None and n > 1:
        strat = np.where(y_pred == 1, ret, -ret)
        sd = float(np.std(strat, ddof=1))
        out["sharpe"] = float(np.mean(strat) / sd) if sd > 0 else 0.0
    return out


def score(estimator, X: np.ndarray, y: np.ndarray, ret: np.ndarray | None = None) -> dict[str, float]:
    return classification_metrics(y, estimator.predict(X), ret)
