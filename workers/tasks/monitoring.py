"""Queue ``monitoring``: ingest of live results, the sweep, the outbox relay, the reconciler, notifications."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta

from retrain.core.payloads import IngestBatch, NotifyPayload, SweepPayload
from retrain.outbox import prune_published, relay
from retrain.tasks import INGEST, NOTIFY, NOTIFY_RETRY, RECONCILE, RELAY, RETENTION, SWEEP, run
from workers.app import app
from workers.base import publish, retrain_task


@retrain_task(app, INGEST)
def ingest(ctx, batch: IngestBatch):
    return asdict(run(INGEST, ctx, batch))


@retrain_task(app, SWEEP)
def sweep(ctx, p: SweepPayload):
    return asdict(run(SWEEP, ctx, p))


@retrain_task(app, RELAY)
def relay_outbox(ctx, _p):
    # Only messages older than a few seconds: the task that wrote them relays its own.
    published = relay(ctx.store, publish, ctx.now(), min_age=timedelta(seconds=5))
    return {"published": published, "pruned": prune_published(ctx.store, ctx.now())}


@retrain_task(app, RECONCILE)
def reconcile(ctx, p: SweepPayload):
    return asdict(run(RECONCILE, ctx, p))


@retrain_task(app, RETENTION)
def retention(ctx, p: SweepPayload):
    return run(RETENTION, ctx, p).to_json()


@retrain_task(app, NOTIFY)
def notify(ctx, p: NotifyPayload):
    return asdict(run(NOTIFY, ctx, p))


@retrain_task(app, NOTIFY_RETRY)
def notify_retry(ctx, p: SweepPayload):
    return asdict(run(NOTIFY_RETRY, ctx, p))
