"""The store's interface, owned by the core: one repository per aggregate, one unit of work.

Steps, the registry, the lifecycle and the commands speak to storage only through these
Protocols and receive the frozen records of :mod:`retrain.core.records`; the SQLAlchemy
implementation is :mod:`retrain.storage.sql` (composed by :class:`retrain.storage.repo.Tx`),
and no ORM row leaves it. One :class:`UnitOfWork` is one transaction: every change a step
makes through its repositories, its audit events and its outbox messages commit together.

=====================  ==============================================================
repository             aggregate
=====================  ==============================================================
``models``             models as configured; pause
``controls``           switches, leases, node resources, the floor clock
``audit``              the append-only audit trail
``dead_letters``       input kept for inspection
``outbox``             messages committed with the state change that sends them
``monitoring``         ingested batches, metric buckets, feature samples, drift reports
``requests``           retraining requests
``decisions``          decisions on them
``decision_state``     the decision's read model (one snapshot per decision)
``runs``               training runs (state moves through :mod:`retrain.core.lifecycle` only)
``ledger``             the append-only cost ledger
``versions``           registered versions
``aliases``            aliases and their history
``rollouts``           shadow and canary rollouts
``slots``              global training slots
``exporter``           read-only aggregates for the metrics exporter
``notifications``      deliveries of events to notification targets
=====================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from retrain.core.domain import Decision, RetrainRequest
from retrain.core.records import (
    AliasMove,
    AliasRecord,
    AuditEvent,
    CostEntry,
    DeadLetter,
    DecisionRecord,
    DecisionState,
    DriftReportRecord,
    FeatureSample,
    MetricBucket,
    ModelRecord,
    MonitoringGauges,
    MonitoringTotals,
    NotificationRecord,
    OutboxMessage,
    RequestRecord,
    RolloutRecord,
    RunRecord,
    SlotHolder,
    StoredVersion,
)

__all__ = [
    "UnitOfWork", "AuditHook", "ModelRepository", "ControlRepository", "AuditRepository", "DeadLetterRepository",
    "OutboxRepository", "MonitoringRepository", "RequestRepository", "DecisionRepository",
    "DecisionStateRepository", "RunRepository", "LedgerRepository", "VersionRepository", "AliasRepository",
    "RolloutRepository", "SlotRepository", "ExporterReadRepository", "NotificationRepository",
]


class ModelRepository(Protocol):
    def ensure(self, name: str, description: str, config: dict[str, Any], fingerprint: str, now: datetime) -> bool:
        """Register a model from configuration, or record that its configuration changed. True if new."""
        ...

    def get(self, name: str) -> ModelRecord | None:
        ...

    def names(self) -> list[str]:
        ...

    def set_paused(self, model: str | None, paused: bool, actor: str, reason: str, now: datetime) -> None:
        """Pause or resume automatic retraining of one model (None: of all), audited."""
        ...

    def set_deployed(self, name: str, at: datetime) -> None:
        """When the model's first production version went live."""
        ...


