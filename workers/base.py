"""One decorator for every task: stable name, queue, limits, retries and dead letters in one place.

A task body gets a validated payload and the runtime context; it calls one core step.
After it returns, the outbox rows the step committed are published. Errors follow
their class (retrain.core.errors): a permanent error (bad payload, unknown model) is kept
in the dead-letter table and never retried; a transient one retries with backoff.

Every task acknowledges late and is rejected back to the broker if its worker dies
(``acks_late``, ``reject_on_worker_lost``): delivery is at least once, which the
steps make safe (batch ids, run states under row locks, fencing tokens, attempt
caps). A task's queue, schema, step, time limits and retry policy are its row of the
task table (:mod:`retrain.tasks`); the limits are read through ``celeryconfig.TIME_LIMITS``
(the table resolved against the settings).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded

from retrain.core.errors import PayloadError, StaleLeaseError, TransientError
from retrain.core.payloads import parse_payload
from retrain.core.records import OutboxMessage
from retrain.outbox import relay
from retrain.tasks import TASKS
from workers import runtime

log = logging.getLogger("retrain.tasks")

__all__ = ["retrain_task", "publish", "relay_now", "relay_quietly", "dead_letter", "progress_reporter",
           "queue_consumers"]


def publish(msg: OutboxMessage) -> None:
    """Send an outbox message as a task by name, on its queue, with the broker's priority."""
    import celeryconfig
    from workers.app import app

    queue = celeryconfig.ROUTES[msg.task]
    app.send_task(msg.task, args=[msg.payload], queue=queue, routing_key=queue,
                  priority=celeryconfig.broker_priority(msg.priority))


def queue_consumers(queue: str, timeout: float = 1.0) -> list[str] | None:
    """The workers that consume ``queue``, asked over the broker (one broadcast, ``timeout`` s at most).

    None when the broker cannot tell: the embedded SQLite broker and ``memory://`` carry no
    broadcasts, so a worker there cannot answer.
    """
    from workers.app import app

    scheme = str(app.conf.broker_url or "").split("://", 1)[0]
    if scheme not in ("redis", "rediss", "amqp", "amqps", "pyamqp"):
        return None
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(w for w, queues in replies.items() if any(q.get("name") == queue for q in queues or []))


def relay_now() -> int:
    ctx = runtime.context()
    return relay(ctx.store, publish, ctx.now())


def relay_quietly() -> int:
    """Publish what the step left in the outbox; if the broker or database is out of reach,
    leave it there for the periodic relay (``retrain.relay`` on beat) instead of failing a
    task whose work is committed."""
    try:
        return relay_now()
    except Exception as exc:  # noqa: BLE001 - the outbox keeps the rows; the beat relay retries
        log.warning("outbox relay after the task failed (%s); the periodic relay will publish", exc)
        return 0


def progress_reporter(task: Task, run_id: str) -> Callable[[str, float], None]:
    """A thread-safe ``progress(stage, pct)`` for a task: Celery state PROGRESS (read by
    ``AsyncResult`` when a result backend is set) and a ``task-progress`` event (Flower).

    The ids are captured now, because the training's heartbeat thread calls it and
    Celery's request context is per thread.
    """
    task_id, hostname = task.request.id, task.request.hostname

    def report(stage: str, pct: float) -> None:
        if not task_id:
            return
        meta = {"run_id": run_id, "stage": stage, "progress": round(float(pct), 3)}
        task.update_state(task_id=task_id, state="PROGRESS", meta=meta)
        with task.app.events.default_dispatcher(hostname=hostname) as dispatcher:
            dispatcher.send("task-progress", uuid=task_id, **meta)

    return report


