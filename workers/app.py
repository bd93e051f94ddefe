"""The one Celery app. Configured only from ``celeryconfig``; tasks live in ``workers.tasks``.

Start-up refuses a database whose schema is older than the code, naming the command
that fixes it.
"""

from __future__ import annotations

import sys

from celery import Celery
from celery.signals import worker_init, worker_process_init

from workers import runtime

app = Celery("retrain")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers.tasks"], related_name=None)

import workers.tasks.decision  # noqa: E402,F401  (register the tasks)
import workers.tasks.monitoring  # noqa: E402,F401
import workers.tasks.promotion  # noqa: E402,F401
import workers.tasks.training  # noqa: E402,F401
import workers.tasks.validation  # noqa: E402,F401


@worker_init.connect
def _check_schema(**_):
    from retrain.errors import SchemaOutdatedError
    from retrain.steps.requests import sync_models
    from retrain.storage.schema import check_schema

    ctx = runtime.context()
    try:
        check_schema(ctx.store.db.engine)
    except SchemaOutdatedError as exc:
        print(f"retrain worker refuses to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    sync_models(ctx)
    runtime.reset()  # the parent keeps no pooled connection to hand to its children


@worker_process_init.connect
def _fresh_process(**_):
    runtime.reset()