class ControlRepository(Protocol):
    def set(self, key: str, value: dict[str, Any], actor: str, now: datetime) -> None:
        ...

    def get(self, key: str) -> dict[str, Any] | None:
        ...

    def report_resources(self, node: str, reading: dict[str, Any], now: datetime) -> None:
        """A training node's free memory, CPU load and free disk, for the decision's resource rule."""
        ...

    def set_floor_clock(self, model: str, since: datetime | None, now: datetime) -> None:
        """Start (``since``) or stop (None) the time a model is known to be below its accuracy floor."""
        ...

    def hold_lease(self, name: str, holder: str, now: datetime, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``holder``; False while another holder's lease runs."""
        ...

    def release_lease(self, name: str, holder: str) -> None:
        ...


class AuditHook(Protocol):
    """Called by :meth:`AuditRepository.record` for each event, in the same unit of work, after the event
    is added (``Store(db, on_audit=...)``): e.g. the notification that rides the outbox with the change."""

    def __call__(self, uow: UnitOfWork, at: datetime, kind: str, actor: str, message: str, *, model: str | None,
                 subject: str | None, data: dict[str, Any]) -> None:
        ...


class AuditRepository(Protocol):
    def record(self, at: datetime, kind: str, actor: str, message: str, *, model: str | None = None,
               subject: str | None = None, data: dict[str, Any] | None = None) -> None:
        """Append an event (and call the store's :class:`AuditHook`, if it has one)."""
        ...

    def events(self, model: str | None = None, limit: int = 200, kind: str | None = None) -> list[AuditEvent]:
        """The newest ``limit`` events (of a model, of a kind), oldest first."""
        ...

    def log(self, *, model: str | None = None, kinds: Sequence[str] | None = None, actor: str | None = None,
            subject: str | None = None, since: datetime | None = None, limit: int = 200) -> list[AuditEvent]:
        """The newest ``limit`` audit events matching every given filter, oldest first."""
        ...


class DeadLetterRepository(Protocol):
    def add(self, at: datetime, source: str, reason: str, payload: dict[str, Any], model: str | None = None) -> None:
        ...

    def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Rows with the columns at, source, reason, payload, model."""
        ...

    def newest(self, limit: int = 100) -> list[DeadLetter]:
        ...


class OutboxRepository(Protocol):
    def enqueue(self, task: str, payload: dict[str, Any], now: datetime, priority: int = 0) -> None:
        ...

    def pending(self, limit: int = 100, older_than: datetime | None = None) -> list[OutboxMessage]:
        """Unpublished messages, oldest first; on Postgres rows another publisher holds are skipped."""
        ...

    def mark_published(self, ids: Sequence[int], now: datetime) -> None:
        ...

    def prune(self, before: datetime) -> int:
        ...


class MonitoringRepository(Protocol):
    def claim_batch(self, batch_id: str, now: datetime, accepted: int, rejected: int) -> bool:
        """Record a batch id; False if it was seen before (a redelivery)."""
        ...

    def ingested(self) -> tuple[int, int]:
        """(batches recorded, labelled results in all metric buckets): what survived, all models."""
        ...

    def labelled_total(self) -> int:
        ...

    def add_buckets(self, rows: list[dict[str, Any]]) -> None:
        """Add counts to (model, version, minute) buckets, creating the ones that do not exist."""
        ...

    def add_samples(self, rows: list[dict[str, Any]]) -> None:
        ...

    def buckets(self, model: str, version: str | None, since: datetime,
                until: datetime | None = None) -> list[MetricBucket]:
        ...

    def latest_minute(self, model: str) -> datetime | None:
        """The newest minute with a metric bucket of the model, any version."""
        ...

    def samples(self, model: str, since: datetime | None = None, until: datetime | None = None, labelled: bool = True,
                limit: int | None = None) -> list[FeatureSample]:
        ...

    def prune_samples(self, model: str, keep: int) -> int:
        """Delete all but the newest ``keep`` sample rows of a model; returns how many went."""
        ...

    def traffic_since(self, model: str, since: datetime, version: str | None = None) -> tuple[int, int, int]:
        """(labelled results, correct ones, unlabelled predictions) in the metric buckets since ``since``."""
        ...

    def served(self, model: str, since: datetime, until: datetime) -> tuple[int, int, datetime | None, datetime | None]:
        """(predictions served, labelled or not; distinct minutes; first and last minute) in the newest
        ``RATE_BUCKETS`` metric buckets between ``since`` and ``until``: what :func:`retrain.core.policy.serving_rate`
        reads.
        """
        ...

    def bucket_series(self, model: str, version: str, since: datetime, until: datetime) -> list[tuple[float, ...]]:
        """(minute as epoch seconds, n, tp, fp, tn, fn, ret_sum, ret_sq_sum) of one version's buckets in [since,
        until), oldest first, all numbers: the sweep reads hundreds per model into one array.
        """
        ...

    def sample_features(self, model: str, since: datetime, limit: int) -> list[list[float]]:
        """Features of the newest ``limit`` sample rows of a model at or after ``since``."""
        ...

    def shadow_rows(self, model: str, version: str, since: datetime, after_id: int,
                    limit: int) -> list[tuple[int, list[Any], int, int, float | None]]:
        """(id, features, label, prediction, return) of labelled sample rows served by ``version`` at or after
        ``since`` with an id above ``after_id``, in id order: what a shadow has not scored yet.
        """
        ...

    def add_drift_report(self, model: str, version: str | None, at: datetime, drifted: bool,
                         report: dict[str, Any]) -> None:
        ...

    def latest_drift_report(self, model: str) -> DriftReportRecord | None:
        ...

    def drift_reports(self, model: str) -> list[DriftReportRecord]:
        """Every stored drift report of a model, oldest first."""
        ...

    def last_drift_check(self, model: str) -> datetime | None:
        ...

    def claim_schedule_slot(self, model: str, slot: str, now: datetime) -> bool:
        """True the first time a (model, scheduled slot) is claimed; a second beat gets False."""
        ...

    def schedule_slots(self, model: str | None = None) -> list[str]:
        """The scheduled slots fired so far (of a model), sorted."""
        ...


class RequestRepository(Protocol):
    def open(self, req: RetrainRequest) -> tuple[str, bool]:
        """Create the request, or refresh the open one of the same model and trigger."""
        ...

    def get(self, request_id: str, for_update: bool = False) -> RequestRecord | None:
        ...

    def newest(self, model: str | None = None, statuses: Sequence[str] | None = None,
               limit: int = 100) -> list[RequestRecord]:
        """Newest first."""
        ...


    def open_count(self, model: str) -> int:
        """How many requests of a model are open (waiting for, or in, a decision)."""
        ...

    def due_deferred(self, now: datetime) -> list[RequestRecord]:
        ...

    def next_deferred(self, model: str) -> datetime | None:
        """When the model's earliest deferred request is due again."""
        ...

    def latest(self, model: str, trigger: str) -> RequestRecord | None:
        """The newest request of a model and trigger kind, whatever its status."""
        ...

    def update(self, request: RequestRecord, **changes: Any) -> RequestRecord:
        """Write ``changes`` (status, evidence, decision_id, run_id...) and return the request as it is now."""
        ...

    def close(self, request: RequestRecord, status: str, **changes: Any) -> RequestRecord:
        """End the request in ``status``: a new request of its model and trigger may open."""
        ...

    def get_open_locked(self, request_id: str, lock_name: str) -> tuple[RequestRecord | None, bool]:
        """The request, locked for update, and whether the store's lock ``lock_name`` was taken: it is, only when the
        request is open.
        """
        ...


