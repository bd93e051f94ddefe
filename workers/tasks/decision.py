"""Queue ``decision``: requests from outside and the decision on every request."""

from __future__ import annotations

from dataclasses import asdict

from retrain.core.payloads import DecidePayload, ManualRequestPayload
from retrain.tasks import DECIDE, REQUEST_RETRAINING, run
from workers.app import app
from workers.base import retrain_task


@retrain_task(app, REQUEST_RETRAINING)
def request_retraining(ctx, p: ManualRequestPayload):
    return asdict(run(REQUEST_RETRAINING, ctx, p))


@retrain_task(app, DECIDE)
def decide(ctx, p: DecidePayload):
    # The step reads this node's resources through ctx.resources (set by workers.runtime).
    return asdict(run(DECIDE, ctx, p))
