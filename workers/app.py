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

import functools
import json
import logging
import sys
from typing import Any

from celery import Celery
from celery.signals import beat_init, task_rejected, task_unknown, worker_init, worker_process_init, worker_shutdown
from celery.worker.consumer import Consumer
from vine import promise

from workers import runtime

log = logging.getLogger("retrain.worker")

app = Celery("retrain")
app.config_from_object("celeryconfig")

import workers.logs  # noqa: E402,F401  (RETRAIN_LOG_FORMAT=json)
import workers.tasks.decision  # noqa: E402,F401  (register the tasks)
import workers.tasks.monitoring  # noqa: E402,F401
import workers.tasks.promotion  # noqa: E402,F401
import workers.tasks.training  # noqa: E402,F401
import workers.tasks.validation  # noqa: E402,F401

__all__ = ["app", "RetrainConsumer", "keep_refused"]

EXCERPT_BYTES = 2000


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:EXCERPT_BYTES]


def keep_refused(reason: str, message, name: str | None = None) -> None:
    """Write a dead letter for a message no task will see: its headers, content type,
    size and a short excerpt of the raw body (never decoded). Hostile headers are
    kept as evidence, never trusted."""
    from workers.base import dead_letter

    try:
        body = message.body if message is not None else b""
        raw = body if isinstance(body, bytes | bytearray) else str(body).encode("utf-8", "replace")
        headers = getattr(message, "headers", None)
        headers = dict(headers) if isinstance(headers, dict) else {"(not a mapping)": repr(headers)[:200]}
        task = headers.get("task")
        name = (name or (task if isinstance(task, str) and task else "(no task name)"))[:64]
        evidence = {
            "task": name, "id": _jsonable(headers.get("id")), "content_type": getattr(message, "content_type", None),
            "content_encoding": getattr(message, "content_encoding", None), "size": len(raw),
            "headers": _jsonable({str(k)[:200]: v for k, v in headers.items() if k not in ("argsrepr", "kwargsrepr")}),
            "excerpt": bytes(raw[:EXCERPT_BYTES]).decode("latin-1"),
            "delivery_info": _jsonable({k: v for k, v in (getattr(message, "delivery_info", None) or {}).items()
                                        if k in ("exchange", "routing_key", "priority")}),
        }
        dead_letter(name, reason, evidence)
    except Exception:  # noqa: BLE001 - the database is out of reach: the log is all that is left
        log.exception("refused message %s (%s) could not be kept as a dead letter", name, reason)


def _ack_of_a_live_connection(ack):
    """Wrap a message's ack/reject so that acknowledging on a closed broker connection
    is a warning, not a dead worker.

    A task that outlives a broker restart finishes after Celery closed the old
    connection; kombu 5.7's Redis channel then rebuilds a client from a transport whose
    ``client`` is gone (``AttributeError`` in ``_connparams``), inside the event loop.
    The delivery tag belonged to the dead connection anyway: the broker hands the
    message out again (Redis after its visibility timeout), and the steps are idempotent.
    """

    @functools.wraps(ack)
    def guarded(*args, **kwargs):
        try:
            return ack(*args, **kwargs)
        except AttributeError as exc:
            log.warning("could not acknowledge a message of a closed broker connection (%s); "
                        "the broker delivers it again and the step is idempotent", exc)
            return None

    return guarded


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

    def call_soon_ack(self, p, *args, **kwargs):
        return super().call_soon_ack(_ack_of_a_live_connection(p), *args, **kwargs)

    def on_decode_error(self, message, exc):
        # kombu calls this for a body it could not even unpack (e.g. a bad compression header).
        keep_refused(f"undecodable message: {type(exc).__name__}: {str(exc)[:300]}", message)
        try:
            if not message.acknowledged:
                message.ack()
        except Exception:  # noqa: BLE001 - the dead letter is kept; never let a refusal kill the worker
            log.exception("could not acknowledge an undecodable message")

    def create_task_handler(self, promise=promise):
        """Every message ends as a task run or a dead letter: whatever its body, headers,
        content type or encoding, nothing it carries can raise out of here (an exception
        would kill the worker's main process, and the restored message the next one)."""
        import time

        from kombu.serialization import prepare_accept_content

        from retrain.settings import load_settings
        from workers.messages import refusal

        handler = super().create_task_handler(promise)
        limit = load_settings().max_message_bytes
        accept = prepare_accept_content(self.app.conf.accept_content)
        registered = self.strategies  # filled by update_strategies before the first message

        def on_task_received(message):
            reason: str | None
            try:
                size = len(message.body or b"")
                if size > limit:
                    reason = f"message body of {size} bytes exceeds RETRAIN_MAX_MESSAGE_BYTES={limit}"
                else:
                    message.accept = accept
                    reason = refusal(message.headers, message.decode, registered, time.time())
            except Exception as exc:  # noqa: BLE001 - a message we cannot even inspect is refused
                reason = f"message could not be inspected: {type(exc).__name__}: {str(exc)[:300]}"
            if reason is None:
                try:
                    return handler(message)
                except Exception as exc:  # noqa: BLE001 - Celery trusted a shape it could not take
                    reason = f"the worker could not take the message: {type(exc).__name__}: {str(exc)[:300]}"
            self._refuse(message, reason)
            return None

        return on_task_received

    def _refuse(self, message, reason: str) -> None:
        keep_refused(reason, message)
        try:
            if not message.acknowledged:
                message.reject_log_error(log, self.connection_errors, requeue=False)
        except Exception:  # noqa: BLE001 - the dead letter is kept; never let a refusal kill the worker
            log.exception("could not reject a refused message")


