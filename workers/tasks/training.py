"""Queue ``training``: runs on dedicated nodes (``celery worker -Q training -P prefork -c 1``).

Prefork, because time limits are enforced only there: the soft limit fails the run
(its slot goes back at once), the hard limit kills the child and the attempt cap
ends the run ``dead`` if it keeps happening.
"""

from __future__ import annotations

from dataclasses import asdict

from celery.exceptions import SoftTimeLimitExceeded

from retrain.core.payloads import RunPayload
from retrain.steps.train import fail_run
from retrain.tasks import TRAIN, run
from workers.app import app
from workers.base import progress_reporter, relay_quietly, retrain_task


@retrain_task(app, TRAIN, bind=True)
def train(ctx, p: RunPayload, task):
    try:
        result = run(TRAIN, ctx, p, progress=progress_reporter(task, p.run_id), passthrough=(SoftTimeLimitExceeded,))
    except SoftTimeLimitExceeded:
        fail_run(ctx, p.run_id, f"timed out: soft time limit of {task.soft_time_limit} s")
        relay_quietly()  # the freed slot's wake-up message
        raise
    # 'busy' and 'blocked' runs stay queued in Postgres with what they wait for; the message is
    # done with: a freed slot or the reconciler sends the run again when it may start.
    return asdict(result)
