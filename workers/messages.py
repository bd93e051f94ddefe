"""What a worker accepts from the broker: Celery protocol-2 task messages of a shape it can run.

The consumer (``workers.app.RetrainConsumer``) asks :func:`refusal` about every
message before Celery's own handler sees it. Celery trusts the shape of what it
receives: a body that is not ``[args, kwargs, embed]`` or a header of the wrong type
raises inside the worker's event loop and kills the main process, or fails later in
a pool child with nothing kept. Here each such message gets a reason instead, and the
consumer keeps it as a dead letter and acknowledges it.

A message passes when:

* its headers are a mapping naming a registered task (``task``) and an ``id``, both
  non-empty strings, and every header Celery reads has the type Celery expects;
* it carries no ``expires`` (Celery would discard an expired task silently) and no
  ``eta`` further ahead than :data:`MAX_ETA_AHEAD_S` (our retries wait seconds);
* its decoded body is ``[args, kwargs, embed]``: a list, a mapping with string keys,
  and a mapping without callbacks, errbacks, chains or chords (retrain's tasks
  return their work to the database, not to a follow-up task).

Protocol 1 (the task name inside the body) is refused: every Celery since 4.0 sends
protocol 2 by default. Whether the one argument is a valid payload for the task is
the task's own check (``workers.base``), which dead-letters it the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from datetime import datetime, timezone
from typing import Any

__all__ = ["MAX_ETA_AHEAD_S", "MAX_ID_CHARS", "refusal", "body_refusal", "header_refusal"]

MAX_ETA_AHEAD_S = 86_400.0
MAX_ID_CHARS = 255

_OPTIONAL_STR = ("lang", "root_id", "parent_id", "group", "shadow", "argsrepr", "kwargsrepr", "origin",
                 "replaced_task_nesting_by")
_OPTIONAL_INT = ("retries", "group_index", "replaced_task_nesting")
_EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def header_refusal(headers: Any, registered: Container[str], now_ts: float) -> str | None:
    """Why these protocol-2 headers cannot be run, or None."""
    if not isinstance(headers, Mapping):
        return f"message headers are {_kind(headers)}, not a mapping: not a Celery task message"
    if "task" not in headers:
        return ("no 'task' header: Celery message protocol 1 (or not a task message at all); "
                "retrain accepts protocol 2, the default of every Celery since 4.0")
    task, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task, str) or not task:
        return f"header 'task' is {_kind(task)} {task!r:.80}, not a task name"
    if task not in registered:
        return f"unknown task name {task!r:.200}: no such task is registered"
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_CHARS:
        return f"header 'id' is {_kind(task_id)} {task_id!r:.80}, not a task id (a string of 1-{MAX_ID_CHARS} chars)"
    for key in _OPTIONAL_STR:
        if headers.get(key) is not None and not isinstance(headers[key], str):
            return f"header {key!r} is {_kind(headers[key])}, not a string"
    for key in _OPTIONAL_INT:
        if headers.get(key) is not None and not _is_int(headers[key]):
            return f"header {key!r} is {_kind(headers[key])}, not an integer"
    if headers.get("retries") is not None and headers["retries"] < 0:
        return "header 'retries' is negative"
    if headers.get("ignore_result") is not None and not isinstance(headers["ignore_result"], bool):
        return f"header 'ignore_result' is {_kind(headers['ignore_result'])}, not a boolean"
    limits = headers.get("timelimit")
    if limits is not None and not (isinstance(limits, list | tuple) and len(limits) == 2
                                   and all(v is None or (_is_number(v) and v > 0) for v in limits)):
        return f"header 'timelimit' is {limits!r:.80}, not [soft, hard] seconds (each positive or null)"
    for key in ("stamps", "stamped_headers"):
        value = headers.get(key)
        if value is not None and not isinstance(value, Mapping | list | tuple):
            return f"header {key!r} is {_kind(value)}, not a mapping or list"
    for key in _EMBED_KEYS:
        if headers.get(key):
            return f"header {key!r} is set: retrain's tasks take no callbacks, errbacks, chains or chords"
    if headers.get("expires") is not None:
        return ("header 'expires' is set: retrain's tasks do not expire (Celery would drop an expired "
                "request silently); send without 'expires'")
    eta = headers.get("eta")
    if eta is not None:
        if not isinstance(eta, str):
            return f"header 'eta' is {_kind(eta)}, not an ISO-8601 time"
        try:
            ahead = _parse_time(eta).timestamp() - now_ts
        except (ValueError, OverflowError) as exc:
            return f"header 'eta' {eta!r:.80} is not an ISO-8601 time: {exc}"
        if ahead > MAX_ETA_AHEAD_S:
            return f"header 'eta' {eta!r:.80} is {ahead:.0f} s ahead; at most {MAX_ETA_AHEAD_S:.0f} s is accepted"
    return None


def body_refusal(body: Any) -> str | None:
    """Why this decoded body is not ``[args, kwargs, embed]``, or None."""
    if not isinstance(body, list | tuple):
        return f"message body is a JSON {_kind(body)}, not Celery's [args, kwargs, embed] list"
    if len(body) != 3:
        return f"message body is a list of {len(body)} items, not Celery's [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return f"args is {_kind(args)}, not a list"
    if not isinstance(kwargs, Mapping):
        return f"kwargs is {_kind(kwargs)}, not a mapping"
    if not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        return "kwargs has a key that is not a name"
    if embed is None:
        return None
    if not isinstance(embed, Mapping):
        return f"embed is {_kind(embed)}, not a mapping"
    unknown = sorted(str(k) for k in embed if k not in _EMBED_KEYS)
    if unknown:
        return f"embed has unknown keys {unknown[:5]}"
    if any(embed.get(k) for k in _EMBED_KEYS):
        return "embed asks for callbacks, errbacks, a chain or a chord: retrain's tasks take none"
    return None


def refusal(headers: Any, decode: Callable[[], Any], registered: Container[str], now_ts: float) -> str | None:
    """Why a message cannot be handed to Celery, or None. ``decode`` is called only for
    headers that pass (it raises on a disallowed content type or an undecodable body)."""
    reason = header_refusal(headers, registered, now_ts)
    if reason is not None:
        return reason
    try:
        body = decode()
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises is the reason
        return f"undecodable message body: {type(exc).__name__}: {str(exc)[:300]}"
    return body_refusal(body)