@task_unknown.connect
def _unknown_task(sender=None, message=None, exc=None, name=None, id=None, **_):  # noqa: A002 - signal's names
    keep_refused(f"unknown task name {name!r}: no such task is registered", message, name=name)


@task_rejected.connect
def _rejected(sender=None, message=None, exc=None, **_):
    what = f"{type(exc).__name__}: {exc}" if exc is not None else "not a task message"
    keep_refused(f"message refused before it reached a task: {what}", message)


@worker_init.connect
def _check_schema(**_):
    from retrain.core.errors import SchemaOutdatedError
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
    _repair_bindings()
    _declare_queues()


@beat_init.connect
def _beat_declares_queues(**_):
    _declare_queues()


def _declare_queues() -> None:
    """RabbitMQ: use each queue as whoever declared it first made it (see
    ``retrain.queues.declare_queues``), so a queue a plain Celery producer declared
    before us never stops a worker with 406 PRECONDITION_FAILED."""
    from retrain.queues import declare_queues, is_amqp

    if not is_amqp(app.conf.broker_url):
        return
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3)
            found = declare_queues(conn, app.amqp.queues.values())
        if found:
            log.info("queues declared before this worker, used as they are: %s", ", ".join(found))
    except Exception as exc:  # noqa: BLE001 - Celery declares them itself once the broker is reachable
        log.warning("could not check the queues on the broker (%s)", exc)


def _repair_bindings() -> None:
    """Remove queue bindings on Redis that kombu cannot read with its default separator.

    Earlier versions of retrain declared bindings with ``sep=":"``; one such member in a
    ``_kombu.binding.<queue>`` set makes every send to that queue fail with a ValueError
    in kombu's exchange lookup, for our client and for any plain Celery producer alike."""
    from retrain.queues import QUEUES, is_redis

    url = app.conf.broker_url
    if not is_redis(url):
        return
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            client, sep = channel.client, channel.sep
            for queue in QUEUES:
                key = channel.keyprefix_queue % queue
                for member in client.smembers(key):
                    text = member.decode("utf-8", "replace") if isinstance(member, bytes) else str(member)
                    if len(text.split(sep)) != 3:
                        client.srem(key, member)
                        log.warning("removed a queue binding kombu cannot read from %s: %r", key, text[:200])
    except Exception as exc:  # noqa: BLE001 - the broker may not be up yet; workers reconnect by themselves
        log.warning("could not check the queue bindings on the broker (%s)", exc)


@worker_process_init.connect
def _fresh_process(**_):
    # A pool child: forget the parent's engine (without closing its sockets, which the
    # parent still owns) and build its own on first use.
    runtime.reset()


@worker_shutdown.connect
def _close(**_):
    runtime.reset()
