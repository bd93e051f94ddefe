"""Queue ``validation``: the candidate against production on held-out data, then on live traffic."""

from __future__ import annotations

from dataclasses import asdict

from retrain.payloads import RunPayload, SweepPayload
from retrain.steps.rollout_step import evaluate_rollouts
from retrain.steps.validate import validate_run
from workers.app import app
from workers.base import retrain_task


@retrain_task(app, name="retrain.validate", schema=RunPayload, queue="validation", soft_time_limit=600, time_limit=900)
def validate(ctx, p: RunPayload):
    return asdict(validate_run(ctx, p.run_id))


@retrain_task(app, name="retrain.evaluate_rollouts", schema=SweepPayload, queue="validation", soft_time_limit=300,
              time_limit=420)
def evaluate(ctx, p: SweepPayload):
    """Every shadow and canary in progress: score, judge, and take the step the rules give (periodic)."""
    return [asdict(r) for r in evaluate_rollouts(ctx, p.models).results]
