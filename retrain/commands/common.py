"""What every command shares: the context, output as text or JSON, publishing the outbox."""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["_ctx", "_out", "_publish_outbox", "_short"]


def _ctx():
    from retrain.clock import SystemClock
    from retrain.context import Context
    from retrain.settings import load_settings
    from retrain.storage.schema import check_schema

    ctx = Context.from_settings(load_settings(), SystemClock(), "cli")
    check_schema(ctx.store.db.engine)
    return ctx


def _publish_outbox(ctx) -> None:
    """Best effort: hand committed messages to the broker now; the relay on beat retries."""
    try:
        workers_base = importlib.import_module("workers.base")
        workers_base.relay_now()
    except Exception as exc:  # broker unreachable: the outbox keeps the messages
        print(f"(messages kept in the outbox for the relay: {exc})", file=sys.stderr)


def _out(args, data: Any, text: str) -> None:
    from retrain.report import to_json

    print(to_json(data) if getattr(args, "json", False) else text)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = "" if v is None else str(v)
    return s if len(s) <= 24 else s[:21] + "..."


