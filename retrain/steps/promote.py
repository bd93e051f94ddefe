"""Promote: move ``production`` to the validated candidate and keep the old one as
``previous``, the rollback target. Every move is recorded in the alias history."""

from __future__ import annotations

from dataclasses import dataclass

from retrain.context import Context

__all__ = ["PromoteResult", "promote_run", "rollback"]


@dataclass(frozen=True)
class PromoteResult:
    run_id: str
    status: str
    version: str | None = None
    previous: str | None = None
    detail: str = ""


def promote_run(ctx: Context, run_id: str) -> PromoteResult:
    now = ctx.now()
    with ctx.store.tx() as tx:
        run = tx.run(run_id, for_update=True)
        if run is None or run.state != "rollout":
            return PromoteResult(run_id, "skipped", detail=f"run is {run.state if run else 'unknown'}")
        tx.lock(f"retrain:aliases:{run.model}")
        version = run.candidate_version
        reason = f"run {run.id[:8]} ({run.trigger}) validated"
        old = tx.move_alias(run.model, "production", version, actor="promotion", reason=reason, now=now)
        if old and old != version:
            tx.move_alias(run.model, "previous", old, actor="promotion", reason=f"replaced by {version}", now=now)
            old_row = tx.version(run.model, old)
            if old_row is not None:
                old_row.status = "retired"
        tx.move_alias(run.model, "candidate", None, actor="promotion", reason=f"{version} promoted", now=now)
        tx.version(run.model, version).status = "production"
        model = tx.model_row(run.model)
        if model is not None and model.deployed_at is None:
            model.deployed_at = now
        run.state, run.stage, run.finished_at = "done", "done", now
        tx.audit(now, "promotion", "promotion", f"{run.model} {version} is production (previous: {old or 'none'})",
                 model=run.model, subject=version, data={"run_id": run.id, "previous": old})
        return PromoteResult(run_id, "promoted", version, old, reason)


def rollback(ctx: Context, model: str, version: str | None, *, actor: str, reason: str) -> PromoteResult:
    """Point production at ``version`` (default: the ``previous`` alias); audited."""
    now = ctx.now()
    with ctx.store.tx() as tx:
        tx.lock(f"retrain:aliases:{model}")
        current = tx.alias(model, "production")
        target = version or tx.alias(model, "previous")
        if target is None:
            raise ValueError(f"{model} has no previous version to roll back to")
        row = tx.version(model, target)
        if row is None:
            raise ValueError(f"{model} has no version {target}")
        if row.deleted_at is not None:
            raise ValueError(f"{model} {target} was removed by retention on {row.deleted_at:%Y-%m-%d}; its artifact is gone")
        tx.move_alias(model, "production", target, actor=actor, reason=f"rollback: {reason}", now=now)
        if current and current != target:
            tx.move_alias(model, "previous", current, actor=actor, reason=f"rolled back from {current}", now=now)
            cur_row = tx.version(model, current)
            if cur_row is not None:
                cur_row.status = "rolled_back"
        row.status = "production"
        tx.audit(now, "rollback", actor, f"{model} rolled back from {current} to {target}: {reason}", model=model,
                 subject=target, data={"from": current, "to": target})
        return PromoteResult("", "rolled_back", target, current, reason)
