"""The audit hook that puts a notification in the outbox, in the transaction of the audited change.

Which events are worth a message, and the ``[notify]`` section, are pure and live in
:mod:`retrain.core.notices`. This module only knows the task that delivers them
(``retrain.notify``), which the store may not: a process's :class:`retrain.context.Context`
opens its store with ``on_audit=enqueue_notice``, so ``tx.audit.record(...)`` calls it.
A store opened without it (the backtester, benchmarks) writes the audit trail and notifies nobody.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from retrain.core.notices import notice_of
from retrain.core.ports import UnitOfWork
from retrain.tasks import NOTIFY

__all__ = ["enqueue_notice"]


def enqueue_notice(uow: UnitOfWork, at: datetime, kind: str, actor: str, message: str, *, model: str | None,
                   subject: str | None, data: dict[str, Any]) -> None:
    """An :class:`retrain.core.ports.AuditHook`: the event's notification, if it deserves one, rides the outbox."""
    notice = notice_of(kind, actor, message, model=model, subject=subject, data=data)
    if notice is not None:
        uow.outbox.enqueue(NOTIFY, {"v": 1, "event_id": uuid.uuid4().hex, "at": at.isoformat(), **notice}, at)
