"""Ingest: store a batch of live results as per-minute metric buckets and a feature sample.

Idempotent per batch id (a redelivered batch is not counted twice). Bad rows are
rejected with a reason into the dead-letter table; the good rows of the same batch
are stored. Raw rows are not kept: only bucket counts and a bounded sample.

The batch is checked and bucketed column by column with numpy, not row by row:
at 5,000 predictions a second a per-row Python loop would be the bottleneck. Rows
that fail a check are the exception; only they are looked at one by one, to write
their reason. One batch is one transaction: the batch id, its buckets, its sample
rows and its dead letters commit together.

Checks, first failure wins (the dead letter names it):

* prediction missing (an outcome whose prediction the client never saw), or not 0/1;
* label not 0/1 (missing is allowed: a prediction whose outcome never came);
* features: not exactly the model's count, or a value that is not a finite number;
* return: infinite (NaN and missing both mean "no return": the row counts, its
  strategy return is 0);
* timestamp not a finite epoch time > 0, or more than ``RETRAIN_MAX_CLOCK_SKEW_S``
  ahead of the step's clock (a client clock gone wrong would write metric buckets
  in the future). There is no lower bound past 0: a backtest replays history of any
  age, on a simulated clock that is never behind the rows it ingests;
* empty version.

Sampling: each good, labelled row is kept with probability ``sample.rate``, drawn
from a generator seeded by the batch id, so a redelivery would draw the same rows.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

import numpy as np

from retrain.context import CacheSlot, Context
from retrain.core.columns import unpack_f8
from retrain.core.errors import PayloadError
from retrain.core.payloads import IngestBatch
from retrain.tasks import INGEST

__all__ = ["IngestResult", "ingest", "check_batch", "CheckedBatch"]

UNKNOWN_PREDICTION = "label for an unknown prediction (no prediction with this id was reported)"
SKEW_SETTING = "RETRAIN_MAX_CLOCK_SKEW_S"


@dataclass(frozen=True)
class IngestResult:
    batch_id: str
    duplicate: bool
    accepted: int
    rejected: int
    reasons: dict[str, int]


@dataclass(frozen=True)
class CheckedBatch:
    """A batch as arrays, with the rows that failed a check and why."""

    X: np.ndarray  # (n, n_features) float64; rows that failed may hold anything
    ts: np.ndarray  # float64 epoch seconds
    prediction: np.ndarray  # float64, NaN where missing
    label: np.ndarray  # float64, NaN where missing
    ret: np.ndarray  # float64, NaN where missing
    problems: dict[int, str]  # row -> reason, for the rows that failed

    @property
    def good(self) -> np.ndarray:
        ok = np.ones(self.ts.shape[0], dtype=bool)
        if self.problems:
            ok[list(self.problems)] = False
        return ok


def _numbers(col: list | str, count: int) -> np.ndarray:
    if isinstance(col, str):
        return unpack_f8(col, count)
    # None becomes NaN; pydantic has let through only floats and "nan"/"inf"/"-inf", which numpy reads.
    return np.asarray(col, dtype=np.float64).reshape(count)


def _note(problems: dict[int, str], rows: np.ndarray, reason) -> None:
    for i in np.flatnonzero(rows).tolist():
        if i not in problems:
            problems[i] = reason(i) if callable(reason) else reason


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _rows(batch: IngestBatch) -> list[list[Any] | None]:
    # IngestBatch's validator: without n_features, x is one list (or null) per row.
    return cast("list[list[Any] | None]", batch.x)


def _features(batch: IngestBatch, n: int, n_features: int, problems: dict[int, str]) -> np.ndarray:
    if batch.n_features is not None:  # flat or packed, row-major
        if batch.n_features != n_features:
            _note(problems, np.ones(n, dtype=bool), f"expected {n_features} features, got {batch.n_features}")
            return np.zeros((n, n_features))
        X = _numbers(batch.x, n * n_features).reshape(n, n_features)
    else:
        try:
            arr = np.asarray(batch.x) if batch.x else np.empty((0, n_features))
        except ValueError:  # ragged rows
            arr = np.empty(0, dtype=object)
        if arr.ndim == 2 and arr.shape[1] == n_features and arr.dtype.kind in "fiu":
            X = arr.astype(np.float64, copy=False)
        else:
            # Ragged, missing rows or non-numbers: the slow path, row by row.
            X = np.zeros((n, n_features))
            for i, row in enumerate(_rows(batch)):
                if row is None or len(row) != n_features:
                    problems.setdefault(i, f"expected {n_features} features, got {0 if row is None else len(row)}")
                    continue
                bad = next((v for v in row if not _is_number(v)), _OK)
                if bad is not _OK:
                    problems.setdefault(i, f"feature value {bad!r} is not a finite number")
                    continue
                X[i] = row
            return X
    finite = np.isfinite(X).all(axis=1)
    _note(problems, ~finite, lambda i: f"feature value {float(X[i][~np.isfinite(X[i])][0])!r} is not a finite number")
    return X


_OK = object()


def check_batch(batch: IngestBatch, n_features: int, now: datetime | None = None,
                max_clock_skew_s: float | None = None) -> CheckedBatch:
    """Decode and check every row of ``batch`` against a model of ``n_features`` features;
    with ``now`` and ``max_clock_skew_s``, rows timestamped more than that ahead of ``now`` fail."""
    n = len(batch.id)
    problems: dict[int, str] = {}
    pred = np.asarray(batch.prediction, dtype=np.float64).reshape(n)
    label = np.asarray(batch.label, dtype=np.float64).reshape(n)
    missing_pred = np.isnan(pred)
    _note(problems, missing_pred, UNKNOWN_PREDICTION)
    _note(problems, ~missing_pred & (pred != 0) & (pred != 1),
          lambda i: f"prediction must be 0 or 1, got {int(pred[i])}")
    _note(problems, ~np.isnan(label) & (label != 0) & (label != 1),
          lambda i: f"label must be 0 or 1, got {int(label[i])}")
    X = _features(batch, n, n_features, problems)
    ret = _numbers(batch.ret, n)
    _note(problems, np.isinf(ret), lambda i: f"return {float(ret[i])!r} is not a finite number")
    ts = _numbers(batch.ts, n)
    _note(problems, ~(np.isfinite(ts) & (ts > 0)), lambda i: f"timestamp {float(ts[i])!r} is not a valid epoch time")
    if now is not None and max_clock_skew_s is not None:
        clock = now.isoformat(timespec="seconds")
        _note(problems, ts > now.timestamp() + max_clock_skew_s,
              lambda i: f"timestamp {float(ts[i])!r} is more than {SKEW_SETTING}={max_clock_skew_s:.15g} s ahead of "
                        f"the clock (row at {_utc_text(float(ts[i]))}, clock at {clock})")
    if "" in set(batch.version):
        _note(problems, np.fromiter((not v for v in batch.version), dtype=bool, count=n), "empty model version")
    return CheckedBatch(X, ts, pred, label, ret, problems)


def _utc_text(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):  # past what datetime holds (year 9999)
        return "after the year 9999"


def _reason_key(problem: str) -> str:
    """The reason without its values, so that a batch's summary has one key per kind of problem."""
    return _VALUES.sub("…", problem.split("(")[0]).strip()


