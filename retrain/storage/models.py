"""SQLAlchemy 2 tables: the source of truth for every model, request, run, version and cost.

Rows never leave the store as ORM objects; ``retrain.storage.repo`` turns them
into domain dataclasses. Times are stored as timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Base",
    "ModelRow",
    "VersionRow",
    "AliasRow",
    "AliasHistoryRow",
    "MetricBucketRow",
    "FeatureSampleRow",
    "IngestedBatchRow",
    "RequestRow",
    "DecisionRow",
    "RunRow",
    "CostRow",
    "AuditRow",
    "DeadLetterRow",
    "DriftReportRow",
    "OutboxRow",
    "ScheduleSlotRow",
    "ControlRow",
    "RolloutRow",
    "TrainingSlotRow",
    "NotificationRow",
]


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass aware UTC times")
        from datetime import timezone

        return value.astimezone(timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        from datetime import timezone

        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


JSONType = JSON().with_variant(JSON(), "sqlite")
BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


class ModelRow(Base):
    __tablename__ = "models"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    deployed_at: Mapped[datetime | None]
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config_fingerprint: Mapped[str] = mapped_column(String(64), default="")


class VersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model", "version", name="uq_model_versions_model_version"),
        Index("ix_model_versions_model_created", "model", "created_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(32))
    major: Mapped[int]
    minor: Mapped[int]
    patch: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="registered")
    created_at: Mapped[datetime]
    # A deleted version is a tombstone: status 'deleted', its artifact gone, the row kept.
    deleted_at: Mapped[datetime | None]
    deleted_reason: Mapped[str | None] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    artifact_size: Mapped[int] = mapped_column(BigInteger)
    bump_kind: Mapped[str] = mapped_column(String(8))
    bump_reason: Mapped[str] = mapped_column(Text, default="")
    parent_version: Mapped[str | None] = mapped_column(String(32))
    data_start: Mapped[datetime | None]
    data_end: Mapped[datetime | None]
    data_rows: Mapped[int] = mapped_column(Integer, default=0)
    data_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    feature_schema: Mapped[list[Any]] = mapped_column(default=list)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    git_commit: Mapped[str | None] = mapped_column(String(40))
    request_id: Mapped[str | None] = mapped_column(String(36))
    decision_id: Mapped[str | None] = mapped_column(String(36))
    run_id: Mapped[str | None] = mapped_column(String(36))
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)


class AliasRow(Base):
    __tablename__ = "aliases"
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime]
    # Canary share in percent while the alias is 'canary'; 0 otherwise.
    share_pct: Mapped[float] = mapped_column(Float, default=0.0)


class AliasHistoryRow(Base):
    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_model_at", "model", "at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    alias: Mapped[str] = mapped_column(String(32))
    from_version: Mapped[str | None] = mapped_column(String(32))
    to_version: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")


class MetricBucketRow(Base):
    __tablename__ = "metric_buckets"
    # A model's traffic over a time range, all versions (the decision's predictions per day):
    # the primary key's order (model, version, minute) would scan every version's whole history.
    __table_args__ = (Index("ix_metric_buckets_model_minute", "model", "minute"),)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    minute: Mapped[datetime] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    tp: Mapped[int] = mapped_column(BigInteger, default=0)
    fp: Mapped[int] = mapped_column(BigInteger, default=0)
    tn: Mapped[int] = mapped_column(BigInteger, default=0)
    fn: Mapped[int] = mapped_column(BigInteger, default=0)
    ret_sum: Mapped[float] = mapped_column(Float, default=0.0)
    ret_sq_sum: Mapped[float] = mapped_column(Float, default=0.0)
    unlabelled: Mapped[int] = mapped_column(BigInteger, default=0)


class FeatureSampleRow(Base):
    __tablename__ = "feature_samples"
    # model+id: the sweep prunes to the newest rows and reads the newest first (0006).
    __table_args__ = (Index("ix_feature_samples_model_ts", "model", "ts"),
                      Index("ix_feature_samples_model_id", "model", "id"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime]
    features: Mapped[list[Any]]
    prediction: Mapped[int] = mapped_column(Integer)
    label: Mapped[int | None] = mapped_column(Integer)
    ret: Mapped[float | None] = mapped_column(Float)


class IngestedBatchRow(Base):
    __tablename__ = "ingested_batches"
    __table_args__ = (Index("ix_ingested_batches_received_at", "received_at"),)
    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    received_at: Mapped[datetime]
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)


class RequestRow(Base):
    __tablename__ = "retrain_requests"
    __table_args__ = (Index("ix_retrain_requests_model_status", "model", "status"),
                      Index("ix_retrain_requests_created", "created_at"))
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    trigger: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="open")
    reason: Mapped[str] = mapped_column(Text, default="")
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    severity: Mapped[str | None] = mapped_column(String(10))
    requested_by: Mapped[str] = mapped_column(String(128), default="system")
    override_budget: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # 'model:trigger' while open, so one open request per model and trigger kind.
    open_key: Mapped[str | None] = mapped_column(String(160), unique=True)
    decision_id: Mapped[str | None] = mapped_column(String(36))
    run_id: Mapped[str | None] = mapped_column(String(36))


class DecisionRow(Base):
    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_model_at", "model", "decided_at"),
                      Index("ix_decisions_decided_at", "decided_at"))
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36))
    model: Mapped[str] = mapped_column(String(128))
    trigger: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str] = mapped_column(String(20))
    decided_at: Mapped[datetime]
    rules: Mapped[list[Any]]
    summary: Mapped[str] = mapped_column(Text, default="")
    defer_until: Mapped[datetime | None]
    estimated_cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    resolved_by: Mapped[str | None] = mapped_column(String(128))
    resolved_at: Mapped[datetime | None]


class RunRow(Base):
    __tablename__ = "training_runs"
    __table_args__ = (Index("ix_training_runs_model_state", "model", "state"),
                      Index("ix_training_runs_model_created", "model", "created_at"),
                      Index("ix_training_runs_created", "created_at"))
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str] = mapped_column(String(36))
    decision_id: Mapped[str] = mapped_column(String(36))
    trigger: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    stage: Mapped[str] = mapped_column(String(32), default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    candidate_version: Mapped[str | None] = mapped_column(String(32))
    blocked_on: Mapped[str | None] = mapped_column(String(160))
    usage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Orchestration (migration 0002): the last renewal of the lease by the holder's
    # heartbeat, and the last time a message for the run's current step was (re)sent
    # by the reconciler or a freed slot; both tell a lost message from a slow step.
    heartbeat_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]


class CostRow(Base):
    """Append-only (a trigger refuses UPDATE/DELETE, migration 0005): a reservation is
    never edited, it is cancelled by a negative 'release' row booked to the same day."""

    __tablename__ = "cost_ledger"
    __table_args__ = (Index("ix_cost_ledger_day", "day"), Index("ix_cost_ledger_run", "run_id"),
                      Index("ix_cost_ledger_month_model", "month", "model"),
                      Index("ix_cost_ledger_model_kind", "model", "kind", "id"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(36))
    model: Mapped[str] = mapped_column(String(128))
    # reservation (estimate held by a decision), actual (measured), release (cancel of a reservation)
    kind: Mapped[str] = mapped_column(String(16))
    amount_usd: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime]
    day: Mapped[str] = mapped_column(String(10))
    month: Mapped[str] = mapped_column(String(7))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AuditRow(Base):
    """Append-only: nothing in the code updates or deletes these rows, and a trigger
    (migration 0005) makes the database refuse it."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_model_at", "model", "at"), Index("ix_audit_events_kind_at", "kind", "at"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    model: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DeadLetterRow(Base):
    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_at", "at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DriftReportRow(Base):
    __tablename__ = "drift_reports"
    __table_args__ = (Index("ix_drift_reports_model_at", "model", "at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[datetime]
    drifted: Mapped[bool] = mapped_column(Boolean)
    report: Mapped[dict[str, Any]]


class OutboxRow(Base):
    """A message to publish, committed with the state change that asks for it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_published", "published_at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    priority: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    published_at: Mapped[datetime | None]


class ScheduleSlotRow(Base):
    """One row per (model, scheduled slot): a slot fires once even with two beats."""

    __tablename__ = "schedule_slots"
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    slot: Mapped[str] = mapped_column(String(64), primary_key=True)
    fired_at: Mapped[datetime]
    request_id: Mapped[str | None] = mapped_column(String(36))


class ControlRow(Base):
    """Administrative switches (e.g. the global pause), with who set them."""

    __tablename__ = "controls"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(128))


class TrainingSlotRow(Base):
    """One row per global training slot (migration 0002 seeds 3): a run trains only
    while it holds one, claimed under a lease with ``FOR UPDATE SKIP LOCKED``.

    A slot is free when ``run_id`` is empty or its lease has expired, so a killed
    holder gives its slot back after the lease without anyone cleaning up.
    """

    __tablename__ = "training_slots"
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    run_id: Mapped[str | None] = mapped_column(String(36))
    attempt: Mapped[int | None] = mapped_column(Integer)
    owner: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]


class RolloutRow(Base):
    """A candidate's way from shadow through the canary stages to production (migration 0003).

    One row per run that entered shadow or a canary; the pure state machine and its
    rules live in ``retrain.core.rollout``. ``paired`` accumulates the shadow's paired counts
    (rows up to ``scored_until``, a ``feature_samples`` id), ``figures`` holds the
    latest evaluation, ``history`` one entry per finished phase or stage.
    """

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_model_phase", "model", "phase"),)
    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    candidate_version: Mapped[str] = mapped_column(String(32))
    # Production when shadow started: the version the candidate is compared with.
    baseline_version: Mapped[str | None] = mapped_column(String(32))
    phase: Mapped[str] = mapped_column(String(16))
    # The canary shares of this rollout (fixed when it starts) and the index of the current one (-1: shadow).
    stages: Mapped[list[Any]] = mapped_column(default=list)
    stage: Mapped[int] = mapped_column(Integer, default=-1)
    share_pct: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime]
    stage_started_at: Mapped[datetime]
    canary_started_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # None, 'waiting' (criteria met, a person must confirm) or 'confirmed'.
    gate: Mapped[str | None] = mapped_column(String(16))
    gate_by: Mapped[str | None] = mapped_column(String(128))
    scored_until: Mapped[int] = mapped_column(BigInteger, default=0)
    paired: Mapped[dict[str, Any]] = mapped_column(default=dict)
    figures: Mapped[dict[str, Any]] = mapped_column(default=dict)
    history: Mapped[list[Any]] = mapped_column(default=list)
    outcome: Mapped[str] = mapped_column(Text, default="")


class NotificationRow(Base):
    """One notification event for one target (migration 0007): delivered at most once per
    (event, target), retried with backoff while it fails, kept when it gives up."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("event_id", "target", name="uq_notifications_event_target"),
                      Index("ix_notifications_status_next", "status", "next_attempt_at"),
                      Index("ix_notifications_created", "created_at"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(128))
    subject: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    # pending (not tried), sending (claimed until next_attempt_at), retrying, delivered, failed (gave up)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
