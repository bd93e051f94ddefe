"""Run the loop's steps in-process, without a broker: the backtester and tests use it.

Every task name maps to its payload schema and its step, exactly as ``workers.tasks``
wires them; ``drain`` publishes the outbox to these steps until it is empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from retrain.context import Context
from retrain.payloads import DecidePayload, IngestBatch, ManualRequestPayload, RunPayload, SweepPayload, parse_payload

__all__ = ["STEPS", "run_step", "drain"]


def _steps() -> dict[str, tuple[type, Callable[[Context, Any], Any]]]:
    from retrain.steps.decide import decide_request
    from retrain.steps.ingest import ingest
    from retrain.steps.promote import promote_run
    from retrain.steps.reconcile import reconcile
    from retrain.steps.requests import request_retraining
    from retrain.steps.sweep import sweep
    from retrain.steps.train import train_run
    from retrain.steps.validate import validate_run

    return {
        "retrain.ingest": (IngestBatch, ingest),
        "retrain.sweep": (SweepPayload, lambda ctx, p: sweep(ctx, p.models)),
        "retrain.reconcile": (SweepPayload, lambda ctx, p: reconcile(ctx)),
        "retrain.request_retraining": (ManualRequestPayload, request_retraining),
        "retrain.decide": (DecidePayload, lambda ctx, p: decide_request(ctx, p.request_id)),
        "retrain.train": (RunPayload, lambda ctx, p: train_run(ctx, p.run_id)),
        "retrain.validate": (RunPayload, lambda ctx, p: validate_run(ctx, p.run_id)),
        "retrain.promote": (RunPayload, lambda ctx, p: promote_run(ctx, p.run_id)),
        **_registry_steps(),
        **_rollout_steps(),
    }


def _rollout_steps() -> dict[str, tuple[type, Callable[[Context, Any], Any]]]:
    from retrain.steps.rollout_step import evaluate_rollouts

    return {"retrain.evaluate_rollouts": (SweepPayload, lambda ctx, p: evaluate_rollouts(ctx, p.models))}


def _registry_steps() -> dict[str, tuple[type, Callable[[Context, Any], Any]]]:
    from retrain.payloads import RollbackPayload
    from retrain.steps.promote import rollback
    from retrain.steps.retention import run_retention

    return {
        "retrain.rollback": (RollbackPayload, lambda ctx, p: rollback(
            ctx, p.model, p.version, actor=p.actor, reason=p.reason, from_version=p.from_version)),
        "retrain.retention": (SweepPayload, lambda ctx, p: run_retention(ctx, p.models)),
    }


STEPS: dict[str, tuple[type, Callable[[Context, Any], Any]]] = {}


def run_step(ctx: Context, task: str, payload: dict) -> Any:
    if not STEPS:
        STEPS.update(_steps())
    schema, fn = STEPS[task]
    return fn(ctx, parse_payload(schema, payload))


def drain(ctx: Context, *, limit: int = 10_000, on_result: Callable[[str, Any], None] | None = None) -> int:
    """Run outbox messages (and the ones they produce) in order until none is left."""
    ran = 0
    while ran < limit:
        with ctx.store.tx() as tx:
            batch = tx.pending_outbox(limit=50)
            tx.mark_published([m.id for m in batch], ctx.now())
        if not batch:
            if _wake_waiting(ctx):
                continue  # a run held back by a dependency may start now (the reconciler's job on workers)
            return ran
        for msg in sorted(batch, key=lambda m: (-m.priority, m.id)):
            result = run_step(ctx, msg.task, msg.payload)
            if on_result:
                on_result(msg.task, result)
            ran += 1
    raise RuntimeError(f"outbox still not empty after {limit} steps: a step keeps enqueuing work")


def _wake_waiting(ctx: Context) -> bool:
    from retrain.waiting import wake

    with ctx.store.tx() as tx:
        deps = {name: tuple(m.depends_on) for name, m in ctx.config.models.items()}
        return bool(wake(tx, depends_on=deps, limit=ctx.settings.training_slots, now=ctx.now()))
