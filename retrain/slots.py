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

Every function works inside the caller's transaction (:class:`~retrain.storage.repo.Tx`),
so a claim commits together with the run's own move to ``training``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select, update

from retrain.storage.models import RunRow, TrainingSlotRow
from retrain.storage.repo import Tx, rowcount

__all__ = ["SLOT_LOCK", "SlotHolder", "ensure", "claim", "renew", "release", "holders", "free_count",
           "release_orphans"]

SLOT_LOCK = "retrain:training-slots"


@dataclass(frozen=True)
class SlotHolder:
    """A slot and the run attempt holding it, as ``retrain status`` shows it."""

    slot: int
    run_id: str
    attempt: int
    owner: str
    claimed_at: datetime | None
    lease_expires_at: datetime


def _free(now: datetime):
    return or_(TrainingSlotRow.run_id.is_(None), TrainingSlotRow.lease_expires_at < now)


def ensure(tx: Tx, limit: int) -> None:
    """Create slot rows ``0 .. limit-1`` that do not exist yet (migration 0002 seeds three)."""
    have = tx.s.scalar(select(func.count()).select_from(TrainingSlotRow).where(TrainingSlotRow.slot < limit)) or 0
    if have >= limit:
        return
    stmt = tx._insert(TrainingSlotRow.__table__).values([{"slot": i} for i in range(limit)])
    tx.s.execute(stmt.on_conflict_do_nothing(index_elements=["slot"]))


def claim(tx: Tx, *, run_id: str, attempt: int, owner: str, limit: int, now: datetime,
          lease_until: datetime) -> int | None:
    """Take a free slot among the first ``limit`` for this run attempt; None if all are held.

    Rows the same run still holds from an earlier attempt are given back first: one
    run never holds two slots.
    """
    if not tx.pg:
        tx.lock(SLOT_LOCK)
    release(tx, run_id)
    for _ in range(2):
        q = (select(TrainingSlotRow).where(TrainingSlotRow.slot < limit, _free(now))
             .order_by(TrainingSlotRow.slot).limit(1))
        if tx.pg:
            q = q.with_for_update(skip_locked=True)
        row = tx.s.scalars(q).first()
        if row is not None:
            row.run_id, row.attempt, row.owner = run_id, attempt, owner
            row.claimed_at, row.lease_expires_at = now, lease_until
            tx.s.flush()
            return row.slot
        ensure(tx, limit)  # a ceiling above the seeded rows: create them and look once more
    return None


def renew(tx: Tx, run_id: str, attempt: int, lease_until: datetime) -> bool:
    """Extend the lease of the slot this attempt holds; False if it holds none any more."""
    res = tx.s.execute(update(TrainingSlotRow)
                       .where(TrainingSlotRow.run_id == run_id, TrainingSlotRow.attempt == attempt)
                       .values(lease_expires_at=lease_until))
    return (rowcount(res)) > 0


def release(tx: Tx, run_id: str, attempt: int | None = None) -> int:
    """Give back the slot of a run (of one attempt only, when given: the fencing token)."""
    cond = [TrainingSlotRow.run_id == run_id]
    if attempt is not None:
        cond.append(TrainingSlotRow.attempt == attempt)
    res = tx.s.execute(update(TrainingSlotRow).where(*cond)
                       .values(run_id=None, attempt=None, owner=None, claimed_at=None, lease_expires_at=None))
    return rowcount(res)


def holders(tx: Tx, now: datetime, limit: int | None = None) -> list[SlotHolder]:
    """The slots held under a live lease (all slots, or the first ``limit``)."""
    q = select(TrainingSlotRow).where(TrainingSlotRow.run_id.is_not(None), TrainingSlotRow.lease_expires_at >= now)
    if limit is not None:
        q = q.where(TrainingSlotRow.slot < limit)
    return [_holder(r) for r in tx.s.scalars(q.order_by(TrainingSlotRow.slot))]


def _holder(r: TrainingSlotRow) -> SlotHolder:
    # A held slot: claim() sets run, attempt, owner and lease together (and release() clears them together).
    assert r.run_id is not None and r.attempt is not None and r.owner is not None and r.lease_expires_at is not None
    return SlotHolder(r.slot, r.run_id, r.attempt, r.owner, r.claimed_at, r.lease_expires_at)


def free_count(tx: Tx, limit: int, now: datetime) -> int:
    """How many of the first ``limit`` slots a claim could take now."""
    held = tx.s.scalar(select(func.count()).select_from(TrainingSlotRow).where(
        TrainingSlotRow.slot < limit, TrainingSlotRow.run_id.is_not(None),
        TrainingSlotRow.lease_expires_at >= now)) or 0
    return max(0, limit - held)


def release_orphans(tx: Tx) -> list[int]:
    """Give back slots whose run attempt no longer trains (it finished, failed, or was
    superseded by a later attempt) but could not release them itself (it died between
    its commit and the release)."""
    q = (select(TrainingSlotRow.slot).outerjoin(RunRow, RunRow.id == TrainingSlotRow.run_id)
         .where(TrainingSlotRow.run_id.is_not(None),
                or_(RunRow.id.is_(None), RunRow.state != "training",
                    and_(RunRow.state == "training", RunRow.attempt != TrainingSlotRow.attempt))))
    orphans = list(tx.s.scalars(q))
    if orphans:
        tx.s.execute(update(TrainingSlotRow).where(TrainingSlotRow.slot.in_(orphans))
                     .values(run_id=None, attempt=None, owner=None, claimed_at=None, lease_expires_at=None))
    return orphans
