"""Celery's configuration, the one place for broker, queues, routes, priorities,
reliability settings and the beat schedule. Built from ``RETRAIN_*`` settings and
the model file; nothing here is hard-coded per deployment.

Reliability choices, and why:

* JSON only (``accept_content``): any other serialisation is refused before it is decoded.
* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is
  redelivered instead of lost. That makes delivery at least once, so every step is
  idempotent (batch ids, run states, fencing tokens) and a run stops after
  ``RETRAIN_MAX_ATTEMPTS`` so a task that kills its worker cannot loop forever.
* ``worker_prefetch_multiplier = 1``: a worker holds one message at a time, so an
  emergency queued behind a backlog is the next one taken.
* Time limits per task (``TIME_LIMITS``, soft then hard), like the routes and beat's
  entries, come from the task table (``retrain.tasks``). A training's soft limit marks its
  run failed ("timed out") and gives its slot back; the hard limit kills the child,
  and the attempt cap ends a run that keeps doing that. Limits are enforced by the
  prefork pool only: training workers run ``-P prefork``.
* The Redis visibility timeout must exceed the longest hard time limit, or Redis
  hands a still-running task to a second worker. Checked when the settings load
  (``retrain.queues.check_visibility_timeout``, and by tests/unit/test_celeryconfig.py);
  even then the run's lease stops the duplicate.
* Connection retries without limit (``broker_connection_max_retries = None``,
  ``broker_connection_retry``): a worker outlives a broker restart and reconnects;
  what the restart lost, the reconciler sends again (retrain.steps.reconcile).
* The database side: engines are created after the fork (``worker_process_init``
  resets the runtime), pooled connections are pre-pinged, so workers outlive a
  Postgres restart too; a step that finds it down retries with backoff.
* Refused messages are kept: ``worker_consumer`` is our consumer, which refuses
  bodies above ``RETRAIN_MAX_MESSAGE_BYTES`` before decoding them and writes a
  dead letter for undecodable messages; unknown task names and disallowed content
  (non-JSON) are dead-lettered by the ``task_unknown``/``task_rejected`` signals.
* Shutdown loses nothing. SIGTERM is a warm shutdown: no new message is taken and
  the running ones finish and are acknowledged. SIGQUIT is a cold shutdown preceded
  by a soft one: running tasks get ``worker_soft_shutdown_timeout`` to finish, then
  they are cancelled and their messages go back to the queue (a cancelled training
  keeps its lease until it expires; the reconciler sends it again).
* Priorities: 0 is the highest on Redis and the lowest on RabbitMQ; ``broker_priority``
  maps our scale (9 = emergency … 1 = schedule) onto the broker's. On RabbitMQ the
  queues are plain unless ``RETRAIN_AMQP_MAX_PRIORITY`` is set (a priority queue refuses
  every producer that declares it otherwise); the waiting runs' heap in the database
  still orders trainings by priority.
"""

from __future__ import annotations

from retrain import queues as _q
from retrain import tasks as _t
from retrain.settings import load_settings

_settings = load_settings()

QUEUES = _q.QUEUES
ROUTES = _q.ROUTES


def broker_priority(priority: int, url: str = _settings.broker_url) -> int:
    """Our priority (9 highest) on the broker's own scale."""
    return _q.broker_priority(priority, url)


broker_url = _settings.broker_url
result_backend = _settings.result_backend
task_ignore_result = _settings.result_backend is None

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure_or_timeout = True
worker_prefetch_multiplier = 1
task_track_started = True
task_send_sent_event = True
worker_send_task_events = True
worker_cancel_long_running_tasks_on_connection_loss = False
broker_connection_retry_on_startup = True
broker_connection_max_retries = None  # outlive a broker restart
task_default_queue = _t.MONITORING
task_create_missing_queues = False
worker_hijack_root_logger = False
worker_consumer = "workers.app:RetrainConsumer"
worker_soft_shutdown_timeout = _settings.soft_shutdown_timeout_s
broker_connection_retry = True

# (soft, hard) time limits in seconds per task, from the task table; the two defaults are the
# table's own default (a task Celery finds outside the table would get them).
TIME_LIMITS: dict[str, tuple[int, int]] = {name: spec.limits.of(_settings) for name, spec in _t.TASKS.items()}
task_soft_time_limit, task_time_limit = _t.DEFAULT_LIMITS.of(_settings)
# Settings refused a Redis visibility timeout below it already (retrain.queues.check_visibility_timeout).
LONGEST_HARD_LIMIT_S = _q.longest_hard_limit_s(_settings)

task_queues = _q.kombu_queues(broker_url, _settings.amqp_max_priority)
task_routes = {name: {"queue": q, "routing_key": q} for name, q in ROUTES.items()}
broker_transport_options = _q.transport_options(broker_url, _settings.visibility_timeout_s)

enable_utc = True
# One beat sends at a time (a lease in the database), and crontab slots are keyed by their instant.
beat_scheduler = "workers.beat:LockedScheduler"


def _zone() -> str:
    """Crontab entries, the off-peak window and slot keys share the model file's time zone."""
    from retrain.config import load_config
    from retrain.core.errors import ConfigError

    zone = load_config(_settings.config_path()).settings.timezone
    if "timezone" in _settings.model_fields_set and _settings.timezone != zone:
        raise ConfigError(f"RETRAIN_TIMEZONE={_settings.timezone} differs from the model file's [settings] "
                          f"timezone = {zone!r}; schedules and the off-peak window need one zone: set one of them")
    return zone


timezone = _zone()


def _beat_schedule() -> dict:
    from celery.schedules import crontab

    from retrain.config import load_config

    schedule: dict = {spec.every.entry: {"task": name, "schedule": spec.every.of(_settings), "args": [{"v": 1}]}
                      for name, spec in _t.TASKS.items() if spec.every is not None}
    config = load_config(_settings.config_path())
    (scheduled,) = [name for name, spec in _t.TASKS.items() if spec.crontab_per_model]  # request_retraining
    for name, model in sorted(config.models.items()):
        for slot, fields in model.schedule.crontab_fields().items():
            schedule[f"retrain-{name}-{slot}"] = {
                "task": scheduled,
                "schedule": crontab(**fields),
                # The slot key is filled in by the task from the time it runs (see workers.tasks.decision).
                "args": [{"v": 1, "model": name, "reason": f"scheduled {slot} retraining", "trigger": "schedule",
                          "slot": slot, "requested_by": "beat"}],
            }
    return schedule


beat_schedule = _beat_schedule()
