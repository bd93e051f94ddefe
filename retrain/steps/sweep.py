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

Drift reference and persistence: the reference is the production version's
training window (the sample of it stored at training), kept with what the drift
trigger asked against it in the ``controls`` row ``drift:MODEL``.
:func:`refresh_drift_reference` sets it at each promotion (and the sweep
whenever production changed otherwise, e.g. a rollback). Every check stores a
report; a drift asks once per reference, then only when it gets worse or after a
back-off, and not at all while accuracy is healthy (:func:`retrain.drift.judge_drift`);
the report says which and why.

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
from retrain.triggers import PerformanceTriggerConfig, TriggerFiring, evaluate_performance, wilson_upper

__all__ = ["SweepResult", "sweep", "performance_config", "emergency_config", "refresh_drift_reference",
           "drift_state", "PRUNE_EVERY"]

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


def _open(tx: Tx, cfg: ModelConfig, req: RetrainRequest, result: SweepResult, now: datetime) -> str | None:
    """Open or refresh the request of ``req``'s trigger kind; its id, or None when held back."""
    result.firings.append({"model": req.model, "trigger": req.trigger.value, "reason": req.reason})
    why = _held_back(tx, cfg, req, now)
    if why is not None:
        result.held_back.append({"model": req.model, "trigger": req.trigger.value, "why": why})
        return None
    rid, created = tx.open_request(req)
    if created:
        result.requests_opened.append(rid)
        tx.audit(now, "request", "sweep", f"{req.trigger.value} trigger fired for {req.model}: {req.reason}",
                 model=req.model, subject=rid, data={"evidence": req.evidence, "priority": req.priority,
                                                     "severity": req.severity.value if req.severity else None})
        tx.enqueue("retrain.decide", {"v": 1, "request_id": rid}, now, priority=req.priority)
    else:
        result.requests_refreshed.append(rid)
    return rid


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
    baseline = metrics.get("baseline") or {}
    fired = _performance(tx, ctx, cfg, prod, baseline, window, now, result)
    if e.enabled:
        _emergency(tx, ctx, cfg, prod, starts, counts, now, result)
    if cfg.drift.enabled:
        _drift(tx, ctx, cfg, prod, metrics, _accuracy_health(cfg, baseline, window, fired), now, result)


def _performance(tx: Tx, ctx: Context, cfg: ModelConfig, prod: str, baseline: dict, counts: np.ndarray,
                 now: datetime, result: SweepResult) -> list[TriggerFiring]:
    fired: list[TriggerFiring] = []
    for metric in cfg.thresholds.metrics:
        pcfg = _cached(ctx, f"sweep:perf:{cfg.name}:{metric}", cfg, lambda: performance_config(cfg, metric))
        firing = evaluate_performance(counts, baseline, pcfg)
        if firing is not None:
            fired.append(firing)
    if not fired:
        return fired
    n, hits = counts[:, 0].sum(), counts[:, 1].sum() + counts[:, 3].sum()
    first = fired[0]
    evidence = {**first.evidence, "metrics_fired": [f.evidence.get("metric") for f in fired],
                # The decision's value model reads these two to size the expected recovery.
                "baseline_accuracy": baseline.get("accuracy"),
                "current_accuracy": float(hits / n) if n else None, "version": prod}
    if len(fired) > 1:
        evidence["also"] = [{"metric": f.evidence.get("metric"), "reason": f.reason} for f in fired[1:]]
    _open(tx, cfg, replace(_request(cfg.name, first, now), evidence=evidence), result, now)
    return fired


def _accuracy_health(cfg: ModelConfig, baseline: dict, counts: np.ndarray, fired: list[TriggerFiring]) -> dict:
    """Is live accuracy healthy? ``healthy`` is True, False, or None (unknown).

    Healthy: no performance rule fired and accuracy is not significantly below
    ``max(floor, baseline x (1 - relative_drop))`` (its upper bound at ``confidence``
    reaches it), so that a point estimate wobbling around the limit does not flip it.
    """
    t = cfg.thresholds
    n = int(counts[:, 0].sum()) if counts.size else 0
    hits = int(counts[:, 1].sum() + counts[:, 3].sum()) if counts.size else 0
    base = baseline.get("accuracy")
    limit = max(t.accuracy_floor, base * (1 - t.relative_drop) if base is not None else 0.0)
    upper = wilson_upper(hits, n, t.confidence) if n else None
    if fired:
        healthy = False
    elif n < t.min_samples or (base is None and not t.accuracy_floor):
        healthy = None  # too few outcomes, or nothing to hold accuracy to
    else:
        healthy = upper >= limit
    return {"healthy": healthy, "accuracy": round(hits / n, 6) if n else None, "n": n,
            "upper_bound": None if upper is None else round(upper, 6), "baseline": base, "limit": round(limit, 6),
            "performance_fired": bool(fired)}


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


def _key(model: str) -> str:
    return f"drift:{model}"


