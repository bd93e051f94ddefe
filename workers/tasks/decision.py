"""Queue ``decision``: requests from outside and the decision on every request."""

from __future__ import annotations

from dataclasses import asdict

from retrain.costs import read_resources
from retrain.payloads import DecidePayload, ManualRequestPayload
from retrain.steps.decide import decide_request
from retrain.steps.requests import request_retraining as request_step
from workers.app import app
from workers.base import retrain_task


@retrain_task(app, name="retrain.request_retraining", schema=ManualRequestPayload, queue="decision")
def request_retraining(ctx, p: ManualRequestPayload):
    return asdict(request_step(ctx, p))


@retrain_task(app, name="retrain.decide", schema=DecidePayload, queue="decision")
def decide(ctx, p: DecidePayload):
    return asdict(decide_request(ctx, p.request_id, read_resources(ctx.settings.artifact_root)))
