"""What a queued run waits for, and waking the runs that may start now.

A queued run can be held back by two things:

* a dependency: model B lists model A in ``depends_on`` (B uses A's outputs), so
  B's run waits while A has an active run (queued, training, validating, in shadow
  or in rollout) that was created before it. Only earlier runs count, so the
  waits-for graph always points back in time and can never form a cycle, whatever
  the model file says;
* a training slot: all ``RETRAIN_TRAINING_SLOTS`` are held (retrain.slots).

A held-back run stays ``queued`` with ``blocked_on`` saying what it waits for, and
its message is acknowledged: Postgres, not the broker, remembers that it waits.
:func:`wake` sends ``retrain.train`` again (through the outbox) for the waiting runs
that may start now, highest priority first; a training that gives its slot back
calls it at once, and the reconciler calls it every interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from retrain import slots
from retrain.core.ports import UnitOfWork
from retrain.core.records import RunRecord
from retrain.tasks import TRAIN

__all__ = ["dependency_blocker", "describe_dependency", "slot_wait", "wake"]

SLOT_WAIT_PREFIX = "a free training slot"


def dependency_blocker(tx: UnitOfWork, run: RunRecord, depends_on: Iterable[str]) -> RunRecord | None:
    """The oldest active run of one of ``depends_on`` created before ``run``, if any."""
    deps = [m for m in depends_on if m != run.model]
    if not deps:
        return None
    return tx.runs.blocker(run, deps)


def describe_dependency(blocker: RunRecord) -> str:
    return f"{blocker.model} run {blocker.id[:8]} ({blocker.state}) to finish"


def slot_wait(limit: int) -> str:
    return f"{SLOT_WAIT_PREFIX} ({limit} of {limit} in use)"


def wake(tx: UnitOfWork, *, depends_on: dict[str, tuple[str, ...]], limit: int, now: datetime,
         skip_dispatched_after: datetime | None = None, scan: int = 200) -> list[str]:
    """Send ``retrain.train`` for the best waiting runs, as many as there are free slots.

    Candidates are queued runs that tried and were held back (``blocked_on`` set),
    by priority then age; a run still waiting for a dependency is skipped (and its
    ``blocked_on`` refreshed). ``skip_dispatched_after`` leaves alone runs that were
    sent again recently and whose message may still be on its way. Returns the ids sent.
    """
    free = slots.free_count(tx, limit, now)
    sent: list[str] = []
    taken = 0
    for run in tx.runs.waiting(scan):
        blocker = dependency_blocker(tx, run, depends_on.get(run.model, ()))
        if blocker is not None:
            text = describe_dependency(blocker)
            if run.blocked_on != text:
                tx.runs.note(run, blocked_on=text)
            continue
        if taken >= free:
            assert run.blocked_on is not None  # waiting() takes only runs with it set
            if not run.blocked_on.startswith(SLOT_WAIT_PREFIX):
                tx.runs.note(run, blocked_on=slot_wait(limit))
            continue
        taken += 1
        if skip_dispatched_after is not None and run.dispatched_at and run.dispatched_at > skip_dispatched_after:
            continue  # sent again a moment ago and on its way: it still counts against the free slots
        tx.outbox.enqueue(TRAIN, {"v": 1, "run_id": run.id}, now, priority=run.priority)
        tx.runs.note(run, dispatched_at=now)
        sent.append(run.id)
    return sent
