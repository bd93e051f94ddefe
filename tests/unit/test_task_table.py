"""The task table (retrain.tasks) is the one wiring: Celery, celeryconfig and the in-process
dispatch all read it, and no code names a task by a string of its own."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from retrain import tasks
from retrain.tasks import DECIDE, RELAY, TASKS

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "retrain", ROOT / "workers", ROOT / "celeryconfig.py"]
TABLE = ROOT / "retrain" / "tasks.py"
# Files that may spell a task name out, and why. Keep this empty unless there is no other way.
ALLOWED: dict[str, str] = {}


def _python_files():
    for src in SOURCES:
        yield from ([src] if src.is_file() else sorted(src.rglob("*.py")))


def test_the_names_are_the_wire_format():
    # Producers outside this repository (the trading app, messages in flight, beat) use these strings.
    assert list(TASKS) == [
        "retrain.ingest", "retrain.sweep", "retrain.relay", "retrain.reconcile", "retrain.retention",
        "retrain.request_retraining", "retrain.decide", "retrain.train", "retrain.validate",
        "retrain.evaluate_rollouts", "retrain.promote", "retrain.rollback", "retrain.notify", "retrain.notify_retry",
    ]
    assert tasks.QUEUES == ("monitoring", "decision", "training", "validation", "promotion")


def test_no_task_name_is_spelled_out_outside_the_table():
    # Given every Python file of retrain/, workers/ and celeryconfig.py but the table
    names = set(TASKS)
    found = []
    for path in _python_files():
        rel = str(path.relative_to(ROOT))
        if path == TABLE or "migrations" in path.parts or rel in ALLOWED:
            continue
        # When their string literals are read, Then none is a task name (use the constants)
        with warnings.catch_warnings():  # a file's own invalid escapes are not this test's business
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert found == [], "task names outside retrain/tasks.py; import the constant instead:\n" + "\n".join(found)


def test_every_row_resolves_and_steps_stay_in_the_core():
    for spec in TASKS.values():
        assert spec.payload_schema.__module__ == "retrain.core.payloads", spec.name
        if spec.step is not None:
            assert spec.step.startswith("retrain.") and callable(spec.step_function), spec.name
        soft, hard = spec.limits.of(SimpleNamespace(train_soft_time_limit_s=1800, train_time_limit_s=2100))
        assert 0 < soft < hard, spec.name
    # Interval tasks skip a transient error (the next tick redoes them); every other task retries it
    assert tasks.PERIODIC == {n for n, s in TASKS.items() if s.retry.on_transient == "skip"}
    assert tasks.PERIODIC == {"retrain.relay", "retrain.reconcile", "retrain.sweep", "retrain.retention",
                              "retrain.evaluate_rollouts", "retrain.notify_retry"}


def test_the_table_imports_only_the_standard_library():
    # The trading app's client reads names and queues from it: no pydantic, Celery, kombu or SQLAlchemy.
    probe = ("import sys, retrain.tasks; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'celery', 'kombu', 'sqlalchemy'}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def app():
    from workers.app import app

    return app


def test_every_task_is_registered_as_the_table_says(app):
    import celeryconfig
    from retrain.settings import load_settings

    settings = load_settings()
    # Given the Celery app the workers run, Then it has exactly the table's tasks
    assert {n for n in app.tasks if n.startswith("retrain.")} == set(TASKS)
    for name, spec in TASKS.items():
        task = app.tasks[name]
        # with the table's queue, time limits and retry policy
        assert task.queue == spec.queue == celeryconfig.ROUTES[name], name
        assert app.conf.task_routes[name] == {"queue": spec.queue, "routing_key": spec.queue}
        assert (task.soft_time_limit, task.time_limit) == spec.limits.of(settings) == celeryconfig.TIME_LIMITS[name]
        assert task.max_retries == spec.retry.max_retries
        assert task.acks_late and task.reject_on_worker_lost
    assert [q.name for q in app.conf.task_queues] == list(tasks.QUEUES)
    assert celeryconfig.LONGEST_HARD_LIMIT_S == max(hard for _, hard in celeryconfig.TIME_LIMITS.values())


def test_beat_sends_the_tables_interval_tasks_and_the_model_schedules(app):
    from retrain.settings import load_settings

    settings = load_settings()
    beat = app.conf.beat_schedule
    every = {s.every.entry: (n, s.every.of(settings)) for n, s in TASKS.items() if s.every is not None}
    assert {e: (beat[e]["task"], beat[e]["schedule"]) for e in every} == every
    crontab_tasks = {n for n, s in TASKS.items() if s.crontab_per_model}
    assert crontab_tasks == {"retrain.request_retraining"}
    assert all(v["task"] in crontab_tasks for e, v in beat.items() if e not in every)


def test_the_in_process_dispatch_covers_the_same_tasks_with_the_same_schemas():
    from retrain.steps import dispatch

    dispatch.STEPS.clear()
    dispatch.STEPS.update(dispatch._steps())
    # Every task but the broker relay (drain is its in-process counterpart) runs in-process
    assert set(TASKS) - set(dispatch.STEPS) == {RELAY}
    for name, (schema, _fn) in dispatch.STEPS.items():
        assert schema is TASKS[name].payload_schema, name


def test_decide_gets_the_nodes_resource_reading_wherever_it_runs(monkeypatch):
    from retrain.core.policy import ResourceReading
    from retrain.steps import dispatch

    calls = []
    monkeypatch.setitem(tasks._loaded, TASKS[DECIDE].step, lambda ctx, rid, **kw: calls.append((rid, kw)) or "ok")
    monkeypatch.setattr(dispatch, "STEPS", {})
    reading = ResourceReading(4096.0, 10.0, 50_000.0)
    # Given a context that reads its node (as a worker's does), When a decide message runs in-process
    dispatch.run_step(SimpleNamespace(resources=lambda: reading), DECIDE, {"v": 1, "request_id": "r-1"})
    # And given a context without a reader (the backtester's)
    dispatch.run_step(SimpleNamespace(resources=None), DECIDE, {"v": 1, "request_id": "r-2"})
    # Then the step gets the reading, or None (the policy's "no reading"), as the worker would pass it
    assert calls == [("r-1", {"resources": reading}), ("r-2", {"resources": None})]


def test_a_workers_context_reads_its_node(tmp_path, monkeypatch):
    from retrain.core.policy import ResourceReading
    from workers import runtime

    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    runtime.reset()
    try:
        assert isinstance(runtime.context().resources(), ResourceReading)
    finally:
        runtime.reset()
