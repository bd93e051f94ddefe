"""Decide: load the state snapshot, apply the pure policy, record and act on the verdict.

The snapshot, the decision, the cost reservation, the run and the outbox message
commit in one transaction under a lock, so concurrent decisions cannot overspend
a budget or exceed a daily limit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from retrain.context import Context
from retrain.costs import estimate_cost
from retrain.domain import Decision, RetrainRequest, Verdict
from retrain.errors import PayloadError
from retrain.policy import Policy, ResourceReading, StateSnapshot, decide
from retrain.storage.repo import Tx

__all__ = ["DecideResult", "decide_request", "resolve_pending", "policy_for", "load_snapshot"]

DECISION_LOCK = "retrain:decision"


@dataclass(frozen=True)
class DecideResult:
    request_id: str
    verdict: str | None
    summary: str
    decision_id: str | None = None
    run_id: str | None = None
    skipped: bool = False


def policy_for(ctx: Context, model: str) -> Policy:
    key = f"policy:{model}"
    if key not in ctx.cache:
        ctx.cache[key] = ctx.config.policy_for(model)
    return ctx.cache[key]


def load_snapshot(tx: Tx, ctx: Context, req: RetrainRequest, policy: Policy, now: datetime,
                  resources: ResourceReading | None) -> StateSnapshot:
    model = tx.model_row(req.model)
    day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
    active = tx.active_run(req.model)
    recent = tx.buckets(req.model, None, now - timedelta(days=1))
    predictions_per_day = float(sum(b.n + b.unlabelled for b in recent))
    global_pause = bool((tx.control("pause_all") or {}).get("paused", False))
    return StateSnapshot(
        model=req.model,
        deployed_at=model.deployed_at if model else None,
        recent_run_starts=tuple(tx.run_starts(req.model, now - timedelta(days=31))),
        runs_today_global=tx.runs_started_since(now.replace(hour=0, minute=0, second=0, microsecond=0)),
        active_run_id=active.id if active else None,
        spend_today_usd=tx.spend(day=day),
        spend_month_usd=tx.spend(month=month),
        model_spend_today_usd=tx.spend(day=day, model=req.model),
        model_spend_month_usd=tx.spend(month=month, model=req.model),
        estimated_cost_usd=estimate_cost(tx.run_costs(req.model), ctx.config.model(req.model).first_run_cost_usd),
        predictions_per_day=predictions_per_day,
        paused=bool(model.paused if model else False),
        globally_paused=global_pause,
        has_production=tx.alias(req.model, "production") is not None,
        resources=resources,
    )


def _with_measured_gap(tx: Tx, ctx: Context, req: RetrainRequest, now: datetime) -> RetrainRequest:
    """Give the value model the production version's live accuracy vs its validated baseline
    when the trigger did not (schedule, manual): a healthy model has nothing to recover."""
    ev = req.evidence or {}
    if ev.get("baseline_accuracy") is not None and ev.get("current_accuracy") is not None:
        return req
    prod = tx.alias(req.model, "production")
    version = tx.version(req.model, prod) if prod else None
    baseline = ((version.metrics or {}).get("baseline") or {}).get("accuracy") if version else None
    if baseline is None:
        return req
    cfg = ctx.config.model(req.model)
    rows = tx.buckets(req.model, prod, now - timedelta(minutes=cfg.thresholds.window_minutes))
    n = sum(r.n for r in rows)
    if n < cfg.thresholds.min_samples:
        return req
    current = sum(r.tp + r.tn for r in rows) / n
    return replace(req, evidence={**ev, "baseline_accuracy": baseline, "current_accuracy": current,
                                  "measured_on": n})


def decide_request(ctx: Context, request_id: str, resources: ResourceReading | None = None) -> DecideResult:
    now = ctx.now()
    with ctx.store.tx() as tx:
        tx.lock(DECISION_LOCK)
        row = tx.request(request_id, for_update=True)
        if row is None:
            raise PayloadError(f"unknown request {request_id}")
        if row.status not in ("open", "deferred"):
            # A redelivered or repeated message: the request was decided already.
            return DecideResult(request_id, None, f"already {row.status}", skipped=True)
        fired_on = (row.evidence or {}).get("version")
        prod = tx.alias(row.model, "production")
        if fired_on and prod and fired_on != prod:
            # The trigger judged a version that no longer serves: its evidence is stale.
            tx.close_request(row, "superseded")
            tx.audit(now, "decision", "policy", f"{row.trigger} request for {row.model} superseded: it fired on "
                     f"{fired_on}, production is now {prod}", model=row.model, subject=row.id)
            return DecideResult(request_id, "superseded", f"fired on {fired_on}; production is {prod}")
        req = _with_measured_gap(tx, ctx, tx.to_request(row), now)
        policy = policy_for(ctx, req.model)
        snapshot = load_snapshot(tx, ctx, req, policy, now, resources)
        decision = decide(req, snapshot, policy, now)
        return _apply(tx, ctx, row, req, decision, now, actor="policy")


def _apply(tx: Tx, ctx: Context, row, req: RetrainRequest, decision: Decision, now: datetime, actor: str) -> DecideResult:
    did = tx.record_decision(decision, req.trigger.value)
    row.decision_id = did
    rules = [r.to_json() for r in decision.rules]
    bypassed = [r.rule for r in decision.rules if r.bypassed]
    tx.audit(now, "decision", actor, f"{req.trigger.value} request for {req.model}: {decision.summary}",
             model=req.model, subject=did, data={"request_id": req.id, "verdict": decision.verdict.value,
                                                  "rules": rules, "detail": decision.detail})
    if bypassed:
        tx.audit(now, "bypass", actor, f"{req.trigger.value} request bypassed: {', '.join(bypassed)}",
                 model=req.model, subject=did, data={"rules": bypassed})
    run_id = None
    v = decision.verdict
    if v is Verdict.APPROVE:
        run_id = start_run(tx, row, req, did, decision.estimated_cost_usd, now)
    elif v is Verdict.DEFER:
        row.status = "deferred"
    elif v is Verdict.PENDING_APPROVAL:
        row.status = "pending_approval"
    elif v is Verdict.COALESCED:
        tx.close_request(row, "coalesced")
        row.run_id = decision.detail.get("active_run_id")
    else:
        tx.close_request(row, "rejected")
    return DecideResult(req.id, v.value, decision.summary, did, run_id)


def start_run(tx: Tx, row, req: RetrainRequest, decision_id: str, estimate: float, now: datetime) -> str:
    run_id = tx.create_run(model=req.model, request_id=req.id, decision_id=decision_id, trigger=req.trigger.value,
                           priority=req.priority, now=now)
    tx.close_request(row, "approved")
    row.run_id = run_id
    tx.add_cost(run_id, req.model, "reservation", estimate, now, {"estimate": True})
    tx.audit(now, "run", "policy", f"training run queued for {req.model} (priority {req.priority})",
             model=req.model, subject=run_id, data={"request_id": req.id, "estimate_usd": estimate})
    tx.enqueue("retrain.train", {"v": 1, "run_id": run_id}, now, priority=req.priority)
    return run_id


def resolve_pending(ctx: Context, ident: str, *, approve: bool, actor: str, reason: str = "") -> DecideResult:
    """An operator's answer to a decision waiting for approval (by decision or request id)."""
    now = ctx.now()
    with ctx.store.tx() as tx:
        tx.lock(DECISION_LOCK)
        row = tx.request(ident, for_update=True)
        if row is None:
            d = tx.decision(ident)
            row = tx.request(d.request_id, for_update=True) if d else None
        if row is None:
            raise PayloadError(f"no request or decision with id {ident}")
        if row.status != "pending_approval":
            raise PayloadError(f"request {row.id} is {row.status}, not waiting for approval")
        req = tx.to_request(row)
        d = tx.decision(row.decision_id)
        d.resolved_by, d.resolved_at = actor, now
        if approve:
            # The approval is recorded on the request and every other rule is checked again:
            # budgets and limits may have moved while it waited.
            tx.audit(now, "approval", actor, f"approved retraining of {req.model}: {reason or 'no reason given'}",
                     model=req.model, subject=d.id)
            row.evidence = {**(row.evidence or {}), "approved_by": actor}
            row.status = "open"
            tx.enqueue("retrain.decide", {"v": 1, "request_id": row.id}, now, priority=row.priority)
            return DecideResult(req.id, "approve", f"approved by {actor}; sent back to the decision", d.id)
        tx.audit(now, "approval", actor, f"rejected retraining of {req.model}: {reason}", model=req.model, subject=d.id)
        tx.close_request(row, "rejected")
        return DecideResult(req.id, "reject", f"rejected by {actor}: {reason}", d.id)