class DecisionRepository(Protocol):
    def get(self, decision_id: str) -> DecisionRecord | None:
        ...

    def newest(self, model: str | None = None, limit: int = 50) -> list[DecisionRecord]:
        """Newest first."""
        ...

    def add(self, d: Decision, trigger: str, rules: list[dict[str, Any]]) -> str:
        """Record a decision whose rules the caller has serialised already (it audits the same list)."""
        ...

    def resolve(self, decision_id: str, actor: str, now: datetime) -> None:
        """An operator answered the decision (approved or rejected what waited for approval)."""
        ...


class DecisionStateRepository(Protocol):
    def snapshot(self, model: str, *, now: datetime, history: timedelta, window: timedelta, report_max_age:
                     timedelta, rate_window: timedelta = timedelta(days=30)) -> DecisionState:
        """Everything the decision reads about one model and the world, in two statements."""
        ...


class RunRepository(Protocol):
    def insert(self, run: RunRecord) -> None:
        """A new run (the lifecycle's ``new_run`` builds it)."""
        ...

    def get(self, run_id: str, for_update: bool = False) -> RunRecord | None:
        ...

    def newest(self, model: str | None = None, states: Sequence[str] | None = None,
               limit: int = 100) -> list[RunRecord]:
        """Newest first."""
        ...

    def active(self, model: str) -> RunRecord | None:
        """The model's oldest run still in flight."""
        ...

    def expired_leases(self, now: datetime) -> list[RunRecord]:
        ...

    def active_versions(self, model: str) -> dict[str, str]:
        """Candidate version -> run id, for the model's runs still in flight (validating, shadow, rollout)."""
        ...

    def blocker(self, run: RunRecord, depends_on: Sequence[str]) -> RunRecord | None:
        """The oldest active run of one of ``depends_on`` created before ``run``, if any."""
        ...

    def waiting(self, limit: int) -> list[RunRecord]:
        """Queued runs that tried and were held back, best first (priority, then age); on Postgres rows being claimed
        right now are skipped (they are in good hands) and the rest locked.
        """
        ...

    def note(self, run: RunRecord, **changes: Any) -> RunRecord:
        """Write bookkeeping that does not move the run (what it waits for, when it was sent, usage...)."""
        ...

    def write(self, run: RunRecord, changes: dict[str, Any]) -> RunRecord:
        """Write a lifecycle move, only if the run is still as ``run`` says (state and attempt): two writers cannot
        both move it. For :mod:`retrain.core.lifecycle` only.
        """
        ...


