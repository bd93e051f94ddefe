"""Deliveries of notification events: one row per (event, target), claimed before sending."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError

from retrain.core.records import NotificationRecord
from retrain.storage.models import NotificationRow
from retrain.storage.sql.base import SqlRepository, maybe, to_record

__all__ = ["SqlNotifications"]


class SqlNotifications(SqlRepository):
    def add(self, *, event_id: str, target: str, event: str, model: str | None, subject: str | None, title: str,
            body: str, now: datetime) -> NotificationRecord | None:
        row = NotificationRow(event_id=event_id, target=target, event=event, model=model, subject=subject,
                              title=title, body=body, status="pending", attempts=0, created_at=now, updated_at=now,
                              next_attempt_at=None, delivered_at=None, last_error=None)
        try:
            with self.s.begin_nested():  # a redelivered event finds its row: keep the transaction usable
                self.s.add(row)
                self.s.flush()
        except IntegrityError:
            return None
        return to_record(row, NotificationRecord)

    def get(self, event_id: str, target: str) -> NotificationRecord | None:
        return maybe(self.s.scalar(select(NotificationRow).where(NotificationRow.event_id == event_id,
                                                                 NotificationRow.target == target)),
                      NotificationRecord)

    def claim(self, ids: Sequence[int], now: datetime, until: datetime) -> list[NotificationRecord]:
        if not ids:
            return []
        claimable = or_(NotificationRow.status == "pending",
                        and_(NotificationRow.status.in_(("retrying", "sending")),
                             NotificationRow.next_attempt_at <= now))
        # One UPDATE decides who sends: a second claimer finds the rows 'sending' with a future deadline.
        res = self.s.execute(update(NotificationRow).where(NotificationRow.id.in_(list(ids)), claimable)
                             .values(status="sending", next_attempt_at=until, updated_at=now)
                             .returning(NotificationRow.id))
        claimed = [r[0] for r in res]
        if not claimed:
            return []
        rows = self.s.scalars(select(NotificationRow).where(NotificationRow.id.in_(claimed))
                              .order_by(NotificationRow.id).execution_options(populate_existing=True))
        return [to_record(r, NotificationRecord) for r in rows]

    def due(self, now: datetime, limit: int = 100) -> list[int]:
        q = (select(NotificationRow.id)
             .where(NotificationRow.status.in_(("retrying", "sending")), NotificationRow.next_attempt_at <= now)
             .order_by(NotificationRow.next_attempt_at).limit(limit))
        return list(self.s.scalars(q))

    def finish(self, id: int, *, delivered: bool, now: datetime, error: str | None,
               next_attempt_at: datetime | None) -> NotificationRecord:
        row = self.s.get(NotificationRow, id, populate_existing=True)
        if row is None:
            raise LookupError(f"no notification {id}")
        row.attempts += 1
        row.updated_at = now
        row.last_error = error
        if delivered:
            row.status, row.delivered_at, row.next_attempt_at = "delivered", now, None
        else:
            row.status = "retrying" if next_attempt_at is not None else "failed"
            row.next_attempt_at = next_attempt_at
        self.s.flush()
        return to_record(row, NotificationRecord)

    def newest(self, *, status: Sequence[str] | None = None, model: str | None = None,
               limit: int = 100) -> list[NotificationRecord]:
        q = select(NotificationRow)
        if status:
            q = q.where(NotificationRow.status.in_(list(status)))
        if model:
            q = q.where(NotificationRow.model == model)
        q = q.order_by(NotificationRow.id.desc()).limit(limit)
        return [to_record(r, NotificationRecord) for r in self.s.scalars(q)]