def refresh_drift_reference(tx: Tx, model: str, version: str, now: datetime, *, actor: str, reason: str) -> dict:
    """Make ``version``'s training window the model's drift reference, forgetting what was asked
    against the old one (called at each promotion; the sweep calls it when production changed
    otherwise). Returns the new state; audited."""
    row = tx.version(model, version)
    metrics = dict(row.metrics or {}) if row is not None else {}
    sha = metrics.get("reference_sha256")
    window = [row.data_start.isoformat() if row is not None and row.data_start else None,
              row.data_end.isoformat() if row is not None and row.data_end else None]
    rows = metrics.get("reference_rows", row.data_rows if row is not None else None)
    from retrain.drift import DriftEpisode  # here, not at import: scipy costs an ingest worker ~70 MB

    state = {"version": version, "reference_sha256": sha, "reference_rows": rows, "window": window,
             "since": now.isoformat(), "set_by": actor, "reason": reason,
             "episode": DriftEpisode(sha or f"none:{version}").to_json()}
    tx.set_control(_key(model), state, actor, now)
    what = (f"the training window of {version} ({rows} rows, {window[0] or '?'} .. {window[1] or '?'})" if sha
            else f"nothing: {version} has no training reference, so its drift is not checked")
    tx.audit(now, "drift", actor, f"drift reference of {model} is {what}: {reason}", model=model, subject=version,
             data={"reference": {k: v for k, v in state.items() if k != "episode"}})
    return state


def drift_state(tx: Tx, model: str) -> dict | None:
    """The model's drift reference and what its trigger asked against it (None before any)."""
    return tx.control(_key(model))


def _current_state(tx: Tx, cfg: ModelConfig, prod: str, metrics: dict, now: datetime) -> dict:
    """The drift state of production; reset to its reference if production moved without a promotion."""
    state = drift_state(tx, cfg.name)
    sha = metrics.get("reference_sha256")
    if state is None or state.get("version") != prod or state.get("reference_sha256") != sha:
        was = state.get("version") if state else None
        why = (f"production is {prod} (was {was}), moved outside a promotion" if was
               else f"production is {prod}; no reference recorded yet")
        state = refresh_drift_reference(tx, cfg.name, prod, now, actor="sweep", reason=why)
    return state


def _drift(tx: Tx, ctx: Context, cfg: ModelConfig, prod: str, metrics: dict, health: dict, now: datetime,
           result: SweepResult) -> None:
    d = cfg.drift
    last = tx.last_drift_check(cfg.name)
    if last is not None and now - last < timedelta(minutes=d.check_every_minutes):
        return
    state = _current_state(tx, cfg, prod, metrics, now)
    ref_sha = state.get("reference_sha256")
    if not ref_sha:
        return
    rows = tx.sample_features(cfg.name, now - timedelta(minutes=d.current_minutes), d.max_rows)
    if len(rows) < d.min_rows:
        return
    from retrain.drift import DriftEpisode, detect_drift, judge_drift

    X = np.asarray(rows, dtype=np.float64)
    report = detect_drift(_reference(ctx, ref_sha), X, list(cfg.features), categorical=d.categorical,
                          alpha=d.alpha, correction=d.correction, min_effect=d.min_effect, min_psi=d.min_psi)
    result.drift_checks += 1
    episode = DriftEpisode.from_json(state["episode"])
    verdict = judge_drift(report, episode, now, healthy=health["healthy"], worse_factor=d.worse_factor,
                          reask_after=timedelta(hours=d.reask_hours) if d.reask_hours else None)
    reference = {k: state.get(k) for k in ("version", "reference_sha256", "reference_rows", "window", "since")}
    request: dict = {"asked": False, "why": verdict.reason, "request_id": None}
    if verdict.request:
        rid = _open(tx, cfg, _request(cfg.name, _drift_firing(cfg, prod, report, len(X), verdict, reference),
                                      now), result, now)
        if rid is None:
            request["why"] = f"{verdict.reason}; held back: {result.held_back[-1]['why']}"
        else:
            request.update(asked=True, request_id=rid)
            state = {**state, "episode": episode.asked_for(report, now).to_json()}
            tx.set_control(_key(cfg.name), state, "sweep", now)
    elif report.drifted:
        result.held_back.append({"model": cfg.name, "trigger": TriggerKind.DRIFT.value, "why": verdict.reason})
    tx.add_drift_report(cfg.name, prod, now, bool(report.drifted_features),
                        {**report.to_json(), "reference": reference, "accuracy": health, "request": request,
                         "episode": state["episode"]})


def _drift_firing(cfg: ModelConfig, prod: str, report, rows: int, verdict, reference: dict) -> TriggerFiring:
    d = cfg.drift
    worst = sorted((f for f in report.features if f.drifted), key=lambda f: f.p_adjusted)[:5]
    reason = (f"{len(report.drifted_features)} of {len(report.features)} features drifted "
              f"({', '.join(report.drifted_features[:5])}) at alpha {d.alpha} with {d.correction} correction "
              f"and effect >= {d.min_effect}, on {rows} live rows against {report.n_reference} training rows "
              f"of {prod}; {verdict.reason}")
    evidence = {"drifted": list(report.drifted_features), "rows": rows, "reference_rows": report.n_reference,
                "version": prod, "alpha": d.alpha, "correction": d.correction, "min_effect": d.min_effect,
                "reference": reference, "why": verdict.reason, "worse": list(verdict.worse),
                "worst": [{"feature": f.name, "test": f.test, "statistic": f.statistic, "p_value": f.p_value,
                           "p_adjusted": f.p_adjusted, "effect": f.effect_size, "psi": f.psi} for f in worst]}
    return TriggerFiring(kind=TriggerKind.DRIFT, reason=reason, evidence=evidence, severity=None)
