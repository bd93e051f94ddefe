"""Celery's configuration, the one place for broker, queues, routes, priorities,
reliability settings and the beat schedule. Built from ``RETRAIN_*`` settings and
the model file; nothing here is hard-coded per deployment.

Reliability choices, and why:

* JSON only (``accept_content``): a pickled message is refused before it is decoded.
* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is
  redelivered instead of lost. That makes delivery at least once, so every step is
  idempotent (batch ids, run states, fencing tokens) and a run stops after
  ``RETRAIN_MAX_ATTEMPTS`` so a task that kills its worker cannot loop forever.
* ``worker_prefetch_multiplier = 1``: a worker holds one message at a time, so an
  emergency queued behind a backlog is the next one taken.
* The Redis visibility timeout must exceed the longest hard time limit, or Redis
  hands a still-running training to a second worker (checked in Settings).
* Priorities: 0 is the highest on Redis and the lowest on RabbitMQ; ``broker_priority``
  maps our scale (9 = emergency … 1 = schedule) onto the broker's.
"""

from __future__ import annotations

from retrain import queues as _q
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
task_default_queue = "monitoring"
task_create_missing_queues = False
worker_hijack_root_logger = False

task_queues = _q.kombu_queues(broker_url)
task_routes = {name: {"queue": q, "routing_key": q} for name, q in ROUTES.items()}
broker_transport_options = _q.transport_options(broker_url, _settings.visibility_timeout_s)

timezone = _settings.timezone
enable_utc = True


def _beat_schedule() -> dict:
    from celery.schedules import crontab

    from retrain.config import load_config

    schedule: dict = {
        "retrain-sweep": {"task": "retrain.sweep", "schedule": _settings.sweep_interval_s, "args": [{"v": 1}]},
        "retrain-relay": {"task": "retrain.relay", "schedule": _settings.relay_interval_s, "args": [{"v": 1}]},
        "retrain-reconcile": {"task": "retrain.reconcile", "schedule": _settings.reconcile_interval_s,
                              "args": [{"v": 1}]},
    }
    config = load_config(_settings.config_path())
    for name, model in sorted(config.models.items()):
        for slot, fields in model.schedule.crontab_fields().items():
            schedule[f"retrain-{name}-{slot}"] = {
                "task": "retrain.request_retraining",
                "schedule": crontab(**fields),
                # The slot key is filled in by the task from the time it runs (see workers.tasks.decision).
                "args": [{"v": 1, "model": name, "reason": f"scheduled {slot} retraining", "trigger": "schedule",
                          "slot": slot, "requested_by": "beat"}],
            }
    return schedule


beat_schedule = _beat_schedule()
