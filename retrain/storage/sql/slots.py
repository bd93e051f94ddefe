"""Global training slots (see :mod:`retrain.slots` for the protocol)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from retrain.core.records import SlotHolder
from retrain.storage.models import RunRow, TrainingSlotRow
from retrain.storage.sql.base import SqlRepository, rowcount, table

__all__ = ["SqlSlots"]

_EMPTY: dict[str, Any] = {"run_id": None, "attempt": None, "owner": None, "claimed_at": None,
                          "lease_expires_at": None}


def _free(now: datetime) -> Any:
    return or_(TrainingSlotRow.run_id.is_(None), TrainingSlotRow.lease_expires_at < now)


class SqlSlots(SqlRepository):
    def ensure(self, limit: int) -> None:
        """Create slot rows ``0 .. limit-1`` that do not exist yet (migration 0002 seeds three)."""
        have = self.s.scalar(select(func.count()).select_from(TrainingSlotRow)
                             .where(TrainingSlotRow.slot < limit)) or 0
        if have >= limit:
            return
        stmt = self._insert(table(TrainingSlotRow)).values([{"slot": i} for i in range(limit)])
        self.s.execute(stmt.on_conflict_do_nothing(index_elements=["slot"]))

    def take_free(self, *, run_id: str, attempt: int, owner: str, limit: int, now: datetime,
                  lease_until: datetime) -> int | None:
        """Take the first free slot among the first ``limit`` (Postgres: skipping rows being claimed)."""
        q = (select(TrainingSlotRow).where(TrainingSlotRow.slot < limit, _free(now))
             .order_by(TrainingSlotRow.slot).limit(1))
        if self.pg:
            q = q.with_for_update(skip_locked=True)
        row = self.s.scalars(q).first()
        if row is None:
            return None
        row.run_id, row.attempt, row.owner = run_id, attempt, owner
        row.claimed_at, row.lease_expires_at = now, lease_until
        self.s.flush()
        return row.slot

    def renew(self, run_id: str, attempt: int, lease_until: datetime) -> bool:
        res = self.s.execute(update(TrainingSlotRow)
                             .where(TrainingSlotRow.run_id == run_id, TrainingSlotRow.attempt == attempt)
                             .values(lease_expires_at=lease_until))
        return rowcount(res) > 0

    def release(self, run_id: str, attempt: int | None = None) -> int:
        cond = [TrainingSlotRow.run_id == run_id]
        if attempt is not None:
            cond.append(TrainingSlotRow.attempt == attempt)
        return rowcount(self.s.execute(update(TrainingSlotRow).where(*cond).values(**_EMPTY)))

    def holders(self, now: datetime, limit: int | None = None) -> list[SlotHolder]:
        q = select(TrainingSlotRow).where(TrainingSlotRow.run_id.is_not(None), TrainingSlotRow.lease_expires_at >= now)
        if limit is not None:
            q = q.where(TrainingSlotRow.slot < limit)
        out = []
        for r in self.s.scalars(q.order_by(TrainingSlotRow.slot)):
            # A held slot: a claim sets run, attempt, owner and lease together (and release clears them together).
            assert r.run_id is not None and r.attempt is not None and r.owner is not None
            assert r.lease_expires_at is not None
            out.append(SlotHolder(r.slot, r.run_id, r.attempt, r.owner, r.claimed_at, r.lease_expires_at))
        return out

    def free_count(self, limit: int, now: datetime) -> int:
        held = self.s.scalar(select(func.count()).select_from(TrainingSlotRow).where(
            TrainingSlotRow.slot < limit, TrainingSlotRow.run_id.is_not(None),
            TrainingSlotRow.lease_expires_at >= now)) or 0
        return max(0, limit - held)

    def release_orphans(self) -> list[int]:
        q = (select(TrainingSlotRow.slot).outerjoin(RunRow, RunRow.id == TrainingSlotRow.run_id)
             .where(TrainingSlotRow.run_id.is_not(None),
                    or_(RunRow.id.is_(None), RunRow.state != "training",
                        and_(RunRow.state == "training", RunRow.attempt != TrainingSlotRow.attempt))))
        orphans = list(self.s.scalars(q))
        if orphans:
            self.s.execute(update(TrainingSlotRow).where(TrainingSlotRow.slot.in_(orphans)).values(**_EMPTY))
        return orphans
