"""Queue ``training``: runs on dedicated nodes (``celery worker -Q training``)."""

from __future__ import annotations

from dataclasses import asdict

from celery.exceptions import SoftTimeLimitExceeded

from retrain.payloads import RunPayload
from retrain.settings import load_settings
from retrain.steps.train import train_run
from workers.app import app
from workers.base import retrain_task

_s = load_settings()


@retrain_task(app, name="retrain.train", schema=RunPayload, queue="training", bind=True,
              soft_time_limit=_s.train_soft_time_limit_s, time_limit=_s.train_time_limit_s)
def train(ctx, p: RunPayload, task):
    def progress(stage: str, pct: float) -> None:
        if task.request.id:  # visible in Flower and to AsyncResult
            task.update_state(state="PROGRESS", meta={"run_id": p.run_id, "stage": stage, "progress": pct})

    try:
        result = train_run(ctx, p.run_id, progress)
    except SoftTimeLimitExceeded:
        from retrain.steps.train import fail_run

        fail_run(ctx, p.run_id, "timed out (soft time limit)")
        raise
    if result.status == "busy":
        # Every training slot is taken: wait and try again (the run stays queued).
        raise task.retry(countdown=5, max_retries=None)
    return asdict(result)
