"""Fault 5: 10 trainings on 3 training workers with a global limit of 2.

Proves: the limit lives in Postgres (slot rows claimed with FOR UPDATE SKIP LOCKED),
not in any one worker, so a third worker cannot start a third fit. Sampled slots and
runs never show more than 2 trainings, the fits' own start/end times never overlap
by more than 2, and every run completes (a freed slot wakes the waiting runs).
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.harness import (
    FINAL_RUN,
    RedisServer,
    fault_env,
    held_slots,
    publish_outbox,
    queue_runs,
    runs,
    stop_all,
    store_for,
    write_model_file,
)
from tests.faults.slow_model import fit_intervals, max_overlap
from tests.procs import start_beat, start_worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


def test_ten_trainings_on_three_workers_never_exceed_two_at_once(pg_url, tmp_path):
    redis = RedisServer(tmp_path)
    log = tmp_path / "fits.log"
    models = {f"m{i}": {"params": {"seconds": 1.0, "log": str(log)}} for i in range(10)}
    config = write_model_file(tmp_path / "models.toml", models)
    env = fault_env(pg_url, redis.url, tmp_path, config, training_slots=2)
    procs = [start_worker("ops", "monitoring,decision,validation,promotion", env, tmp_path), start_beat(env, tmp_path)]
    procs += [start_worker(f"train{i}", "training", env, tmp_path, pool="prefork") for i in range(3)]
    store = store_for(pg_url)
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            training = sum(r.state == "training" and r.lease_owner is not None for r in runs(store))
            samples.append((len(held_slots(store)), training))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        # Given 10 queued trainings and 3 idle training workers
        ids = queue_runs(store, [(f"m{i}", "schedule", 1) for i in range(10)])
        sampler.start()
        publish_outbox(store, redis.url)
        # When they all run, Then all complete
        wait_for("all 10 runs to end", lambda: all(r.state in FINAL_RUN for r in runs(store, ids)), 100, procs)
        stop.set()
        sampler.join(5)
        assert sorted(r.state for r in runs(store, ids)) == ["done"] * 10
        # And never more than 2 at once: sampled slots, sampled runs, and the fits themselves
        assert len(samples) > 50
        assert max(s for s, _ in samples) == 2 and max(t for _, t in samples) <= 2
        assert len(fit_intervals(log)) == 10 and max_overlap(fit_intervals(log)) == 2
        assert held_slots(store) == []
    finally:
        stop.set()
        stop_all(procs)
        redis.stop()
