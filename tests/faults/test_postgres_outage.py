"""Fault 4: Postgres stops for 30 s under load, then comes back.

Runs on a private Postgres cluster (initdb into a temporary directory, its own port),
because stopping the machine's shared cluster would break every other test.

Proves: workers outlive a database outage without a restart. A step that finds the
database gone raises StoreUnavailableError and is retried (backing off to 15 s at
most, never giving up), pooled connections are pre-pinged and replaced, periodic tasks
simply wait for their next tick, and a training's lease outlives the outage. Afterwards
every outcome sent is counted once and every run ends with one version.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tests.faults.harness import (
    FINAL_RUN,
    PrivatePostgres,
    RedisServer,
    fault_env,
    publish_outbox,
    queue_runs,
    runs,
    stop_all,
    store_for,
    versions,
    write_model_file,
)
from tests.procs import start_beat, start_worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

OUTAGE_S = 30
ROWS = 500


def _ingested(store) -> int:
    with store.tx() as tx:
        return tx.monitoring.labelled_total()


def test_workers_ride_out_a_30_s_postgres_outage_and_lose_nothing(tmp_path):
    from retrain.client import kombu_sender
    from retrain.storage.db import make_engine
    from retrain.storage.schema import upgrade

    pg = PrivatePostgres(tmp_path)
    redis = RedisServer(tmp_path)
    engine = make_engine(pg.url)
    upgrade(engine)
    engine.dispose()
    models = {"m": {}, **{f"t{i}": {"params": {"seconds": 2}} for i in range(2)}}
    config = write_model_file(tmp_path / "models.toml", models)
    env = fault_env(pg.url, redis.url, tmp_path, config, lease_s=60)
    procs = [start_worker("ingest", "monitoring", env, tmp_path),
             start_worker("flow", "decision,validation,promotion", env, tmp_path),
             start_worker("train", "training", env, tmp_path, pool="prefork"), start_beat(env, tmp_path)]
    pids = {p.name: p.p.pid for p in procs}
    store = store_for(pg.url)
    sent = [0]
    stop = threading.Event()

    def load() -> None:  # the trading app keeps reporting through the outage
        send = kombu_sender(redis.url)
        b = 0
        while not stop.is_set():
            send("retrain.ingest", {"v": 1, "batch_id": uuid.uuid4().hex, "model": "m",
                                    "id": [f"{b}-{i}" for i in range(ROWS)], "version": ["1.0.0"] * ROWS,
                                    "ts": [1767225600.0 + b + i / ROWS for i in range(ROWS)],
                                    "x": [[0.1, 0.2]] * ROWS, "prediction": [1] * ROWS,
                                    "label": [i % 2 for i in range(ROWS)], "ret": [0.001] * ROWS}, "monitoring", 5)
            sent[0] += ROWS
            b += 1
            time.sleep(0.25)

    loader = threading.Thread(target=load, daemon=True)
    try:
        wait_for("the workers", lambda: all("ready." in p.log() for p in procs[:3]), 40, procs)
        # Given trainings under way and outcomes streaming in
        ids = queue_runs(store, [(f"t{i}", "manual", 3) for i in range(2)])
        publish_outbox(store, redis.url)
        loader.start()
        wait_for("a training to start", lambda: any(r.state == "training" for r in runs(store, ids)), 30, procs)
        # When Postgres stops for 30 s and starts again
        pg.stop()
        time.sleep(OUTAGE_S)
        pg.start()
        time.sleep(1)
        stop.set()
        loader.join(10)
        # Then, without any restart, every outcome is counted once and every run ends with one version
        wait_for("every outcome", lambda: _ingested(store) >= sent[0], 60, procs)
        wait_for("every run to end", lambda: all(r.state in FINAL_RUN for r in runs(store, ids)), 60, procs)
        assert _ingested(store) == sent[0]
        assert sorted(r.state for r in runs(store, ids)) == ["done"] * 2
        assert all(versions(store, f"t{i}") == ["1.0.0"] for i in range(2))
        assert all(p.alive() and p.p.pid == pids[p.name] for p in procs)
    finally:
        stop.set()
        stop_all(procs)
        redis.stop()
        store.db.dispose()
        pg.close()
