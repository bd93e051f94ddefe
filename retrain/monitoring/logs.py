"""``RETRAIN_LOG_FORMAT=json``: one JSON object per log line, for every process.

Each line carries the time, level, logger and message, and the ids that join it with
the audit trail when the record has them: ``model``, ``run_id``, ``request_id``,
``task_id``, ``task`` (pass them with ``extra={...}``; a Celery worker adds the task's
own through :func:`set_task`).

>>> import logging, io
>>> buf = io.StringIO()
>>> h = logging.StreamHandler(buf); h.setFormatter(JsonFormatter())
>>> lg = logging.getLogger("doc"); lg.addHandler(h); lg.propagate = False
>>> lg.warning("run failed", extra={"model": "direction", "run_id": "r1"})
>>> import json; d = json.loads(buf.getvalue()); (d["model"], d["run_id"], d["msg"])
('direction', 'r1', 'run failed')
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from datetime import datetime, timezone
from typing import Any

__all__ = ["JsonFormatter", "configure", "set_task", "IDS"]

IDS = ("model", "run_id", "request_id", "decision_id", "task_id", "task", "event", "target")
_task: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("retrain_task", default=None)


def set_task(**ids: Any) -> None:
    """The ids of the task this thread runs now (None values are left out); ``set_task()`` clears them."""
    _task.set({k: v for k, v in ids.items() if v is not None} or None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
            "process": record.process,
        }
        out.update(_task.get() or {})
        for k in IDS:
            v = record.__dict__.get(k)
            if v is not None:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(fmt: str | None = None, level: int | str = logging.INFO) -> bool:
    """Log JSON lines on stderr when ``fmt`` (default: ``RETRAIN_LOG_FORMAT``) is ``json``; True if it did."""
    fmt = (fmt if fmt is not None else os.environ.get("RETRAIN_LOG_FORMAT", "")).strip().lower()
    if fmt != "json":
        return False
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    return True
