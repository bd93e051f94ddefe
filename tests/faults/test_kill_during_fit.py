"""Fault 1: ``kill -9`` of a training worker in the middle of a fit.

Proves: the attempt counter and the lease live in Postgres, so a worker that dies
without a word loses nothing. Its lease expires, the reconciler sends the run again,
a second worker trains it (attempt 2), exactly one version is registered, and the
dead worker's training slot comes back by itself.
"""

from __future__ import annotations

import signal

import pytest

from tests.faults.harness import (
    FINAL_RUN,
    RedisServer,
    audit,
    fault_env,
    held_slots,
    holder,
    publish_outbox,
    queue_runs,
    runs,
    stop_all,
    store_for,
    versions,
    write_model_file,
)
from tests.faults.slow_model import fit_intervals
from tests.procs import start_beat, start_worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def test_kill_9_during_a_fit_retries_once_and_registers_one_version(pg_url, tmp_path):
    redis = RedisServer(tmp_path)
    log = tmp_path / "fits.log"
    config = write_model_file(tmp_path / "models.toml", {"slow": {"params": {"seconds": 3, "log": str(log)}}})
    env = fault_env(pg_url, redis.url, tmp_path, config)
    ops = start_worker("ops", "monitoring,decision,validation,promotion", env, tmp_path)
    beat = start_beat(env, tmp_path)
    trainers = [start_worker(f"train{i}", "training", env, tmp_path, pool="prefork") for i in (1, 2)]
    procs = [ops, beat, *trainers]
    store = store_for(pg_url)
    try:
        # Given a run in the middle of its fit on one of two training workers
        (rid,) = queue_runs(store, [("slow", "manual", 3)])
        publish_outbox(store, redis.url)
        wait_for("the fit to start", lambda: log.exists() and "start" in log.read_text(), 40, procs)
        assert [h.run_id for h in held_slots(store)] == [rid]
        # When that worker is killed with SIGKILL (the worker and its pool child)
        victim = holder(store, rid, trainers)
        victim.stop(signal.SIGKILL)
        procs.remove(victim)
        # Then the run is retried once and ends done
        run = wait_for("the run to end", lambda: next((r for r in runs(store, [rid]) if r.state in FINAL_RUN), None),
                       60, procs)
        assert (run.state, run.attempt) == ("done", 2), run.error
        # With exactly one version, from one finished fit
        assert versions(store, "slow") == ["1.0.0"]
        assert log.read_text().count("start") == 2 and len(fit_intervals(log)) == 1
        # And the dead worker's slot is free again
        assert held_slots(store) == []
        assert any("lease of attempt 1 expired" in m for m in audit(store, "slow"))
    finally:
        stop_all(procs)
        redis.stop()
