"""Fault 9: a third-party producer on the same broker.

Proves: a plain ``Celery(broker=url)`` app with default settings, sending ingest
batches and retraining requests by name as the README shows, and the trading-app
client share the queues in any order, on Redis and on RabbitMQ: every row the client
sends is stored, every request from either side is decided, and the client drops
nothing. On Redis a binding left in the format of earlier versions (``sep=":"``) is
removed when a worker starts; on RabbitMQ a queue the foreign app declared first
(plain) is used as it is even by workers configured for priority queues.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from retrain.client import RetrainClient
from tests.faults.harness import FINAL_REQUEST, RedisServer, fault_env, store_for, write_model_file
from tests.integration.test_orchestration_amqp import amqp_url  # noqa: F401 - the fixture
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
        return sum(b.n for b in tx.monitoring.buckets("m", None, SINCE))


def _requests(store) -> list:
    with store.tx() as tx:
        return tx.requests.newest(limit=1000)


def _share(url: str, pg_url: str, tmp_path, foreign_first: bool, before_worker=None, **env_overrides) -> None:
    from celery import Celery

    config = write_model_file(tmp_path / "models.toml",
                              {name: {} for name in ("m", "foreign0", "foreign1", "foreign9", "client0", "client1")})
    env = fault_env(pg_url, url, tmp_path, config, **env_overrides)
    store = store_for(pg_url)
    foreign = Celery("foreign", broker=url)  # default settings, nothing of ours imported
    foreign_rows = client_rows = requests = 0
    if foreign_first:  # the foreign app declares the queues, its own way, before any of ours runs
        for _ in range(3):
            foreign.send_task("retrain.ingest", args=[_foreign_batch(40)], queue="monitoring")
            foreign_rows += 40
        foreign.send_task("retrain.request_retraining", args=[_foreign_request(9)], queue="decision")
        requests += 1
    # prefork, Celery's default pool: on RabbitMQ the solo pool waits ~1 s after each ack
    worker = start_worker("ops", "monitoring,decision", env, tmp_path, pool="prefork")
    client = None
    try:
        wait_for("the worker to be ready", lambda: "ready." in worker.log(), 60, [worker])
        if before_worker is not None:
            before_worker()
        client = RetrainClient(url, batch_size=500, flush_interval_s=0.05)
        t0 = datetime.now(timezone.utc) - timedelta(minutes=5)
        for round_ in range(2):
            # When the foreign app sends (its queues and bindings declared its own way) ...
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
        assert by == [("client", "client0"), ("client", "client1"), ("foreign", "foreign0"), ("foreign", "foreign1")] \
            + ([("foreign", "foreign9")] if foreign_first else []), by
        with store.tx() as tx:
            assert tx.dead_letters.newest(limit=10) == []
    finally:
        if client is not None:
            client.close(1)
        foreign.close()
        worker.stop()


def test_a_plain_celery_producer_and_the_client_share_the_queues_on_redis(pg_url, tmp_path):
    redis = RedisServer(tmp_path)
    # Given a binding in the format of earlier versions, left in a persistent Redis
    redis.client().sadd("_kombu.binding.decision", "decision::decision")

    def old_binding_removed():
        members = redis.client().smembers("_kombu.binding.decision")
        assert b"decision::decision" not in members and members == {b"decision\x06\x16\x06\x16decision"}, members

    try:
        _share(redis.url, pg_url, tmp_path, foreign_first=False, before_worker=old_binding_removed)
    finally:
        redis.stop()


def test_a_plain_celery_producer_and_the_client_share_the_queues_on_rabbitmq(pg_url, tmp_path, amqp_url):  # noqa: F811
    _vhost, url = amqp_url
    # Given queues the foreign app declared first, and workers that would declare priority queues
    _share(url, pg_url, tmp_path, foreign_first=True, amqp_max_priority=10)
