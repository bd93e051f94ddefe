"""Fault 11: a task finishes after the broker it came from restarted.

Proves: a message's acknowledgement on a channel whose connection Celery closed
during a reconnect is what killed workers under load: kombu 5.7 rebuilds a Redis
client from a transport that has none (``AttributeError`` in ``_connparams``, raised
inside the worker's event loop). Reproduced on a real Redis connection in that state,
the consumer's guarded ack logs it instead; and a real prefork worker whose training
outlives a Redis restart stays the same process and takes the next training.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import (
    FINAL_RUN,
    RedisServer,
    fault_env,
    publish_outbox,
    queue_runs,
    runs,
    store_for,
    write_model_file,
)
from tests.procs import start_worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


def test_an_ack_on_a_connection_celery_closed_is_logged_not_raised(redis_url, caplog):
    import logging

    from kombu import Connection, Exchange, Queue

    from workers.app import _ack_of_a_live_connection

    queue = Queue("ack-probe", Exchange("ack-probe", type="direct"), routing_key="ack-probe")
    with Connection(redis_url) as producer_conn:
        producer_conn.Producer().publish({"a": 1}, exchange=queue.exchange, routing_key="ack-probe", declare=[queue])
    conn = Connection(redis_url)
    got = []
    with conn.Consumer([queue], callbacks=[lambda _body, message: got.append(message)]):
        conn.drain_events(timeout=10)
    [message] = got
    # Given the state a reconnect leaves behind: the channel's pools dropped, its transport without a client
    channel, transport = message.channel, message.channel.connection
    client = transport.client
    channel._disconnect_pools()
    transport.client = None
    try:
        # When kombu acknowledges as it is, it raises inside the event loop (the crash)
        with pytest.raises(AttributeError, match="hostname"):
            message.ack_log_error(logging.getLogger("test"), conn.connection_errors)
        # Then through the consumer's guard the same acknowledgement is a warning
        with caplog.at_level(logging.WARNING, logger="retrain.worker"):
            assert _ack_of_a_live_connection(message.ack_log_error)(logging.getLogger("test"), ()) is None
        assert "closed broker connection" in caplog.text
    finally:
        transport.client = client
        conn.release()


def _fit_lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_training_that_outlives_a_broker_restart_does_not_kill_its_worker(pg_url, tmp_path):
    redis = RedisServer(tmp_path)
    fits, release = tmp_path / "fits.log", tmp_path / "release-the-fit"
    config = write_model_file(tmp_path / "models.toml", {"slow": {"params": {"until_file": str(release), "log": str(fits)}},
                                                          "next": {"params": {"seconds": 0.1}}})
    env = fault_env(pg_url, redis.url, tmp_path, config)
    worker = start_worker("train", "training", env, tmp_path, pool="prefork", concurrency=1)
    store = store_for(pg_url)
    try:
        wait_for("the worker to be ready", lambda: "ready." in worker.log(), 60, [worker])
        pid = worker.p.pid
        # Given a training in progress
        queue_runs(store, [("slow", "manual", 5)])
        publish_outbox(store, redis.url)
        wait_for("the fit to start", lambda: any(line.startswith("start") for line in _fit_lines(fits)), 60, [worker])
        # When Redis dies, the worker notices, Redis comes back and the worker reconnects
        redis.stop()
        wait_for("the worker to notice the broker is gone", lambda: "Connection to broker lost" in worker.log(), 60,
                 [worker])
        redis.start()
        wait_for("the worker to reconnect", lambda: worker.log().count("Connected to redis") >= 2, 90, [worker])
        # And only then the fit ends, and its task acknowledges on the connection that is gone
        release.touch()
        wait_for("the fit to end", lambda: any(line.startswith("end") for line in _fit_lines(fits)), 60, [worker])
        # Then the worker is the same process, and it takes the next training
        [nxt] = queue_runs(store, [("next", "manual", 5)])
        wait_for("the broker to take the next message", lambda: publish_outbox(store, redis.url) >= 0, 30, [worker])
        wait_for("the next training", lambda: runs(store, [nxt])[0].state not in ("queued",), 90, [worker])
        assert worker.alive() and worker.p.pid == pid
        assert "Unrecoverable error" not in worker.log()
        assert runs(store, [nxt])[0].state in FINAL_RUN + ("training", "validating")
    finally:
        worker.stop()
        redis.stop()
