"""Queue ``validation``: the candidate against production on held-out data, then on live traffic."""

from __future__ import annotations

from dataclasses import asdict

from retrain.core.payloads import RunPayload, SweepPayload
from retrain.tasks import EVALUATE_ROLLOUTS, VALIDATE, run
from workers.app import app
from workers.base import retrain_task


@retrain_task(app, VALIDATE)
def validate(ctx, p: RunPayload):
    return asdict(run(VALIDATE, ctx, p))


@retrain_task(app, EVALUATE_ROLLOUTS)
def evaluate(ctx, p: SweepPayload):
    """Every shadow and canary in progress: score, judge, and take the step the rules give (periodic)."""
    return [asdict(r) for r in run(EVALUATE_ROLLOUTS, ctx, p).results]
