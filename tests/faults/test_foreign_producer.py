"""Fault 9: a third-party producer on the same broker.

Proves: a plain ``Celery(broker=url)`` app with default settings, sending ingest
batches and retraining requests by name as the README shows, and the trading-app
client share the queues in any order: every row the client sends is stored, every
request from either side is decided, and the client drops nothing. A binding left
in the format of earlier versions (``sep=":"``) is removed when a worker starts.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from retrain.client import RetrainClient
from tests.faults.harness import FINAL_REQUEST, RedisServer, fault_env, store_for, write_model_file
from tests.procs import start_worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

SINCE = datetime(2000, 1, 1, tzinfo=timezone.utc)


def _foreign_batch(rows: int) -> dict:
    now = time.time()
    return {"v": 1, "batch_id": uuid.uuid4().hex, "model": "m", "id": [f"f{uuid.uuid4().hex}" for _ in range(rows)],
            "version": ["1.0.0"] * rows, "ts": [now - 60.0] * rows, "x": [[0.1, 0.2]] * rows,
            "prediction": [1] * rows, "label": [0] * rows, "ret": [0.001] * rows}


def _foreign_request(i: int) -> dict:
    return {"v": 1, "model": f"foreign{i}", "reason": f"foreign request {i}", "trigger": "manual",
            "requested_by": "foreign"}


def _stored_rows(store) -> int:
    with store.tx() as tx:
        return sum(b.n for b in tx.buckets("m", None, SINCE))


def _requests(store) -> list:
    with store.tx() as tx:
        return tx.requests(limit=1000)


def test_a_plain_celery_producer_and_the_client_share_the_queues(pg_url, tmp_path):
    from celery import Celery

    redis = RedisServer(tmp_path)
    # Given a binding in the format of earlier versions, left in a persistent Redis
    redis.client().sadd("_kombu.binding.decision", "decision::decision")
    config = write_model_file(tmp_path / "models.toml",
                              {name: {} for name in ("m", "foreign0", "foreign1", "client0", "client1")})
    env = fault_env(pg_url, redis.url, tmp_path, config)
    worker = start_worker("ops", "monitoring,decision", env, tmp_path)
    store = store_for(pg_url)
    foreign = Celery("foreign", broker=redis.url)  # default settings, nothing of ours imported
    client = RetrainClient(redis.url, batch_size=500, flush_interval_s=0.05)
    foreign_rows = client_rows = 0
    requests = 0
    try:
        wait_for("the worker to be ready", lambda: "ready." in worker.log(), 60, [worker])
        members = redis.client().smembers("_kombu.binding.decision")
        assert b"decision::decision" not in members and members == {b"decision\x06\x16\x06\x16decision"}, members
        t0 = datetime.now(timezone.utc) - timedelta(minutes=5)
        for round_ in range(2):
            # When the foreign app sends first (its queues and bindings declared its own way) ...
            for _ in range(3):
                foreign.send_task("retrain.ingest", args=[_foreign_batch(40)], queue="monitoring")
                foreign_rows += 40
            foreign.send_task("retrain.request_retraining", args=[_foreign_request(round_)], queue="decision")
            requests += 1
            # ... and the client after it, then the other way round
            for i in range(5000):
                client.report("m", f"c{round_}-{i}", [0.1, -0.2], i % 2, "1.0.0", (i // 3) % 2, 0.001,
                              ts=(t0 + timedelta(milliseconds=i)).timestamp())
            client_rows += 5000
            assert client.flush(30), client.stats
            client.request_retraining(f"client{round_}", f"client request {round_}", requested_by="client")
            requests += 1
        stats = client.close(10)
        # Then the client dropped nothing, and every row and request reached the store
        assert stats.sent_rows == client_rows and stats.dropped_rows == 0, stats
        wait_for("every row", lambda: _stored_rows(store) >= client_rows + foreign_rows, 90, [worker])
        wait_for("every request decided",
                 lambda: len(_requests(store)) == requests and all(q.status in FINAL_REQUEST for q in _requests(store)),
                 90, [worker])
        assert _stored_rows(store) == client_rows + foreign_rows
        by = sorted((q.requested_by, q.model) for q in _requests(store))
        assert by == [("client", "client0"), ("client", "client1"), ("foreign", "foreign0"), ("foreign", "foreign1")]
        with store.tx() as tx:
            assert tx.dead_letters(limit=10) == []
    finally:
        client.close(1)
        worker.stop()
        redis.stop()
