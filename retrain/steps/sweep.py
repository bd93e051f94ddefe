"""Sweep: look at every model's recent live results and turn what is wrong into requests.

Per model, against its production version: the performance trigger over the
windowed metric buckets (:mod:`retrain.triggers`), the emergency detector over
per-bucket accuracy and returns (:mod:`retrain.emergency`), and, every
``drift.check_every_minutes``, the drift check of the live feature sample
against the version's training reference (:mod:`retrain.drift`). A firing
trigger opens (or refreshes, with its new evidence) one request per model and
trigger kind; a new one is sent to the decision with the trigger's priority.
Deferred requests whose time has come are sent back to the decision. The
sample is pruned to its bound.

Not flooding: one request per model and trigger kind is open at a time, and a
firing refreshes it with its new evidence. Once that request is closed, a firing
opens a new one except (a) while the run it started or joined is still active
(that run will replace the version the trigger judged), and (b) within
``refire_minutes`` (default 60) of its rejection, unless an emergency got more
severe. Held-back firings are listed in the sweep's result, not audited.

Cost per model is flat in the number of models: one short transaction per model
reads its production version and one range of its buckets, as one numeric array,
for both the performance and the emergency window; CUSUM thresholds, detector
settings and drift references are cached per process, and the sample is pruned
every ``PRUNE_EVERY`` per model (``retrain bench sweep``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np

from retrain.config import ModelConfig
from retrain.context import Context
from retrain.domain import RetrainRequest, Severity, TriggerKind
from retrain.storage.repo import Tx, new_id
from retrain.triggers import PerformanceTriggerConfig, TriggerFiring, evaluate_performance

__all__ = ["SweepResult", "sweep", "performance_config", "emergency_config", "PRUNE_EVERY"]

PRUNE_EVERY = timedelta(minutes=10)
_SEVERITY_RANK = {s: i for i, s in enumerate((Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL))}
_REFERENCE_CACHE = 16


@dataclass
class SweepResult:
    models: int = 0
    firings: list[dict] = field(default_factory=list)
    requests_opened: list[str] = field(default_factory=list)
    requests_refreshed: list[str] = field(default_factory=list)
    redecided: list[str] = field(default_factory=list)
    held_back: list[dict] = field(default_factory=list)
    drift_checks: int = 0


def performance_config(cfg: ModelConfig, metric: str) -> PerformanceTriggerConfig:
    """The performance trigger of one metric of a model, from its ``thresholds`` table."""
    t = cfg.thresholds
    return PerformanceTriggerConfig(metric=metric, relative_drop=t.relative_drop, floor=t.accuracy_floor or None,
                                    min_samples=t.min_samples, arl0=t.arl0, confidence=t.confidence)


def emergency_config(cfg: ModelConfig):
    """The emergency detector's settings of a model, from its ``emergency`` table."""
    from retrain.emergency import EmergencyConfig

    e = cfg.emergency
    return EmergencyConfig.from_sigma(e.sigma, history_buckets=e.history_buckets, bucket_minutes=e.bucket_minutes,
                                      min_samples=e.min_samples)


def _cached(ctx: Context, key: str, cfg: ModelConfig, build):
    # Keyed by the settings object itself: a reloaded model file builds afresh.
    hit = ctx.cache.get(key)
    if hit is None or hit[0] is not cfg:
        hit = ctx.cache[key] = (cfg, build())
    return hit[1]


def _request(model: str, firing: TriggerFiring, now: datetime) -> RetrainRequest:
    return RetrainRequest(id=new_id(), model=model, trigger=firing.kind, created_at=now, reason=firing.reason,
                          evidence=firing.evidence, severity=firing.severity)


