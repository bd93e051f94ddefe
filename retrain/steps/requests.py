"""Requests from outside the sweep: a person, a script, or a beat schedule entry; and the
configuration's rows (``sync_models``), whose every change is audited."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from retrain.context import Context
from retrain.core.domain import RetrainRequest, TriggerKind, new_id
from retrain.core.payloads import ManualRequestPayload
from retrain.tasks import DECIDE

__all__ = ["RequestResult", "request_retraining", "sync_models", "slot_key"]


@dataclass(frozen=True)
class RequestResult:
    request_id: str | None
    created: bool
    detail: str


def slot_key(slot: str, now, tz: str) -> str:
    """The period a schedule entry fires for: the same key for every beat that fires it."""
    from zoneinfo import ZoneInfo

    local = now.astimezone(ZoneInfo(tz))
    if slot == "daily":
        return f"daily@{local:%Y-%m-%d}"
    if slot == "weekly":
        y, w, _ = local.isocalendar()
        return f"weekly@{y}-W{w:02d}"
    if slot == "monthly":
        return f"monthly@{local:%Y-%m}"
    return f"{slot}@{local:%Y-%m-%dT%H:%M}"


def request_retraining(ctx: Context, p: ManualRequestPayload) -> RequestResult:
    ctx.config.model(p.model)  # UnknownModelError names the configured models
    now = ctx.now()
    if p.slot is not None and "@" not in p.slot:
        p = p.model_copy(update={"slot": slot_key(p.slot, now, ctx.config.settings.timezone)})
    trigger = TriggerKind(p.trigger)
    evidence = {k: v for k, v in (("slot", p.slot), ("approved_by", p.approved_by),
                                  ("override_reason", p.override_reason)) if v}
    req = RetrainRequest(id=new_id(), model=p.model, trigger=trigger, created_at=now, reason=p.reason,
                         evidence=evidence, requested_by=p.requested_by, override_budget=p.override_budget)
    with ctx.store.tx() as tx:
        if p.slot is not None and not tx.monitoring.claim_schedule_slot(p.model, p.slot, now):
            return RequestResult(None, False, f"slot {p.slot} of {p.model} already fired")
        if p.override_budget or p.approved_by:
            _supersede_open(tx, req, now)
        rid, created = tx.requests.open(req)
        if created:
            tx.audit.record(now, "request", p.requested_by,
                            f"{trigger.value} retraining of {p.model} requested: {p.reason}"
                            + (f" (budget override: {p.override_reason or 'no reason given'})"
                               if p.override_budget else ""),
                            model=p.model, subject=rid,
                            data={"request_id": rid, "trigger": trigger.value, "override_budget": p.override_budget,
                                  "override_reason": p.override_reason, "approved_by": p.approved_by, "slot": p.slot})
            tx.outbox.enqueue(DECIDE, {"v": 1, "request_id": rid}, now, priority=req.priority)
        return RequestResult(rid, created, "opened" if created else "joined the open request")


def _supersede_open(tx, req: RetrainRequest, now) -> None:
    """An operator's forced or pre-approved request replaces a waiting one of the same kind.

    Joining it would lose what the operator adds: a deferred request keeps waiting for
    its time and was decided without the override or the approval.
    """
    key = f"{req.model}:{req.trigger.value}"
    for row in tx.requests.newest(req.model, statuses=("open", "deferred", "pending_approval")):
        if row.open_key != key:
            continue
        row = tx.requests.get(row.id, for_update=True)  # a decision in flight finishes first
        if row.status in ("open", "deferred", "pending_approval"):
            was = row.status
            tx.requests.close(row, "superseded")
            tx.audit.record(now, "request", req.requested_by, f"{was} {req.trigger.value} request for {req.model} "
                            f"superseded by {req.requested_by}'s request {req.id}", model=req.model, subject=row.id,
                            data={"request_id": row.id, "superseded_by": req.id})


CONFIG_CONTROL = "config"


def sync_models(ctx: Context) -> list[str]:
    """Make sure every configured model has its row; configuration changes are audited.

    A model's own table is fingerprinted per model (``models.ensure``); the
    global part (``[settings]``, ``[policy]``, ``[costs]``) is fingerprinted here
    and kept in the ``controls`` table, so that a change of a global cap or price
    is in the audit trail too. Workers call this at start-up, several at once:
    the lock makes the first one record a change and the others see it done.
    """
    now = ctx.now()
    added = []
    cfg_all = ctx.config
    # Through JSON once: TOML times and dates become strings, as they will be in the controls row.
    global_part = json.loads(json.dumps({"settings": cfg_all.settings.model_dump(mode="json"),
                                         "policy": dict(cfg_all.policy),
                                         "costs": cfg_all.costs.model_dump(mode="json")}, default=str))
    fingerprint = hashlib.sha256(json.dumps(global_part, sort_keys=True).encode()).hexdigest()
    with ctx.store.tx() as tx:
        tx.lock("retrain:config")
        old = tx.controls.get(CONFIG_CONTROL) or {}
        if old.get("fingerprint") != fingerprint:
            before = old.get("config") or {}
            changed = sorted(f"{part}.{k}" for part in global_part
                             for k in set(global_part[part]) | set(before.get(part) or {})
                             if global_part[part].get(k) != (before.get(part) or {}).get(k))
            what = "recorded" if not old else f"changed: {', '.join(changed) or 'no field'}"
            tx.audit.record(now, "config", "system", f"global configuration {what} (from {cfg_all.source})",
                            data={"from": old.get("fingerprint"), "to": fingerprint, "changed": changed,
                                  "config": global_part})
            tx.controls.set(CONFIG_CONTROL, {"fingerprint": fingerprint, "config": global_part,
                                             "source": cfg_all.source}, "system", now)
        for name, cfg in sorted(ctx.config.models.items()):
            if tx.models.ensure(name, cfg.description, cfg.model_dump(mode="json"), cfg.fingerprint(), now):
                added.append(name)
    return added