_VALUES = re.compile(r"'[^']*'|-?\b(?:\d[\d.e+-]*|nan|inf)\b")


def _json_number(v: float) -> float | str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v if math.isfinite(v) else str(v)


def _dead_row(batch: IngestBatch, c: CheckedBatch, i: int, problem: str, now: datetime) -> dict:
    if batch.n_features is None:
        row = _rows(batch)[i]
        x = None if row is None else [v if _is_number(v) else str(v) for v in row]
    else:
        x = [_json_number(float(v)) for v in c.X[i]] if c.X.shape[1] == batch.n_features else None
    return {"at": now, "source": INGEST, "model": batch.model, "reason": problem,
            "payload": {"batch_id": batch.batch_id, "id": batch.id[i], "version": batch.version[i],
                        "ts": _json_number(float(c.ts[i])), "x": x,
                        "prediction": batch.prediction[i], "label": batch.label[i],
                        "ret": _json_number(float(c.ret[i]))}}


def ingest(ctx: Context, batch: IngestBatch) -> IngestResult:
    now = ctx.now()
    model_cfg = ctx.config.models.get(batch.model)
    n = len(batch.id)
    if model_cfg is None:
        with ctx.store.tx() as tx:
            if not tx.monitoring.claim_batch(batch.batch_id, now, 0, n):
                return IngestResult(batch.batch_id, True, 0, 0, {})
            tx.dead_letters.add(now, INGEST, f"unknown model {batch.model!r}", batch.model_dump(), batch.model)
        return IngestResult(batch.batch_id, False, 0, n, {"unknown model": n})

    try:
        checked = check_batch(batch, model_cfg.n_features, now, ctx.settings.max_clock_skew_s)
    except PayloadError:
        raise
    except (ValueError, TypeError) as exc:  # a column numpy cannot read at all
        raise PayloadError(f"IngestBatch: unreadable column: {exc}") from None
    good = checked.good
    reasons: dict[str, int] = {}
    for problem in checked.problems.values():
        key = _reason_key(problem)
        reasons[key] = reasons.get(key, 0) + 1
    dead = [_dead_row(batch, checked, i, p, now) for i, p in sorted(checked.problems.items())]
    accepted = int(good.sum())
    buckets = _buckets(batch, checked, good) if accepted else []
    quota = ctx.cache.slot(_SAMPLE_QUOTA, _MinuteQuota)
    samples = (_sample_rows(batch, checked, good, model_cfg.sample.rate, model_cfg.sample.max_per_minute, quota)
               if accepted else [])
    with ctx.store.tx() as tx:
        if not tx.monitoring.claim_batch(batch.batch_id, now, accepted, len(dead)):
            return IngestResult(batch.batch_id, True, 0, 0, {})
        tx.dead_letters.add_many(dead)
        if batch.client_dropped:
            tx.audit.record(now, "client", "client", f"the client dropped {batch.client_dropped} rows of {batch.model} "
                            "before this batch (broker unreachable or buffer full)", model=batch.model,
                            data={"dropped": batch.client_dropped, "batch_id": batch.batch_id})
        tx.monitoring.add_buckets(buckets)
        tx.monitoring.add_samples(samples)
    return IngestResult(batch.batch_id, False, accepted, len(dead), reasons)


