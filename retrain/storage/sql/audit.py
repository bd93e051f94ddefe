"""The append-only audit trail and the dead letters (input kept for inspection)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from retrain.core.records import AuditEvent, DeadLetter
from retrain.storage.models import AuditRow, DeadLetterRow
from retrain.storage.sql.base import SqlRepository, table, to_record

__all__ = ["SqlAudit", "SqlDeadLetters"]


class SqlAudit(SqlRepository):
    def record(self, at: datetime, kind: str, actor: str, message: str, *, model: str | None = None,
               subject: str | None = None, data: dict[str, Any] | None = None) -> None:
        self.s.add(AuditRow(at=at, model=model, kind=kind, actor=actor, subject=subject, message=message,
                            data=data or {}))
        # The store's hook, in this same transaction (a process's Context: the notification rides the outbox).
        if self.tx.on_audit is not None:
            self.tx.on_audit(self.tx, at, kind, actor, message, model=model, subject=subject, data=data or {})

    def events(self, model: str | None = None, limit: int = 200, kind: str | None = None) -> list[AuditEvent]:
        """The newest ``limit`` events (of a model, of a kind), oldest first."""
        return self.log(model=model, kinds=[kind] if kind else None, limit=limit)

    def log(self, *, model: str | None = None, kinds: Sequence[str] | None = None,
            actor: str | None = None, subject: str | None = None, since: datetime | None = None,
            limit: int = 200) -> list[AuditEvent]:
        """The newest ``limit`` audit events matching every given filter, oldest first."""
        q = select(AuditRow)
        if model:
            q = q.where(AuditRow.model == model)
        if kinds:
            q = q.where(AuditRow.kind.in_(list(kinds)))
        if actor:
            q = q.where(AuditRow.actor == actor)
        if subject:
            q = q.where(AuditRow.subject.startswith(subject))
        if since is not None:
            q = q.where(AuditRow.at >= since)
        rows = self.s.scalars(q.order_by(AuditRow.id.desc()).limit(limit)).all()
        return [to_record(r, AuditEvent) for r in reversed(rows)]


class SqlDeadLetters(SqlRepository):
    def add(self, at: datetime, source: str, reason: str, payload: dict[str, Any], model: str | None = None) -> None:
        self.s.add(DeadLetterRow(at=at, source=source, reason=reason, payload=payload, model=model))

    def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Rows with the columns at, source, reason, payload, model."""
        if rows:
            self.s.execute(table(DeadLetterRow).insert(), rows)

    def newest(self, limit: int = 100) -> list[DeadLetter]:
        rows = self.s.scalars(select(DeadLetterRow).order_by(DeadLetterRow.id.desc()).limit(limit))
        return [to_record(r, DeadLetter) for r in rows]
