"""The store: one unit of work over the repositories of :mod:`retrain.core.ports`.

``Store.tx()`` opens one transaction and yields a :class:`Tx`, whose attributes are the
repositories of every aggregate (runs, requests, versions, ledger, audit...). Everything
a step changes through them (state, audit event, outbox message) commits together or
not at all. The repositories hand back the frozen records of :mod:`retrain.core.records`;
no ORM row leaves ``retrain/storage/``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.orm import Session

from retrain.core.domain import new_id
from retrain.core.ports import AuditHook
from retrain.storage.db import Database
from retrain.storage.sql.audit import SqlAudit, SqlDeadLetters
from retrain.storage.sql.controls import SqlControls, SqlModels
from retrain.storage.sql.decision_state import SqlDecisionState
from retrain.storage.sql.exporter import SqlExporter
from retrain.storage.sql.ledger import SqlLedger
from retrain.storage.sql.monitoring import RATE_BUCKETS, SqlMonitoring
from retrain.storage.sql.notifications import SqlNotifications
from retrain.storage.sql.outbox import SqlOutbox
from retrain.storage.sql.registry import ROUTES_CHANNEL, SqlAliases, SqlVersions
from retrain.storage.sql.requests import SqlDecisions, SqlRequests
from retrain.storage.sql.rollouts import SqlRollouts
from retrain.storage.sql.runs import ACTIVE_RUN_STATES, SqlRuns
from retrain.storage.sql.slots import SqlSlots

__all__ = ["Store", "Tx", "new_id", "ROUTES_CHANNEL", "RATE_BUCKETS", "ACTIVE_RUN_STATES"]


class Store:
    """Opens transactions on one database."""

    def __init__(self, db: Database, *, on_audit: AuditHook | None = None) -> None:
        self.db = db
        #: Called by ``tx.audit.record`` in the same transaction (see :class:`retrain.core.ports.AuditHook`).
        self.on_audit = on_audit

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        with self.db.session() as session:
            yield Tx(session, self.db.is_postgres, on_audit=self.on_audit)


class Tx:
    """One transaction and the repositories that work in it (:class:`retrain.core.ports.UnitOfWork`)."""

    def __init__(self, session: Session, is_postgres: bool, *, on_audit: AuditHook | None = None) -> None:
        self.s = session
        self.pg = is_postgres
        self.on_audit = on_audit
        self.models = SqlModels(self)
        self.controls = SqlControls(self)
        self.audit = SqlAudit(self)
        self.dead_letters = SqlDeadLetters(self)
        self.outbox = SqlOutbox(self)
        self.monitoring = SqlMonitoring(self)
        self.requests = SqlRequests(self)
        self.decisions = SqlDecisions(self)
        self.decision_state = SqlDecisionState(self)
        self.runs = SqlRuns(self)
        self.ledger = SqlLedger(self)
        self.versions = SqlVersions(self)
        self.aliases = SqlAliases(self)
        self.rollouts = SqlRollouts(self)
        self.slots = SqlSlots(self)
        self.exporter = SqlExporter(self)
        self.notifications = SqlNotifications(self)

    def lock(self, name: str) -> None:
        """Serialise a critical section across processes (Postgres advisory lock, held to commit)."""
        if self.pg:
            self.s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(name.encode())})
        else:
            self.controls.lock(name)

    def ping(self) -> None:
        """One round trip to the database (a benchmark's floor)."""
        self.s.execute(text("SELECT 1"))


if TYPE_CHECKING:
    from retrain.core.ports import UnitOfWork

    def _implements_the_ports(tx: Tx) -> UnitOfWork:
        return tx  # mypy checks every repository against its Protocol here
