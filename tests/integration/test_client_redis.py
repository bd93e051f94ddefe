"""The client against a real Redis that goes away and comes back.

The test starts its own redis-server on a free port (no persistence), so stopping
and restarting it disturbs nothing else. Rows are counted in the broker itself: the
messages kombu left in the ``monitoring`` queue lists, decoded as a worker would.
"""

from __future__ import annotations

import base64
import json

import pytest
import redis

from retrain.client import RetrainClient, kombu_sender
from retrain.core.payloads import IngestBatch, parse_payload
from tests.conftest import free_port, start_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
T = 1_767_571_200.0


@pytest.fixture
def own_redis(tmp_path):
    port = free_port()
    state = {"proc": start_redis(port, tmp_path)}
    if state["proc"] is None:
        pytest.skip("redis-server is not installed")

    def stop():
        state["proc"].terminate()
        state["proc"].wait(10)

    def restart():
        state["proc"] = start_redis(port, tmp_path)
        assert state["proc"] is not None

    yield port, stop, restart
    if state["proc"].poll() is None:
        stop()


def _queued(port: int) -> list[dict]:
    """Ingest payloads waiting in the broker's monitoring queue(s), decoded as a worker would."""
    r = redis.Redis(port=port)
    out = []
    for key in r.keys("monitoring*"):
        if r.type(key) != b"list":
            continue
        for raw in r.lrange(key, 0, -1):
            msg = json.loads(raw)
            assert msg["headers"]["task"] == "retrain.ingest" and msg["content-type"] == "application/json"
            args, _, _ = json.loads(base64.b64decode(msg["body"]))
            out.append(parse_payload(IngestBatch, args[0]).model_dump())
    return out


def _rows(payloads: list[dict]) -> list[str]:
    return sorted(i for p in payloads for i in p["id"])


def _report(client: RetrainClient, ids) -> None:
    for i in ids:
        client.report("direction", f"r{i:05d}", [0.1] * 8, 1, "1.0.0", 1, 0.001, T + i)


def test_nothing_is_lost_while_the_bound_holds_across_a_broker_restart(own_redis):
    port, stop, restart = own_redis
    url = f"redis://127.0.0.1:{port}/0"
    client = RetrainClient(sender=kombu_sender(url, connect_timeout_s=0.5), batch_size=100,
                           max_waiting_batches=50, retry_max_s=0.2, start=False)
    try:
        # Given rows that reached the broker
        _report(client, range(0, 300))
        assert client.flush(10)
        before = _queued(port)
        assert _rows(before) == [f"r{i:05d}" for i in range(300)]
        # When the broker goes away, more rows are reported and cannot be sent
        stop()
        _report(client, range(300, 1000))
        assert not client.flush(1.5)
        stats = client.stats
        assert stats.waiting_rows == 700 and stats.dropped_rows == 0 and stats.send_errors > 0
        # Then once it is back, every held row is delivered, none twice, and nothing was dropped
        restart()
        assert client.flush(10)
        after = _queued(port)  # the restarted Redis keeps no data: only what was sent since
        assert _rows(after) == [f"r{i:05d}" for i in range(300, 1000)]
        assert client.stats.dropped_rows == 0 and all("client_dropped" not in p or p["client_dropped"] == 0
                                                       for p in after)
    finally:
        client.close(2)


def test_past_the_bound_drops_are_counted_and_reported_to_the_server(own_redis):
    port, stop, restart = own_redis
    url = f"redis://127.0.0.1:{port}/0"
    client = RetrainClient(sender=kombu_sender(url, connect_timeout_s=0.5), batch_size=100,
                           max_waiting_batches=3, retry_max_s=0.2, start=False)
    try:
        # Given a broker that is down and room for 3 batches of 100
        stop()
        # When 500 rows are reported
        _report(client, range(500))
        assert not client.flush(1)
        # Then the 200 oldest are dropped and counted, the newest 300 held
        assert client.stats.dropped_rows == 200 and client.stats.waiting_rows == 300
        restart()
        assert client.flush(10)
        after = _queued(port)
        assert _rows(after) == [f"r{i:05d}" for i in range(200, 500)]
        # And the server hears of the drop exactly once
        assert sorted(p["client_dropped"] for p in after) == [0, 0, 200]
    finally:
        client.close(2)
