"""Ingest: store a batch of live results as per-minute metric buckets and a feature sample.

Idempotent per batch id (a redelivered batch is not counted twice). Bad rows are
rejected with a reason into the dead-letter table; the good rows of the same batch
are stored. Raw rows are not kept: only bucket counts and a bounded sample.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from retrain.context import Context
from retrain.payloads import IngestBatch

__all__ = ["IngestResult", "ingest"]


@dataclass(frozen=True)
class IngestResult:
    batch_id: str
    duplicate: bool
    accepted: int
    rejected: int
    reasons: dict[str, int]


def _row_problem(x, pred, label, ret, ts, n_features: int, version: str) -> str | None:
    if pred is None:
        return "label for an unknown prediction (no prediction with this id was reported)"
    if pred not in (0, 1):
        return f"prediction must be 0 or 1, got {pred!r}"
    if label is not None and label not in (0, 1):
        return f"label must be 0 or 1, got {label!r}"
    if x is None or len(x) != n_features:
        return f"expected {n_features} features, got {0 if x is None else len(x)}"
    for v in x:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return f"feature value {v!r} is not a finite number"
    if ret is not None and not math.isfinite(ret):
        return f"return {ret!r} is not a finite number"
    if not math.isfinite(ts) or ts <= 0:
        return f"timestamp {ts!r} is not a valid epoch time"
    if not version:
        return "empty model version"
    return None


def _in_sample(prediction_id: str, rate: float) -> bool:
    # Hash, not random: the same row is sampled the same way on a redelivery.
    return zlib.crc32(prediction_id.encode()) % 100_000 < rate * 100_000


def ingest(ctx: Context, batch: IngestBatch) -> IngestResult:
    now = ctx.now()
    model_cfg = ctx.config.models.get(batch.model)
    n = len(batch.id)
    with ctx.store.tx() as tx:
        if model_cfg is None:
            if not tx.claim_batch(batch.batch_id, now, 0, n):
                return IngestResult(batch.batch_id, True, 0, 0, {})
            tx.dead_letter(now, "retrain.ingest", f"unknown model {batch.model!r}", batch.model_dump(), batch.model)
            return IngestResult(batch.batch_id, False, 0, n, {"unknown model": n})

        good: list[int] = []
        dead: list[dict] = []
        reasons: dict[str, int] = {}
        for i in range(n):
            problem = _row_problem(batch.x[i], batch.prediction[i], batch.label[i], batch.ret[i], batch.ts[i],
                                   model_cfg.n_features, batch.version[i])
            if problem is None:
                good.append(i)
                continue
            key = problem.split(",")[0].split("(")[0].strip()
            reasons[key] = reasons.get(key, 0) + 1
            dead.append({
                "at": now, "source": "retrain.ingest", "model": batch.model, "reason": problem,
                "payload": {"batch_id": batch.batch_id, "id": batch.id[i], "version": batch.version[i],
                            "ts": batch.ts[i] if math.isfinite(batch.ts[i]) else str(batch.ts[i]),
                            "x": [v if isinstance(v, (int, float)) and math.isfinite(v) else str(v)
                                  for v in (batch.x[i] or [])],
                            "prediction": batch.prediction[i], "label": batch.label[i],
                            "ret": batch.ret[i] if batch.ret[i] is None or math.isfinite(batch.ret[i]) else str(batch.ret[i])},
            })

        if not tx.claim_batch(batch.batch_id, now, len(good), len(dead)):
            return IngestResult(batch.batch_id, True, 0, 0, {})
        tx.dead_letters_bulk(dead)
        if batch.client_dropped:
            tx.audit(now, "client", "client", f"the client dropped {batch.client_dropped} rows of {batch.model} "
                     "before this batch (broker unreachable or buffer full)", model=batch.model,
                     data={"dropped": batch.client_dropped, "batch_id": batch.batch_id})
        if good:
            tx.add_buckets(_buckets(batch, good))
            tx.add_samples(_sample_rows(batch, good, model_cfg.sample.rate))
    return IngestResult(batch.batch_id, False, len(good), len(dead), reasons)


def _buckets(batch: IngestBatch, idx: list[int]) -> list[dict]:
    ts = np.asarray([batch.ts[i] for i in idx], dtype=np.float64)
    minute = (ts // 60).astype(np.int64)
    pred = np.asarray([batch.prediction[i] for i in idx], dtype=np.int8)
    lab_raw = [batch.label[i] for i in idx]
    has_label = np.asarray([v is not None for v in lab_raw])
    label = np.asarray([v if v is not None else 0 for v in lab_raw], dtype=np.int8)
    ret = np.asarray([batch.ret[i] if batch.ret[i] is not None else 0.0 for i in idx], dtype=np.float64)
    versions = [batch.version[i] for i in idx]
    # Strategy return: long when predicting up, short when predicting down.
    strat = np.where(pred == 1, ret, -ret) * has_label
    out: dict[tuple[str, int], dict] = {}
    for j, (v, m) in enumerate(zip(versions, minute.tolist())):
        b = out.get((v, m))
        if b is None:
            b = out[(v, m)] = {"model": batch.model, "version": v,
                               "minute": datetime.fromtimestamp(m * 60, tz=timezone.utc),
                               "n": 0, "tp": 0, "fp": 0, "tn": 0, "fn": 0,
                               "ret_sum": 0.0, "ret_sq_sum": 0.0, "unlabelled": 0}
        if not has_label[j]:
            b["unlabelled"] += 1
            continue
        p, y = int(pred[j]), int(label[j])
        b["n"] += 1
        b["tp" if p and y else "fp" if p else "fn" if y else "tn"] += 1
        b["ret_sum"] += float(strat[j])
        b["ret_sq_sum"] += float(strat[j]) ** 2
    return list(out.values())


def _sample_rows(batch: IngestBatch, idx: list[int], rate: float) -> list[dict]:
    rows = []
    for i in idx:
        if batch.label[i] is None or not _in_sample(batch.id[i], rate):
            continue
        rows.append({"model": batch.model, "version": batch.version[i],
                     "ts": datetime.fromtimestamp(batch.ts[i], tz=timezone.utc),
                     "features": [float(v) for v in batch.x[i]], "prediction": int(batch.prediction[i]),
                     "label": int(batch.label[i]), "ret": batch.ret[i]})
    return rows
