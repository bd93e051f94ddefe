"""The task table: every task's name, queue, payload schema, step, time limits, retry
policy and beat schedule, in one place.

One row per task. Everything that wires a task reads its row: the Celery tasks
(``workers.base.retrain_task``), the routes and queues (:mod:`retrain.queues`), the time
limits, routes and beat schedule (``celeryconfig``) and the in-process dispatch of the
backtester and the tests (:mod:`retrain.steps.dispatch`). Code names a task by its
constant (``TRAIN``), never by its string: the strings are the wire format (the trading
app sends ``retrain.ingest`` by name with ``send_task``, and messages in flight carry
them), so they never change.

This module imports nothing but the standard library: the trading app's client reads
the names and queues from it. Schemas and steps are named by import path
(``"package.module:attribute"``) and loaded on first use.

Example
-------
>>> TASKS[TRAIN].queue
'training'
>>> TASKS[VALIDATE].limits.of(None)
(600, 900)
>>> sorted(PERIODIC)[:2]
['retrain.evaluate_rollouts', 'retrain.reconcile']
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "INGEST", "SWEEP", "RELAY", "RECONCILE", "RETENTION", "REQUEST_RETRAINING", "DECIDE", "TRAIN", "VALIDATE",
    "EVALUATE_ROLLOUTS", "PROMOTE", "ROLLBACK", "NOTIFY", "NOTIFY_RETRY",
    "MONITORING", "DECISION", "TRAINING", "VALIDATION", "PROMOTION", "QUEUES",
    "TimeLimits", "RetryPolicy", "Interval", "TaskSpec",
    "DEFAULT_LIMITS", "RETRY", "SKIP_TO_NEXT_TICK",
    "TASKS", "ROUTES", "PERIODIC", "run",
]

# Task names: the wire format. Never rename one (beat, clients and queued messages use them).
INGEST = "retrain.ingest"
SWEEP = "retrain.sweep"
RELAY = "retrain.relay"
RECONCILE = "retrain.reconcile"
RETENTION = "retrain.retention"
REQUEST_RETRAINING = "retrain.request_retraining"
DECIDE = "retrain.decide"
TRAIN = "retrain.train"
VALIDATE = "retrain.validate"
EVALUATE_ROLLOUTS = "retrain.evaluate_rollouts"
PROMOTE = "retrain.promote"
ROLLBACK = "retrain.rollback"
NOTIFY = "retrain.notify"
NOTIFY_RETRY = "retrain.notify_retry"

# Queues, in the order the workers declare them.
MONITORING = "monitoring"
DECISION = "decision"
TRAINING = "training"
VALIDATION = "validation"
PROMOTION = "promotion"
QUEUES: tuple[str, ...] = (MONITORING, DECISION, TRAINING, VALIDATION, PROMOTION)


@dataclass(frozen=True)
class TimeLimits:
    """Soft then hard time limit in seconds; a string names the ``Settings`` field that holds it.

    The soft limit raises inside the task (a training marks its run failed and frees its
    slot); the hard limit kills the pool child. Enforced by the prefork pool only."""

    soft: int | str
    hard: int | str

    def of(self, settings: Any) -> tuple[int, int]:
        """The two limits, reading ``settings`` for the ones it holds."""
        return _value(self.soft, settings), _value(self.hard, settings)


@dataclass(frozen=True)
class RetryPolicy:
    """What a transient error (database or broker out of reach) does to a task.

    ``retry``: retry with a backoff of 1, 2, ... up to ``max_backoff_s`` seconds, without a
    limit when ``max_retries`` is None (giving up would lose the message). ``skip``: return
    and let the next beat tick do the job (no retries piling up behind an outage).
    Permanent errors never retry: they go to the dead-letter table."""

    on_transient: Literal["retry", "skip"]
    max_backoff_s: int = 10
    max_retries: int | None = None


@dataclass(frozen=True)
class Interval:
    """A beat entry: ``entry`` sends the task every ``seconds`` (a ``Settings`` field name)
    with the payload ``{"v": 1}``."""

    entry: str
    seconds: str

    def of(self, settings: Any) -> float:
        return float(getattr(settings, self.seconds))


@dataclass(frozen=True)
class TaskSpec:
    """One task: what a worker, the in-process dispatch and the configuration need to know.

    ``step`` is the core function the task calls (None: the task is the worker's own, like
    the broker relay). It gets the context, then ``args`` (payload fields, positionally;
    None: the validated payload itself), then ``kwargs`` (payload fields, by keyword),
    then ``resources`` (the node's reading, from ``Context.resources``) when
    ``reads_resources``. ``every`` puts it on beat at an interval; ``crontab_per_model``:
    beat sends it from each model's schedule in the model file. ``relays=False`` for a
    step that never writes the outbox (saves a round trip on the hottest path)."""

    name: str
    queue: str
    schema: str
    step: str | None
    args: tuple[str, ...] | None = None
    kwargs: tuple[str, ...] = ()
    reads_resources: bool = False
    limits: TimeLimits = TimeLimits(300, 360)
    retry: RetryPolicy = RetryPolicy("retry")
    every: Interval | None = None
    crontab_per_model: bool = False
    relays: bool = True

    @property
    def payload_schema(self) -> type[BaseModel]:
        """The pydantic model of the task's payload (:mod:`retrain.core.payloads`)."""
        schema: type[BaseModel] = _load(self.schema)
        return schema

    @property
    def step_function(self) -> Any:
        if self.step is None:
            raise LookupError(f"{self.name} has no core step: it runs on workers only")
        return _load(self.step)

    def run(self, ctx: Any, payload: Any, **extra: Any) -> Any:
        """Call the step with ``payload`` already validated; ``extra`` are keyword arguments
        of the caller's own (a worker's progress reporter)."""
        fn = self.step_function
        if self.reads_resources and "resources" not in extra:
            extra["resources"] = ctx.resources() if ctx.resources is not None else None
        kw = {k: getattr(payload, k) for k in self.kwargs}
        if self.args is None:
            return fn(ctx, payload, **kw, **extra)
        return fn(ctx, *(getattr(payload, a) for a in self.args), **kw, **extra)


DEFAULT_LIMITS = TaskSpec.limits  # also celeryconfig's task_soft_time_limit / task_time_limit
RETRY = TaskSpec.retry
SKIP_TO_NEXT_TICK = RetryPolicy("skip")

_PAYLOADS = "retrain.core.payloads"

# Where celeryconfig and the task decorators used to disagree, the longer pair was kept: a job
# killed half-way is done again from the start by the next tick, and both stay well below the
# Redis visibility timeout. evaluate_rollouts 300/420 (celeryconfig said 240/300; the decorator's
# 300/420 was in force); retention 600/900 (the decorator's 540/600 was in force).
_TABLE: tuple[TaskSpec, ...] = (
    TaskSpec(INGEST, MONITORING, f"{_PAYLOADS}:IngestBatch", "retrain.steps.ingest:ingest", relays=False),
    TaskSpec(SWEEP, MONITORING, f"{_PAYLOADS}:SweepPayload", "retrain.steps.sweep:sweep", ("models",),
             limits=TimeLimits(240, 300), retry=SKIP_TO_NEXT_TICK,
             every=Interval("retrain-sweep", "sweep_interval_s")),
    TaskSpec(RELAY, MONITORING, f"{_PAYLOADS}:SweepPayload", None, retry=SKIP_TO_NEXT_TICK,
             every=Interval("retrain-relay", "relay_interval_s")),
    TaskSpec(RECONCILE, MONITORING, f"{_PAYLOADS}:SweepPayload", "retrain.steps.reconcile:reconcile", (),
             retry=SKIP_TO_NEXT_TICK, every=Interval("retrain-reconcile", "reconcile_interval_s")),
    TaskSpec(RETENTION, MONITORING, f"{_PAYLOADS}:SweepPayload", "retrain.steps.retention:run_retention", ("models",),
             limits=TimeLimits(600, 900), retry=SKIP_TO_NEXT_TICK,
             every=Interval("retrain-retention", "retention_interval_s")),
    TaskSpec(REQUEST_RETRAINING, DECISION, f"{_PAYLOADS}:ManualRequestPayload",
             "retrain.steps.requests:request_retraining", crontab_per_model=True),
    TaskSpec(DECIDE, DECISION, f"{_PAYLOADS}:DecidePayload", "retrain.steps.decide:decide_request", ("request_id",),
             reads_resources=True),
    TaskSpec(TRAIN, TRAINING, f"{_PAYLOADS}:RunPayload", "retrain.steps.train:train_run", ("run_id",),
             limits=TimeLimits("train_soft_time_limit_s", "train_time_limit_s")),
    TaskSpec(VALIDATE, VALIDATION, f"{_PAYLOADS}:RunPayload", "retrain.steps.validate:validate_run", ("run_id",),
             limits=TimeLimits(600, 900)),
    # Shadows and canaries are judged as often as the live metrics are swept.
    TaskSpec(EVALUATE_ROLLOUTS, VALIDATION, f"{_PAYLOADS}:SweepPayload",
             "retrain.steps.rollout_step:evaluate_rollouts", ("models",), limits=TimeLimits(300, 420),
             retry=SKIP_TO_NEXT_TICK, every=Interval("retrain-evaluate-rollouts", "sweep_interval_s")),
    TaskSpec(PROMOTE, PROMOTION, f"{_PAYLOADS}:RunPayload", "retrain.steps.promote:promote_run", ("run_id",)),
    TaskSpec(ROLLBACK, PROMOTION, f"{_PAYLOADS}:RollbackPayload", "retrain.steps.promote:rollback",
             ("model", "version"), ("actor", "reason", "from_version")),
    # Notifications: one event to its targets (from the outbox), and the retries of failed deliveries, as often
    # as the relay. Delivery errors are recorded, never raised: a receiver that is down is retried with backoff.
    TaskSpec(NOTIFY, MONITORING, f"{_PAYLOADS}:NotifyPayload", "retrain.monitoring.notify:notify",
             limits=TimeLimits(60, 90)),
    TaskSpec(NOTIFY_RETRY, MONITORING, f"{_PAYLOADS}:SweepPayload", "retrain.monitoring.notify:retry_due", (),
             limits=TimeLimits(120, 180), retry=SKIP_TO_NEXT_TICK,
             every=Interval("retrain-notify-retry", "relay_interval_s")),
)

TASKS: dict[str, TaskSpec] = {t.name: t for t in _TABLE}
ROUTES: dict[str, str] = {t.name: t.queue for t in _TABLE}
#: Tasks beat sends on an interval: a run that meets an outage is simply replaced by the next.
PERIODIC: frozenset[str] = frozenset(t.name for t in _TABLE if t.every is not None)


def run(name: str, ctx: Any, payload: Any, **extra: Any) -> Any:
    """Run task ``name``'s step on an already validated payload (see :meth:`TaskSpec.run`)."""
    return TASKS[name].run(ctx, payload, **extra)


def _value(v: int | str, settings: Any) -> int:
    return int(getattr(settings, v)) if isinstance(v, str) else v


_loaded: dict[str, Any] = {}


def _load(path: str) -> Any:
    if path not in _loaded:
        module, _, attr = path.partition(":")
        _loaded[path] = getattr(importlib.import_module(module), attr)
    return _loaded[path]


def _check(table: tuple[TaskSpec, ...]) -> None:
    if len(TASKS) != len(table):
        raise ValueError("a task name appears twice in the task table")
    for t in table:
        if t.queue not in QUEUES:
            raise ValueError(f"{t.name}: unknown queue {t.queue!r}")
        # An interval task skips on an outage (the next tick redoes it); anything else must not lose work.
        if (t.every is not None) != (t.retry.on_transient == "skip"):
            raise ValueError(f"{t.name}: an interval task skips transient errors, any other retries them")


_check(_TABLE)
