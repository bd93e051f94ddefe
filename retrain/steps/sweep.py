"""Sweep: look at every model's recent live results and turn what is wrong into requests.

Per model, against its production version: the performance trigger over the
windowed metric buckets (:mod:`retrain.core.triggers`), the emergency detector over
per-bucket accuracy and returns (:mod:`retrain.core.emergency`), and, every
``drift.check_every_minutes``, the drift check of the live feature sample
against the version's training reference (:mod:`retrain.core.drift`). A firing
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
back-off, and not at all while accuracy is healthy (:func:`retrain.core.drift.judge_drift`);
the report says which and why.

Emergencies act (:func:`_emergency`). A firing at ``emergency.min_severity`` or above
belongs to an episode (:class:`retrain.core.emergency.EmergencyEpisode`: firings no more
than ``emergency.episode_gap_minutes`` apart, kept in the ``controls`` row
``emergency:MODEL``). In the sweep's transaction, in order: every rollout of the model
in shadow or canary, other than the episode's own retraining's, is aborted (alias
cleared, share 0 %, audited with the emergency); once per episode, production is rolled
back to ``previous`` when it scored better than production does on the recent window
(:func:`retrain.core.watch.judge_previous`, audited with the figures): ``previous``'s own
outcomes in that window, else those from its last service before it was replaced (the
span the post-promotion watch reads: the rollout that replaced it, or the
``thresholds.window_minutes`` before), else its holdout level (``reference``: ``recent``,
``service`` or ``holdout``); then the request is
opened, on the version now serving, unless the episode already has its retraining
(its request started or joined a run, whatever became of it): one retraining per
episode, not one per sweep.

Window turnover (:func:`_turnover`). A version trained in answer to a detected change (a
performance, emergency or drift request) learnt from a window that began before the
change: it mixes the old concept with the new, and its validated baseline is measured on
that mix, so the performance trigger, holding it to that baseline, may never ask again.
Once ``lookback_hours`` have passed since the detection, a window of rows after it can be
trained on; the sweep then opens one performance request for that version
(:func:`turnover_due`), with the level the model held before the change less its live
accuracy now as ``expected_recovery_points`` for the decision's value model (no gap: ROI
turns it down). Once per version; a retraining it starts is not followed up in turn.

Post-promotion watch (:func:`_watch`). For ``rollout.watch_hours`` after a full
promotion, production's live primary metric since the promotion is compared with the
live level of the version it replaced just before the promotion: its labelled outcomes
during the rollout that ended in the promotion, or, without one, over the
``thresholds.window_minutes`` before it; with fewer than ``thresholds.min_samples`` of
them, its validated (holdout) level (:func:`retrain.core.watch.judge_watch`). A significant
degradation of ``rollout.watch_degradation`` or more rolls it back to that version,
audited with the figures (``reference``: ``live`` or ``holdout``).

Not flooding: one request per model and trigger kind is open at a time, and a
firing refreshes it with its new evidence. Once that request is closed, a firing
opens a new one except (a) while the run it started or joined is still active
(that run will replace the version the trigger judged), and (b) within
``refire_minutes`` (default 60) of its rejection, unless an emergency got more
severe, or on the same evidence as the rejected request (no outcome since: the
decision would say the same; a daily model swept hourly would otherwise be asked 24
times a day), and (c) while the model's newest run ended with its candidate turned down
(validation, shadow or rollout) and fewer labelled outcomes have arrived since that
training than the candidate's holdout held (:func:`retry_wait`): a candidate trained
sooner would learn from nearly the same rows and be judged on nearly the same ones, so
it would most likely be turned down again, at the full price. A CRITICAL emergency is
never held back by (c). Held-back firings are listed in the sweep's result, not audited.

Cost per model is flat in the number of models: one short transaction per model
reads its production version and one range of its buckets, as one numeric array,
for both the performance and the emergency window; CUSUM thresholds, detector
settings and drift references are cached per process, and the sample is pruned
every ``PRUNE_EVERY`` per model (``retrain bench sweep``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import numpy as np

from retrain.config import ModelConfig
from retrain.context import CacheSlot, Context
from retrain.core.domain import RetrainRequest, Severity, TriggerKind, new_id
from retrain.core.ports import UnitOfWork
from retrain.core.triggers import PerformanceTriggerConfig, TriggerFiring, evaluate_performance, wilson_upper
from retrain.tasks import DECIDE

__all__ = ["SweepResult", "sweep", "performance_config", "emergency_config", "refresh_drift_reference",
           "drift_state", "retry_wait", "same_evidence", "turnover_due", "TURNOVER_KEY", "PRUNE_EVERY"]

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
    aborted: list[dict] = field(default_factory=list)
    rollbacks: list[dict] = field(default_factory=list)


def performance_config(cfg: ModelConfig, metric: str) -> PerformanceTriggerConfig:
    """The performance trigger of one metric of a model, from its ``thresholds`` table."""
    t = cfg.thresholds
    return PerformanceTriggerConfig(metric=metric, relative_drop=t.relative_drop, floor=t.accuracy_floor or None,
                                    min_samples=t.min_samples, arl0=t.arl0, confidence=t.confidence)


def emergency_config(cfg: ModelConfig):
    """The emergency detector's settings of a model, from its ``emergency`` table."""
    from retrain.core.emergency import EmergencyConfig

    e = cfg.emergency
    return EmergencyConfig.from_sigma(e.sigma, history_buckets=e.history_buckets, bucket_minutes=e.bucket_minutes,
                                      min_samples=e.min_samples)


