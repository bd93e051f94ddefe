"""``RETRAIN_LOG_FORMAT=json`` on workers and beat: Celery's own loggers write JSON lines, and each
line a task logs carries the task's id and name and the model, run and request ids of its payload."""

from __future__ import annotations

from celery import signals

from retrain.monitoring import logs


@signals.after_setup_logger.connect
def _json_root(logger=None, **_kw):
    if logs.configure():
        for h in (logger.handlers if logger is not None else []):
            h.setFormatter(logs.JsonFormatter())


@signals.after_setup_task_logger.connect
def _json_task(logger=None, **_kw):
    import os

    if os.environ.get("RETRAIN_LOG_FORMAT", "").strip().lower() == "json" and logger is not None:
        for h in logger.handlers:
            h.setFormatter(logs.JsonFormatter())


@signals.task_prerun.connect
def _task_ids(task_id=None, task=None, args=None, **_kw):
    payload = args[0] if args and isinstance(args[0], dict) else {}
    logs.set_task(task_id=task_id, task=getattr(task, "name", None), model=payload.get("model"),
                  run_id=payload.get("run_id"), request_id=payload.get("request_id"))


@signals.task_postrun.connect
def _task_done(**_kw):
    logs.set_task()