def _held_back(tx: Tx, cfg: ModelConfig, req: RetrainRequest, now: datetime) -> str | None:
    """Why a firing opens no new request, or None. See "Not flooding" in the module docstring."""
    last = tx.latest_request(req.model, req.trigger.value)
    if last is None or last.open_key is not None:
        return None  # none yet, or one still open: open_request refreshes it
    active = tx.active_run(req.model)
    if active is not None and last.run_id == active.id:
        return f"its last request already joined run {active.id}"
    if last.status == "rejected" and last.decision_id:
        decision = tx.decision(last.decision_id)
        wait = timedelta(minutes=cfg.refire_minutes)
        worse = (req.severity is not None and last.severity is not None
                 and _SEVERITY_RANK[req.severity] > _SEVERITY_RANK[Severity(last.severity)])
        if decision is not None and now - decision.decided_at < wait and not worse:
            return f"its last request was rejected at {decision.decided_at:%Y-%m-%d %H:%M}; asks again after {wait}"
    return None


def _open(tx: Tx, cfg: ModelConfig, req: RetrainRequest, result: SweepResult, now: datetime) -> None:
    result.firings.append({"model": req.model, "trigger": req.trigger.value, "reason": req.reason})
    why = _held_back(tx, cfg, req, now)
    if why is not None:
        result.held_back.append({"model": req.model, "trigger": req.trigger.value, "why": why})
        return
    rid, created = tx.open_request(req)
    if created:
        result.requests_opened.append(rid)
        tx.audit(now, "request", "sweep", f"{req.trigger.value} trigger fired for {req.model}: {req.reason}",
                 model=req.model, subject=rid, data={"evidence": req.evidence, "priority": req.priority,
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


def _prune(tx: Tx, ctx: Context, cfg: ModelConfig, now: datetime) -> None:
    # Every PRUNE_EVERY per model and process: the sample grows by at most sample.max_per_minute
    # rows a minute per ingest worker, so the bound overshoots by that much at most.
    key = f"sweep:pruned:{cfg.name}"
    last = ctx.cache.get(key)
    if last is None or now - last >= PRUNE_EVERY or now < last:
        tx.prune_samples(cfg.name, cfg.sample.max_rows)
        ctx.cache[key] = now


def _sweep_model(tx: Tx, ctx: Context, cfg: ModelConfig, now: datetime, result: SweepResult) -> None:
    _prune(tx, ctx, cfg, now)
    prod, metrics = tx.production_metrics(cfg.name)
    if prod is None:
        return
    perf_since = now - timedelta(minutes=cfg.thresholds.window_minutes)
    e = cfg.emergency
    since = perf_since
    if e.enabled:
        # The emergency's buckets are grouped back from now: history, the recent run, and the latest.
        since = min(since, now - timedelta(minutes=e.bucket_minutes * (e.history_buckets + 4)))
    rows = np.asarray(tx.bucket_series(cfg.name, prod, since, now + timedelta(minutes=1)), dtype=float).reshape(-1, 8)
    starts, counts = rows[:, 0], rows[:, 1:]
    window = counts[starts >= perf_since.timestamp()]
    _performance(tx, ctx, cfg, prod, metrics.get("baseline") or {}, window, now, result)
    if e.enabled:
        _emergency(tx, ctx, cfg, prod, starts, counts, now, result)
    if cfg.drift.enabled and metrics.get("reference_sha256"):
        _drift(tx, ctx, cfg, prod, metrics["reference_sha256"], now, result)


def _performance(tx: Tx, ctx: Context, cfg: ModelConfig, prod: str, baseline: dict, counts: np.ndarray,
                 now: datetime, result: SweepResult) -> None:
    fired: list[TriggerFiring] = []
    for metric in cfg.thresholds.metrics:
        pcfg = _cached(ctx, f"sweep:perf:{cfg.name}:{metric}", cfg, lambda: performance_config(cfg, metric))
        firing = evaluate_performance(counts, baseline, pcfg)
        if firing is not None:
            fired.append(firing)
    if not fired:
        return
    n, hits = counts[:, 0].sum(), counts[:, 1].sum() + counts[:, 3].sum()
    first = fired[0]
    evidence = {**first.evidence, "metrics_fired": [f.evidence.get("metric") for f in fired],
                # The decision's value model reads these two to size the expected recovery.
                "baseline_accuracy": baseline.get("accuracy"),
                "current_accuracy": float(hits / n) if n else None, "version": prod}
    if len(fired) > 1:
        evidence["also"] = [{"metric": f.evidence.get("metric"), "reason": f.reason} for f in fired[1:]]
    _open(tx, cfg, replace(_request(cfg.name, first, now), evidence=evidence), result, now)


def _emergency(tx: Tx, ctx: Context, cfg: ModelConfig, prod: str, starts: np.ndarray, counts: np.ndarray,
               now: datetime, result: SweepResult) -> None:
    from retrain.emergency import detect_emergency_from_arrays

    ecfg = _cached(ctx, f"sweep:emergency:{cfg.name}", cfg, lambda: emergency_config(cfg))
    firing = detect_emergency_from_arrays(starts, counts, now, ecfg)
    if firing is None or _SEVERITY_RANK[firing.severity] < _SEVERITY_RANK[Severity(cfg.emergency.min_severity)]:
        return
    req = _request(cfg.name, firing, now)
    _open(tx, cfg, replace(req, evidence={**req.evidence, "version": prod}), result, now)


def _reference(ctx: Context, sha: str) -> np.ndarray:
    key = f"sweep:reference:{sha}"
    hit = ctx.cache.get(key)
    if hit is None:
        refs = [k for k in ctx.cache if k.startswith("sweep:reference:")]
        for k in refs[: max(0, len(refs) - _REFERENCE_CACHE + 1)]:
            del ctx.cache[k]
        hit = ctx.cache[key] = np.asarray(ctx.artifacts.load_object(sha), dtype=np.float64)
    return hit


def _drift(tx: Tx, ctx: Context, cfg: ModelConfig, prod: str, ref_sha: str, now: datetime,
           result: SweepResult) -> None:
    d = cfg.drift
    last = tx.last_drift_check(cfg.name)
    if last is not None and now - last < timedelta(minutes=d.check_every_minutes):
        return
    rows = tx.sample_features(cfg.name, now - timedelta(minutes=d.current_minutes), d.max_rows)
    if len(rows) < d.min_rows:
        return
    from retrain.drift import detect_drift

    X = np.asarray(rows, dtype=np.float64)
    report = detect_drift(_reference(ctx, ref_sha), X, list(cfg.features), categorical=d.categorical,
                          alpha=d.alpha, correction=d.correction, min_effect=d.min_effect, min_psi=d.min_psi)
    tx.add_drift_report(cfg.name, prod, now, bool(report.drifted_features), report.to_json())
    result.drift_checks += 1
    if not report.drifted_features:
        return
    worst = sorted((f for f in report.features if f.drifted), key=lambda f: f.p_adjusted)[:5]
    reason = (f"{len(report.drifted_features)} of {len(report.features)} features drifted "
              f"({', '.join(report.drifted_features[:5])}) at alpha {d.alpha} with {d.correction} correction "
              f"and effect >= {d.min_effect}, on {len(X)} live rows against {report.n_reference} training rows")
    evidence = {"drifted": list(report.drifted_features), "rows": len(X), "reference_rows": report.n_reference,
                "version": prod, "alpha": d.alpha, "correction": d.correction, "min_effect": d.min_effect,
                "worst": [{"feature": f.name, "test": f.test, "statistic": f.statistic, "p_value": f.p_value,
                           "p_adjusted": f.p_adjusted, "effect": f.effect_size, "psi": f.psi} for f in worst]}
    firing = TriggerFiring(kind=TriggerKind.DRIFT, reason=reason, evidence=evidence, severity=None)
    _open(tx, cfg, _request(cfg.name, firing, now), result, now)