_BUILT: CacheSlot[dict[str, tuple[ModelConfig, Any]]] = CacheSlot("sweep: detector settings by model and kind")
_PRUNED: CacheSlot[dict[str, datetime]] = CacheSlot("sweep: last sample pruning by model")
_TURNOVER: CacheSlot[dict[tuple[str, str], tuple[Any, Any, Any]]] = CacheSlot("sweep: turnover by model and version")
_REFERENCES: CacheSlot[dict[str, np.ndarray]] = CacheSlot("sweep: drift references by sha256")


def _cached(ctx: Context, key: str, cfg: ModelConfig, build):
    # Keyed by the settings object itself: a reloaded model file builds afresh.
    built = ctx.cache.slot(_BUILT, dict)
    hit = built.get(key)
    if hit is None or hit[0] is not cfg:
        hit = built[key] = (cfg, build())
    return hit[1]


def _request(model: str, firing: TriggerFiring, now: datetime) -> RetrainRequest:
    return RetrainRequest(id=new_id(), model=model, trigger=firing.kind, created_at=now, reason=firing.reason,
                          evidence=firing.evidence, severity=firing.severity)


def _held_back(tx: UnitOfWork, cfg: ModelConfig, req: RetrainRequest, now: datetime) -> str | None:
    """Why a firing opens no new request, or None. See "Not flooding" in the module docstring."""
    last = tx.requests.latest(req.model, req.trigger.value)
    if last is not None and last.open_key is not None:
        return None  # one still open: open_request refreshes it
    if last is None:
        return _after_rejected_candidate(tx, cfg, req)  # the first of its kind: only (c) applies
    active = tx.runs.active(req.model)
    if active is not None and last.run_id == active.id:
        return f"its last request already joined run {active.id}"
    if last.status == "rejected" and last.decision_id:
        decision = tx.decisions.get(last.decision_id)
        wait = timedelta(minutes=cfg.refire_minutes)
        worse = (req.severity is not None and last.severity is not None
                 and _SEVERITY_RANK[req.severity] > _SEVERITY_RANK[Severity(last.severity)])
        if decision is not None and now - decision.decided_at < wait and not worse:
            return f"its last request was rejected at {decision.decided_at:%Y-%m-%d %H:%M}; asks again after {wait}"
        if decision is not None and not worse and same_evidence(req.evidence, last.evidence):
            return (f"its last request was rejected at {decision.decided_at:%Y-%m-%d %H:%M} on the same evidence "
                    f"(no new outcome since): the decision would say the same")
    return _after_rejected_candidate(tx, cfg, req)


def _after_rejected_candidate(tx: UnitOfWork, cfg: ModelConfig, req: RetrainRequest) -> str | None:
    """Rule (c) of "Not flooding": the model's newest run ended with its candidate turned down."""
    if req.severity is Severity.CRITICAL:
        return None
    runs = tx.runs.newest(req.model, limit=1)
    run = runs[0] if runs else None
    if run is None or run.state != "rejected" or not run.candidate_version:
        return None
    row = tx.versions.get(req.model, run.candidate_version)
    if row is None:
        return None
    since = run.started_at or run.created_at
    return retry_wait(run.candidate_version, row.metrics or {}, row.data_rows, cfg.validation.holdout_fraction,
                      new_rows=tx.monitoring.traffic_since(req.model, since)[0], since=since)


