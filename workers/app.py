"""The one Celery app. Configured only from ``celeryconfig``; tasks live in ``workers.tasks``.

Start-up refuses a database whose schema is older than the code, naming the command
that fixes it. Each process builds its own database engine after the fork (the
runtime is reset in every pool child), so no pooled connection crosses a fork.

Messages that never reach a task are kept too, as dead letters with the reason:
bodies above ``RETRAIN_MAX_MESSAGE_BYTES`` (refused before decoding, by
:class:`RetrainConsumer`), undecodable bodies, content types other than JSON (a
pickle is refused before it is loaded, so its payload never runs) and unknown task
names (the ``task_rejected`` and ``task_unknown`` signals). Only a bounded excerpt
of the raw body is kept, never decoded.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from celery import Celery
from celery.signals import task_rejected, task_unknown, worker_init, worker_process_init, worker_shutdown
from celery.worker.consumer import Consumer
from vine import promise

from workers import runtime

log = logging.getLogger("retrain.worker")

app = Celery("retrain")
app.config_from_object("celeryconfig")

import workers.tasks.decision  # noqa: E402,F401  (register the tasks)
import workers.tasks.monitoring  # noqa: E402,F401
import workers.tasks.promotion  # noqa: E402,F401
import workers.tasks.training  # noqa: E402,F401
import workers.tasks.validation  # noqa: E402,F401

__all__ = ["app", "RetrainConsumer", "keep_refused"]

EXCERPT_BYTES = 2000


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def keep_refused(reason: str, message, name: str | None = None) -> None:
    """Write a dead letter for a message no task will see: its headers, content type,
    size and a short excerpt of the raw body (never decoded)."""
    from workers.base import dead_letter

    body = message.body if message is not None else b""
    raw = body if isinstance(body, bytes | bytearray) else str(body).encode("utf-8", "replace")
    headers = dict(getattr(message, "headers", None) or {})
    name = name or str(headers.get("task") or "(no task name)")
    evidence = {
        "task": name, "id": headers.get("id"), "content_type": getattr(message, "content_type", None),
        "content_encoding": getattr(message, "content_encoding", None), "size": len(raw),
        "headers": _jsonable({k: v for k, v in headers.items() if k not in ("argsrepr", "kwargsrepr")}),
        "excerpt": raw[:EXCERPT_BYTES].decode("latin-1"),
        "delivery_info": _jsonable({k: v for k, v in (getattr(message, "delivery_info", None) or {}).items()
                                    if k in ("exchange", "routing_key", "priority")}),
    }
    try:
        dead_letter(name, reason, evidence)
    except Exception:  # the database is out of reach: the log is all that is left
        log.exception("refused message %s (%s) could not be kept as a dead letter", name, reason)


class RetrainConsumer(Consumer):
    """Celery's consumer, refusing oversized bodies before decoding, keeping the
    undecodable ones as dead letters (Celery would log and drop them), and surviving a
    broker restart that kombu's clean-up trips on."""

    def on_connection_error_after_connected(self, exc):
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError as err:
            # kombu 5.7 on Redis: closing the broken connection may try to hand the unacked
            # messages back through a client that is already gone, and the AttributeError
            # would kill the worker. The connection is dead either way: reconnect as usual
            # (what the broker lost, the reconciler sends again).
            log.warning("broker connection lost and could not be closed cleanly (%s); reconnecting", err)

    def on_decode_error(self, message, exc):
        keep_refused(f"undecodable message: {type(exc).__name__}: {exc}", message)
        super().on_decode_error(message, exc)

    def create_task_handler(self, promise=promise):
        handler = super().create_task_handler(promise)
        from retrain.settings import load_settings

        limit = load_settings().max_message_bytes

        def on_task_received(message):
            size = len(message.body or b"")
            if size > limit:
                keep_refused(f"message body of {size} bytes exceeds RETRAIN_MAX_MESSAGE_BYTES={limit}", message)
                message.reject_log_error(log, self.connection_errors, requeue=False)
                return None
            return handler(message)

        return on_task_received


@task_unknown.connect
def _unknown_task(sender=None, message=None, exc=None, name=None, id=None, **_):  # noqa: A002 - signal's names
    keep_refused(f"unknown task name {name!r}: no such task is registered", message, name=name)


@task_rejected.connect
def _rejected(sender=None, message=None, exc=None, **_):
    what = f"{type(exc).__name__}: {exc}" if exc is not None else "not a task message"
    keep_refused(f"message refused before it reached a task: {what}", message)


@worker_init.connect
def _check_schema(**_):
    from retrain.errors import SchemaOutdatedError
    from retrain.steps.requests import sync_models
    from retrain.storage.schema import check_schema

    ctx = runtime.context()
    try:
        check_schema(ctx.store.db.engine)
    except SchemaOutdatedError as exc:
        print(f"retrain worker refuses to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    sync_models(ctx)
    runtime.reset()  # the parent keeps no pooled connection to hand to its children


@worker_process_init.connect
def _fresh_process(**_):
    # A pool child: forget the parent's engine (without closing its sockets, which the
    # parent still owns) and build its own on first use.
    runtime.reset()


@worker_shutdown.connect
def _close(**_):
    runtime.reset()
