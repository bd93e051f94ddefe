"""What the store hands back: frozen records, one per stored aggregate.

The repositories (:mod:`retrain.core.ports`) return these and never an ORM row, so a
step cannot change stored state by assigning to an attribute: it says what changes
through a repository method (for a run, through :mod:`retrain.core.lifecycle`).
Field names are the columns' names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from retrain.core.domain import RetrainRequest, Severity, TriggerKind

__all__ = [
    "ModelRecord",
    "StoredVersion",
    "AliasRecord",
    "AliasMove",
    "RequestRecord",
    "DecisionRecord",
    "RunRecord",
    "CostEntry",
    "AuditEvent",
    "DeadLetter",
    "DriftReportRecord",
    "RolloutRecord",
    "MetricBucket",
    "FeatureSample",
    "SlotHolder",
    "OutboxMessage",
    "DecisionState",
    "NotificationRecord",
    "MonitoringTotals",
    "MonitoringGauges",
]


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A configured model: its configuration as last registered, and whether automatic retraining is paused."""

    name: str
    description: str
    created_at: datetime
    deployed_at: datetime | None
    paused: bool
    config: dict[str, Any]
    config_fingerprint: str

@dataclass(frozen=True, slots=True)
class StoredVersion:
    """A registered model version (a tombstone once deleted: status 'deleted', artifact gone)."""

    id: int
    model: str
    version: str
    major: int
    minor: int
    patch: int
    status: str
    created_at: datetime
    deleted_at: datetime | None
    deleted_reason: str | None
    artifact_sha256: str
    artifact_size: int
    bump_kind: str
    bump_reason: str
    parent_version: str | None
    data_start: datetime | None
    data_end: datetime | None
    data_rows: int
    data_fingerprint: str
    feature_schema: list[Any]
    params: dict[str, Any]
    metrics: dict[str, Any]
    git_commit: str | None
    request_id: str | None
    decision_id: str | None
    run_id: str | None
    cost_usd: float

@dataclass(frozen=True, slots=True)
class AliasRecord:
    """Where an alias (production, previous, canary...) points, with the canary's share in percent."""

    model: str
    alias: str
    version: str | None
    updated_at: datetime
    share_pct: float

@dataclass(frozen=True, slots=True)
class AliasMove:
    """One move of an alias, for the audit and for 'what served at time t'."""

    id: int
    model: str
    alias: str
    from_version: str | None
    to_version: str | None
    at: datetime
    actor: str
    reason: str

@dataclass(frozen=True, slots=True)
class RequestRecord:
    """A retraining request: open while it waits for a decision, one per model and trigger kind."""

    id: str
    model: str
    trigger: str
    priority: int
    status: str
    reason: str
    evidence: dict[str, Any]
    severity: str | None
    requested_by: str
    override_budget: bool
    created_at: datetime
    updated_at: datetime
    open_key: str | None
    decision_id: str | None
    run_id: str | None

    def to_request(self) -> RetrainRequest:
        """The domain request the decision reads."""
        return RetrainRequest(
            id=self.id, model=self.model, trigger=TriggerKind(self.trigger), created_at=self.created_at,
            reason=self.reason, evidence=self.evidence or {},
            severity=Severity(self.severity) if self.severity else None,
            requested_by=self.requested_by, override_budget=self.override_budget,
        )

@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """The decision on a request, with every rule's result."""

    id: str
    request_id: str
    model: str
    trigger: str
    verdict: str
    decided_at: datetime
    rules: list[Any]
    summary: str
    defer_until: datetime | None
    estimated_cost_usd: float
    detail: dict[str, Any]
    resolved_by: str | None
    resolved_at: datetime | None

@dataclass(frozen=True, slots=True)
class RunRecord:
    """A training run. Its state moves only through :mod:`retrain.core.lifecycle`."""

    id: str
    model: str
    request_id: str
    decision_id: str
    trigger: str
    priority: int
    state: str
    attempt: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stage: str
    progress: float
    error: str | None
    candidate_version: str | None
    blocked_on: str | None
    usage: dict[str, Any]
    heartbeat_at: datetime | None
    dispatched_at: datetime | None

@dataclass(frozen=True, slots=True)
class CostEntry:
    """A row of the append-only cost ledger (reservation, release or actual)."""

    id: int
    run_id: str
    model: str
    kind: str
    amount_usd: float
    at: datetime
    day: str
    month: str
    detail: dict[str, Any]

@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An append-only audit event."""

    id: int
    at: datetime
    model: str | None
    kind: str
    actor: str
    subject: str | None
    message: str
    data: dict[str, Any]

@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input kept for inspection because it could not be used."""

    id: int
    at: datetime
    source: str
    model: str | None
    reason: str
    payload: dict[str, Any]

@dataclass(frozen=True, slots=True)
class DriftReportRecord:
    """A stored drift check of one model."""

    id: int
    model: str
    version: str | None
    at: datetime
    drifted: bool
    report: dict[str, Any]

