"""Fault 8: SIGTERM (a deploy) while workers are busy; and SIGQUIT, the cold shutdown.

Proves: every effect happens exactly once. SIGTERM is Celery's warm shutdown: a
training worker finishes the fit it is running (one version, attempt 1) and an ingest
worker finishes its batch; what they had not started goes back to the queue for the
other workers, and every outcome is counted once. SIGQUIT cancels a running training
after the soft-shutdown grace period: its message goes back to the queue, the lease
keeps a second copy from starting until it expires, and the run still yields exactly
one version.
"""

from __future__ import annotations

import signal
import uuid

import pytest

from tests.faults.harness import (
    FINAL_RUN,
    RedisServer,
    fault_env,
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

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

BATCHES, ROWS = 40, 500


def _ingested(store) -> tuple[int, int]:
    with store.tx() as tx:
        return tx.monitoring.ingested()


def _send_batches(url: str) -> None:
    from retrain.client import kombu_sender

    send = kombu_sender(url)
    for b in range(BATCHES):
        n = ROWS
        send("retrain.ingest", {"v": 1, "batch_id": uuid.uuid4().hex, "model": "m", "id": [f"{b}-{i}" for i in range(n)],
                                "version": ["1.0.0"] * n, "ts": [1767225600.0 + b * 60 + i / n for i in range(n)],
                                "x": [[0.1, 0.2]] * n, "prediction": [1] * n, "label": [i % 2 for i in range(n)],
                                "ret": [0.001] * n}, "monitoring", 5)


def test_sigterm_during_work_lets_every_effect_happen_exactly_once(pg_url, tmp_path):
    redis = RedisServer(tmp_path)
    log_a, log_b = tmp_path / "fits-a.log", tmp_path / "fits-b.log"
    config = write_model_file(tmp_path / "models.toml", {
        "m": {}, "a": {"params": {"seconds": 2.5, "log": str(log_a)}}, "b": {"params": {"seconds": 4, "log": str(log_b)}}})
    env = fault_env(pg_url, redis.url, tmp_path, config, soft_shutdown_timeout_s=1)
    ingest = [start_worker(f"ingest{i}", "monitoring", env, tmp_path) for i in (1, 2)]
    trainers = [start_worker(f"train{i}", "training", env, tmp_path, pool="prefork") for i in (1, 2, 3)]
    procs = [start_worker("flow", "decision,validation,promotion", env, tmp_path), start_beat(env, tmp_path),
             *ingest, *trainers]
    store = store_for(pg_url)
    try:
        # Given a training in the middle of its fit, and ingest workers in the middle of 40 batches
        (run_a,) = queue_runs(store, [("a", "manual", 3)])
        publish_outbox(store, redis.url)
        wait_for("the fit to start", lambda: log_a.exists() and "start" in log_a.read_text(), 40, procs)
        _send_batches(redis.url)
        wait_for("a few batches to be ingested", lambda: _ingested(store)[0] >= 3, 30, procs)
        # When the training's worker and one ingest worker receive SIGTERM (a deploy)
        trainer = holder(store, run_a, trainers)
        for p in (trainer, ingest[0]):
            p.p.send_signal(signal.SIGTERM)
        # Then both finish what they are doing and exit cleanly
        assert trainer.p.wait(30) == 0 and ingest[0].p.wait(30) == 0
        procs.remove(trainer)
        procs.remove(ingest[0])
        assert len(fit_intervals(log_a)) == 1
        # And the others do the rest: every batch counted once, the run done with one version
        wait_for("every batch", lambda: _ingested(store)[0] == BATCHES, 40, procs)
        assert _ingested(store) == (BATCHES, BATCHES * ROWS)
        run = wait_for("run a to end", lambda: next((r for r in runs(store, [run_a]) if r.state in FINAL_RUN), None),
                       40, procs)
        assert (run.state, run.attempt) == ("done", 1) and versions(store, "a") == ["1.0.0"]

        # Given another training in the middle of its fit
        (run_b,) = queue_runs(store, [("b", "manual", 3)])
        publish_outbox(store, redis.url)
        wait_for("the second fit to start", lambda: log_b.exists() and "start" in log_b.read_text(), 40, procs)
        # When its worker gets SIGQUIT (a cold shutdown after a 1 s grace)
        trainer = holder(store, run_b, [p for p in procs if p.name.startswith("train")])
        trainer.p.send_signal(signal.SIGQUIT)
        trainer.p.wait(30)
        procs.remove(trainer)
        # Then the run is trained again after the cancelled attempt's lease: once, one version
        run = wait_for("run b to end", lambda: next((r for r in runs(store, [run_b]) if r.state in FINAL_RUN), None),
                       60, procs)
        assert run.state == "done" and run.attempt == 2 and versions(store, "b") == ["1.0.0"]
        assert len(fit_intervals(log_b)) == 1
    finally:
        stop_all(procs)
        redis.stop()
