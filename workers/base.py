"""One decorator for every task: stable name, queue, limits, retries and dead letters in one place.

A task body gets a validated payload and the runtime context; it calls one core step.
After it returns, the outbox rows the step committed are published. Errors follow
their class (retrain.errors): a permanent error (bad payload, unknown model) is kept
in the dead-letter table and never retried; a transient one retries with backoff.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded

from retrain.errors import PayloadError, StaleLeaseError, TransientError
from retrain.outbox import relay
from retrain.payloads import parse_payload
from retrain.storage.repo import OutboxMessage
from workers import runtime

log = logging.getLogger("retrain.tasks")

__all__ = ["retrain_task", "publish", "relay_now"]


def publish(msg: OutboxMessage) -> None:
    """Send an outbox message as a task by name, on its queue, with the broker's priority."""
    import celeryconfig
    from workers.app import app

    queue = celeryconfig.ROUTES[msg.task]
    app.send_task(msg.task, args=[msg.payload], queue=queue, routing_key=queue,
                  priority=celeryconfig.broker_priority(msg.priority))


def relay_now() -> int:
    ctx = runtime.context()
    return relay(ctx.store, publish, ctx.now())


def _dead_letter(name: str, reason: str, payload: Any) -> None:
    ctx = runtime.context()
    body = payload if isinstance(payload, dict) else {"raw": repr(payload)[:10_000]}
    if len(repr(body)) > 100_000:  # keep the evidence, not a 5 MB blob, in the table
        body = {"truncated": repr(body)[:10_000], "size": len(repr(body))}
    model = body.get("model") if isinstance(body.get("model"), str) else None
    with ctx.store.tx() as tx:
        tx.dead_letter(ctx.now(), name, reason, body, model)
    log.warning("%s: payload rejected and kept in dead_letters: %s", name, reason)


def retrain_task(app, *, name: str, schema: type | None, queue: str, soft_time_limit: int | None = None,
                 time_limit: int | None = None, max_retries: int = 10, bind: bool = False) -> Callable:
    """Declare a task: ``fn(ctx, payload[, task])`` with ``payload`` validated against ``schema``."""

    def wrap(fn: Callable) -> Task:
        @app.task(name=name, queue=queue, bind=True, acks_late=True, reject_on_worker_lost=True,
                  soft_time_limit=soft_time_limit, time_limit=time_limit, max_retries=max_retries)
        @functools.wraps(fn)
        def task(self: Task, payload: Any = None, *extra: Any, **kwargs: Any) -> Any:
            try:
                if extra or kwargs:
                    raise PayloadError(f"{name} takes one JSON object argument")
                body = parse_payload(schema, payload) if schema is not None else payload
                ctx = runtime.context()
                result = fn(ctx, body, self) if bind else fn(ctx, body)
            except (PayloadError, StaleLeaseError) as exc:
                _dead_letter(name, str(exc), payload)
                return {"rejected": str(exc)}
            except TransientError as exc:
                raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries))
            except (Retry, SoftTimeLimitExceeded):
                raise
            except Exception as exc:
                # Late acks would otherwise drop the message silently: keep it, then fail loudly.
                log.exception("%s failed", name)
                try:
                    _dead_letter(name, f"{type(exc).__name__}: {exc}", payload)
                except Exception:
                    log.exception("%s: could not write the dead letter", name)
                raise
            relay_now()
            return result

        return task

    return wrap


def reject_message(reason: str) -> None:
    raise Reject(reason, requeue=False)
