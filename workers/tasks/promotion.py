"""Queue ``promotion``: alias moves (promotion and rollback)."""

from __future__ import annotations

from dataclasses import asdict

from retrain.core.payloads import RollbackPayload, RunPayload
from retrain.tasks import PROMOTE, ROLLBACK, run
from workers.app import app
from workers.base import retrain_task


@retrain_task(app, PROMOTE)
def promote(ctx, p: RunPayload):
    return asdict(run(PROMOTE, ctx, p))


@retrain_task(app, ROLLBACK)
def rollback(ctx, p: RollbackPayload):
    return asdict(run(ROLLBACK, ctx, p))
