"""Global training slots: at most ``RETRAIN_TRAINING_SLOTS`` (1-3) fits at once, across
every training node (ADAPT-015).

A slot is a row of ``training_slots``. A run claims one before its fit starts, with
its attempt number as the fencing token and a lease that the run's heartbeat renews,
and gives it back when the fit ends. A slot is free when nobody holds it or when its
holder's lease has expired, so a holder killed with ``kill -9`` frees its slot after
the lease without anybody cleaning up, and the limit holds with any number of
training workers.

On Postgres a claim takes the first free row with ``SELECT ... FOR UPDATE SKIP
LOCKED``: concurrent claims never wait on each other and never take the same row.
SQLite has no row locks; there the claim serialises on the store's lock (a write
takes the whole database) and picks a free row under it, which is the same
lock-and-count approach in row form.

Every function works inside the caller's transaction (:class:`~retrain.core.ports.UnitOfWork`),
so a claim commits together with the run's own move to ``training``.
"""

from __future__ import annotations

from datetime import datetime

from retrain.core.ports import UnitOfWork
from retrain.core.records import SlotHolder

__all__ = ["SLOT_LOCK", "SlotHolder", "ensure", "claim", "renew", "release", "holders", "free_count",
           "release_orphans"]

SLOT_LOCK = "retrain:training-slots"


def ensure(tx: UnitOfWork, limit: int) -> None:
    """Create slot rows ``0 .. limit-1`` that do not exist yet (migration 0002 seeds three)."""
    tx.slots.ensure(limit)


def claim(tx: UnitOfWork, *, run_id: str, attempt: int, owner: str, limit: int, now: datetime,
          lease_until: datetime) -> int | None:
    """Take a free slot among the first ``limit`` for this run attempt; None if all are held.

    Rows the same run still holds from an earlier attempt are given back first: one
    run never holds two slots.
    """
    if not tx.pg:
        tx.lock(SLOT_LOCK)
    tx.slots.release(run_id)
    for _ in range(2):
        slot = tx.slots.take_free(run_id=run_id, attempt=attempt, owner=owner, limit=limit, now=now,
                                  lease_until=lease_until)
        if slot is not None:
            return slot
        tx.slots.ensure(limit)  # a ceiling above the seeded rows: create them and look once more
    return None


def renew(tx: UnitOfWork, run_id: str, attempt: int, lease_until: datetime) -> bool:
    """Extend the lease of the slot this attempt holds; False if it holds none any more."""
    return tx.slots.renew(run_id, attempt, lease_until)


def release(tx: UnitOfWork, run_id: str, attempt: int | None = None) -> int:
    """Give back the slot of a run (of one attempt only, when given: the fencing token)."""
    return tx.slots.release(run_id, attempt)


def holders(tx: UnitOfWork, now: datetime, limit: int | None = None) -> list[SlotHolder]:
    """The slots held under a live lease (all slots, or the first ``limit``)."""
    return tx.slots.holders(now, limit)


def free_count(tx: UnitOfWork, limit: int, now: datetime) -> int:
    """How many of the first ``limit`` slots a claim could take now."""
    return tx.slots.free_count(limit, now)


def release_orphans(tx: UnitOfWork) -> list[int]:
    """Give back slots whose run attempt no longer trains (it finished, failed, or was
    superseded by a later attempt) but could not release them itself (it died between
    its commit and the release)."""
    return tx.slots.release_orphans()
