"""The transactional outbox's relay: publish committed follow-up messages, then mark them.

A step writes "enqueue X" in the same transaction as its state change. Right after
the commit the task relays what it wrote; a periodic relay picks up anything a
crash left behind. Publishing is at least once: every step is idempotent against
a repeated message.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from retrain.core.records import OutboxMessage
from retrain.storage.repo import Store

__all__ = ["relay", "prune_published", "Publisher", "KEEP_PUBLISHED"]

Publisher = Callable[[OutboxMessage], None]

#: Published rows are kept this long (to see what was sent), then deleted by the periodic relay.
KEEP_PUBLISHED = timedelta(days=1)


def relay(store: Store, publish: Publisher, now: datetime, *, min_age: timedelta | None = None,
          limit: int = 500) -> int:
    sent = 0
    while True:
        with store.tx() as tx:
            batch = tx.outbox.pending(limit=min(limit - sent, 100), older_than=now - min_age if min_age else None)
            if not batch:
                return sent
            done = []
            for msg in batch:
                publish(msg)
                done.append(msg.id)
            tx.outbox.mark_published(done, now)
        sent += len(done)
        if sent >= limit:
            return sent


def prune_published(store: Store, now: datetime, keep: timedelta = KEEP_PUBLISHED) -> int:
    """Delete messages published more than ``keep`` ago; unpublished ones are never touched."""
    with store.tx() as tx:
        return tx.outbox.prune(now - keep)
