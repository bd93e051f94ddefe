"""Sweep: look at every model's recent live results and turn what is wrong into requests.

Per model, against its production version: the performance trigger over the
windowed metric buckets, the emergency detector over per-bucket accuracy and
returns, and the drift check of the live feature sample against the version's
training reference. A firing trigger opens (or refreshes) one request per model
and trigger kind; a new one is sent to the decision. Deferred requests whose time
has come are sent back to the decision. The sample is pruned to its bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np

from retrain.config import ModelConfig
from retrain.context import Context
from retrain.domain import RetrainRequest, TriggerKind
from retrain.storage.repo import Tx, new_id
from retrain.triggers import PerformanceTriggerConfig, TriggerFiring, evaluate_performance
from retrain.windows import Counts

__all__ = ["SweepResult", "sweep", "bucket_counts"]


@dataclass
class SweepResult:
    models: int = 0
    firings: list[dict] = field(default_factory=list)
    requests_opened: list[str] = field(default_factory=list)
    requests_refreshed: list[str] = field(default_factory=list)
    redecided: list[str] = field(default_factory=list)


def bucket_counts(rows) -> list[Counts]:
    return [Counts(n=r.n, tp=r.tp, fp=r.fp, tn=r.tn, fn=r.fn, ret_sum=r.ret_sum, ret_sq_sum=r.ret_sq_sum) for r in rows]


def _perf_config(cfg: ModelConfig, metric: str) -> PerformanceTriggerConfig:
    t = cfg.thresholds
    return PerformanceTriggerConfig(metric=metric, relative_drop=t.relative_drop, floor=t.accuracy_floor,
                                    min_samples=t.min_samples)


def _request(model: str, firing: TriggerFiring, now: datetime) -> RetrainRequest:
    return RetrainRequest(id=new_id(), model=model, trigger=firing.kind, created_at=now, reason=firing.reason,
                          evidence=firing.evidence, severity=firing.severity)


def _open(tx: Tx, ctx: Context, req: RetrainRequest, result: SweepResult, now: datetime) -> None:
    rid, created = tx.open_request(req)
    result.firings.append({"model": req.model, "trigger": req.trigger.value, "reason": req.reason})
    if created:
        result.requests_opened.append(rid)
        tx.audit(now, "request", "sweep", f"{req.trigger.value} trigger fired for {req.model}: {req.reason}",
                 model=req.model, subject=rid, data={"evidence": req.evidence,
                                                     "severity": req.severity.value if req.severity else None})
        tx.enqueue("retrain.decide", {"v": 1, "request_id": rid}, now, priority=req.priority)
    else:
        result.requests_refreshed.append(rid)


def sweep(ctx: Context, models: list[str] | None = None) -> SweepResult:
    now = ctx.now()
    result = SweepResult()
    names = models or sorted(ctx.config.models)
    for name in names:
        cfg = ctx.config.models.get(name)
        if cfg is None:
            continue
        result.models += 1
        with ctx.store.tx() as tx:
            _sweep_model(tx, ctx, cfg, now, result)
    with ctx.store.tx() as tx:
        for row in tx.due_deferred(now):
            row.status = "open"
            tx.enqueue("retrain.decide", {"v": 1, "request_id": row.id}, now, priority=row.priority)
            result.redecided.append(row.id)
    return result


def _sweep_model(tx: Tx, ctx: Context, cfg: ModelConfig, now: datetime, result: SweepResult) -> None:
    tx.prune_samples(cfg.name, cfg.sample.max_rows)
    prod = tx.alias(cfg.name, "production")
    if prod is None:
        return
    version = tx.version(cfg.name, prod)
    baseline = (version.metrics or {}).get("baseline", {}) if version else {}
    since = now - timedelta(minutes=cfg.thresholds.window_minutes)
    rows = tx.buckets(cfg.name, prod, since, now + timedelta(minutes=1))
    counts = bucket_counts(rows)
    total = sum(counts, Counts())
    for metric in cfg.thresholds.metrics:
        firing = evaluate_performance(counts, baseline, _perf_config(cfg, metric))
        if firing is not None:
            req = _request(cfg.name, firing, now)
            # The decision's value model reads these two to size the expected recovery.
            evidence = {**req.evidence, "baseline_accuracy": baseline.get("accuracy"),
                        "current_accuracy": total.accuracy if total.n else None, "version": prod}
            _open(tx, ctx, replace(req, evidence=evidence), result, now)
            break
    _emergency(tx, ctx, cfg, prod, now, result)
    _drift(tx, ctx, cfg, prod, version, now, result)


def _emergency(tx: Tx, ctx: Context, cfg: ModelConfig, prod: str, now: datetime, result: SweepResult) -> None:
    if not cfg.emergency.enabled:
        return
    from retrain.emergency import detect_emergency_from_buckets

    width = timedelta(minutes=cfg.emergency.bucket_minutes)
    since = now - width * (cfg.emergency.history_buckets + 1)
    rows = tx.buckets(cfg.name, prod, since, now + timedelta(minutes=1))
    firing = detect_emergency_from_buckets(bucket_counts(rows), [r.minute for r in rows], now, cfg.emergency)
    if firing is not None:
        req = _request(cfg.name, firing, now)
        _open(tx, ctx, replace(req, evidence={**req.evidence, "version": prod}), result, now)


def _drift(tx: Tx, ctx: Context, cfg: ModelConfig, prod: str, version, now: datetime, result: SweepResult) -> None:
    if not cfg.drift.enabled or version is None:
        return
    ref_sha = (version.metrics or {}).get("reference_sha256")
    if not ref_sha:
        return
    from retrain.drift import detect_drift

    current = tx.samples(cfg.name, since=now - timedelta(minutes=cfg.drift.current_minutes), labelled=False)
    if len(current) < cfg.drift.min_rows:
        return
    reference = np.asarray(ctx.artifacts.load_object(ref_sha), dtype=np.float64)
    X = np.asarray([r.features for r in current], dtype=np.float64)
    report = detect_drift(reference, X, list(cfg.features), categorical=cfg.drift.categorical,
                          alpha=cfg.drift.alpha, correction=cfg.drift.correction)
    tx.add_drift_report(cfg.name, prod, now, bool(report.drifted_features), report.to_json())
    if report.drifted_features:
        worst = sorted(report.features, key=lambda f: f.p_adjusted)[:5]
        reason = (f"{len(report.drifted_features)} of {len(report.features)} features drifted "
                  f"({', '.join(report.drifted_features[:5])}) at alpha {cfg.drift.alpha} with {cfg.drift.correction} "
                  f"correction, on {len(X)} live rows")
        evidence = {"drifted": list(report.drifted_features), "rows": len(X), "version": prod,
                    "worst": [{"feature": f.name, "statistic": f.statistic, "p_adjusted": f.p_adjusted,
                               "effect": f.effect_size} for f in worst]}
        firing = TriggerFiring(kind=TriggerKind.DRIFT, reason=reason, evidence=evidence, severity=None)
        _open(tx, ctx, _request(cfg.name, firing, now), result, now)
