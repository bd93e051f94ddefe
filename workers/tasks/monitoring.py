"""Queue ``monitoring``: ingest of live results, the sweep, the outbox relay, the reconciler."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta

from retrain.outbox import prune_published, relay
from retrain.payloads import IngestBatch, SweepPayload
from retrain.steps.ingest import ingest as ingest_step
from retrain.steps.sweep import sweep as sweep_step
from workers.app import app
from workers.base import publish, retrain_task


@retrain_task(app, name="retrain.ingest", schema=IngestBatch, queue="monitoring", relays=False)
def ingest(ctx, batch: IngestBatch):
    return asdict(ingest_step(ctx, batch))


@retrain_task(app, name="retrain.sweep", schema=SweepPayload, queue="monitoring", soft_time_limit=240, time_limit=300)
def sweep(ctx, p: SweepPayload):
    return asdict(sweep_step(ctx, p.models))


@retrain_task(app, name="retrain.relay", schema=SweepPayload, queue="monitoring")
def relay_outbox(ctx, _p):
    # Only messages older than a few seconds: the task that wrote them relays its own.
    published = relay(ctx.store, publish, ctx.now(), min_age=timedelta(seconds=5))
    return {"published": published, "pruned": prune_published(ctx.store, ctx.now())}


@retrain_task(app, name="retrain.reconcile", schema=SweepPayload, queue="monitoring")
def reconcile(ctx, _p):
    from retrain.steps.reconcile import reconcile as reconcile_step

    return asdict(reconcile_step(ctx))


@retrain_task(app, name="retrain.retention", schema=SweepPayload, queue="monitoring", soft_time_limit=540, time_limit=600)
def retention(ctx, p: SweepPayload):
    from retrain.steps.retention import run_retention

    return run_retention(ctx, p.models).to_json()
