"""Retraining requests and the decisions on them."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Text, case, cast, func, select, update

from retrain.core.domain import Decision, RetrainRequest, new_id
from retrain.core.records import DecisionRecord, RequestRecord
from retrain.storage.models import DecisionRow, RequestRow
from retrain.storage.sql.base import SqlRepository, maybe, to_record

__all__ = ["SqlRequests", "SqlDecisions"]

#: Columns of a request a step may change; id, model, trigger and creation never change.
_REQUEST_FIELDS = frozenset({"status", "reason", "evidence", "severity", "updated_at", "decision_id", "run_id",
                             "priority"})


class SqlRequests(SqlRepository):
    def open(self, req: RetrainRequest, *, exclusive: bool = True) -> tuple[str, bool]:
        """Create the request, or refresh the open one of the same model and trigger.

        Returns (request id, created). One open request per model and trigger kind keeps
        a trigger from flooding the decision queue; ``exclusive=False`` adds one beside
        it (a load generator's many requests).
        """
        key = f"{req.model}:{req.trigger.value}" if exclusive else None
        row = (self.s.scalars(select(RequestRow).where(RequestRow.open_key == key).with_for_update()).first()
               if key else None)
        if row is not None:
            # An operator's approval or override reason outlives a refresh of the trigger's evidence.
            kept = {k: v for k, v in (row.evidence or {}).items() if k in ("approved_by", "override_reason")}
            row.evidence, row.reason, row.updated_at = {**req.evidence, **kept}, req.reason, req.created_at
            if req.severity is not None:
                row.severity = req.severity.value
            return row.id, False
        self.s.add(RequestRow(
            id=req.id, model=req.model, trigger=req.trigger.value, priority=req.priority, status="open",
            reason=req.reason, evidence=req.evidence, severity=req.severity.value if req.severity else None,
            requested_by=req.requested_by, override_budget=req.override_budget, created_at=req.created_at,
            updated_at=req.created_at, open_key=key,
        ))
        self.s.flush()
        return req.id, True

    def get(self, request_id: str, for_update: bool = False) -> RequestRecord | None:
        q = select(RequestRow).where(RequestRow.id == request_id)
        if for_update:
            q = q.with_for_update()
        return maybe(self.s.scalars(q).first(), RequestRecord)

    def newest(self, model: str | None = None, statuses: Sequence[str] | None = None,
             limit: int = 100) -> list[RequestRecord]:
        """Newest first."""
        q = select(RequestRow)
        if model:
            q = q.where(RequestRow.model == model)
        if statuses:
            q = q.where(RequestRow.status.in_(list(statuses)))
        return [to_record(r, RequestRecord) for r in self.s.scalars(q.order_by(RequestRow.created_at.desc())
                                                                     .limit(limit))]


    def open_count(self, model: str) -> int:
        """How many requests of a model are open (waiting for, or in, a decision)."""
        return int(self.s.scalar(select(func.count()).select_from(RequestRow).where(
            RequestRow.model == model, RequestRow.open_key.is_not(None))) or 0)

    def due_deferred(self, now: datetime) -> list[RequestRecord]:
        q = (select(RequestRow).join(DecisionRow, DecisionRow.id == RequestRow.decision_id)
             .where(RequestRow.status == "deferred", DecisionRow.defer_until <= now))
        return [to_record(r, RequestRecord) for r in self.s.scalars(q)]

    def next_deferred(self, model: str) -> datetime | None:
        """When the model's earliest deferred request is due again."""
        return self.s.scalar(select(func.min(DecisionRow.defer_until)).select_from(RequestRow).join(
            DecisionRow, DecisionRow.id == RequestRow.decision_id).where(
            RequestRow.model == model, RequestRow.status == "deferred"))

    def latest(self, model: str, trigger: str) -> RequestRecord | None:
        """The newest request of a model and trigger kind, whatever its status."""
        return maybe(self.s.scalars(select(RequestRow).where(RequestRow.model == model, RequestRow.trigger == trigger)
                                    .order_by(RequestRow.created_at.desc()).limit(1)).first(), RequestRecord)

    def update(self, request: RequestRecord, **changes: Any) -> RequestRecord:
        """Write ``changes`` (status, evidence, decision_id, run_id...) and return the request as it is now."""
        unknown = set(changes) - _REQUEST_FIELDS
        if unknown:
            raise ValueError(f"a request's {', '.join(sorted(unknown))} cannot be changed")
        self.s.execute(update(RequestRow).where(RequestRow.id == request.id).values(**changes))
        return replace(request, **changes)

    def close(self, request: RequestRecord, status: str, **changes: Any) -> RequestRecord:
        """End the request in ``status``: a new request of its model and trigger may open."""
        unknown = set(changes) - _REQUEST_FIELDS
        if unknown:
            raise ValueError(f"a request's {', '.join(sorted(unknown))} cannot be changed")
        changes = {**changes, "status": status}
        self.s.execute(update(RequestRow).where(RequestRow.id == request.id).values(open_key=None, **changes))
        return replace(request, **changes, open_key=None)

    def get_open_locked(self, request_id: str, lock_name: str) -> tuple[RequestRecord | None, bool]:
        """The request, locked for update, and whether the store's lock ``lock_name`` was taken:
        it is, only when the request is open.

        On Postgres one statement does all of it (the CASE takes the advisory lock for
        an open row only, before the row lock): the decision's lock costs no round
        trip of its own, and a redelivered message for a request decided already
        does not queue behind other decisions.
        """
        if self.pg:
            is_open = RequestRow.status == "open"
            lock = func.pg_advisory_xact_lock(zlib.crc32(lock_name.encode()))
            q = (select(RequestRow, case((is_open, cast(lock, Text)), else_=None))
                 .where(RequestRow.id == request_id).with_for_update())
            hit = self.s.execute(q).first()
            if hit is None:
                return None, False
            return to_record(hit[0], RequestRecord), hit[0].status == "open"
        status = self.s.scalar(select(RequestRow.status).where(RequestRow.id == request_id))
        if status is None:
            return None, False
        if status != "open":
            return self.get(request_id), False
        self.tx.lock(lock_name)
        return self.get(request_id, for_update=True), True


class SqlDecisions(SqlRepository):
    def get(self, decision_id: str) -> DecisionRecord | None:
        return maybe(self.s.get(DecisionRow, decision_id), DecisionRecord)

    def newest(self, model: str | None = None, limit: int = 50) -> list[DecisionRecord]:
        """Newest first."""
        q = select(DecisionRow)
        if model:
            q = q.where(DecisionRow.model == model)
        return [to_record(r, DecisionRecord) for r in self.s.scalars(q.order_by(DecisionRow.decided_at.desc())
                                                                      .limit(limit))]

    def add(self, d: Decision, trigger: str, rules: list[dict[str, Any]]) -> str:
        """Record a decision whose rules the caller has serialised already (it audits the same list)."""
        did = new_id()
        self.s.add(DecisionRow(
            id=did, request_id=d.request_id, model=d.model, trigger=trigger, verdict=d.verdict.value,
            decided_at=d.decided_at, rules=rules, summary=d.summary, defer_until=d.defer_until,
            estimated_cost_usd=d.estimated_cost_usd, detail=d.detail,
        ))
        return did

    def resolve(self, decision_id: str, actor: str, now: datetime) -> None:
        """An operator answered the decision (approved or rejected what waited for approval)."""
        self.s.execute(update(DecisionRow).where(DecisionRow.id == decision_id)
                       .values(resolved_by=actor, resolved_at=now))
