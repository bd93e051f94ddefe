"""Fault 6: an emergency queued after 20 scheduled runs starts before all of them.

Proves: the Redis transport's priority queues (priority_steps 0-9, queue_order_strategy
'priority', our 9 mapped to Redis' 0) with a prefetch of one: a busy training worker
holds no message in advance, so when it is free the emergency is the next one taken.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import (
    RedisServer,
    fault_env,
    publish_outbox,
    queue_runs,
    runs,
    stop_all,
    store_for,
    write_model_file,
)
from tests.procs import start_beat, start_worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


def test_an_emergency_queued_behind_twenty_scheduled_runs_starts_first(pg_url, tmp_path):
    redis = RedisServer(tmp_path)
    log = tmp_path / "fits.log"
    models = {"blocker": {"params": {"seconds": 3, "log": str(log)}}, "urgent": {}}
    models.update({f"s{i:02d}": {} for i in range(20)})
    config = write_model_file(tmp_path / "models.toml", models)
    env = fault_env(pg_url, redis.url, tmp_path, config, training_slots=1)
    procs = [start_worker("ops", "monitoring,decision,validation,promotion", env, tmp_path), start_beat(env, tmp_path),
             start_worker("train", "training", env, tmp_path, pool="prefork")]
    store = store_for(pg_url)
    try:
        # Given the only training worker busy with a run
        (blocker,) = queue_runs(store, [("blocker", "manual", 3)])
        publish_outbox(store, redis.url)
        wait_for("the blocker's fit to start", lambda: log.exists() and "start" in log.read_text(), 40, procs)
        # When 20 scheduled runs are queued, and then an emergency
        scheduled = queue_runs(store, [(f"s{i:02d}", "schedule", 1) for i in range(20)])
        publish_outbox(store, redis.url)
        (urgent,) = queue_runs(store, [("urgent", "emergency", 9)])
        publish_outbox(store, redis.url)
        # Then the emergency is the first to start once the worker is free
        first = wait_for("the emergency to start", lambda: runs(store, [urgent])[0].started_at, 60, procs)
        wait_for("a scheduled run to start after it", lambda: any(r.started_at for r in runs(store, scheduled)), 60,
                 procs)
        started = [r.started_at for r in runs(store, scheduled) if r.started_at]
        assert min(started) > first and runs(store, [blocker])[0].started_at < first
    finally:
        stop_all(procs)
        redis.stop()