@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A candidate's way from shadow through the canary stages (see :mod:`retrain.core.rollout`)."""

    run_id: str
    model: str
    candidate_version: str
    baseline_version: str | None
    phase: str
    stages: list[Any]
    stage: int
    share_pct: float
    started_at: datetime
    stage_started_at: datetime
    canary_started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    gate: str | None
    gate_by: str | None
    scored_until: int
    paired: dict[str, Any]
    figures: dict[str, Any]
    history: list[Any]
    outcome: str

@dataclass(frozen=True, slots=True)
class MetricBucket:
    """One minute of one version's labelled results."""

    model: str
    version: str
    minute: datetime
    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    ret_sum: float
    ret_sq_sum: float
    unlabelled: int

@dataclass(frozen=True, slots=True)
class FeatureSample:
    """A sampled prediction with its features, kept for drift and shadow scoring."""

    id: int
    model: str
    version: str
    ts: datetime
    features: list[Any]
    prediction: int
    label: int | None
    ret: float | None


@dataclass(frozen=True, slots=True)
class SlotHolder:
    """A global training slot and the run attempt holding it, as ``retrain status`` shows it."""

    slot: int
    run_id: str
    attempt: int
    owner: str
    claimed_at: datetime | None
    lease_expires_at: datetime


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish, committed with the state change that asked for it."""

    id: int
    task: str
    payload: dict[str, Any]
    priority: int


@dataclass(frozen=True)
class DecisionState:
    """What :meth:`retrain.core.ports.DecisionStateRepository.snapshot` read, for the decision."""

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
    resource_reports: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    """One event's delivery to one notification target (``retrain notifications``)."""

    id: int
    event_id: str
    target: str
    event: str
    model: str | None
    subject: str | None
    title: str
    body: str
    status: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class MonitoringTotals:
    """What was written in a time range, counted for the metrics exporter's counters.

    Ranges do not overlap, so the totals of two ranges add up (the exporter keeps the
    history's totals and reads only what is new at each scrape).
    """

    #: (model, version, labelled outcomes, predictions served)
    buckets: list[tuple[str, str, int, int]]
    #: (model, version, newest minute, newest minute with a labelled outcome)
    newest: list[tuple[str, str, datetime | None, datetime | None]]
    #: (model, trigger kind, severity or "", requests opened)
    firings: list[tuple[str, str, str, int]]
    #: (model, verdict, rules as recorded) of every decision
    decisions: list[tuple[str, str, list[Any]]]
    #: (source, reason, model, rows) of the dead letters
    dead_letters: list[tuple[str, str, str | None, int]]
    #: rows accepted and rejected by ingest
    ingest_accepted: int
    ingest_rejected: int
    #: (model, actor, message, data) of the audit's rollback events
    rollbacks: list[tuple[str | None, str, str, dict[str, Any]]]
    #: rows the client dropped before sending (its own count, audited by ingest)
    client_dropped: int


@dataclass(frozen=True)
class MonitoringGauges:
    """The state the metrics exporter shows at one scrape."""

    #: (model, version, window start, n, tp, fp, tn, fn, ret_sum, ret_sq_sum) for each asked window start
    windows: list[tuple[str, str, datetime, int, int, int, int, int, float, float]]
    #: (model, version of the report, time of the latest drift check, its report)
    drift: list[tuple[str, str | None, datetime, dict[str, Any]]]
    #: (model, requests waiting for approval)
    pending_approvals: list[tuple[str, int]]
    #: (model, run state, runs)
    runs: list[tuple[str, str, int]]
    #: the histogram of finished runs' durations: (upper bound in seconds, runs at most that long), sum, count
    run_duration_buckets: list[tuple[float, int]]
    run_duration_sum: float
    run_duration_count: int
    #: training slots held under a live lease
    slots_busy: int
    outbox_pending: int
    #: (model, "day" | "month", USD booked)
    spend: list[tuple[str, str, float]]
    #: (model, production version, its metrics)
    production: list[tuple[str, str, dict[str, Any]]]
    #: (model, canary version, share in percent)
    canaries: list[tuple[str, str, float]]
    #: (lease name, last renewal) of the leases held now (``beat``: the one beat that sends the schedule)
    leases: list[tuple[str, datetime]]
    #: (model, version, n, tp, fp, tn, fn, ret_sum, ret_sq_sum, unlabelled) summed over the minutes since
    #: ``counted_since``, and the ``newest`` of :class:`MonitoringTotals` for them, read in the scan of the live
    #: windows (the exporter adds them to the history it counted, and to the older part of a long window)
    buckets_since: list[tuple[str, str, int, int, int, int, int, float, float, int]] = field(default_factory=list)
    newest_since: list[tuple[str, str, datetime | None, datetime | None]] = field(default_factory=list)
