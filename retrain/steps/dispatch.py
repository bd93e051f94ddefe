"""Run the loop's steps in-process, without a broker: the backtester and tests use it.

Every task of the task table (:mod:`retrain.tasks`) with a core step runs here through
the same row the Celery task reads: same schema, same step, same arguments. The one
task without a core step is the broker relay (``retrain.relay``): ``drain`` is its
in-process counterpart, publishing the outbox to these steps until it is empty. The
decision's resource reading comes from ``ctx.resources``, as on a worker; the
backtester's context has none, so a replay never depends on the replaying machine's load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from retrain.context import Context
from retrain.core.payloads import parse_payload
from retrain.tasks import TASKS

__all__ = ["STEPS", "run_step", "drain"]


def _steps() -> dict[str, tuple[type, Callable[[Context, Any], Any]]]:
    return {name: (spec.payload_schema, spec.run) for name, spec in TASKS.items() if spec.step is not None}


#: Task name → (payload schema, step), filled on first use.
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
            batch = tx.outbox.pending(limit=50)
            tx.outbox.mark_published([m.id for m in batch], ctx.now())
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
