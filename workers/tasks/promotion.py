"""Queue ``promotion``: alias moves (promotion and rollback)."""

from __future__ import annotations

from dataclasses import asdict

from retrain.payloads import RunPayload
from retrain.steps.promote import promote_run
from workers.app import app
from workers.base import retrain_task


@retrain_task(app, name="retrain.promote", schema=RunPayload, queue="promotion")
def promote(ctx, p: RunPayload):
    return asdict(promote_run(ctx, p.run_id))
