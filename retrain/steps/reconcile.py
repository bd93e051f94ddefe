"""Reconcile: Postgres is the truth, the broker only carries messages.

Run on beat every ``RETRAIN_RECONCILE_INTERVAL_S``, it repairs what a lost or
duplicated message, or a dead process, leaves behind:

* a training attempt whose lease expired (its worker was killed, lost or hung) is
  queued and sent again, or ends ``dead`` with the reason once it used
  ``RETRAIN_MAX_ATTEMPTS``;
* a run or an open request whose message vanished (a broker restarted without
  persistence, a deleted queue key) is sent again once it has shown no sign of life
  for ``RETRAIN_REQUEUE_AFTER_S``: its creation, start, heartbeat or last dispatch.
  A queued run is sent again only while a training slot is free (it could not
  start otherwise, and a slot that frees wakes the waiting runs itself);
* slots held by attempts that no longer train are given back, and the runs that
  wait for a slot or a dependency are woken as far as slots allow.

Every repair is idempotent against the message it replaces arriving after all:
steps check the run's state and the attempt's fencing token under a row lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from retrain import slots
from retrain.context import Context
from retrain.core.lifecycle import finish, requeue
from retrain.tasks import DECIDE, PROMOTE, TRAIN, VALIDATE
from retrain.waiting import wake

__all__ = ["ReconcileResult", "reconcile", "STEP_OF_STATE"]

# The message that moves a run on from each state a message is waiting for.
STEP_OF_STATE: dict[tuple[str, str | None], str] = {
    ("queued", None): TRAIN,
    ("validating", None): VALIDATE,
    ("rollout", "promoting"): PROMOTE,
}


@dataclass
class ReconcileResult:
    requeued: list[str] = field(default_factory=list)  # attempts whose lease expired, sent again
    dead: list[str] = field(default_factory=list)  # runs that used up their attempts
    resent: list[str] = field(default_factory=list)  # runs whose message looked lost, sent again
    woken: list[str] = field(default_factory=list)  # waiting runs sent now that they may start
    requests: list[str] = field(default_factory=list)  # open requests whose decide message looked lost
    slots_freed: list[int] = field(default_factory=list)


def _deps(ctx: Context) -> dict[str, tuple[str, ...]]:
    return {name: tuple(m.depends_on) for name, m in ctx.config.models.items()}


def _last_sign(run) -> datetime:
    return max(t for t in (run.created_at, run.started_at, run.heartbeat_at, run.dispatched_at) if t is not None)


def reconcile(ctx: Context) -> ReconcileResult:
    now = ctx.now()
    s = ctx.settings
    out = ReconcileResult()
    with ctx.store.tx() as tx:
        _expired_leases(tx, ctx, now, out)
    with ctx.store.tx() as tx:
        out.slots_freed = slots.release_orphans(tx)
        out.woken = wake(tx, depends_on=_deps(ctx), limit=s.training_slots, now=now,
                         skip_dispatched_after=now - timedelta(seconds=s.reconcile_interval_s))
    with ctx.store.tx() as tx:
        _lost_run_messages(tx, ctx, now, out)
    with ctx.store.tx() as tx:
        _lost_request_messages(tx, now - timedelta(seconds=s.requeue_after_s), now, out)
    return out


def _expired_leases(tx, ctx: Context, now: datetime, out: ReconcileResult) -> None:
    cap = ctx.settings.max_attempts
    for stale in tx.runs.expired_leases(now):
        run = tx.runs.get(stale.id, for_update=True)
        if run is None or run.state != "training" or run.lease_expires_at is None or run.lease_expires_at >= now:
            continue  # renewed or finished since it was read
        owner, attempt = run.lease_owner, run.attempt
        lost = f"the lease of attempt {attempt} expired (holder {owner} stopped renewing it: killed, lost or hung)"
        if attempt >= cap:
            if finish(tx, run, "dead", f"{lost}; {attempt} of {cap} attempts used (RETRAIN_MAX_ATTEMPTS)", now,
                      actor="reconciler"):
                out.dead.append(run.id)
            continue
        slots.release(tx, run.id, attempt)
        requeue(tx, run, attempt=attempt, reason=lost, now=now)
        tx.audit.record(now, "run", "reconciler", f"run of {run.model}: {lost}; sent again", model=run.model,
                        subject=run.id, data={"attempt": attempt, "owner": owner})
        tx.outbox.enqueue(TRAIN, {"v": 1, "run_id": run.id}, now, priority=run.priority)
        out.requeued.append(run.id)


def _lost_run_messages(tx, ctx: Context, now: datetime, out: ReconcileResult) -> None:
    stale = now - timedelta(seconds=ctx.settings.requeue_after_s)
    budget = slots.free_count(tx, ctx.settings.training_slots, now)
    states = sorted({state for state, _ in STEP_OF_STATE})
    candidates = sorted(tx.runs.newest(states=states, limit=1000), key=lambda r: (-r.priority, r.created_at))
    for run in candidates:
        if run.id in out.requeued or run.id in out.woken or _last_sign(run) >= stale:
            continue
        task = STEP_OF_STATE.get((run.state, None)) or STEP_OF_STATE.get((run.state, run.stage))
        if task is None:
            continue
        if run.state == "queued":
            if run.blocked_on is not None:
                continue  # held back on purpose: the wake above sends it when it may start
            if budget <= 0:
                continue  # it could not start anyway; a slot that frees wakes it
            budget -= 1
        locked = tx.runs.get(run.id, for_update=True)
        if locked is None or locked.state != run.state:
            continue
        tx.runs.note(locked, dispatched_at=now)
        tx.audit.record(now, "run", "reconciler", f"no sign of run {run.id[:8]} of {run.model} ({run.state}) since "
                        f"{_last_sign(run).isoformat()}: its message may be lost; {task} sent again",
                        model=run.model, subject=run.id, data={"task": task})
        tx.outbox.enqueue(task, {"v": 1, "run_id": run.id}, now, priority=run.priority)
        out.resent.append(run.id)


def _lost_request_messages(tx, stale: datetime, now: datetime, out: ReconcileResult) -> None:
    for req in tx.requests.newest(statuses=("open",), limit=500):
        if req.updated_at >= stale:
            continue
        row = tx.requests.get(req.id, for_update=True)
        if row is None or row.status != "open":
            continue
        row = tx.requests.update(row, updated_at=now)  # the next look is one RETRAIN_REQUEUE_AFTER_S away
        tx.audit.record(now, "request", "reconciler", f"{row.trigger} request for {row.model} still undecided since "
                        f"{req.updated_at.isoformat()}: retrain.decide sent again", model=row.model, subject=row.id)
        tx.outbox.enqueue(DECIDE, {"v": 1, "request_id": row.id}, now, priority=row.priority)
        out.requests.append(row.id)
