"""Queue ``validation``: the candidate against production on held-out data."""

from __future__ import annotations

from dataclasses import asdict

from retrain.payloads import RunPayload
from retrain.steps.validate import validate_run
from workers.app import app
from workers.base import retrain_task


@retrain_task(app, name="retrain.validate", schema=RunPayload, queue="validation", soft_time_limit=600, time_limit=900)
def validate(ctx, p: RunPayload):
    return asdict(validate_run(ctx, p.run_id))