def _storable(value: Any, depth: int = 0) -> Any:
    """A JSON value both databases store: no NaN/Infinity (Postgres' JSON refuses them),
    no NUL characters or lone surrogates (Postgres' text refuses them), string keys."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth > 20:
        return _text(repr(value)[:1000])
    if isinstance(value, dict):
        return {_text(str(k)): _storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v, depth + 1) for v in value]
    return _text(repr(value)[:1000])


def _text(s: str) -> str:
    return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\\u0000")


def dead_letter(name: str, reason: str, payload: Any) -> None:
    """Keep a refused message (or its evidence, when it is huge) with the reason.

    Whatever the message held is stored: values no database column takes (NaN, NUL,
    lone surrogates) are written as text, and if the row still cannot be written the
    evidence is kept as a bounded repr."""
    ctx = runtime.context()
    body = payload if isinstance(payload, dict) else {"raw": repr(payload)[:10_000]}
    size = len(repr(body))
    if size > 100_000:  # keep the evidence, not a 5 MB blob, in the table
        body = {"truncated": repr(body)[:10_000], "size": size}
    body = _storable(body)
    name, reason = _text(name)[:64], _text(reason)[:4000]
    model = body.get("model") if isinstance(body.get("model"), str) else None
    model = model[:128] if model else None
    try:
        with ctx.store.tx() as tx:
            tx.dead_letters.add(ctx.now(), name, reason, body, model)
    except Exception as exc:  # noqa: BLE001 - a value the database refused: keep it as text instead
        if isinstance(exc, TransientError):
            raise
        log.warning("%s: dead letter stored as text (%s)", name, type(exc).__name__)
        with ctx.store.tx() as tx:
            tx.dead_letters.add(ctx.now(), name, reason, {"unstorable": _text(repr(payload)[:10_000])}, None)
    log.warning("%s: payload rejected and kept in dead_letters: %s", name, reason)


def retrain_task(app, name: str, *, bind: bool = False) -> Callable:
    """Declare task ``name`` of the task table: ``fn(ctx, payload[, task])`` with ``payload``
    validated against the row's schema; the body calls the row's step (``retrain.tasks.run``)
    and turns its result into JSON."""
    import celeryconfig

    spec = TASKS[name]
    schema, queue, policy, relays = spec.payload_schema, spec.queue, spec.retry, spec.relays
    soft_time_limit, time_limit = celeryconfig.TIME_LIMITS[name]

    def wrap(fn: Callable) -> Task:
        @app.task(name=name, queue=queue, bind=True, acks_late=True, reject_on_worker_lost=True,
                  soft_time_limit=soft_time_limit, time_limit=time_limit, max_retries=policy.max_retries)
        @functools.wraps(fn)
        def task(self: Task, payload: Any = None, *extra: Any, **kwargs: Any) -> Any:
            try:
                if extra or kwargs:
                    raise PayloadError(f"{name} takes one JSON object argument")
                body = parse_payload(schema, payload)
                ctx = runtime.context()
                result = fn(ctx, body, self) if bind else fn(ctx, body)
            except (PayloadError, StaleLeaseError) as exc:
                dead_letter(name, str(exc), payload)
                relay_quietly()  # a stale attempt may have freed a slot and woken a waiting run
                return {"rejected": str(exc)}
            except TransientError as exc:
                if policy.on_transient == "skip":
                    # The next beat tick does this job again: no retry piling up behind an outage.
                    log.warning("%s: %s; the next periodic run will do it", name, exc)
                    return {"skipped": str(exc)}
                # Never give up on a transient error (the message would be lost with it); back
                # off to at most max_backoff_s (10 s), so work resumes within seconds of the service's return.
                # self.retry raises Celery's Retry itself, carrying exc: nothing to chain.
                raise self.retry(exc=exc, countdown=min(policy.max_backoff_s, 1 + self.request.retries),  # noqa: B904
                                 max_retries=policy.max_retries)
            except (Retry, SoftTimeLimitExceeded):
                raise
            except Exception as exc:  # noqa: BLE001 - any other failure is kept as a dead letter, then raised
                # Late acks would otherwise drop the message silently: keep it, then fail loudly.
                log.exception("%s failed", name)
                try:
                    dead_letter(name, f"{type(exc).__name__}: {exc}", payload)
                except Exception:  # noqa: BLE001 - the task's own error, raised next, matters more
                    log.exception("%s: could not write the dead letter", name)
                raise
            if relays:
                relay_quietly()
            return result

        return task

    return wrap

