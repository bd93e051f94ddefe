"""Training progress through a real worker: Celery state PROGRESS (with stage and
percentage, what Flower and ``AsyncResult`` show) and the run row (what ``retrain
status`` shows) move along during a slow fit."""

from __future__ import annotations

import json
import time

import pytest
import redis as redis_lib

from tests.faults.harness import fault_env, publish_outbox, queue_runs, runs, stop_all, store_for, write_model_file
from tests.procs import start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_a_slow_fit_reports_its_stage_and_percentage(pg_url, redis_url, tmp_path):
    backend = redis_url.rsplit("/", 1)[0] + "/3"
    results = redis_lib.Redis.from_url(backend)
    results.flushdb()
    config = write_model_file(tmp_path / "models.toml", {"slow": {"params": {"seconds": 4}}})
    env = fault_env(pg_url, redis_url, tmp_path, config, result_backend=backend, lease_s=1.5)
    worker = start_worker("train", "training", env, tmp_path, pool="prefork")
    store = store_for(pg_url)
    try:
        # Given a training whose fit takes 4 s (a first run: no earlier fit time to compare with)
        (rid,) = queue_runs(store, [("slow", "manual", 3)])
        publish_outbox(store, redis_url)
        # When it runs, Then the task's state is PROGRESS with the run, the stage and a percentage
        def progress_meta():
            for key in results.scan_iter("celery-task-meta-*"):
                meta = json.loads(results.get(key))
                if meta["status"] == "PROGRESS" and meta["result"]["stage"] == "fitting":
                    return meta["result"]
            return None

        meta = wait_for("a PROGRESS state", progress_meta, 40, [worker], every=0.1)
        assert meta["run_id"] == rid and 0.3 <= meta["progress"] < 0.8
        # And the run row moves along during the fit (the heartbeat advances the percentage)
        seen = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (r := runs(store, [rid])[0]).state == "training":
            seen.add((r.stage, round(r.progress, 3)))
            time.sleep(0.1)
        fitting = sorted(p for s, p in seen if s == "fitting")
        assert len(fitting) >= 2 and fitting[0] < fitting[-1], seen
        # And the version is registered in the end
        wait_for("the run to be registered", lambda: runs(store, [rid])[0].state == "validating", 30, [worker])
    finally:
        stop_all([worker])