def _buckets(batch: IngestBatch, c: CheckedBatch, good: np.ndarray) -> list[dict]:
    idx = np.flatnonzero(good)
    minute = np.floor(c.ts[idx] / 60.0).astype(np.int64)
    distinct = set(batch.version)
    if len(distinct) == 1:  # the usual batch: one version
        versions = {distinct.pop(): 0}
        vcode = np.zeros(idx.size, dtype=np.int64)
    else:
        versions = {v: i for i, v in enumerate(sorted(distinct))}
        all_codes = np.fromiter((versions[v] for v in batch.version), dtype=np.int64, count=len(batch.version))
        vcode = all_codes[idx]
    # One integer key per (version, minute); the minutes of one batch span far less than 2**32
    # (good rows lie between 1970 and the clock's skew bound).
    m0 = int(minute.min())
    keys, inv = np.unique(vcode * (1 << 32) + (minute - m0), return_inverse=True)
    k = keys.size
    has_label = ~np.isnan(c.label[idx])
    pred = c.prediction[idx].astype(np.int64)
    lab = np.where(has_label, c.label[idx], 0).astype(np.int64)
    ret = np.nan_to_num(c.ret[idx], nan=0.0)
    # Strategy return: long when predicting up, short when predicting down.
    strat = np.where(pred == 1, ret, -ret) * has_label
    # Outcome code 2 * label + prediction: tn, fp, fn, tp; unlabelled rows get code 4.
    code = np.where(has_label, 2 * lab + pred, 4)
    counts = np.bincount(inv * 5 + code, minlength=k * 5).reshape(k, 5)
    ret_sum = np.bincount(inv, weights=strat, minlength=k)
    ret_sq = np.bincount(inv, weights=strat * strat, minlength=k)
    names = list(versions)
    out = []
    for j, key in enumerate(keys.tolist()):
        tn, fp, fn, tp, unl = counts[j].tolist()
        out.append({"model": batch.model, "version": names[key >> 32],
                    "minute": datetime.fromtimestamp((m0 + (key & 0xFFFFFFFF)) * 60, tz=timezone.utc),
                    "n": tn + fp + fn + tp, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
                    "ret_sum": float(ret_sum[j]), "ret_sq_sum": float(ret_sq[j]), "unlabelled": unl})
    return out


class _MinuteQuota:
    """Sample rows already kept per (model, minute) by this process, for the newest minutes only."""

    KEEP_MINUTES = 180

    def __init__(self) -> None:
        self.used: dict[tuple[str, int], int] = {}
        self.newest = 0

    def take(self, model: str, minutes: np.ndarray, cap: int) -> np.ndarray:
        """Which of these rows (their minutes, in any order) fit under ``cap`` rows a minute."""
        keep = np.zeros(minutes.size, dtype=bool)
        uniq, first, counts = np.unique(minutes, return_index=True, return_counts=True)
        order = np.argsort(minutes, kind="stable")
        start = 0
        for m, c in zip(uniq.tolist(), counts.tolist()):
            used = self.used.get((model, m), 0)
            room = max(0, min(c, cap - used))
            keep[order[start:start + room]] = True
            self.used[(model, m)] = used + room
            start += c
        newest = int(uniq[-1])
        if newest > self.newest + 10:
            self.newest = newest
            self.used = {k: v for k, v in self.used.items() if k[1] > newest - self.KEEP_MINUTES}
        return keep


_SAMPLE_QUOTA: CacheSlot[_MinuteQuota] = CacheSlot("ingest sample quota per minute")


def _sample_rows(batch: IngestBatch, c: CheckedBatch, good: np.ndarray, rate: float, cap: int,
                 quota: _MinuteQuota) -> list[dict]:
    rng = np.random.default_rng(zlib.crc32(batch.batch_id.encode()))
    take = good & ~np.isnan(c.label) & (rng.random(good.size) < rate)
    idx = np.flatnonzero(take)
    if idx.size and cap:
        idx = idx[quota.take(batch.model, np.floor(c.ts[idx] / 60.0).astype(np.int64), cap)]
    picked: list[int] = idx.tolist()
    if not picked:
        return []
    X = c.X[picked].tolist()
    ts, pred, lab, ret = (c.ts[picked].tolist(), c.prediction[picked].astype(int).tolist(),
                          c.label[picked].astype(int).tolist(), c.ret[picked].tolist())
    utc = timezone.utc
    return [{"model": batch.model, "version": batch.version[i], "ts": datetime.fromtimestamp(ts[j], tz=utc),
             "features": X[j], "prediction": pred[j], "label": lab[j],
             "ret": None if math.isnan(ret[j]) else ret[j]} for j, i in enumerate(picked)]
