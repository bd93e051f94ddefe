"""Decide: load the state snapshot, apply the pure policy, record and act on the verdict.

One transaction does all of it, under one lock:

1. ``DECISION_LOCK`` (``requests.get_open_locked``, ``UnitOfWork.lock``): on Postgres a
   transaction-scoped advisory lock (``pg_advisory_xact_lock``), released by the
   commit. Every decision and every approval takes it before reading anything it
   decides on, so read-check-reserve is serial across processes and machines: the
   spend and run counts read below include every reservation and run committed by
   the decision before. Postgres reads in READ COMMITTED take a fresh snapshot per
   statement, so reads after the lock see that commit.
   On SQLite (the embedded default: one machine, normally one worker process) the
   lock is a write to the ``controls`` table, which takes SQLite's database write
   lock for the rest of the transaction; other connections and processes wait on
   ``busy_timeout``. tests/integration/test_ledger_concurrency.py races four
   processes on both. SQLite is not meant for workers on several machines.
2. ``now`` is read *after* the lock, so a decision that waited decides in the present.
3. The snapshot: the model's runs, spend (one aggregate over this month's
   ledger), traffic (predictions served, labelled or not, and the outcomes'
   returns, from the newest metric buckets: see :func:`retrain.core.policy.serving_rate`),
   the floor clock, approvals, pauses, resource readings. The floor clock is
   started or stopped in the same commit when the decision's finding changes it.
4. :func:`retrain.core.policy.decide`, pure.
5. The decision row with every rule result, the audit events (decision, bypass,
   run), and for an approval: the run, the cost reservation and the outbox
   message to ``retrain.train``, all in the same commit.

Only requests in status ``open`` are decided: a redelivered message for a request
decided already is a no-op. The sweep reopens deferred requests when they are due;
an operator's approval reopens a pending one (:func:`resolve_pending`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from retrain.config import ModelConfig
from retrain.context import CacheSlot, Context
from retrain.core.costs import estimate_cost
from retrain.core.domain import Decision, RetrainRequest, RuleResult, Verdict
from retrain.core.errors import PayloadError
from retrain.core.lifecycle import new_run
from retrain.core.policy import Policy, ResourceReading, StateSnapshot, decide, serving_rate
from retrain.core.ports import UnitOfWork
from retrain.core.records import DecisionState, RequestRecord
from retrain.tasks import DECIDE, TRAIN

__all__ = [
    "DECISION_LOCK",
    "RESOURCE_REPORT_MAX_AGE",
    "DecideResult",
    "decide_request",
    "resolve_pending",
    "policy_for",
    "load_snapshot",
    "start_run",
]

DECISION_LOCK = "retrain:decision"
# A training node's reading older than this says nothing about it any more.
RESOURCE_REPORT_MAX_AGE = timedelta(minutes=10)
_HISTORY = timedelta(days=31)
# Traffic is read from the newest buckets of this window: a month holds a daily model's rate.
_RATE_WINDOW = timedelta(days=30)
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class DecideResult:
    request_id: str
    verdict: str | None
    summary: str
    decision_id: str | None = None
    run_id: str | None = None
    skipped: bool = False


_POLICIES: CacheSlot[dict[str, Policy]] = CacheSlot("decision policies by model")


def policy_for(ctx: Context, model: str) -> Policy:
    """The model's policy, built once per process ([policy] with the model's overrides)."""
    policies = ctx.cache.slot(_POLICIES, dict)
    policy = policies.get(model)
    if policy is None:
        policy = policies[model] = ctx.config.policy_for(model)
    return policy


def _resources(reports: list[dict], fallback: ResourceReading | None) -> tuple[ResourceReading | None, str]:
    """The roomiest fresh reading reported by a training node, else ``fallback`` (the caller's own node).

    The run goes to whichever training node takes it first, so one node with room is enough.
    """
    best: ResourceReading | None = None
    node = ""
    for r in reports:
        try:
            reading = ResourceReading(float(r["free_memory_mb"]), float(r["cpu_load_pct"]), float(r["free_disk_mb"]))
        except (KeyError, TypeError, ValueError):
            continue  # a malformed report must not stop decisions
        if best is None or (reading.free_memory_mb, -reading.cpu_load_pct) > (best.free_memory_mb, -best.cpu_load_pct):
            best, node = reading, r.get("node", "")
    if best is not None:
        return best, f"reported by {node}"
    return fallback, "read locally" if fallback is not None else "none"


def load_snapshot(tx: UnitOfWork, ctx: Context, req: RetrainRequest, now: datetime,
                  resources: ResourceReading | None = None) -> tuple[RetrainRequest, StateSnapshot, dict[str, Any]]:
    """Everything :func:`decide` needs to know, read in two statements.

    Returns the request with the measured accuracy gap added to its evidence
    (see :func:`_with_measured_gap`), the snapshot, and what the estimate and
    the resource reading were made of, for the decision record.
    """
    cfg = ctx.config.model(req.model)
    st = tx.decision_state.snapshot(req.model, now=now, history=_HISTORY,
                                    window=timedelta(minutes=cfg.thresholds.window_minutes),
                                    report_max_age=RESOURCE_REPORT_MAX_AGE, rate_window=_RATE_WINDOW)
    rate, rate_source = serving_rate(st.served, st.served_minutes, st.served_first, st.served_last, now)
    estimate = estimate_cost(st.actual_costs, cfg.first_run_cost_usd)
    reading, reading_source = _resources(st.resource_reports, resources)
    snapshot = StateSnapshot(
        model=req.model,
        deployed_at=st.deployed_at,
        recent_run_starts=tuple(st.run_starts),
        runs_today_global=st.runs_today,
        active_run_id=st.active_run,
        spend_today_usd=st.spend_today,
        spend_month_usd=st.spend_month,
        model_spend_today_usd=st.model_spend_today,
        model_spend_month_usd=st.model_spend_month,
        estimated_cost_usd=estimate,
        predictions_per_day=rate,
        lookback_days=cfg.lookback_hours / 24.0,
        predictions_source=f"{rate_source}; newest buckets of the last {_RATE_WINDOW.days} d",
        return_rms=math.sqrt(st.returns_sq_sum / st.returns_n) if st.returns_sq_sum > 0.0 and st.returns_n else None,
        returns_measured_on=st.returns_n,
        below_floor_since=st.below_floor_since,
        paused=st.paused,
        globally_paused=st.globally_paused,
        has_production=st.production is not None,
        resources=reading,
    )
    record = {
        "estimate": {"usd": estimate, "source": f"moving average of {len(st.actual_costs)} measured run(s)"
                     if st.actual_costs else "first_run_cost_usd (no measured run yet)",
                     "past_usd": st.actual_costs},
        "resources": reading_source,
        "production": st.production,
    }
    return _with_measured_gap(req, st, cfg), snapshot, record


def _with_measured_gap(req: RetrainRequest, st: DecisionState, cfg: ModelConfig) -> RetrainRequest:
    """Give the value model the production version's live accuracy, its validated baseline and
    the model's accuracy floor when the trigger did not (schedule, manual, drift, emergency):
    a healthy model has little to recover, one under the floor has that much at least."""
    ev = dict(req.evidence or {})
    ev.setdefault("accuracy_floor", cfg.thresholds.accuracy_floor)
    has_figures = ev.get("baseline_accuracy") is not None and ev.get("current_accuracy") is not None
    if not has_figures and st.production_baseline is not None and st.window_n >= cfg.thresholds.min_samples:
        ev.update(baseline_accuracy=st.production_baseline, current_accuracy=st.window_correct / st.window_n,
                  measured_on=st.window_n)
    return replace(req, evidence=ev)


def decide_request(ctx: Context, request_id: str, resources: ResourceReading | None = None) -> DecideResult:
    """Decide one open request; ``resources`` is this node's reading, used when no training node reported."""
    with ctx.store.tx() as tx:
        # A redelivered message for a decided request is answered without queueing for the
        # lock: a request leaves 'open' only under the lock, and whatever reopens it sends
        # a fresh message.
        row, locked = tx.requests.get_open_locked(request_id, DECISION_LOCK)
        if row is None:
            raise PayloadError(f"unknown request {request_id}")
        if not locked or row.status != "open":
            return DecideResult(request_id, None, f"already {row.status}", skipped=True)
        now = ctx.now()
        req, snapshot, record = load_snapshot(tx, ctx, row.to_request(), now, resources)
        prod = record["production"]
        fired_on = (row.evidence or {}).get("version")
        if fired_on and prod and fired_on != prod:
            # The trigger judged a version that no longer serves: its evidence is stale.
            tx.requests.close(row, "superseded")
            tx.audit.record(now, "decision", "policy", f"{row.trigger} request for {row.model} superseded: it fired on "
                            f"{fired_on}, production is now {prod}", model=row.model, subject=row.id,
                            data={"request_id": row.id, "verdict": "superseded"})
            return DecideResult(request_id, "superseded", f"fired on {fired_on}; production is {prod}")
        decision = decide(req, snapshot, policy_for(ctx, req.model), now)
        decision = replace(decision, detail={**decision.detail, **record})
        _keep_floor_clock(tx, req.model, snapshot, decision, now)
        return _apply(tx, row, req, decision, now, actor="policy")


def _keep_floor_clock(tx: UnitOfWork, model: str, snapshot: StateSnapshot, decision: Decision, now: datetime) -> None:
    """Start the floor clock at the first finding below the floor, stop it at one that is not below;
    an undecided finding (below, but not significantly) leaves it as it is."""
    below = (decision.detail.get("value_model") or {}).get("below_floor")
    if below is True and snapshot.below_floor_since is None:
        tx.controls.set_floor_clock(model, now, now)
    elif below is False and snapshot.below_floor_since is not None:
        tx.controls.set_floor_clock(model, None, now)


def _rule_json(r: RuleResult) -> dict[str, Any]:
    # RuleResult.to_json goes through dataclasses.asdict, which deep-copies: a third of
    # the step's Python time. The values are JSON already (the policy builds them so).
    return {"rule": r.rule, "passed": r.passed, "value": r.value, "limit": r.limit, "detail": r.detail,
            "bypassed": r.bypassed, "retry_at": r.retry_at.isoformat() if r.retry_at else None}


def _apply(tx: UnitOfWork, row: RequestRecord, req: RetrainRequest, decision: Decision, now: datetime,
           actor: str) -> DecideResult:
    # The request as it was decided: a trigger that fires again refreshes the request's reason and
    # evidence afterwards, and the decision must keep showing what it was made on.
    decision = replace(decision, detail={**decision.detail, "request": {
        "reason": req.reason, "requested_by": req.requested_by, "evidence": dict(req.evidence or {})}})
    rules = [_rule_json(r) for r in decision.rules]
    did = tx.decisions.add(decision, req.trigger.value, rules)
    tx.audit.record(now, "decision", actor, f"{req.trigger.value} request for {req.model}: {decision.summary}",
                    model=req.model, subject=did,
                    data={"request_id": req.id, "verdict": decision.verdict.value, "rules": rules,
                          "defer_until": decision.defer_until.isoformat() if decision.defer_until else None,
                          "estimated_cost_usd": decision.estimated_cost_usd, "detail": decision.detail})
    run_id = None
    v = decision.verdict
    # A bypass is recorded on its own when it let a run through: rules that failed and
    # did not count. (Every rule's bypass flag is in the decision event either way.)
    past = [r.rule for r in decision.rules if r.bypassed and not r.passed]
    if past and v is Verdict.APPROVE:
        override = decision.detail.get("override")
        emergency = decision.detail.get("emergency") and any(r != "roi" for r in past)
        why = override or "; ".join(w for w in ("emergency" if emergency else None,
                                                 decision.detail.get("roi_yields_to")) if w)
        tx.audit.record(now, "bypass", req.requested_by if override else actor,
                        f"{req.trigger.value} request for {req.model} approved past {', '.join(past)} ({why})",
                        model=req.model, subject=did,
                        data={"request_id": req.id, "would_have_failed": past, "why": why,
                              "bypassed": [r.rule for r in decision.rules if r.bypassed]})
    if v is Verdict.APPROVE:
        run_id = start_run(tx, row, req, did, decision.estimated_cost_usd, now)
    elif v is Verdict.DEFER:
        tx.requests.update(row, status="deferred", decision_id=did)
    elif v is Verdict.PENDING_APPROVAL:
        tx.requests.update(row, status="pending_approval", decision_id=did)
    elif v is Verdict.COALESCED:
        run_id = decision.detail.get("coalesced_with")
        tx.requests.close(row, "coalesced", decision_id=did, run_id=run_id)
    else:
        tx.requests.close(row, "rejected", decision_id=did)
    return DecideResult(req.id, v.value, decision.summary, did, run_id)


def start_run(tx: UnitOfWork, row: RequestRecord, req: RetrainRequest, decision_id: str, estimate: float,
              now: datetime) -> str:
    """Create the run, reserve its estimate in the ledger and send it to training (one commit)."""
    run_id = new_run(tx, model=req.model, request_id=req.id, decision_id=decision_id, trigger=req.trigger.value,
                     priority=req.priority, now=now).id
    tx.requests.close(row, "approved", decision_id=decision_id, run_id=run_id)
    tx.ledger.add(run_id, req.model, "reservation", estimate, now, {"decision_id": decision_id, "estimate": True})
    tx.audit.record(now, "run", "policy", f"training run queued for {req.model} (priority {req.priority}); "
                    f"${estimate:.4f} reserved", model=req.model, subject=run_id,
                    data={"request_id": req.id, "decision_id": decision_id, "estimate_usd": estimate,
                          "trigger": req.trigger.value, "requested_by": req.requested_by})
    tx.outbox.enqueue(TRAIN, {"v": 1, "run_id": run_id}, now, priority=req.priority)
    return run_id


def resolve_pending(ctx: Context, ident: str, *, approve: bool, actor: str, reason: str = "") -> DecideResult:
    """An operator's answer to a decision waiting for approval (by request or decision id, or a prefix).

    An approval is written into the request's evidence (``approved_by``) and the
    request is decided again: budgets, limits and pauses may have moved while it
    waited, and only the approval rule is answered by the operator.
    """
    if not approve and not reason.strip():
        raise PayloadError("a rejection needs a reason (--reason)")
    with ctx.store.tx() as tx:
        tx.lock(DECISION_LOCK)
        now = ctx.now()
        row = _find_pending(tx, ident)
        req = row.to_request()
        d = tx.decisions.get(row.decision_id) if row.decision_id else None
        if d is not None:
            tx.decisions.resolve(d.id, actor, now)
        subject = d.id if d is not None else row.id
        data = {"request_id": row.id, "decision_id": d.id if d else None, "approved": approve, "reason": reason}
        if approve:
            tx.audit.record(now, "approval", actor,
                            f"approved retraining of {req.model}: {reason or 'no reason given'}",
                            model=req.model, subject=subject, data=data)
            tx.requests.update(row, evidence={**(row.evidence or {}), "approved_by": actor}, status="open")
            tx.outbox.enqueue(DECIDE, {"v": 1, "request_id": row.id}, now, priority=row.priority)
            return DecideResult(req.id, "approve", f"approved by {actor}; sent back to the decision", subject)
        tx.audit.record(now, "approval", actor, f"rejected retraining of {req.model}: {reason}", model=req.model,
                        subject=subject, data=data)
        tx.requests.close(row, "rejected")
        return DecideResult(req.id, "reject", f"rejected by {actor}: {reason}", subject)


def _find_pending(tx: UnitOfWork, ident: str) -> RequestRecord:
    row = tx.requests.get(ident, for_update=True)
    if row is None:
        d = tx.decisions.get(ident)
        row = tx.requests.get(d.request_id, for_update=True) if d else None
    if row is None and len(ident) >= 4:
        # The CLI shows 8-character ids; accept a unique prefix of a waiting request or its decision.
        hits = [r for r in tx.requests.newest(statuses=("pending_approval",), limit=1000)
                if r.id.startswith(ident) or (r.decision_id or "").startswith(ident)]
        if len(hits) > 1:
            raise PayloadError(f"{ident} matches {len(hits)} waiting requests; give more of the id")
        row = tx.requests.get(hits[0].id, for_update=True) if hits else None
    if row is None:
        raise PayloadError(f"no request or decision with id {ident}")
    if row.status != "pending_approval":
        raise PayloadError(f"request {row.id} is {row.status}, not waiting for approval")
    return row