def same_evidence(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two firings carry the same evidence, as stored (JSON): the same outcomes, the same figures.

    >>> same_evidence({"n": 84, "value": 0.93, "rules": ("floor",)}, {"n": 84, "value": 0.93, "rules": ["floor"]})
    True
    >>> same_evidence({"n": 84, "value": 0.93}, {"n": 85, "value": 0.93})
    False
    """
    def norm(x: Mapping[str, Any] | None) -> str:
        return json.dumps(x or {}, sort_keys=True, default=str)

    return norm(a) == norm(b)


def retry_wait(version: str, metrics: Mapping[str, Any], data_rows: int | None, holdout_fraction: float, *,
               new_rows: int, since: datetime) -> str | None:
    """Why a trigger waits after candidate ``version`` was turned down, or None once it may ask again.

    It waits until the labelled outcomes newer than that training (``new_rows``) fill the
    candidate's holdout: ``metrics["holdout_rows"]``, else ``data_rows x f / (1 - f)`` with
    ``f = validation.holdout_fraction``. Pure.

    >>> from datetime import datetime, timezone
    >>> t = datetime(2026, 3, 1, tzinfo=timezone.utc)
    >>> retry_wait("1.4.0", {"holdout_rows": 37}, 146, 0.2, new_rows=36, since=t) is not None
    True
    >>> retry_wait("1.4.0", {"holdout_rows": 37}, 146, 0.2, new_rows=37, since=t) is None
    True
    """
    need: float | None = metrics.get("holdout_rows")
    if not isinstance(need, (int, float)) or isinstance(need, bool) or need <= 0:
        if not data_rows:
            return None
        need = data_rows * holdout_fraction / (1.0 - holdout_fraction)
    rows = max(1, math.ceil(need))
    if new_rows >= rows:
        return None
    return (f"its last candidate {version} was turned down; a new one waits for {rows:,} labelled outcomes newer "
            f"than that training (the rows of its holdout), {new_rows:,} since {since:%Y-%m-%d %H:%M}")


def _open(tx: UnitOfWork, cfg: ModelConfig, req: RetrainRequest, result: SweepResult, now: datetime) -> str | None:
    """Open or refresh the request of ``req``'s trigger kind; its id, or None when held back."""
    result.firings.append({"model": req.model, "trigger": req.trigger.value, "reason": req.reason})
    why = _held_back(tx, cfg, req, now)
    if why is not None:
        result.held_back.append({"model": req.model, "trigger": req.trigger.value, "why": why})
        return None
    rid, created = tx.requests.open(req)
    if created:
        result.requests_opened.append(rid)
        tx.audit.record(now, "request", "sweep", f"{req.trigger.value} trigger fired for {req.model}: {req.reason}",
                        model=req.model, subject=rid, data={"evidence": req.evidence, "priority": req.priority,
                                                            "severity": req.severity.value if req.severity else None})
        tx.outbox.enqueue(DECIDE, {"v": 1, "request_id": rid}, now, priority=req.priority)
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
        for row in tx.requests.due_deferred(now):
            tx.requests.update(row, status="open")
            tx.outbox.enqueue(DECIDE, {"v": 1, "request_id": row.id}, now, priority=row.priority)
            result.redecided.append(row.id)
    return result


def _prune(tx: UnitOfWork, ctx: Context, cfg: ModelConfig, now: datetime) -> None:
    # Every PRUNE_EVERY per model and process: the sample grows by at most sample.max_per_minute
    # rows a minute per ingest worker, so the bound overshoots by that much at most.
    pruned = ctx.cache.slot(_PRUNED, dict)
    last = pruned.get(cfg.name)
    if last is None or now - last >= PRUNE_EVERY or now < last:
        tx.monitoring.prune_samples(cfg.name, cfg.sample.max_rows)
        pruned[cfg.name] = now


def _sweep_model(tx: UnitOfWork, ctx: Context, cfg: ModelConfig, now: datetime, result: SweepResult) -> None:
    _prune(tx, ctx, cfg, now)
    prod, metrics = tx.aliases.production_metrics(cfg.name)
    if prod is None:
        return
    perf_since = now - timedelta(minutes=cfg.thresholds.window_minutes)
    e = cfg.emergency
    since = perf_since
    if e.enabled:
        # The emergency's buckets are grouped back from now: history, the recent run, and the latest.
        since = min(since, now - timedelta(minutes=e.bucket_minutes * (e.history_buckets + 4)))
    rows = np.asarray(tx.monitoring.bucket_series(cfg.name, prod, since, now + timedelta(minutes=1)),
                      dtype=float).reshape(-1, 8)
    starts, counts = rows[:, 0], rows[:, 1:]
    window = counts[starts >= perf_since.timestamp()]
    baseline = metrics.get("baseline") or {}
    fired = _performance(tx, ctx, cfg, prod, baseline, window, now, result)
    moved = None
    if e.enabled:
        moved = _emergency(tx, ctx, cfg, prod, starts, counts, window, now, result)
    if moved is None:
        moved = _watch(tx, ctx, cfg, prod, now, result)
    if moved is None and not fired and cfg.thresholds.metrics:
        _turnover(tx, ctx, cfg, prod, window, now, result)
    # After a rollback the next sweep judges the version now serving (and moves the drift reference).
    if moved is None and cfg.drift.enabled:
        _drift(tx, ctx, cfg, prod, metrics, _accuracy_health(cfg, baseline, window, fired), now, result)


def _performance(tx: UnitOfWork, ctx: Context, cfg: ModelConfig, prod: str, baseline: dict, counts: np.ndarray,
                 now: datetime, result: SweepResult) -> list[TriggerFiring]:
    fired: list[TriggerFiring] = []
    for metric in cfg.thresholds.metrics:
        pcfg = _cached(ctx, f"sweep:perf:{cfg.name}:{metric}", cfg, partial(performance_config, cfg, metric))
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


#: Evidence key of a window-turnover request: the version it follows up.
TURNOVER_KEY = "window_turnover_of"
_EPISODE_TRIGGERS = frozenset({TriggerKind.PERFORMANCE.value, TriggerKind.EMERGENCY.value, TriggerKind.DRIFT.value})


def turnover_due(*, trigger: str, evidence: Mapping[str, Any], asked_at: datetime, data_start: datetime | None,
                 lookback: timedelta) -> datetime | None:
    """When a version trained by a request of ``trigger`` (opened at ``asked_at``) on rows from
    ``data_start`` is due for a retraining on a window that has turned over since that detection;
    None when never: not an answer to a detected change, a follow-up itself, or a window that began
    after the detection already. Pure.

    >>> from datetime import datetime, timedelta, timezone
    >>> t = datetime(2026, 3, 1, tzinfo=timezone.utc)
    >>> turnover_due(trigger="performance", evidence={}, asked_at=t, data_start=t - timedelta(days=90),
    ...              lookback=timedelta(days=180)) == t + timedelta(days=180)
    True
    >>> turnover_due(trigger="schedule", evidence={}, asked_at=t, data_start=t - timedelta(days=90),
    ...              lookback=timedelta(days=180)) is None
    True
    """
    if trigger not in _EPISODE_TRIGGERS or evidence.get(TURNOVER_KEY):
        return None
    if data_start is not None and data_start >= asked_at:
        return None
    return asked_at + lookback


def _level_before(tx: UnitOfWork, model: str, asked) -> float | None:
    """The accuracy the model held before the change its retraining answered: the trigger's baseline,
    else the validated baseline of the version it fired on."""
    ev = asked.evidence or {}
    level = ev.get("baseline_accuracy")
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        return float(level)
    fired_on = ev.get("fired_on") or ev.get("version")
    row = tx.versions.get(model, fired_on) if isinstance(fired_on, str) else None
    level = ((row.metrics or {}).get("baseline") or {}).get("accuracy") if row is not None else None
    return float(level) if isinstance(level, (int, float)) and not isinstance(level, bool) else None


def _episode_start(tx: UnitOfWork, model: str, asked) -> datetime:
    """When the change that ``asked`` answered was first detected: the earliest request of the same
    trigger that fired on the same production version (the episode's first firing), else ``asked``'s
    own time. (Another trigger's earlier firing, a drift the decision turned down, say, may be
    about something else.)"""
    ev = asked.evidence or {}
    on = ev.get("fired_on") or ev.get("version")
    first = asked.created_at
    if not isinstance(on, str):
        return first
    for r in tx.requests.newest(model, limit=200):
        rev = r.evidence or {}
        if (r.trigger == asked.trigger and (rev.get("fired_on") or rev.get("version")) == on
                and not rev.get(TURNOVER_KEY) and r.created_at < first):
            first = r.created_at
    return first


def _turnover(tx: UnitOfWork, ctx: Context, cfg: ModelConfig, prod: str, window: np.ndarray, now: datetime,
              result: SweepResult) -> None:
    """The window-turnover follow-up of a version trained in answer to a detected change (module docstring)."""
    seen = ctx.cache.slot(_TURNOVER, dict)
    hit = seen.get((cfg.name, prod))
    if hit is None:  # what production's retraining answered does not change: read once per version
        row = tx.versions.get(cfg.name, prod)
        asked = tx.requests.get(row.request_id) if row is not None and row.request_id else None
        due = detected = None
        if row is not None and asked is not None:
            detected = _episode_start(tx, cfg.name, asked)
            due = turnover_due(trigger=asked.trigger, evidence=asked.evidence or {}, asked_at=detected,
                               data_start=row.data_start, lookback=timedelta(hours=cfg.lookback_hours))
        hit = seen[(cfg.name, prod)] = (due, detected, asked.id if asked is not None else None)
    due, detected, asked_id = hit
    if due is None or detected is None or asked_id is None or now < due:
        return
    last = tx.requests.latest(cfg.name, TriggerKind.PERFORMANCE.value)
    if last is not None and (last.evidence or {}).get(TURNOVER_KEY) == prod:
        return  # asked once for this version
    row, asked = tx.versions.get(cfg.name, prod), tx.requests.get(asked_id)
    if row is None or asked is None:
        return
    n = int(window[:, 0].sum()) if window.size else 0
    current = float(window[:, 1].sum() + window[:, 3].sum()) / n if n else None
    before = _level_before(tx, cfg.name, asked)
    evidence: dict[str, Any] = {TURNOVER_KEY: prod, "version": prod, "episode_request": asked.id,
                                "episode_trigger": asked.trigger, "detected_at": detected.isoformat(),
                                "data_start": row.data_start.isoformat() if row.data_start else None,
                                "level_before": before, "current_accuracy": current, "measured_on": n}
    gap = ""
    if before is not None and current is not None:
        evidence["expected_recovery_points"] = max(0.0, (before - current) * 100.0)
        gap = f"; accuracy {current:.3f} now against {before:.3f} before the change"
    reason = (f"{prod} answered a change first detected {detected:%Y-%m-%d %H:%M} ({asked.trigger} trigger) with a "
              f"window that began before it; its {cfg.lookback_hours:g} h training window has turned over since, so "
              f"a retraining learns from rows after the change only{gap}")
    _open(tx, cfg, _request(cfg.name, TriggerFiring(TriggerKind.PERFORMANCE, reason, evidence), now), result, now)


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
        assert upper is not None  # n >= min_samples, so there were outcomes
        healthy = upper >= limit
    return {"healthy": healthy, "accuracy": round(hits / n, 6) if n else None, "n": n,
            "upper_bound": None if upper is None else round(upper, 6), "baseline": base, "limit": round(limit, 6),
            "performance_fired": bool(fired)}


def _emergency(tx: UnitOfWork, ctx: Context, cfg: ModelConfig, prod: str, starts: np.ndarray, counts: np.ndarray,
               window: np.ndarray, now: datetime, result: SweepResult) -> str | None:
    """Detect, and act on, an emergency of production; the version now serving if it rolled back, else None.

    See "Emergencies act" in the module docstring.
    """
    from retrain.core.emergency import EmergencyEpisode, detect_emergency_from_arrays
    from retrain.steps.rollout_step import abort_rollouts

    ecfg = _cached(ctx, f"sweep:emergency:{cfg.name}", cfg, lambda: emergency_config(cfg))
    firing = detect_emergency_from_arrays(starts, counts, now, ecfg)
    e = cfg.emergency
    if firing is None:
        return None
    assert firing.severity is not None  # an emergency firing always has one
    if _SEVERITY_RANK[firing.severity] < _SEVERITY_RANK[Severity(e.min_severity)]:
        return None
    key = f"emergency:{cfg.name}"
    episode = EmergencyEpisode.observe(EmergencyEpisode.from_json(tx.controls.get(key)), now, firing.severity, prod,
                                       timedelta(minutes=e.episode_gap_minutes))
    own_run = None
    if episode.request_id is not None:
        asked = tx.requests.get(episode.request_id)
        own_run = asked.run_id if asked is not None else None
    what = {"severity": firing.severity.value, "reason": firing.reason, "version": prod,
            "episode_started_at": episode.started_at.isoformat()}

    why = f"emergency ({firing.severity.value}) on production {prod}: {firing.reason}"
    aborted = abort_rollouts(tx, cfg, cfg.name, why, {"emergency": what}, now, keep_run=own_run)
    if aborted:
        episode = replace(episode, aborted=episode.aborted + tuple(r.run_id for r in aborted))
        result.aborted.extend({"model": cfg.name, "run_id": r.run_id, "phase": r.phase} for r in aborted)

    serving, previous = prod, None
    if e.rollback_to_previous and episode.rolled_back is None:
        previous = _judge_previous(tx, ctx, cfg, prod, window, now)
        if previous is not None and previous["action"] == "rollback":
            if _roll_back(tx, ctx, cfg, prod, previous["to"], actor="emergency",
                          reason=f"{why}; {previous['reason']}; a retraining follows",
                          data={"figures": previous["figures"], "emergency": what}, now=now, result=result):
                serving = previous["to"]
                episode = replace(episode, rolled_back={"from": prod, "to": serving, "at": now.isoformat(),
                                                        "figures": previous["figures"]})
            else:
                previous = {**previous, "action": "refused"}

    req = _request(cfg.name, firing, now)
    evidence = {**req.evidence, "version": serving, "episode_started_at": episode.started_at.isoformat()}
    if previous is not None:
        evidence["previous"] = previous
    if serving != prod:
        evidence["fired_on"] = prod  # the decision judges the request against what serves now
    req = replace(req, evidence=evidence)
    active = tx.runs.active(cfg.name) if own_run is not None else None
    if own_run is not None and (active is None or active.id != own_run):
        # Its run ended (promoted, rejected, failed): the episode had its retraining. While the run
        # is still active, _open holds the firing back as for any trigger ("already joined run").
        result.firings.append({"model": cfg.name, "trigger": req.trigger.value, "reason": req.reason})
        result.held_back.append({"model": cfg.name, "trigger": req.trigger.value,
                                 "why": f"the emergency episode since {episode.started_at:%Y-%m-%d %H:%M} already "
                                        f"had its retraining (run {own_run}); asks again after "
                                        f"{e.episode_gap_minutes:g} min without a firing"})
    else:
        rid = _open(tx, cfg, req, result, now)
        if rid is not None:
            episode = replace(episode, request_id=rid)
    tx.controls.set(key, episode.to_json(), "sweep", now)
    return serving if serving != prod else None


def _as_counts(rows: np.ndarray):
    """One Counts of minute rows ``(n, tp, fp, tn, fn, ret_sum, ret_sq_sum)``."""
    from retrain.core.windows import Counts

    t = rows.reshape(-1, 7).sum(axis=0) if rows.size else np.zeros(7)
    return Counts(int(t[0]), int(t[1]), int(t[2]), int(t[3]), int(t[4]), float(t[5]), float(t[6]))


def _series(tx: UnitOfWork, model: str, version: str, since: datetime, now: datetime, *,
            until: datetime | None = None) -> np.ndarray:
    """Minute rows of ``version`` from ``since``: up to ``now`` included, or before ``until``."""
    rows = np.asarray(tx.monitoring.bucket_series(model, version, since, until or now + timedelta(minutes=1)),
                      dtype=float)
    return rows.reshape(-1, 8)[:, 1:]


def _judge_previous(tx: UnitOfWork, ctx: Context, cfg: ModelConfig, prod: str, window: np.ndarray,
                    now: datetime) -> dict | None:
    """:func:`retrain.core.watch.judge_previous` on the performance window; None without a rollback target."""
    from retrain.core.watch import judge_previous

    previous = tx.aliases.get(cfg.name, "previous")
    row = tx.versions.get(cfg.name, previous) if previous and previous != prod else None
    if row is None or row.deleted_at is not None:
        return None
    assert previous is not None  # a row was found by it
    if row.status == "rolled_back":
        # It became the rollback target by being rolled back itself (by the watch, an operator or an
        # earlier episode): it was found worse than what serves now; going back to it would flip-flop.
        return {"to": previous, "action": "stay", "figures": {},
                "reason": f"previous {previous} was itself rolled back from; it is not served again automatically"}
    since = now - timedelta(minutes=cfg.thresholds.window_minutes)
    recent = _as_counts(_series(tx, cfg.name, previous, since, now))
    service, served = None, _last_service(tx, cfg, previous, now)
    service_span = "before it was replaced"
    if served is not None:
        s_since, s_until, s_span, replaced_by = served
        service = _as_counts(_series(tx, cfg.name, previous, s_since, now, until=s_until))
        service_span = (f"{'during the rollout of' if s_span == 'rollout' else 'before it was replaced by'} "
                        f"{replaced_by} ({s_since:%a %d %H:%M}-{s_until:%a %d %H:%M})")
    metrics = row.metrics or {}
    verdict = judge_previous(_as_counts(window), recent, metrics.get("baseline"), metric=cfg.primary_metric,
                             confidence=cfg.validation.confidence, min_samples=cfg.thresholds.min_samples,
                             previous_service=service, service_span=service_span,
                             holdout_n=(metrics.get("holdout") or {}).get("n"))
    figures = dict(verdict.figures)
    if figures.get("reference") == "recent":
        figures.update(reference_span="window", reference_since=since.isoformat(), reference_until=now.isoformat())
    elif figures.get("reference") == "service":
        figures.update(reference_span=s_span, reference_since=s_since.isoformat(), reference_until=s_until.isoformat(),
                       replaced_by=replaced_by)
    elif figures.get("reference") == "holdout":
        figures.update(reference_span="holdout")
    return {"to": previous, "action": verdict.action, "reason": verdict.reason, "figures": figures}


def _last_service(tx: UnitOfWork, cfg: ModelConfig, version: str, now: datetime) -> tuple[datetime, datetime, str,
                                                                                          str] | None:
    """``version``'s last service as production before it was replaced: (since, until, span, replaced by), or None.

    The newest move of ``production`` away from it, and the span the post-promotion watch
    reads before such a move (:func:`_before_promotion`): the rollout that replaced it
    (``rollout``), or the ``thresholds.window_minutes`` before (``window``).
    """
    for move in reversed(tx.aliases.moves(cfg.name, alias="production", until=now, limit=50)):
        if move.from_version == version and move.to_version and move.to_version != version:
            since, span = _before_promotion(tx, cfg, move.to_version, version, move.at)
            return since, move.at, span, move.to_version
    return None


def _roll_back(tx: UnitOfWork, ctx: Context, cfg: ModelConfig, prod: str, target: str, *, actor: str, reason: str,
               data: dict, now: datetime, result: SweepResult) -> bool:
    """Serve ``target`` again (its artifact verified first: a refused one is audited and nothing moves)."""
    from retrain.core.errors import ArtifactError
    from retrain.registry import rollback

    target_row = tx.versions.get(cfg.name, target)
    assert target_row is not None  # the previous alias (or the judged version) points at a registered row
    sha = target_row.artifact_sha256
    try:
        ctx.artifacts.get_bytes(sha)
    except ArtifactError as exc:
        tx.audit.record(now, "artifact", actor, f"refused to load {cfg.name} {target} for rollback: {exc}",
                        model=cfg.name,
                        subject=target, data={"sha256": sha, "purpose": "rollback", "error": str(exc)})
        return False
    out = rollback(tx, cfg.name, target, actor=actor, reason=reason, now=now, from_version=prod, data=data)
    if out.status != "rolled_back":
        return False
    result.rollbacks.append({"model": cfg.name, "from": prod, "to": target, "by": actor, "figures": data["figures"]})
    return True


def _watch(tx: UnitOfWork, ctx: Context, cfg: ModelConfig, prod: str, now: datetime, result: SweepResult) -> str | None:
    """The post-promotion watch; the version now serving if it rolled back, else None."""
    r = cfg.rollout
    if r.watch_hours <= 0:
        return None
    move = tx.aliases.set_at(cfg.name, "production", now)
    # Watched: a version that became production by a promotion, with a predecessor, within the period.
    if (move is None or move.to_version != prod or move.actor != "promotion" or not move.from_version
            or now - move.at > timedelta(hours=r.watch_hours)):
        return None
    from retrain.core.watch import judge_watch

    before = move.from_version
    row = tx.versions.get(cfg.name, before)
    if row is None or row.deleted_at is not None:
        return None
    since, span = _before_promotion(tx, cfg, prod, before, move.at)
    previous_live = _as_counts(_series(tx, cfg.name, before, since, now, until=move.at))
    verdict = judge_watch(_as_counts(_series(tx, cfg.name, prod, move.at, now)), (row.metrics or {}).get("baseline"),
                          promoted_at=move.at, now=now, watch_hours=r.watch_hours, degradation=r.watch_degradation,
                          confidence=cfg.validation.confidence, metric=cfg.primary_metric,
                          min_samples=cfg.thresholds.min_samples, predecessor_live=previous_live,
                          live_span=f"{'during its rollout' if span == 'rollout' else 'before the promotion'} "
                                    f"({since:%a %d %H:%M}-{move.at:%a %d %H:%M})")
    if not verdict.rollback:
        return None
    figures = {**verdict.figures, "reference_span": span,
               "reference_since": since.isoformat(), "reference_until": move.at.isoformat()}
    if _roll_back(tx, ctx, cfg, prod, before, actor="watch", now=now, result=result,
                  reason=f"post-promotion watch: {prod} {verdict.reason}", data={"figures": figures}):
        return before
    return None


def _before_promotion(tx: UnitOfWork, cfg: ModelConfig, prod: str, before: str,
                      promoted_at: datetime) -> tuple[datetime, str]:
    """Since when ``before``'s outcomes show its live level just before ``prod``'s promotion, and which span
    that is: ``rollout`` or ``window``.

    The rollout that ended in the promotion (its candidate ``prod``, its production
    ``before``, finished then): production's outcomes over the whole rollout, the
    conditions the candidate was judged in. Otherwise the performance window before it.
    """
    for ro in tx.rollouts.newest(cfg.name, limit=5):
        if (ro.candidate_version == prod and ro.baseline_version == before and ro.phase == "promoted"
                and ro.finished_at is not None and abs(ro.finished_at - promoted_at) <= timedelta(minutes=1)):
            return ro.started_at.replace(second=0, microsecond=0), "rollout"
    return promoted_at - timedelta(minutes=cfg.thresholds.window_minutes), "window"


def _reference(ctx: Context, sha: str) -> np.ndarray:
    refs = ctx.cache.slot(_REFERENCES, dict)
    hit = refs.get(sha)
    if hit is None:
        for old in list(refs)[: max(0, len(refs) - _REFERENCE_CACHE + 1)]:
            del refs[old]
        hit = refs[sha] = np.asarray(ctx.artifacts.load_object(sha), dtype=np.float64)
    return hit


def _key(model: str) -> str:
    return f"drift:{model}"


def refresh_drift_reference(tx: UnitOfWork, model: str, version: str, now: datetime, *, actor: str,
                            reason: str) -> dict:
    """Make ``version``'s training window the model's drift reference, forgetting what was asked
    against the old one (called at each promotion; the sweep calls it when production changed
    otherwise). Returns the new state; audited."""
    row = tx.versions.get(model, version)
    metrics = dict(row.metrics or {}) if row is not None else {}
    sha = metrics.get("reference_sha256")
    window = [row.data_start.isoformat() if row is not None and row.data_start else None,
              row.data_end.isoformat() if row is not None and row.data_end else None]
    rows = metrics.get("reference_rows", row.data_rows if row is not None else None)
    from retrain.core.drift import DriftEpisode  # here, not at import: scipy costs an ingest worker ~70 MB

    state = {"version": version, "reference_sha256": sha, "reference_rows": rows, "window": window,
             "since": now.isoformat(), "set_by": actor, "reason": reason,
             "episode": DriftEpisode(sha or f"none:{version}").to_json()}
    tx.controls.set(_key(model), state, actor, now)
    what = (f"the training window of {version} ({rows} rows, {window[0] or '?'} .. {window[1] or '?'})" if sha
            else f"nothing: {version} has no training reference, so its drift is not checked")
    tx.audit.record(now, "drift", actor, f"drift reference of {model} is {what}: {reason}", model=model,
                    subject=version,
                    data={"reference": {k: v for k, v in state.items() if k != "episode"}})
    return state


def drift_state(tx: UnitOfWork, model: str) -> dict | None:
    """The model's drift reference and what its trigger asked against it (None before any)."""
    return tx.controls.get(_key(model))


def _current_state(tx: UnitOfWork, cfg: ModelConfig, prod: str, metrics: dict, now: datetime) -> dict:
    """The drift state of production; reset to its reference if production moved without a promotion."""
    state = drift_state(tx, cfg.name)
    sha = metrics.get("reference_sha256")
    if state is None or state.get("version") != prod or state.get("reference_sha256") != sha:
        was = state.get("version") if state else None
        why = (f"production is {prod} (was {was}), moved outside a promotion" if was
               else f"production is {prod}; no reference recorded yet")
        state = refresh_drift_reference(tx, cfg.name, prod, now, actor="sweep", reason=why)
    return state


def _drift(tx: UnitOfWork, ctx: Context, cfg: ModelConfig, prod: str, metrics: dict, health: dict, now: datetime,
           result: SweepResult) -> None:
    d = cfg.drift
    last = tx.monitoring.last_drift_check(cfg.name)
    if last is not None and now - last < timedelta(minutes=d.check_every_minutes):
        return
    state = _current_state(tx, cfg, prod, metrics, now)
    ref_sha = state.get("reference_sha256")
    if not ref_sha:
        return
    rows = tx.monitoring.sample_features(cfg.name, now - timedelta(minutes=d.current_minutes), d.max_rows)
    if len(rows) < d.min_rows:
        return
    from retrain.core.drift import DriftEpisode, detect_drift, judge_drift

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
            tx.controls.set(_key(cfg.name), state, "sweep", now)
    elif report.drifted:
        result.held_back.append({"model": cfg.name, "trigger": TriggerKind.DRIFT.value, "why": verdict.reason})
    tx.monitoring.add_drift_report(cfg.name, prod, now, bool(report.drifted_features),
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
