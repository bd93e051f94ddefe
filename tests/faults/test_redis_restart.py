"""Fault 3: the broker (a redis-server without persistence) dies and restarts while 200
retraining requests and 100,000 outcomes are in flight.

Proves: Postgres is the truth and Redis only carries messages. The workers reconnect
by themselves; the client keeps what it could not send while Redis was down and sends
again what a restart made Redis forget (ingest is idempotent by batch id); the
reconciler sends again every decision, training, validation and promotion whose
message the restart lost. Afterwards every request that reached the system has a
final state, every run has ended, and the outcome counts are exactly what the client
sent. (A request message lost before any worker read it never became a request: the
client would have to resend it with an idempotency key; see the report.)
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from retrain.client import RetrainClient, kombu_sender
from retrain.client.replay_sender import ReplayStats, replaying_sender
from tests.faults.harness import (
    FINAL_REQUEST,
    FINAL_RUN,
    RedisServer,
    audit,
    fault_env,
    runs,
    stop_all,
    store_for,
    write_model_file,
)
from tests.procs import start_beat, start_worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

OUTCOMES, REQUESTS = 100_000, 200
TRAINED = [f"r{i}" for i in range(8)]


def _outcomes(store) -> int:
    with store.tx() as tx:
        return sum(b.n for m in ("m0", "m1") for b in tx.monitoring.buckets(m, None, datetime(2000, 1, 1, tzinfo=timezone.utc)))


def _requests(store) -> list:
    with store.tx() as tx:
        return tx.requests.newest(limit=10_000)


def test_a_redis_restart_loses_no_request_run_or_outcome(pg_url, tmp_path):
    redis = RedisServer(tmp_path)
    models = {"m0": {}, "m1": {}, **{name: {"params": {"seconds": 0.5}} for name in TRAINED}}
    config = write_model_file(tmp_path / "models.toml", models)
    env = fault_env(pg_url, redis.url, tmp_path, config, requeue_after_s=4)
    procs = [start_worker("ingest", "monitoring", env, tmp_path, pool="prefork", concurrency=2),
             start_worker("flow", "decision,validation,promotion", env, tmp_path),
             start_worker("train", "training", env, tmp_path, pool="prefork", concurrency=2),
             start_beat(env, tmp_path)]
    store = store_for(pg_url)
    replay = ReplayStats()
    client = RetrainClient(sender=replaying_sender(kombu_sender(redis.url), redis.url, stats=replay),
                           batch_size=2000, flush_interval_s=0.1)
    requests_sent = [0]

    def report() -> None:
        t0 = datetime.now(timezone.utc) - timedelta(hours=1)
        for i in range(OUTCOMES):
            client.report(f"m{i % 2}", f"p{i}", [0.1 * (i % 7), -0.2], i % 2, "1.0.0", (i // 2) % 2, 0.001,
                          ts=(t0 + timedelta(seconds=i / 50)).timestamp())
            if i % 5000 == 4999:
                time.sleep(0.2)  # about 4 s of traffic, across the outage

    def request() -> None:
        for i in range(REQUESTS):
            while True:
                try:  # the app retries a request the broker refused (it is down)
                    client.request_retraining(TRAINED[i % len(TRAINED)], f"fault test {i}", requested_by="faults")
                    requests_sent[0] += 1
                    break
                except Exception:  # noqa: BLE001
                    time.sleep(0.2)
            time.sleep(0.02)

    try:
        wait_for("the workers", lambda: all("ready." in p.log() for p in procs[:3]), 40, procs)
        threads = [threading.Thread(target=report), threading.Thread(target=request)]
        for t in threads:
            t.start()
        # Given traffic in flight, When Redis dies (SIGKILL: it saves nothing) and comes back 2 s later
        time.sleep(1.5)
        redis.stop()
        time.sleep(2.0)
        redis.start()
        for t in threads:
            t.join(60)
        assert client.flush(60), client.stats
        stats = client.close(10)
        # Then every outcome the client sent is counted, exactly once
        assert stats.sent_rows == OUTCOMES and stats.dropped_rows == 0, stats
        wait_for("every outcome", lambda: _outcomes(store) >= OUTCOMES, 90, procs)
        # And every request that reached the system, and every run, reaches a final state
        wait_for("every request and run to end",
                 lambda: all(q.status in FINAL_REQUEST for q in _requests(store))
                 and all(r.state in FINAL_RUN for r in runs(store)), 90, procs)
        time.sleep(1.0)
        assert _outcomes(store) == OUTCOMES
        assert requests_sent[0] == REQUESTS
        reqs = _requests(store)
        assert len(reqs) >= len(TRAINED)
        repaired = [m for m in audit(store) if "sent again" in m]
        print(f"\nrequests: {len(reqs)} rows from {REQUESTS} sent; runs: {len(runs(store))}; replayed batches: "
              f"{replay.replayed} after {replay.restarts_seen} restart(s); reconciler repairs: {len(repaired)}")
    finally:
        client.close(1)
        stop_all(procs)
        redis.stop()