class LedgerRepository(Protocol):
    def add(self, run_id: str, model: str, kind: str, amount: float, at: datetime,
            detail: dict[str, Any] | None = None) -> None:
        """Append a ledger row. A run's release and actual rows are booked to the day and month of its reservation
        (``at`` keeps when they happened): the reservation *becomes* the actual cost in the period whose budget
        admitted it, so a run that finishes after midnight neither leaves yesterday overstated nor today negative.
        """
        ...

    def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Ledger rows with every column given (a benchmark's or an import's bulk load)."""
        ...

    def spend(self, *, day: str | None = None, month: str | None = None, model: str | None = None) -> float:
        ...

    def held_reservation(self, run_id: str) -> float:
        """What a run still holds in reservations (reservations plus their releases)."""
        ...

    def entries(self, since_month: str | None = None, *, run_id: str | None = None) -> list[CostEntry]:
        """Ledger rows (since a month, of a run) in the order they were written."""
        ...

    def actual_costs(self, model: str, limit: int = 10) -> list[float]:
        """The model's last ``limit`` measured run costs from the ledger, oldest first (the estimate's input)."""
        ...

    def reservation_period(self, run_id: str) -> tuple[str, str] | None:
        """(day, month) the run's reservation was booked to, if it has one."""
        ...

    def totals(self, since_month: str) -> list[tuple[str, str, str, float, int]]:
        """(day, model, kind, sum, rows) of the ledger since the start of ``since_month``."""
        ...


