"""The store: a unit of work over the tables, speaking in domain terms.

``Store.tx()`` opens one transaction and yields a :class:`Tx` whose methods read
and write rows and hand back plain values or domain dataclasses. Everything a
step changes (state, audit event, outbox message) commits together or not at all.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from retrain.domain import Decision, RetrainRequest, RuleResult, Severity, TriggerKind, Verdict
from retrain.storage.db import Database
from retrain.storage.models import (
    AliasHistoryRow,
    AliasRow,
    AuditRow,
    ControlRow,
    CostRow,
    DeadLetterRow,
    DecisionRow,
    DriftReportRow,
    FeatureSampleRow,
    IngestedBatchRow,
    MetricBucketRow,
    ModelRow,
    OutboxRow,
    RequestRow,
    RunRow,
    ScheduleSlotRow,
    VersionRow,
)

__all__ = ["Store", "Tx", "new_id", "OutboxMessage"]

ACTIVE_RUN_STATES = ("queued", "training", "validating", "shadow", "rollout")


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    task: str
    payload: dict[str, Any]
    priority: int


class Store:
    """Opens transactions on one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def tx(self) -> Iterator["Tx"]:
        with self.db.session() as session:
            yield Tx(session, self.db.is_postgres)


class Tx:
    def __init__(self, session: Session, is_postgres: bool) -> None:
        self.s = session
        self.pg = is_postgres

    # ----------------------------------------------------------------- helpers
    def _insert(self, table):
        return (postgresql.insert if self.pg else sqlite.insert)(table)

    def lock(self, name: str) -> None:
        """Serialise a critical section across processes (Postgres advisory lock, held to commit)."""
        if self.pg:
            self.s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(name.encode())})
        else:
            # SQLite: a write takes the database lock for the rest of the transaction.
            self.s.execute(
                self._insert(ControlRow.__table__)
                .values(key=f"lock:{name}", value={}, updated_at=datetime(2000, 1, 1).astimezone(), updated_by="lock")
                .on_conflict_do_update(index_elements=["key"], set_={"updated_by": "lock"})
            )

    # ----------------------------------------------------------------- models
    def ensure_model(self, name: str, description: str, config: dict, fingerprint: str, now: datetime) -> bool:
        row = self.s.get(ModelRow, name)
        if row is None:
            self.s.add(ModelRow(name=name, description=description, created_at=now, deployed_at=None,
                                paused=False, config=config, config_fingerprint=fingerprint))
            self.audit(now, "config", "system", f"model {name} registered from configuration", model=name,
                       data={"fingerprint": fingerprint})
            return True
        if row.config_fingerprint != fingerprint:
            self.audit(now, "config", "system", f"configuration of {name} changed", model=name,
                       data={"from": row.config_fingerprint, "to": fingerprint})
            row.config, row.config_fingerprint, row.description = config, fingerprint, description
        return False

    def model_row(self, name: str) -> ModelRow | None:
        return self.s.get(ModelRow, name)

    def model_names(self) -> list[str]:
        return list(self.s.scalars(select(ModelRow.name).order_by(ModelRow.name)))

    def set_paused(self, model: str | None, paused: bool, actor: str, reason: str, now: datetime) -> None:
        if model is None:
            self.set_control("pause_all", {"paused": paused, "reason": reason}, actor, now)
        else:
            row = self.s.get(ModelRow, model)
            if row is None:
                raise KeyError(model)
            row.paused = paused
        what = "paused" if paused else "resumed"
        self.audit(now, "admin", actor, f"automatic retraining {what} for {model or 'all models'}: {reason}", model=model)

    def set_control(self, key: str, value: dict, actor: str, now: datetime) -> None:
        row = self.s.get(ControlRow, key)
        if row is None:
            self.s.add(ControlRow(key=key, value=value, updated_at=now, updated_by=actor))
        else:
            row.value, row.updated_at, row.updated_by = value, now, actor

    def control(self, key: str) -> dict | None:
        row = self.s.get(ControlRow, key)
        return row.value if row else None

    # ----------------------------------------------------------------- audit
    def audit(self, at: datetime, kind: str, actor: str, message: str, *, model: str | None = None,
              subject: str | None = None, data: dict | None = None) -> None:
        self.s.add(AuditRow(at=at, model=model, kind=kind, actor=actor, subject=subject, message=message,
                            data=data or {}))

    def audit_events(self, model: str | None = None, limit: int = 200, kind: str | None = None) -> list[AuditRow]:
        q = select(AuditRow)
        if model:
            q = q.where(AuditRow.model == model)
        if kind:
            q = q.where(AuditRow.kind == kind)
        return list(reversed(self.s.scalars(q.order_by(AuditRow.id.desc()).limit(limit)).all()))

    def dead_letter(self, at: datetime, source: str, reason: str, payload: dict, model: str | None = None) -> None:
        self.s.add(DeadLetterRow(at=at, source=source, reason=reason, payload=payload, model=model))

    def dead_letters_bulk(self, rows: list[dict]) -> None:
        if rows:
            self.s.execute(DeadLetterRow.__table__.insert(), rows)

    def dead_letters(self, limit: int = 100) -> list[DeadLetterRow]:
        return list(self.s.scalars(select(DeadLetterRow).order_by(DeadLetterRow.id.desc()).limit(limit)))

    # ----------------------------------------------------------------- outbox
    def enqueue(self, task: str, payload: dict, now: datetime, priority: int = 0) -> None:
        self.s.add(OutboxRow(task=task, payload=payload, priority=priority, created_at=now, published_at=None))

    def pending_outbox(self, limit: int = 100, older_than: datetime | None = None) -> list[OutboxMessage]:
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

    def prune_outbox(self, before: datetime) -> int:
        res = self.s.execute(delete(OutboxRow).where(OutboxRow.published_at < before))
        return res.rowcount or 0

    # ----------------------------------------------------------------- ingest
    def claim_batch(self, batch_id: str, now: datetime, accepted: int, rejected: int) -> bool:
        """Record a batch id; False if it was seen before (a redelivery)."""
        res = self.s.execute(
            self._insert(IngestedBatchRow.__table__)
            .values(batch_id=batch_id, received_at=now, accepted=accepted, rejected=rejected)
            .on_conflict_do_nothing(index_elements=["batch_id"])
        )
        return (res.rowcount or 0) == 1

    def add_buckets(self, rows: list[dict]) -> None:
        if not rows:
            return
        t = MetricBucketRow.__table__
        ins = self._insert(t)
        cols = ("n", "tp", "fp", "tn", "fn", "ret_sum", "ret_sq_sum", "unlabelled")
        stmt = ins.on_conflict_do_update(
            index_elements=["model", "version", "minute"],
            set_={c: getattr(t.c, c) + getattr(ins.excluded, c) for c in cols},
        )
        self.s.execute(stmt, rows)

    def add_samples(self, rows: list[dict]) -> None:
        if rows:
            self.s.execute(FeatureSampleRow.__table__.insert(), rows)

    def buckets(self, model: str, version: str | None, since: datetime, until: datetime | None = None) -> list[MetricBucketRow]:
        q = select(MetricBucketRow).where(MetricBucketRow.model == model, MetricBucketRow.minute >= since)
        if version is not None:
            q = q.where(MetricBucketRow.version == version)
        if until is not None:
            q = q.where(MetricBucketRow.minute < until)
        return list(self.s.scalars(q.order_by(MetricBucketRow.minute)))

    def samples(self, model: str, since: datetime | None = None, until: datetime | None = None,
                labelled: bool = True, limit: int | None = None) -> list[FeatureSampleRow]:
        q = select(FeatureSampleRow).where(FeatureSampleRow.model == model)
        if since is not None:
            q = q.where(FeatureSampleRow.ts >= since)
        if until is not None:
            q = q.where(FeatureSampleRow.ts < until)
        if labelled:
            q = q.where(FeatureSampleRow.label.is_not(None))
        q = q.order_by(FeatureSampleRow.ts, FeatureSampleRow.id)
        if limit:
            q = q.limit(limit)
        return list(self.s.scalars(q))

    def prune_samples(self, model: str, keep: int) -> int:
        cutoff = self.s.scalar(
            select(FeatureSampleRow.id).where(FeatureSampleRow.model == model)
            .order_by(FeatureSampleRow.id.desc()).offset(keep).limit(1)
        )
        if cutoff is None:
            return 0
        res = self.s.execute(delete(FeatureSampleRow).where(FeatureSampleRow.model == model, FeatureSampleRow.id <= cutoff))
        return res.rowcount or 0

    # ----------------------------------------------------------------- requests
    def open_request(self, req: RetrainRequest) -> tuple[str, bool]:
        """Create the request, or refresh the open one of the same model and trigger.

        Returns (request id, created). One open request per model and trigger kind keeps
        a trigger from flooding the decision queue.
        """
        key = f"{req.model}:{req.trigger.value}"
        row = self.s.scalars(select(RequestRow).where(RequestRow.open_key == key).with_for_update()).first()
        if row is not None:
            row.evidence, row.reason, row.updated_at = req.evidence, req.reason, req.created_at
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

    def request(self, request_id: str, for_update: bool = False) -> RequestRow | None:
        q = select(RequestRow).where(RequestRow.id == request_id)
        if for_update:
            q = q.with_for_update()
        return self.s.scalars(q).first()

    @staticmethod
    def to_request(row: RequestRow) -> RetrainRequest:
        return RetrainRequest(
            id=row.id, model=row.model, trigger=TriggerKind(row.trigger), created_at=row.created_at,
            reason=row.reason, evidence=row.evidence or {}, severity=Severity(row.severity) if row.severity else None,
            requested_by=row.requested_by, override_budget=row.override_budget,
        )

    def requests(self, model: str | None = None, statuses: Sequence[str] | None = None, limit: int = 100) -> list[RequestRow]:
        q = select(RequestRow)
        if model:
            q = q.where(RequestRow.model == model)
        if statuses:
            q = q.where(RequestRow.status.in_(list(statuses)))
        return list(self.s.scalars(q.order_by(RequestRow.created_at.desc()).limit(limit)))

    def due_deferred(self, now: datetime) -> list[RequestRow]:
        q = (select(RequestRow).join(DecisionRow, DecisionRow.id == RequestRow.decision_id)
             .where(RequestRow.status == "deferred", DecisionRow.defer_until <= now))
        return list(self.s.scalars(q))

    def close_request(self, row: RequestRow, status: str) -> None:
        row.status = status
        row.open_key = None

    # ----------------------------------------------------------------- decisions
    def record_decision(self, d: Decision, trigger: str) -> str:
        did = new_id()
        self.s.add(DecisionRow(
            id=did, request_id=d.request_id, model=d.model, trigger=trigger, verdict=d.verdict.value,
            decided_at=d.decided_at, rules=[r.to_json() for r in d.rules], summary=d.summary,
            defer_until=d.defer_until, estimated_cost_usd=d.estimated_cost_usd, detail=d.detail,
        ))
        return did

    def decision(self, decision_id: str) -> DecisionRow | None:
        return self.s.get(DecisionRow, decision_id)

    def decisions(self, model: str | None = None, limit: int = 50) -> list[DecisionRow]:
        q = select(DecisionRow)
        if model:
            q = q.where(DecisionRow.model == model)
        return list(self.s.scalars(q.order_by(DecisionRow.decided_at.desc()).limit(limit)))

    @staticmethod
    def to_decision(row: DecisionRow) -> Decision:
        return Decision(
            request_id=row.request_id, model=row.model, verdict=Verdict(row.verdict), decided_at=row.decided_at,
            rules=tuple(RuleResult.from_json(r) for r in row.rules), defer_until=row.defer_until,
            estimated_cost_usd=row.estimated_cost_usd, detail=row.detail or {},
        )

    # ----------------------------------------------------------------- runs
    def create_run(self, *, model: str, request_id: str, decision_id: str, trigger: str, priority: int,
                   now: datetime) -> str:
        rid = new_id()
        self.s.add(RunRow(id=rid, model=model, request_id=request_id, decision_id=decision_id, trigger=trigger,
                          priority=priority, state="queued", attempt=0, created_at=now, usage={}))
        return rid

    def run(self, run_id: str, for_update: bool = False) -> RunRow | None:
        q = select(RunRow).where(RunRow.id == run_id)
        if for_update:
            q = q.with_for_update()
        return self.s.scalars(q).first()

    def runs(self, model: str | None = None, states: Sequence[str] | None = None, limit: int = 100) -> list[RunRow]:
        q = select(RunRow)
        if model:
            q = q.where(RunRow.model == model)
        if states:
            q = q.where(RunRow.state.in_(list(states)))
        return list(self.s.scalars(q.order_by(RunRow.created_at.desc()).limit(limit)))

    def active_run(self, model: str) -> RunRow | None:
        return self.s.scalars(select(RunRow).where(RunRow.model == model, RunRow.state.in_(ACTIVE_RUN_STATES))
                              .order_by(RunRow.created_at).limit(1)).first()

    def run_starts(self, model: str, since: datetime) -> list[datetime]:
        q = select(RunRow.created_at).where(RunRow.model == model, RunRow.created_at >= since,
                                            RunRow.state != "cancelled")
        return list(self.s.scalars(q.order_by(RunRow.created_at)))

    def runs_started_since(self, since: datetime) -> int:
        return self.s.scalar(select(func.count()).select_from(RunRow).where(
            RunRow.created_at >= since, RunRow.state != "cancelled")) or 0

    def count_training(self, now: datetime) -> int:
        return self.s.scalar(select(func.count()).select_from(RunRow).where(
            RunRow.state == "training", RunRow.lease_expires_at > now)) or 0

    def expired_leases(self, now: datetime) -> list[RunRow]:
        return list(self.s.scalars(select(RunRow).where(
            RunRow.state.in_(("training", "validating")), RunRow.lease_expires_at < now)))

    # ----------------------------------------------------------------- costs
    def add_cost(self, run_id: str, model: str, kind: str, amount: float, at: datetime, detail: dict | None = None) -> None:
        self.s.add(CostRow(run_id=run_id, model=model, kind=kind, amount_usd=float(amount), at=at,
                           day=at.strftime("%Y-%m-%d"), month=at.strftime("%Y-%m"), detail=detail or {}))

    def spend(self, *, day: str | None = None, month: str | None = None, model: str | None = None) -> float:
        q = select(func.coalesce(func.sum(CostRow.amount_usd), 0.0))
        if day:
            q = q.where(CostRow.day == day)
        if month:
            q = q.where(CostRow.month == month)
        if model:
            q = q.where(CostRow.model == model)
        return float(self.s.scalar(q) or 0.0)

    def held_reservation(self, run_id: str) -> float:
        """What a run still holds in reservations (reservations plus their releases)."""
        q = select(func.coalesce(func.sum(CostRow.amount_usd), 0.0)).where(
            CostRow.run_id == run_id, CostRow.kind.in_(("reservation", "release")))
        return float(self.s.scalar(q) or 0.0)

    def run_costs(self, model: str, limit: int = 10) -> list[float]:
        q = (select(RunRow.usage).where(RunRow.model == model, RunRow.state == "done")
             .order_by(RunRow.finished_at.desc()).limit(limit))
        out = []
        for usage in self.s.scalars(q):
            if usage and "total_usd" in usage:
                out.append(float(usage["total_usd"]))
        return list(reversed(out))

    def cost_rows(self, since_month: str | None = None) -> list[CostRow]:
        q = select(CostRow)
        if since_month:
            q = q.where(CostRow.month >= since_month)
        return list(self.s.scalars(q.order_by(CostRow.at)))

    # ----------------------------------------------------------------- versions & aliases
    def versions(self, model: str, include_deleted: bool = True) -> list[VersionRow]:
        q = select(VersionRow).where(VersionRow.model == model)
        if not include_deleted:
            q = q.where(VersionRow.deleted_at.is_(None))
        return list(self.s.scalars(q.order_by(VersionRow.major, VersionRow.minor, VersionRow.patch)))

    def version(self, model: str, version: str) -> VersionRow | None:
        return self.s.scalars(select(VersionRow).where(VersionRow.model == model, VersionRow.version == version)).first()

    def latest_version(self, model: str) -> VersionRow | None:
        return self.s.scalars(select(VersionRow).where(VersionRow.model == model)
                              .order_by(VersionRow.major.desc(), VersionRow.minor.desc(), VersionRow.patch.desc())
                              .limit(1)).first()

    def add_version(self, **fields: Any) -> VersionRow:
        row = VersionRow(**fields)
        self.s.add(row)
        self.s.flush()
        return row

    def alias(self, model: str, alias: str) -> str | None:
        row = self.s.get(AliasRow, (model, alias))
        return row.version if row else None

    def aliases(self, model: str) -> dict[str, AliasRow]:
        return {r.alias: r for r in self.s.scalars(select(AliasRow).where(AliasRow.model == model))}

    def move_alias(self, model: str, alias: str, version: str | None, *, actor: str, reason: str, now: datetime,
                   share_pct: float = 0.0) -> str | None:
        """Point an alias at a version (None clears it); the row lock makes the move atomic."""
        row = self.s.scalars(select(AliasRow).where(AliasRow.model == model, AliasRow.alias == alias)
                             .with_for_update()).first()
        old = row.version if row else None
        if row is None:
            self.s.add(AliasRow(model=model, alias=alias, version=version, updated_at=now, share_pct=share_pct))
        else:
            row.version, row.updated_at, row.share_pct = version, now, share_pct
        if old != version:
            self.s.add(AliasHistoryRow(model=model, alias=alias, from_version=old, to_version=version, at=now,
                                       actor=actor, reason=reason))
        return old

    def alias_history(self, model: str, limit: int = 200) -> list[AliasHistoryRow]:
        return list(self.s.scalars(select(AliasHistoryRow).where(AliasHistoryRow.model == model)
                                   .order_by(AliasHistoryRow.id).limit(limit)))

    # ----------------------------------------------------------------- drift & schedule
    def add_drift_report(self, model: str, version: str | None, at: datetime, drifted: bool, report: dict) -> None:
        self.s.add(DriftReportRow(model=model, version=version, at=at, drifted=drifted, report=report))

    def latest_drift_report(self, model: str) -> DriftReportRow | None:
        return self.s.scalars(select(DriftReportRow).where(DriftReportRow.model == model)
                              .order_by(DriftReportRow.id.desc()).limit(1)).first()

    def claim_slot(self, model: str, slot: str, now: datetime) -> bool:
        """True the first time a (model, slot) is claimed; a second beat gets False."""
        res = self.s.execute(self._insert(ScheduleSlotRow.__table__)
                             .values(model=model, slot=slot, fired_at=now, request_id=None)
                             .on_conflict_do_nothing(index_elements=["model", "slot"]))
        return (res.rowcount or 0) == 1
