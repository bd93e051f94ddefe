"""Fault 2: a training longer than a (deliberately too short) Redis visibility timeout.

Proves: when Redis hands a still-running training to a second worker, the lease in
Postgres decides. The second delivery finds the run held under a live lease and
does nothing; the first worker finishes; one lease holder, one fit, one version.
(celeryconfig refuses such a visibility timeout unless told it is a test.)
"""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import (FINAL_RUN, audit, fault_env, publish_outbox, queue_runs, RedisServer, runs, stop_all,
                                  store_for, versions, write_model_file)
from tests.faults.slow_model import fit_intervals
from tests.procs import start_beat, start_worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def test_a_redelivered_running_training_has_one_lease_holder_and_one_version(pg_url, tmp_path):
    redis = RedisServer(tmp_path)
    log = tmp_path / "fits.log"
    config = write_model_file(tmp_path / "models.toml", {"slow": {"params": {"seconds": 8, "log": str(log)}}})
    env = fault_env(pg_url, redis.url, tmp_path, config, visibility_timeout_s=2, allow_short_visibility_timeout=1)
    first = start_worker("train1", "training", env, tmp_path, pool="prefork")
    procs = [first, start_worker("ops", "monitoring,decision,validation,promotion", env, tmp_path),
             start_beat(env, tmp_path)]
    store = store_for(pg_url)
    try:
        # Given a training running on the first worker for longer than the visibility timeout
        (rid,) = queue_runs(store, [("slow", "manual", 3)])
        publish_outbox(store, redis.url)
        wait_for("the fit to start", lambda: log.exists() and "start" in log.read_text(), 40, procs)
        time.sleep(2.5)
        # When a second worker starts, and Redis hands it the unacknowledged message
        second = start_worker("train2", "training", env, tmp_path, pool="prefork")
        procs.append(second)
        wait_for("the redelivery to reach the second worker", lambda: "retrain.train[" in second.log(), 30, procs)
        holders = set()
        while not (r := runs(store, [rid])[0]).state in FINAL_RUN and r.state != "validating":
            if r.lease_owner:
                holders.add(r.lease_owner)
            time.sleep(0.1)
        # Then the second delivery did nothing: the run had one lease holder, one attempt, one fit
        wait_for("the second delivery to be skipped", lambda: "'status': 'skipped'" in second.log(), 30, procs)
        run = wait_for("the run to end", lambda: next((r for r in runs(store, [rid]) if r.state in FINAL_RUN), None),
                       40, procs)
        assert run.state == "done" and run.attempt == 1
        assert len(holders) == 1
        assert len(fit_intervals(log)) == 1 and log.read_text().count("start") == 1
        # And one version
        assert versions(store, "slow") == ["1.0.0"]
        assert sum("training of slow started" in m for m in audit(store, "slow")) == 1
    finally:
        stop_all(procs)
        redis.stop()