class VersionRepository(Protocol):
    def all(self, model: str, include_deleted: bool = True) -> list[StoredVersion]:
        """Oldest first (by semantic version)."""
        ...

    def get(self, model: str, version: str) -> StoredVersion | None:
        ...

    def latest(self, model: str) -> StoredVersion | None:
        ...

    def add(self, **fields: Any) -> StoredVersion:
        """Register a version (every column but the id given)."""
        ...

    def update(self, version: StoredVersion, **changes: Any) -> StoredVersion:
        """Write a version's status, metrics or tombstone; returns it as it is now."""
        ...

    def models(self) -> list[str]:
        """Every model that has at least one version row, tombstones included."""
        ...

    def live_refs(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(model, version, artifact sha256, metrics) of every version not deleted, all models."""
        ...


class AliasRepository(Protocol):
    def get(self, model: str, alias: str) -> str | None:
        """The version the alias points to (None: not set)."""
        ...

    def all(self, model: str) -> dict[str, AliasRecord]:
        ...

    def move(self, model: str, alias: str, version: str | None, *, actor: str, reason: str, now: datetime, share_pct:
                 float = 0.0) -> str | None:
        """Point an alias at a version (None clears it); the row lock makes the move atomic. Returns where it pointed
        before.
        """
        ...

    def history(self, model: str, limit: int = 200) -> list[AliasMove]:
        """The oldest ``limit`` moves, oldest first."""
        ...

    def set_at(self, model: str, alias: str, at: datetime) -> AliasMove | None:
        """The last move of ``alias`` at or before ``at``: what it pointed to then (None: never set yet)."""
        ...

    def names(self, model: str) -> list[str]:
        """Every alias a model has or ever had."""
        ...

    def moves(self, model: str, *, alias: str | None = None, until: datetime | None = None,
              limit: int = 200) -> list[AliasMove]:
        """The newest ``limit`` alias moves (up to ``until``), oldest first."""
        ...

    def serving_routes(self, model: str) -> dict[str, tuple[str, float, str]]:
        """alias -> (version, share in percent, artifact sha256) for the aliases the router serves."""
        ...

    def production_metrics(self, model: str) -> tuple[str | None, dict[str, Any]]:
        """The production version of a model and its metrics (baseline, reference sample), in one read."""
        ...

    def counts(self, model: str) -> dict[str, int]:
        """alias -> how many rows it has (a row per alias: a check that moves never duplicate one)."""
        ...


class RolloutRepository(Protocol):
    def add(self, **fields: Any) -> RolloutRecord:
        ...

    def get(self, run_id: str, for_update: bool = False) -> RolloutRecord | None:
        ...

    def active(self, model: str | None = None) -> list[RolloutRecord]:
        """Rollouts still in shadow or in a canary stage, oldest first."""
        ...

    def newest(self, model: str, limit: int = 20) -> list[RolloutRecord]:
        """The model's rollouts, newest first."""
        ...

    def update(self, rollout: RolloutRecord, **changes: Any) -> RolloutRecord:
        """Write the changes of one evaluation (phase, stage, share, gate, figures, history...)."""
        ...


class SlotRepository(Protocol):
    def ensure(self, limit: int) -> None:
        """Create slot rows ``0 .. limit-1`` that do not exist yet (migration 0002 seeds three)."""
        ...

    def take_free(self, *, run_id: str, attempt: int, owner: str, limit: int, now: datetime,
                  lease_until: datetime) -> int | None:
        """Take the first free slot among the first ``limit`` (Postgres: skipping rows being claimed)."""
        ...

    def renew(self, run_id: str, attempt: int, lease_until: datetime) -> bool:
        ...

    def release(self, run_id: str, attempt: int | None = None) -> int:
        ...

    def holders(self, now: datetime, limit: int | None = None) -> list[SlotHolder]:
        ...

    def free_count(self, limit: int, now: datetime) -> int:
        ...

    def release_orphans(self) -> list[int]:
        ...


class ExporterReadRepository(Protocol):
    """Aggregates for the Prometheus exporter: a few grouped statements per scrape, all models."""

    def totals(self, since: datetime | None, until: datetime | None, *, buckets: bool = True) -> MonitoringTotals:
        """What was written in [since, until) (None: unbounded), counted for the counters (``buckets=False``:
        without the metric buckets, which :meth:`gauges` counts in its scan)."""
        ...

    def minutes(self, models: Sequence[str], since: datetime, until: datetime) -> list[tuple[Any, ...]]:
        """The metric buckets of ``models`` in [since, until): (model, version, minute, n, tp, fp, tn, fn, ret_sum,
        ret_sq_sum), ordered by model, version and minute."""
        ...

    def gauges(self, now: datetime, models: Sequence[str], window_starts: Sequence[datetime], slot_limit: int, *,
               counted_since: datetime | None = None, duration_buckets: Sequence[float] = ()) -> MonitoringGauges:
        """The current state: live windows of ``models`` from each of ``window_starts``, drift, runs, spend...;
        with ``counted_since``, the buckets' counts since then too (one scan of the metric buckets for both);
        the run durations' histogram over ``duration_buckets`` (upper bounds, seconds)."""
        ...


class NotificationRepository(Protocol):
    def add(self, *, event_id: str, target: str, event: str, model: str | None, subject: str | None, title: str,
            body: str, now: datetime) -> NotificationRecord | None:
        """Record an event for a target as pending; None when that (event, target) exists already."""
        ...

    def get(self, event_id: str, target: str) -> NotificationRecord | None:
        ...

    def claim(self, ids: Sequence[int], now: datetime, until: datetime) -> list[NotificationRecord]:
        """Mark the given deliveries that are pending, due for a retry or whose claim expired as being sent until
        ``until``; returns those it claimed (a concurrent claimer gets the others)."""
        ...

    def due(self, now: datetime, limit: int = 100) -> list[int]:
        """Ids of deliveries to try now: retries due and claims that expired."""
        ...

    def finish(self, id: int, *, delivered: bool, now: datetime, error: str | None,
               next_attempt_at: datetime | None) -> NotificationRecord:
        """Record an attempt: delivered, or failed with ``error`` (retried at ``next_attempt_at``, None: given up)."""
        ...

    def newest(self, *, status: Sequence[str] | None = None, model: str | None = None,
               limit: int = 100) -> list[NotificationRecord]:
        """Newest first."""
        ...


class UnitOfWork(Protocol):
    """One transaction and its repositories."""

    @property
    def models(self) -> ModelRepository: ...
    @property
    def controls(self) -> ControlRepository: ...
    @property
    def audit(self) -> AuditRepository: ...
    @property
    def dead_letters(self) -> DeadLetterRepository: ...
    @property
    def outbox(self) -> OutboxRepository: ...
    @property
    def monitoring(self) -> MonitoringRepository: ...
    @property
    def requests(self) -> RequestRepository: ...
    @property
    def decisions(self) -> DecisionRepository: ...
    @property
    def decision_state(self) -> DecisionStateRepository: ...
    @property
    def runs(self) -> RunRepository: ...
    @property
    def ledger(self) -> LedgerRepository: ...
    @property
    def versions(self) -> VersionRepository: ...
    @property
    def aliases(self) -> AliasRepository: ...
    @property
    def rollouts(self) -> RolloutRepository: ...
    @property
    def slots(self) -> SlotRepository: ...
    @property
    def exporter(self) -> ExporterReadRepository: ...
    @property
    def notifications(self) -> NotificationRepository: ...
    @property
    def pg(self) -> bool:
        """True on Postgres (row locks, SKIP LOCKED, LISTEN/NOTIFY); False on the embedded SQLite."""
        ...

    def lock(self, name: str) -> None:
        """Serialise a critical section across processes until this unit of work commits."""
        ...
