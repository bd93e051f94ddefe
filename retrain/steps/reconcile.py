"""Reconcile: Postgres is the truth, Redis only carries messages. Find runs whose
worker vanished (lease expired) or whose message was lost (queued too long) and send
them again, or mark them dead once they used up their attempts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from retrain.context import Context

__all__ = ["ReconcileResult", "reconcile"]


@dataclass
class ReconcileResult:
    requeued: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)


def reconcile(ctx: Context) -> ReconcileResult:
    now = ctx.now()
    out = ReconcileResult()
    stale_queued = now - timedelta(seconds=max(60.0, 2 * ctx.settings.reconcile_interval_s))
    with ctx.store.tx() as tx:
        for run in tx.expired_leases(now):
            if run.state != "training":
                continue
            if run.attempt >= ctx.settings.max_attempts:
                from retrain.steps.train import _finish_failed

                _finish_failed(tx, run, "dead", f"lease expired on attempt {run.attempt} of "
                               f"{ctx.settings.max_attempts}; giving up", now)
                out.dead.append(run.id)
                continue
            tx.audit(now, "run", "reconciler", f"lease of {run.lease_owner} on run {run.id[:8]} expired; re-enqueued",
                     model=run.model, subject=run.id, data={"attempt": run.attempt})
            run.state, run.lease_owner, run.lease_expires_at = "queued", None, None
            tx.enqueue("retrain.train", {"v": 1, "run_id": run.id}, now, priority=run.priority)
            out.requeued.append(run.id)
        for run in tx.runs(states=("queued",), limit=500):
            if run.created_at < stale_queued and run.id not in out.requeued:
                tx.enqueue("retrain.train", {"v": 1, "run_id": run.id}, now, priority=run.priority)
                out.requeued.append(run.id)
    return out
