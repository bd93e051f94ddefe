"""The per-process runtime the tasks use: settings, database, model file, clock, artifacts.

Built lazily in the process that runs tasks (after a prefork child starts), never at
import, so no connection or random state is inherited across a fork. The demo and
tests swap the clock with ``set_clock``.
"""

from __future__ import annotations

import functools
import os
import socket
import threading

from retrain.context import Context
from retrain.core.clock import Clock, SystemClock
from retrain.core.costs import read_resources
from retrain.settings import Settings, load_settings

_lock = threading.Lock()
_ctx: Context | None = None
_clock: Clock = SystemClock()


def build_context(settings: Settings | None = None, clock: Clock | None = None) -> Context:
    settings = settings or load_settings()
    worker_id = settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
    ctx = Context.from_settings(settings, clock or _clock, worker_id)
    # The decision reads this node's resources when no training node reported any.
    assert settings.artifact_root is not None  # Context.from_settings made the home
    ctx.resources = functools.partial(read_resources, settings.artifact_root)
    return ctx


def context() -> Context:
    global _ctx
    if _ctx is None:
        with _lock:
            if _ctx is None:
                _ctx = build_context()
    return _ctx


def set_clock(clock: Clock) -> None:
    global _clock
    _clock = clock
    if _ctx is not None:
        _ctx.clock = clock


def reset() -> None:
    """Forget the context (after a fork, or when settings change in tests)."""
    global _ctx
    with _lock:
        if _ctx is not None:
            _ctx.store.db.dispose()
        _ctx = None
