"""celeryconfig's reliability settings, read from the configuration the workers load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, celeryconfig
from workers.app import app
tasks = {n: t for n, t in app.tasks.items() if n.startswith("retrain.")}
print(json.dumps({
    "visibility": app.conf.broker_transport_options.get("visibility_timeout"),
    "priority_steps": app.conf.broker_transport_options.get("priority_steps"),
    "default_hard": app.conf.task_time_limit,
    "hard": {n: t.time_limit for n, t in tasks.items()},
    "soft": {n: t.soft_time_limit for n, t in tasks.items()},
}))
"""


def _probe(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    return subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def app():
    from workers.app import app

    return app


def test_messages_are_json_only(app):
    c = app.conf
    assert c.accept_content == ["json"] and c.result_accept_content == ["json"]
    assert c.task_serializer == "json" and c.result_serializer == "json"


def test_every_task_acks_late_is_rejected_if_its_worker_dies_and_prefetches_one(app):
    tasks = {n: t for n, t in app.tasks.items() if n.startswith("retrain.")}
    assert {"retrain.train", "retrain.ingest", "retrain.reconcile", "retrain.relay"} <= set(tasks)
    assert all(t.acks_late and t.reject_on_worker_lost for t in tasks.values())
    assert app.conf.worker_prefetch_multiplier == 1


def test_every_task_has_a_soft_limit_below_its_hard_limit(app):
    for name, t in app.tasks.items():
        if name.startswith("retrain."):
            soft = t.soft_time_limit or app.conf.task_soft_time_limit
            hard = t.time_limit or app.conf.task_time_limit
            assert soft and hard and soft < hard, name


def test_the_redis_visibility_timeout_exceeds_the_longest_hard_limit():
    # Given the workers' configuration on Redis, with defaults
    out = _probe(RETRAIN_BROKER_URL="redis://127.0.0.1:1/0")
    assert out.returncode == 0, out.stderr
    conf = json.loads(out.stdout.strip().splitlines()[-1])
    # Then Redis never hands a running task to a second worker
    longest = max([conf["default_hard"], *[h for h in conf["hard"].values() if h]])
    assert conf["visibility"] > longest
    assert conf["hard"]["retrain.train"] == 2100 and conf["soft"]["retrain.train"] == 1800
    assert conf["priority_steps"] == list(range(10))


def test_a_visibility_timeout_below_a_hard_limit_is_refused_at_start():
    # Given a visibility timeout above the training limit but below validation's hard limit (900 s)
    out = _probe(RETRAIN_BROKER_URL="redis://127.0.0.1:1/0", RETRAIN_VISIBILITY_TIMEOUT_S="500",
                 RETRAIN_TRAIN_TIME_LIMIT_S="100", RETRAIN_TRAIN_SOFT_TIME_LIMIT_S="50")
    # Then the configuration refuses to load, naming the variable
    assert out.returncode != 0
    assert "RETRAIN_VISIBILITY_TIMEOUT_S=500 must exceed the longest hard time limit (900 s)" in out.stderr


def test_workers_outlive_broker_and_database_restarts(app):
    c = app.conf
    assert c.broker_connection_retry and c.broker_connection_retry_on_startup
    assert c.broker_connection_max_retries is None
    assert c.worker_cancel_long_running_tasks_on_connection_loss is False
    from retrain.storage.db import make_engine

    engine = make_engine("postgresql://nobody@127.0.0.1:1/none")  # no connection is made here
    assert engine.pool._pre_ping


def test_pool_children_build_their_own_engine_after_the_fork(tmp_path, monkeypatch):
    from celery.signals import worker_process_init

    import workers.app as wa
    from workers import runtime

    assert any(r() is wa._fresh_process for _, r in worker_process_init.receivers)
    # Given a context (and its engine) built in the parent process
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    runtime.reset()
    parent = runtime.context()
    engine = parent.store.db.engine
    # When a pool child starts, Then it builds its own on first use
    wa._fresh_process()
    child = runtime.context()
    assert child is not parent and child.store.db.engine is not engine
    runtime.reset()


def test_shutdown_and_refused_messages_are_configured(app):
    from celery.worker.consumer import Consumer

    from workers.app import RetrainConsumer

    c = app.conf
    assert c.worker_soft_shutdown_timeout > 0
    assert c.worker_consumer == "workers.app:RetrainConsumer" and issubclass(RetrainConsumer, Consumer)
    assert c.task_acks_on_failure_or_timeout is True


def test_the_relay_and_the_reconciler_are_on_beat_by_default(app):
    tasks = {e["task"] for e in app.conf.beat_schedule.values()}
    assert {"retrain.relay", "retrain.reconcile"} <= tasks
