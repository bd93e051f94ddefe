"""Fault 7: hostile and malformed messages.

Proves: a pickled message is refused before it is unpickled (its payload would have
written a marker file: no marker, worker alive); unknown task names, wrong types,
missing fields, undecodable bodies and a 5 MB body are refused permanently (no retry,
no redelivery) and each is kept in the dead-letter table with its reason; a good
message sent after them is processed as usual.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid

import pytest

from tests.faults.harness import RedisServer, fault_env, store_for, write_model_file
from tests.procs import start_worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


class _WritesMarker:
    """Unpickling this writes a file: the proof a pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _send(url: str, task: str, body: bytes, content_type: str = "application/json", encoding: str = "utf-8",
          queue: str = "monitoring") -> str:
    """Publish a raw Celery protocol-2 message (headers name the task) on ``queue``."""
    from kombu import Connection, Exchange, Queue

    from retrain.queues import transport_options

    task_id = str(uuid.uuid4())
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
               "retries": 0, "eta": None, "expires": None, "timelimit": [None, None], "shadow": None}
    q = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
    with Connection(url, transport_options=transport_options(url)) as conn:
        conn.Producer().publish(body, exchange=q.exchange, routing_key=queue, content_type=content_type,
                                content_encoding=encoding, headers=headers, declare=[q])
    return task_id


def _json_body(*args) -> bytes:
    return json.dumps([list(args), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


def _batch(n: int) -> dict:
    return {"v": 1, "batch_id": uuid.uuid4().hex, "model": "m", "id": [f"p{i}" for i in range(n)],
            "version": ["1.0.0"] * n, "ts": [1767225600.0 + i for i in range(n)], "x": [[0.1, 0.2]] * n,
            "prediction": [1] * n, "label": [1] * n, "ret": [0.001] * n}


def test_hostile_and_malformed_messages_are_refused_kept_and_harmless(pg_url, tmp_path):
    redis = RedisServer(tmp_path)
    config = write_model_file(tmp_path / "models.toml", {"m": {}})
    env = fault_env(pg_url, redis.url, tmp_path, config)
    worker = start_worker("ops", "monitoring,decision", env, tmp_path, pool="prefork")
    store = store_for(pg_url)
    marker = tmp_path / "pwned"
    try:
        wait_for("the worker to be ready", lambda: "ready." in worker.log(), 40, [worker])
        pid = worker.p.pid
        # Given a pickle whose payload writes a marker, and a batch of malformed messages
        evil = pickle.dumps(((_WritesMarker(str(marker)),), {}, {}))
        _send(redis.url, "retrain.ingest", evil, "application/x-python-serialize", "binary")
        _send(redis.url, "retrain.no_such_task", _json_body({"v": 1}))
        wrong = {**_batch(2), "batch_id": 12345678, "prediction": ["up", "down"]}
        _send(redis.url, "retrain.ingest", _json_body(wrong))
        _send(redis.url, "retrain.decide", _json_body({"v": 1}), queue="decision")  # request_id missing
        _send(redis.url, "retrain.ingest", _json_body("not an object"))
        _send(redis.url, "retrain.ingest", b"{this is not json", "application/json")
        huge = {**_batch(1), "model": "m" * (5 * 1024 * 1024)}
        _send(redis.url, "retrain.ingest", _json_body(huge))
        # When a good batch follows them
        _send(redis.url, "retrain.ingest", _json_body(_batch(7)))

        # Then the good batch is counted
        def counted():
            with store.tx() as tx:
                return sum(b.n for b in tx.monitoring.buckets("m", None, __import__("datetime").datetime(2000, 1, 1).astimezone()))

        wait_for("the good batch to be ingested", lambda: counted() == 7, 30, [worker])
        # And every bad one is kept as a dead letter with its reason
        wait_for("seven dead letters", lambda: len(_dead(store)) >= 7, 30, [worker])
        dead = _dead(store)
        reasons = " | ".join(f"{d.source}: {d.reason}" for d in dead)
        assert len(dead) == 7, reasons
        assert any("ContentDisallowed" in d.reason and "pickle" in d.reason.lower() for d in dead), reasons
        assert any(d.source == "retrain.no_such_task" and "unknown task name" in d.reason for d in dead), reasons
        assert any("IngestBatch" in d.reason and "batch_id" in d.reason for d in dead), reasons
        assert any(d.source == "retrain.decide" and "request_id" in d.reason for d in dead), reasons
        assert any("expected a JSON object" in d.reason for d in dead), reasons
        assert any("undecodable" in d.reason or "DecodeError" in d.reason for d in dead), reasons
        big = [d for d in dead if "RETRAIN_MAX_MESSAGE_BYTES" in d.reason]
        assert len(big) == 1 and big[0].payload["size"] > 5_000_000 and len(json.dumps(big[0].payload)) < 20_000
        # And the pickle never ran, the worker is the same process, and nothing waits for redelivery
        assert not marker.exists()
        assert worker.alive() and worker.p.pid == pid
        r = redis.client()
        assert r.llen("monitoring") == 0 and r.llen("decision") == 0 and r.hlen("unacked") == 0
    finally:
        worker.stop()
        redis.stop()


def _dead(store):
    with store.tx() as tx:
        return tx.dead_letters.newest(limit=100)
