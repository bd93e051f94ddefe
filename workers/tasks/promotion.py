"""Queue ``promotion``: alias moves (promotion and rollback)."""

from __future__ import annotations

from dataclasses import asdict

from retrain.payloads import RollbackPayload, RunPayload
from retrain.steps.promote import promote_run
from workers.app import app
from workers.base import retrain_task


@retrain_task(app, name="retrain.promote", schema=RunPayload, queue="promotion")
def promote(ctx, p: RunPayload):
    return asdict(promote_run(ctx, p.run_id))


@retrain_task(app, name="retrain.rollback", schema=RollbackPayload, queue="promotion")
def rollback(ctx, p: RollbackPayload):
    from retrain.steps.promote import rollback as rollback_step

    return asdict(rollback_step(ctx, p.model, p.version, actor=p.actor, reason=p.reason, from_version=p.from_version))
