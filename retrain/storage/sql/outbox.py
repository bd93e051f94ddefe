"""The transactional outbox: messages committed with the state change that asks for them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from retrain.core.records import OutboxMessage
from retrain.storage.models import OutboxRow
from retrain.storage.sql.base import SqlRepository, rowcount

__all__ = ["SqlOutbox"]


class SqlOutbox(SqlRepository):
    def enqueue(self, task: str, payload: dict[str, Any], now: datetime, priority: int = 0) -> None:
        self.s.add(OutboxRow(task=task, payload=payload, priority=priority, created_at=now, published_at=None))

    def pending(self, limit: int = 100, older_than: datetime | None = None) -> list[OutboxMessage]:
        """Unpublished messages, oldest first; on Postgres rows another publisher holds are skipped."""
        q = select(OutboxRow).where(OutboxRow.published_at.is_(None))
        if older_than is not None:
            q = q.where(OutboxRow.created_at <= older_than)
        q = q.order_by(OutboxRow.id).limit(limit)
        if self.pg:
            q = q.with_for_update(skip_locked=True)
        return [OutboxMessage(r.id, r.task, r.payload, r.priority) for r in self.s.scalars(q)]

    def mark_published(self, ids: Sequence[int], now: datetime) -> None:
        if ids:
            self.s.execute(update(OutboxRow).where(OutboxRow.id.in_(list(ids))).values(published_at=now))

    def prune(self, before: datetime) -> int:
        return rowcount(self.s.execute(delete(OutboxRow).where(OutboxRow.published_at < before)))
