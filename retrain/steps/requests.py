"""Requests from outside the sweep: a person, a script, or a beat schedule entry."""

from __future__ import annotations

from dataclasses import dataclass

from retrain.context import Context
from retrain.domain import RetrainRequest, TriggerKind
from retrain.payloads import ManualRequestPayload
from retrain.storage.repo import new_id

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
        if p.slot is not None and not tx.claim_slot(p.model, p.slot, now):
            return RequestResult(None, False, f"slot {p.slot} of {p.model} already fired")
        rid, created = tx.open_request(req)
        if created:
            tx.audit(now, "request", p.requested_by, f"{trigger.value} retraining of {p.model} requested: {p.reason}",
                     model=p.model, subject=rid, data={"override_budget": p.override_budget, "slot": p.slot})
            tx.enqueue("retrain.decide", {"v": 1, "request_id": rid}, now, priority=req.priority)
        return RequestResult(rid, created, "opened" if created else "joined the open request")


def sync_models(ctx: Context) -> list[str]:
    """Make sure every configured model has its row; configuration changes are audited."""
    now = ctx.now()
    added = []
    with ctx.store.tx() as tx:
        for name, cfg in sorted(ctx.config.models.items()):
            if tx.ensure_model(name, cfg.description, cfg.model_dump(mode="json"), cfg.fingerprint(), now):
                added.append(name)
    return added
