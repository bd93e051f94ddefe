"""The store: a unit of work over the tables, speaking in domain terms.

``Store.tx()`` opens one transaction and yields a :class:`Tx` whose methods read
and write rows and hand back plain values or domain dataclasses. Everything a
step changes (state, audit event, outbox message) commits together or not at all.
"""

from __future__ import annotations

import hashlib
import typing
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, Text, and_, case, cast, delete, func, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import Session

from retrain.domain import Decision, RetrainRequest, Severity, TriggerKind
from retrain.errors import UnknownModelError
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
    RolloutRow,
    RunRow,
    ScheduleSlotRow,
    VersionRow,
)

#: The Postgres channel on which every alias move is announced (payload: the model's name).
ROUTES_CHANNEL = "retrain_routes"

__all__ = ["Store", "Tx", "new_id", "OutboxMessage", "DecisionState", "ROUTES_CHANNEL"]

ACTIVE_RUN_STATES = ("queued", "training", "validating", "shadow", "rollout")


def rowcount(res: Result[Any]) -> int:
    """The rows an UPDATE, DELETE or INSERT matched (0 when the driver does not say)."""
    # Session.execute types its result as Result; for these statements it is a CursorResult.
    return typing.cast("CursorResult[Any]", res).rowcount or 0


def _table(row: type[Any]) -> Table:
    # The declarative __table__ is typed as a FromClause; for our mapped rows it is a Table.
    return typing.cast(Table, row.__table__)


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
    def tx(self) -> Iterator[Tx]:
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
                known = ", ".join(self.model_names()) or "none"
                raise UnknownModelError(f"unknown model {model!r}; configured: {known}")
            row.paused = paused
        what = "paused" if paused else "resumed"
        self.audit(now, "admin", actor, f"automatic retraining {what} for {model or 'all models'}: {reason}",
                   model=model)

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
            self.s.execute(_table(DeadLetterRow).insert(), rows)

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
        return rowcount(res)

    # ----------------------------------------------------------------- ingest
    def claim_batch(self, batch_id: str, now: datetime, accepted: int, rejected: int) -> bool:
        """Record a batch id; False if it was seen before (a redelivery)."""
        res = self.s.execute(
            self._insert(IngestedBatchRow.__table__)
            .values(batch_id=batch_id, received_at=now, accepted=accepted, rejected=rejected)
            .on_conflict_do_nothing(index_elements=["batch_id"])
        )
        return (rowcount(res)) == 1

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
            self.s.execute(_table(FeatureSampleRow).insert(), rows)

    def buckets(self, model: str, version: str | None, since: datetime,
                until: datetime | None = None) -> list[MetricBucketRow]:
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
        res = self.s.execute(delete(FeatureSampleRow).where(FeatureSampleRow.model == model,
                                                            FeatureSampleRow.id <= cutoff))
        return rowcount(res)

    # ----------------------------------------------------------------- requests
    def open_request(self, req: RetrainRequest) -> tuple[str, bool]:
        """Create the request, or refresh the open one of the same model and trigger.

        Returns (request id, created). One open request per model and trigger kind keeps
        a trigger from flooding the decision queue.
        """
        key = f"{req.model}:{req.trigger.value}"
        row = self.s.scalars(select(RequestRow).where(RequestRow.open_key == key).with_for_update()).first()
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

    def requests(self, model: str | None = None, statuses: Sequence[str] | None = None,
                 limit: int = 100) -> list[RequestRow]:
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
    def decision(self, decision_id: str) -> DecisionRow | None:
        return self.s.get(DecisionRow, decision_id)

    def decisions(self, model: str | None = None, limit: int = 50) -> list[DecisionRow]:
        q = select(DecisionRow)
        if model:
            q = q.where(DecisionRow.model == model)
        return list(self.s.scalars(q.order_by(DecisionRow.decided_at.desc()).limit(limit)))

    # ----------------------------------------------------------------- runs
    def create_run(self, *, model: str, request_id: str, decision_id: str, trigger: str, priority: int,
                   now: datetime) -> str:
        """A new queued run: :func:`retrain.lifecycle.new_run`, the one place a run's state is written."""
        from retrain.lifecycle import new_run  # the lifecycle is built on this store

        return new_run(self, model=model, request_id=request_id, decision_id=decision_id, trigger=trigger,
                       priority=priority, now=now)

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

    def expired_leases(self, now: datetime) -> list[RunRow]:
        return list(self.s.scalars(select(RunRow).where(
            RunRow.state.in_(("training", "validating")), RunRow.lease_expires_at < now)))

    # ----------------------------------------------------------------- costs
    def add_cost(self, run_id: str, model: str, kind: str, amount: float, at: datetime,
                 detail: dict[str, Any] | None = None) -> None:
        """Append a ledger row. A run's release and actual rows are booked to the day and month
        of its reservation (``at`` keeps when they happened): the reservation *becomes* the
        actual cost in the period whose budget admitted it, so a run that finishes after
        midnight neither leaves yesterday overstated nor today negative."""
        day, month = at.strftime("%Y-%m-%d"), at.strftime("%Y-%m")
        if kind in ("release", "actual"):
            booked = self.reservation_period(run_id)
            if booked is not None:
                day, month = booked
        self.s.add(CostRow(run_id=run_id, model=model, kind=kind, amount_usd=float(amount), at=at,
                           day=day, month=month, detail=detail or {}))

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
        return self.s.scalars(select(VersionRow).where(VersionRow.model == model,
                                                       VersionRow.version == version)).first()

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
        if self.pg:
            # Delivered at commit, never for a rolled-back move: routers listening follow at once.
            self.s.execute(text("SELECT pg_notify(:channel, :model)"), {"channel": ROUTES_CHANNEL, "model": model})
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
        return (rowcount(res)) == 1

    # ----------------------------------------------------------------- registry (retrain.registry)
    def version_models(self) -> list[str]:
        """Every model that has at least one version row, tombstones included."""
        return list(self.s.scalars(select(VersionRow.model).distinct().order_by(VersionRow.model)))

    def live_version_refs(self) -> list[tuple[str, str, str, dict]]:
        """(model, version, artifact sha256, metrics) of every version not deleted, all models."""
        q = select(VersionRow.model, VersionRow.version, VersionRow.artifact_sha256, VersionRow.metrics).where(
            VersionRow.deleted_at.is_(None))
        return [(m, v, sha, metrics or {}) for m, v, sha, metrics in self.s.execute(q)]

    def alias_set_at(self, model: str, alias: str, at: datetime) -> AliasHistoryRow | None:
        """The last move of ``alias`` at or before ``at``: what it pointed to then (None: never set yet)."""
        return self.s.scalars(select(AliasHistoryRow).where(
            AliasHistoryRow.model == model, AliasHistoryRow.alias == alias, AliasHistoryRow.at <= at)
            .order_by(AliasHistoryRow.at.desc(), AliasHistoryRow.id.desc()).limit(1)).first()

    def alias_names(self, model: str) -> list[str]:
        """Every alias a model has or ever had."""
        q = select(AliasHistoryRow.alias).where(AliasHistoryRow.model == model).union(
            select(AliasRow.alias).where(AliasRow.model == model))
        return sorted(self.s.scalars(q))

    def alias_moves(self, model: str, *, alias: str | None = None, until: datetime | None = None,
                    limit: int = 200) -> list[AliasHistoryRow]:
        """The newest ``limit`` alias moves (up to ``until``), oldest first."""
        q = select(AliasHistoryRow).where(AliasHistoryRow.model == model)
        if alias is not None:
            q = q.where(AliasHistoryRow.alias == alias)
        if until is not None:
            q = q.where(AliasHistoryRow.at <= until)
        rows = self.s.scalars(q.order_by(AliasHistoryRow.at.desc(), AliasHistoryRow.id.desc()).limit(limit))
        return list(reversed(rows.all()))

    def active_run_versions(self, model: str) -> dict[str, str]:
        """Candidate version -> run id, for the model's runs still in flight (validating, shadow, rollout)."""
        q = select(RunRow.candidate_version, RunRow.id).where(
            RunRow.model == model, RunRow.state.in_(ACTIVE_RUN_STATES), RunRow.candidate_version.is_not(None))
        return {v: rid for v, rid in self.s.execute(q) if v is not None}  # None is filtered out by q already

    # ----------------------------------------------------------------- decision state & ledger (retrain.steps.decide)
    def actual_costs(self, model: str, limit: int = 10) -> list[float]:
        """The model's last ``limit`` measured run costs from the ledger, oldest first (the estimate's input)."""
        q = (select(CostRow.amount_usd).where(CostRow.model == model, CostRow.kind == "actual")
             .order_by(CostRow.id.desc()).limit(limit))
        return [float(v) for v in reversed(self.s.scalars(q).all())]

    def traffic_since(self, model: str, since: datetime, version: str | None = None) -> tuple[int, int, int]:
        """(labelled results, correct ones, unlabelled predictions) in the metric buckets since ``since``."""
        b = MetricBucketRow
        q = select(func.coalesce(func.sum(b.n), 0), func.coalesce(func.sum(b.tp + b.tn), 0),
                   func.coalesce(func.sum(b.unlabelled), 0)).where(b.model == model, b.minute >= since)
        if version is not None:
            q = q.where(b.version == version)
        n, correct, unlabelled = self.s.execute(q).one()
        return int(n), int(correct), int(unlabelled)

    def served(self, model: str, since: datetime, until: datetime) -> tuple[int, int, datetime | None, datetime | None]:
        """(predictions served, labelled or not; distinct minutes; first and last minute) in the newest
        ``RATE_BUCKETS`` metric buckets between ``since`` and ``until``: what
        :func:`retrain.policy.serving_rate` reads."""
        b = MetricBucketRow
        newest = (select(b.minute.label("minute"), (b.n + b.unlabelled).label("served"))
                  .where(b.model == model, b.minute >= since, b.minute <= until)
                  .order_by(b.minute.desc()).limit(RATE_BUCKETS).subquery("newest"))
        served, minutes, first, last = self.s.execute(select(
            func.coalesce(func.sum(newest.c.served), 0), func.count(func.distinct(newest.c.minute)),
            func.min(newest.c.minute), func.max(newest.c.minute))).one()
        return int(served), int(minutes), first, last

    def reservation_period(self, run_id: str) -> tuple[str, str] | None:
        """(day, month) the run's reservation was booked to, if it has one."""
        row = self.s.execute(select(CostRow.day, CostRow.month).where(
            CostRow.run_id == run_id, CostRow.kind == "reservation").order_by(CostRow.id).limit(1)).first()
        return (row[0], row[1]) if row else None

    def ledger_totals(self, since_month: str) -> list[tuple[str, str, str, float, int]]:
        """(day, model, kind, sum, rows) of the ledger since the start of ``since_month``."""
        c = CostRow
        q = (select(c.day, c.model, c.kind, func.sum(c.amount_usd), func.count()).where(c.month >= since_month)
             .group_by(c.day, c.model, c.kind).order_by(c.day, c.model, c.kind))
        return [(d, m, k, float(v or 0.0), int(n)) for d, m, k, v, n in self.s.execute(q)]

    def audit_log(self, *, model: str | None = None, kinds: Sequence[str] | None = None,
                  actor: str | None = None, subject: str | None = None, since: datetime | None = None,
                  limit: int = 200) -> list[AuditRow]:
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
        return list(reversed(self.s.scalars(q.order_by(AuditRow.id.desc()).limit(limit)).all()))

    def report_resources(self, node: str, reading: dict, now: datetime) -> None:
        """A training node's free memory, CPU load and free disk, for the decision's resource rule."""
        self.set_control(f"resources:{node}", {**reading, "at": now.isoformat()}, node, now)

    def open_request_locked(self, request_id: str, name: str) -> tuple[RequestRow | None, bool]:
        """The request row, locked for update, and whether :meth:`lock` ``name`` was taken:
        it is, only when the request is open.

        On Postgres one statement does all of it (the CASE takes the advisory lock for
        an open row only, before the row lock): the decision's lock costs no round
        trip of its own, and a redelivered message for a request decided already
        does not queue behind other decisions.
        """
        if self.pg:
            is_open = RequestRow.status == "open"
            lock = func.pg_advisory_xact_lock(zlib.crc32(name.encode()))
            q = (select(RequestRow, case((is_open, cast(lock, Text)), else_=None))
                 .where(RequestRow.id == request_id).with_for_update())
            hit = self.s.execute(q).first()
            if hit is None:
                return None, False
            return hit[0], hit[0].status == "open"
        status = self.s.scalar(select(RequestRow.status).where(RequestRow.id == request_id))
        if status is None:
            return None, False
        if status != "open":
            return self.request(request_id), False
        self.lock(name)
        row = self.request(request_id, for_update=True)
        return row, True

    def set_floor_clock(self, model: str, since: datetime | None, now: datetime) -> None:
        """Start (``since``) or stop (None) the time a model is known to be below its accuracy floor.

        The decision writes it only when that changes; a run started or ended after
        ``since`` makes :meth:`decision_snapshot` ignore it.
        """
        self.set_control(_floor_key(model), {"model": model, "since": since.isoformat() if since else None},
                         "policy", now)

    def add_decision(self, d: Decision, trigger: str, rules: list[dict]) -> str:
        """Record a decision whose rules the caller has serialised already (it audits the same list)."""
        did = new_id()
        self.s.add(DecisionRow(
            id=did, request_id=d.request_id, model=d.model, trigger=trigger, verdict=d.verdict.value,
            decided_at=d.decided_at, rules=rules, summary=d.summary, defer_until=d.defer_until,
            estimated_cost_usd=d.estimated_cost_usd, detail=d.detail,
        ))
        return did

    def decision_snapshot(self, model: str, *, now: datetime, history: timedelta, window: timedelta,
                          report_max_age: timedelta, rate_window: timedelta = timedelta(days=30)
                          ) -> DecisionState:
        """Everything the decision reads about one model and the world, in two statements.

        Traffic is read from the model's newest ``RATE_BUCKETS`` metric buckets (all
        versions, labelled or not) within ``rate_window``: a day of a busy model, a
        month of a daily one. The floor clock (:meth:`set_floor_clock`) counts only
        when it started after the model's last run began or ended.

        The statements are built once per process (``_decision_sql``) with bind
        parameters, so a decision pays neither for building nor for compiling
        them; the decision step runs under its lock, so every round trip saved
        is throughput across all workers.
        """
        one, many = _decision_sql()
        midnight = datetime(now.year, now.month, now.day, tzinfo=now.tzinfo)
        params = {"model": model, "since": now - history, "midnight": midnight, "rate_since": now - rate_window,
                  "now": now, "floor_key": _floor_key(model),
                  "window": now - window, "day": now.strftime("%Y-%m-%d"), "month": now.strftime("%Y-%m"),
                  "reports": now - report_max_age}
        r = self.s.execute(one, params).one()
        starts: list[datetime] = []
        active: str | None = None
        costs: list[float] = []
        reports: list[dict] = []
        for tag, key, at, state, amount, value in self.s.execute(many, params):
            if tag == "run":
                if state == "cancelled":
                    continue
                if at >= params["since"]:
                    starts.append(at)
                if active is None and state in ACTIVE_RUN_STATES:
                    active = key
            elif tag == "cost":
                costs.append(float(amount))
            elif value is not None:
                reports.append({**(value if isinstance(value, dict) else {}), "node": key.partition(":")[2]})
        costs.reverse()  # newest first from the query; the estimate wants oldest first
        baseline = ((r.production_metrics or {}).get("baseline") or {}).get("accuracy")
        clock = (r.floor_clock or {}).get("since")
        below_since = datetime.fromisoformat(clock) if isinstance(clock, str) else None
        if below_since is not None and r.last_run_at is not None and below_since <= r.last_run_at:
            below_since = None  # a retraining since: the clock starts again at the next finding
        return DecisionState(
            paused=bool(r.paused), deployed_at=r.deployed_at, known_model=r.known_model is not None,
            globally_paused=bool((r.pause_all or {}).get("paused", False)), production=r.production,
            production_baseline=baseline, runs_today=int(r.runs_today or 0),
            spend_today=float(r.spend_today), spend_month=float(r.spend_month),
            model_spend_today=float(r.model_spend_today), model_spend_month=float(r.model_spend_month),
            served=int(r.rate_served), served_minutes=int(r.rate_minutes), served_first=r.rate_first,
            served_last=r.rate_last, returns_n=int(r.ret_n), returns_sq_sum=float(r.ret_sq),
            below_floor_since=below_since, window_n=int(r.win_n),
            window_correct=int(r.win_correct), run_starts=starts, active_run=active, actual_costs=costs,
            resource_reports=reports)

    # ----------------------------------------------------------------- rollouts (retrain.steps.rollout_step)
    def add_rollout(self, **fields: Any) -> RolloutRow:
        row = RolloutRow(**fields)
        self.s.add(row)
        self.s.flush()
        return row

    def rollout(self, run_id: str, for_update: bool = False) -> RolloutRow | None:
        q = select(RolloutRow).where(RolloutRow.run_id == run_id)
        if for_update:
            q = q.with_for_update()
        return self.s.scalars(q).first()

    def active_rollouts(self, model: str | None = None) -> list[RolloutRow]:
        """Rollouts still in shadow or in a canary stage, oldest first."""
        q = select(RolloutRow).where(RolloutRow.phase.in_(("shadow", "canary")))
        if model is not None:
            q = q.where(RolloutRow.model == model)
        return list(self.s.scalars(q.order_by(RolloutRow.started_at)))

    def rollouts(self, model: str, limit: int = 20) -> list[RolloutRow]:
        """The model's rollouts, newest first."""
        return list(self.s.scalars(select(RolloutRow).where(RolloutRow.model == model)
                                   .order_by(RolloutRow.started_at.desc()).limit(limit)))

    def shadow_rows(self, model: str, version: str, since: datetime, after_id: int,
                    limit: int) -> list[tuple[int, list, int, int, float | None]]:
        """(id, features, label, prediction, return) of labelled sample rows served by ``version`` at or
        after ``since`` with an id above ``after_id``, in id order: what a shadow has not scored yet."""
        f = FeatureSampleRow
        q = (select(f.id, f.features, f.label, f.prediction, f.ret)
             .where(f.model == model, f.version == version, f.ts >= since, f.id > after_id, f.label.is_not(None))
             .order_by(f.id).limit(limit))
        return [tuple(r) for r in self.s.execute(q)]

    def serving_routes(self, model: str) -> dict[str, tuple[str, float, str]]:
        """alias -> (version, share in percent, artifact sha256) for the aliases the router serves."""
        a, v = AliasRow, VersionRow
        q = (select(a.alias, a.version, a.share_pct, v.artifact_sha256)
             .join(v, and_(v.model == a.model, v.version == a.version))
             .where(a.model == model, a.alias.in_(("production", "canary")), a.version.is_not(None)))
        return {alias: (version, float(share or 0.0), sha) for alias, version, share, sha in self.s.execute(q)
                if version is not None}  # q filters None out already

    # ----------------------------------------------------------------- monitoring (retrain.steps.sweep, workers.beat)
    def bucket_series(self, model: str, version: str, since: datetime,
                      until: datetime) -> list[tuple[float, ...]]:
        """(minute as epoch seconds, n, tp, fp, tn, fn, ret_sum, ret_sq_sum) of one version's buckets in
        [since, until), oldest first, all numbers: the sweep reads hundreds per model into one array."""
        from sqlalchemy import Float

        b = MetricBucketRow
        if self.pg:
            epoch = cast(func.extract("epoch", b.minute), Float)
        else:  # stored as 'YYYY-MM-DD HH:MM:SS[.ffffff]' in UTC
            epoch = cast(func.strftime("%s", b.minute), Float)
        q = (select(epoch, b.n, b.tp, b.fp, b.tn, b.fn, b.ret_sum, b.ret_sq_sum)
             .where(b.model == model, b.version == version, b.minute >= since, b.minute < until)
             .order_by(b.minute))
        return [tuple(r) for r in self.s.execute(q)]

    def production_metrics(self, model: str) -> tuple[str | None, dict]:
        """The production version of a model and its metrics (baseline, reference sample), in one read."""
        a, v = AliasRow, VersionRow
        row = self.s.execute(select(a.version, v.metrics).outerjoin(v, and_(v.model == a.model, v.version == a.version))
                             .where(a.model == model, a.alias == "production")).first()
        if row is None or row[0] is None:
            return None, {}
        return row[0], dict(row[1] or {})

    def sample_features(self, model: str, since: datetime, limit: int) -> list[list[float]]:
        """Features of the newest ``limit`` sample rows of a model at or after ``since``."""
        f = FeatureSampleRow
        q = select(f.features).where(f.model == model, f.ts >= since).order_by(f.id.desc()).limit(limit)
        return list(self.s.scalars(q))

    def latest_request(self, model: str, trigger: str) -> RequestRow | None:
        """The newest request of a model and trigger kind, whatever its status."""
        return self.s.scalars(select(RequestRow).where(RequestRow.model == model, RequestRow.trigger == trigger)
                              .order_by(RequestRow.created_at.desc()).limit(1)).first()

    def last_drift_check(self, model: str) -> datetime | None:
        return self.s.scalar(select(func.max(DriftReportRow.at)).where(DriftReportRow.model == model))

    def hold_lease(self, name: str, holder: str, now: datetime, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``holder``; False while another holder's lease runs.

        The lease lives in ``controls`` (key ``lease:NAME``): ``updated_by`` is the holder and
        ``updated_at`` the last renewal, so it expires ``ttl_s`` after it; one conditional
        UPDATE decides between two contenders on either backend.
        """
        key = f"lease:{name}"
        self.s.execute(self._insert(ControlRow.__table__)
                       .values(key=key, value={}, updated_at=now - timedelta(seconds=2 * ttl_s), updated_by="")
                       .on_conflict_do_nothing(index_elements=["key"]))
        c = ControlRow
        res = self.s.execute(update(c).where(c.key == key, or_(c.updated_by == holder,
                                                               c.updated_at < now - timedelta(seconds=ttl_s)))
                             .values(updated_at=now, updated_by=holder, value={"holder": holder, "ttl_s": ttl_s})
                             .execution_options(synchronize_session=False))
        return (rowcount(res)) == 1

    def release_lease(self, name: str, holder: str) -> None:
        c = ControlRow
        self.s.execute(update(c).where(c.key == f"lease:{name}", c.updated_by == holder)
                       .values(updated_by="", value={}, updated_at=datetime(2000, 1, 1).astimezone())
                       .execution_options(synchronize_session=False))


@dataclass(frozen=True)
class DecisionState:
    """What :meth:`Tx.decision_snapshot` read; the decision step turns it into a StateSnapshot."""

    paused: bool
    deployed_at: datetime | None
    known_model: bool
    globally_paused: bool
    production: str | None
    production_baseline: float | None
    runs_today: int
    spend_today: float
    spend_month: float
    model_spend_today: float
    model_spend_month: float
    # The newest metric buckets: predictions served (labelled or not), over how many
    # distinct minutes, from when to when; labelled outcomes and the sum of their squared returns.
    served: int
    served_minutes: int
    served_first: datetime | None
    served_last: datetime | None
    returns_n: int
    returns_sq_sum: float
    below_floor_since: datetime | None
    window_n: int
    window_correct: int
    run_starts: list[datetime]
    active_run: str | None
    actual_costs: list[float]
    resource_reports: list[dict]


_DECISION_SQL: list[Any] = []
#: How many of a model's newest metric buckets the decision reads its traffic from.
RATE_BUCKETS = 1440


def _floor_key(model: str) -> str:
    # controls.key holds 64 characters; a model name may have 128.
    key = f"floor:{model}"
    return key if len(key) <= 64 else "floor:#" + hashlib.sha256(model.encode()).hexdigest()[:57]


def _decision_sql() -> tuple[Any, Any]:
    """The decision's two reads, built once: one row of scalars and aggregates, and the lists."""
    if _DECISION_SQL:
        return _DECISION_SQL[0], _DECISION_SQL[1]
    from sqlalchemy import Float, String, bindparam, cast, null, true, union_all

    model = bindparam("model", type_=String)
    since = bindparam("since", type_=RunRow.created_at.type)
    midnight = bindparam("midnight", type_=RunRow.created_at.type)
    minute_t = MetricBucketRow.minute.type
    rate_since, window, now = (bindparam("rate_since", type_=minute_t), bindparam("window", type_=minute_t),
                               bindparam("now", type_=minute_t))
    day, month = bindparam("day", type_=String), bindparam("month", type_=String)
    zero = literal(0.0)
    c, b = CostRow, MetricBucketRow
    prod_alias = (select(AliasRow.version).where(AliasRow.model == model, AliasRow.alias == "production")
                  .scalar_subquery())
    in_day, is_model = c.day == day, c.model == model
    spend = select(
        func.coalesce(func.sum(case((in_day, c.amount_usd), else_=zero)), zero).label("spend_today"),
        func.coalesce(func.sum(c.amount_usd), zero).label("spend_month"),
        func.coalesce(func.sum(case((and_(in_day, is_model), c.amount_usd), else_=zero)), zero)
        .label("model_spend_today"),
        func.coalesce(func.sum(case((is_model, c.amount_usd), else_=zero)), zero).label("model_spend_month"),
    ).where(c.month == month).subquery("spend")
    newest = (select(b.minute.label("minute"), (b.n + b.unlabelled).label("served"), b.n.label("labelled"),
                     b.ret_sq_sum.label("ret_sq"))
              .where(b.model == model, b.minute >= rate_since, b.minute <= now)
              .order_by(b.minute.desc()).limit(RATE_BUCKETS).subquery("newest"))
    traffic_rate = select(func.coalesce(func.sum(newest.c.served), 0).label("rate_served"),
                          func.count(func.distinct(newest.c.minute)).label("rate_minutes"),
                          func.min(newest.c.minute).label("rate_first"), func.max(newest.c.minute).label("rate_last"),
                          func.coalesce(func.sum(newest.c.labelled), 0).label("ret_n"),
                          func.coalesce(func.sum(newest.c.ret_sq), zero).label("ret_sq")).subquery("traffic_rate")
    # The floor clock and what resets it: a run's start or end (a cancelled run retrained nothing).
    floor_clock = (select(ControlRow.value).where(ControlRow.key == bindparam("floor_key", type_=String))
                   .scalar_subquery())
    last_run = (select(func.max(func.coalesce(RunRow.finished_at, RunRow.created_at)))
                .where(RunRow.model == model, RunRow.created_at >= since, RunRow.state != "cancelled")
                .scalar_subquery())
    traffic_win = select(func.coalesce(func.sum(b.n), 0).label("win_n"),
                         func.coalesce(func.sum(b.tp + b.tn), 0).label("win_correct")
                         ).where(b.model == model, b.version == prod_alias, b.minute >= window, b.minute <= now
                                 ).subquery("traffic_win")
    one = select(
        select(ModelRow.name).where(ModelRow.name == model).scalar_subquery().label("known_model"),
        select(ModelRow.paused).where(ModelRow.name == model).scalar_subquery().label("paused"),
        select(ModelRow.deployed_at).where(ModelRow.name == model).scalar_subquery().label("deployed_at"),
        select(ControlRow.value).where(ControlRow.key == "pause_all").scalar_subquery().label("pause_all"),
        prod_alias.label("production"),
        select(VersionRow.metrics).where(VersionRow.model == model, VersionRow.version == prod_alias)
        .scalar_subquery().label("production_metrics"),
        select(func.count()).select_from(RunRow).where(RunRow.created_at >= midnight, RunRow.state != "cancelled")
        .scalar_subquery().label("runs_today"),
        spend.c.spend_today, spend.c.spend_month, spend.c.model_spend_today, spend.c.model_spend_month,
        traffic_rate.c.rate_served, traffic_rate.c.rate_minutes, traffic_rate.c.rate_first,
        traffic_rate.c.rate_last, traffic_rate.c.ret_n, traffic_rate.c.ret_sq,
        traffic_win.c.win_n, traffic_win.c.win_correct, floor_clock.label("floor_clock"),
        last_run.label("last_run_at"),
    ).select_from(spend.join(traffic_rate, true()).join(traffic_win, true()))
    runs = select(literal("run").label("tag"), RunRow.id.label("key"), RunRow.created_at.label("at"),
                  RunRow.state.label("state"), cast(null(), Float).label("amount"),
                  cast(null(), ControlRow.value.type).label("value")
                  ).where(RunRow.model == model, or_(RunRow.created_at >= since, RunRow.state.in_(ACTIVE_RUN_STATES)))
    last_costs = (select(c.id, c.run_id, c.at, c.amount_usd).where(c.model == model, c.kind == "actual")
                  .order_by(c.id.desc()).limit(10).subquery("last_costs"))
    costs = select(literal("cost"), last_costs.c.run_id, last_costs.c.at, literal("actual"),
                   last_costs.c.amount_usd, cast(null(), ControlRow.value.type))
    reports = select(literal("res"), ControlRow.key, ControlRow.updated_at, literal(""), cast(null(), Float),
                     ControlRow.value).where(
        ControlRow.key.startswith("resources:"),
        ControlRow.updated_at >= bindparam("reports", type_=ControlRow.updated_at.type))
    many = union_all(runs, costs, reports)
    _DECISION_SQL.extend((one, many))
    return one, many
