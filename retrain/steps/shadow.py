"""Shadow scoring: the candidate predicts the live rows production served, off the hot path.

Ingest keeps a sample of labelled live rows with the prediction and the version
that served them. Here the candidate predicts the rows production (the rollout's
baseline version) served since shadow started, and each row becomes a pair of
outcomes (candidate, production) on the same features and label. Scoring is
incremental: only rows with a sample id above the rollout's ``scored_until`` are
read, so a long shadow costs the same per evaluation as a short one, and rows the
sample later prunes have already been counted. A label that arrives late enters
the sample (and the shadow) when it arrives.

Runs on the ``validation`` queue inside ``retrain.evaluate_rollouts``; the trading
app never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from retrain.context import CacheSlot, Context
from retrain.core.rollout import PairedCounts

__all__ = ["ShadowBatch", "score_new_rows", "load_model"]

# Rows per query, and the most one evaluation scores (the rest waits for the next one).
_PAGE = 20_000
_MAX_ROWS = 200_000
_MODELS: CacheSlot[dict[str, Any]] = CacheSlot("shadow estimators by sha256")
_CACHE_SIZE = 4


@dataclass(frozen=True)
class ShadowBatch:
    paired: PairedCounts
    last_id: int
    rows: int


def load_model(ctx: Context, sha256: str):
    """Load (sha256-verified) and keep a few estimators per process: every evaluation reuses them."""
    cache = ctx.cache.slot(_MODELS, dict)
    est = cache.get(sha256)
    if est is None:
        est = ctx.artifacts.load_object(sha256)
        while len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[sha256] = est
    return est


def score_new_rows(ctx: Context, *, model: str, candidate_sha256: str, baseline: str, since: datetime,
                   after_id: int) -> ShadowBatch:
    """Pair the candidate with ``baseline`` on the labelled sample rows not scored yet."""
    total, last, n = PairedCounts(), after_id, 0
    est = None
    while n < _MAX_ROWS:
        with ctx.store.tx() as tx:
            rows = tx.monitoring.shadow_rows(model, baseline, since, last, _PAGE)
        if not rows:
            break
        if est is None:
            est = load_model(ctx, candidate_sha256)
        X = np.asarray([r[1] for r in rows], dtype=np.float64)
        y = np.asarray([r[2] for r in rows], dtype=np.int8)
        prod = np.asarray([r[3] for r in rows], dtype=np.int8)
        ret = np.asarray([r[4] if r[4] is not None else 0.0 for r in rows], dtype=np.float64)
        total = total + PairedCounts.from_arrays(y, est.predict(X), prod, ret)
        last, n = int(rows[-1][0]), n + len(rows)
        if len(rows) < _PAGE:
            break
    return ShadowBatch(total, last, n)
