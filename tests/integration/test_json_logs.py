"""``RETRAIN_LOG_FORMAT=json``: a worker's log lines are JSON objects carrying the task's ids.

In a fresh process (the root logger is reconfigured): the worker's Celery signal handlers
(``workers/logs.py``) see a task start with a payload, and a line logged during it, as the
steps log, is one JSON object with the task id and name and the payload's model, run and
request ids; after the task the ids are gone.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.procs import ROOT, retrain_env

pytestmark = pytest.mark.integration

WORKER = """
import logging
from celery import signals
import workers.logs  # the worker's handlers, as workers.app imports them
from retrain.monitoring import logs

assert logs.configure()  # RETRAIN_LOG_FORMAT=json, as the worker's after_setup_logger does

class Task:
    name = "retrain.train"

payload = {"v": 1, "run_id": "run-42", "model": "direction", "request_id": "req-7", "attempt": 1}
signals.task_prerun.send(sender=Task, task_id="task-abc", task=Task(), args=(payload,), kwargs={})
logging.getLogger("retrain.worker").warning("training failed: %s", "out of memory", extra={"decision_id": "dec-9"})
signals.task_postrun.send(sender=Task, task_id="task-abc", task=Task(), args=(payload,), kwargs={})
logging.getLogger("retrain.worker").info("idle")
"""


def test_a_worker_log_line_is_json_with_the_task_and_payload_ids():
    # Given a worker-style process with RETRAIN_LOG_FORMAT=json
    out = subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=retrain_env(RETRAIN_LOG_FORMAT="json"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # When a task logs while it runs, and the worker logs after it
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 2, out.stderr
    during, after = lines
    # Then the line is one JSON object with the message, the level and the ids that join it with the audit trail
    assert during["msg"] == "training failed: out of memory" and during["level"] == "warning"
    assert during["logger"] == "retrain.worker" and during["ts"].endswith("+00:00")
    assert {k: during[k] for k in ("task_id", "task", "model", "run_id", "request_id", "decision_id")} == {
        "task_id": "task-abc", "task": "retrain.train", "model": "direction", "run_id": "run-42",
        "request_id": "req-7", "decision_id": "dec-9"}
    # And a line after the task carries no task's ids
    assert after["msg"] == "idle" and not {"task_id", "task", "model", "run_id", "request_id"} & after.keys()
