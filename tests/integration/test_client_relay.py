"""Relay mode: the trading app's process packs, a relay process of its own talks to a real Redis.

The test starts its own redis-server (as test_client_redis.py) and counts rows in the
broker itself. Given / When / Then:

* rows reported in relay mode reach the broker's ``monitoring`` queue exactly once,
  and the client runs no flusher thread (the report calls pack what is due);
* a relay process killed while it holds rows: they are counted as dropped, the next
  batch tells the server, the relay starts again and later rows go through;
* an app that goes quiet still gets its last rows out (the idle flush);
* the relay process keeps the time: it marks rows due in memory shared with the app,
  while the app's own thread sleeps (and a restarted relay goes on doing it).
"""

from __future__ import annotations

import os
import signal

import pytest

from retrain.client import RetrainClient
from tests.conftest import free_port, start_redis
from tests.integration.test_client_redis import _queued, _rows
from tests.procs import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def redis_port(tmp_path):
    port = free_port()
    proc = start_redis(port, tmp_path)
    if proc is None:
        pytest.skip("redis-server is not installed")
    yield port
    proc.terminate()
    proc.wait(10)


def _two_step(client: RetrainClient, ids) -> None:
    for i in ids:
        pid = f"r{i:05d}"
        client.report_prediction("direction", pid, [0.1] * 8, 1, "1.0.0")  # stamped now: within its TTL
        client.report_outcome("direction", pid, 1, 0.001)




def test_rows_reach_the_broker_once_through_the_relay_and_no_flusher_thread_runs(redis_port):
    # Given a client in relay mode on a real Redis
    client = RetrainClient(f"redis://127.0.0.1:{redis_port}/0", mode="relay", batch_size=500, flush_interval_s=0.2)
    try:
        assert client._thread is not None and client._thread.name == "retrain-client-timer"
        # When the app reports 3,000 predictions and their outcomes
        _two_step(client, range(3000))
        # Then full batches were handed over on the reporting calls themselves, before any flush
        relay = client._send
        assert relay.pid is not None and client.stats.sent_rows >= 2500
        # And after a flush every row is in the broker, once, labelled and joined
        assert client.flush(20)
        assert relay.stats.acked_rows == 3000 and relay.stats.in_flight_rows == 0
        payloads = _queued(redis_port)
        assert _rows(payloads) == [f"r{i:05d}" for i in range(3000)]
        assert all(p["n_features"] == 8 and set(p["label"]) == {1} for p in payloads)
    finally:
        client.close(10)
    assert client._send.pid is None  # the relay process ended with the client


def test_a_killed_relay_is_restarted_and_the_rows_it_held_are_counted_and_reported(redis_port, tmp_path):
    # Given a relay whose broker is down, so that it holds what it is given
    down_port = free_port()
    client = RetrainClient(f"redis://127.0.0.1:{down_port}/0", mode="relay", batch_size=100, flush_interval_s=0.1,
                           retry_max_s=0.2)
    relay = client._send
    relay.restart_after_s = 0.1
    try:
        _two_step(client, range(300))
        client.flush(1)  # hands everything over; the relay cannot send it
        assert relay.stats.written_rows == 300 and relay.stats.acked_rows == 0
        # When the relay process is killed (the next one will find the broker: the running one
        # keeps the address it started with)
        relay.broker_url = f"redis://127.0.0.1:{redis_port}/0"
        os.kill(relay.pid, signal.SIGKILL)
        assert until(lambda: (client.flush(0.2), relay.stats.lost_rows)[1] == 300, 20)
        # Then its 300 rows are dropped rows of the client, said once
        assert client.stats.dropped_rows == 300
        # And a new relay sends the next rows with the drop count
        _two_step(client, range(300, 400))
        assert until(lambda: client.flush(1), 30)
        assert relay.stats.starts == 2
        payloads = _queued(redis_port)
        assert _rows(payloads) == [f"r{i:05d}" for i in range(300, 400)]
        assert sum(p["client_dropped"] for p in payloads) == 300
    finally:
        client.close(10)


def test_an_app_gone_quiet_still_sends_its_last_rows(redis_port):
    # Given a relay-mode client whose idle flush runs every 0.3 s
    client = RetrainClient(f"redis://127.0.0.1:{redis_port}/0", mode="relay", batch_size=5000, flush_interval_s=0.2,
                           idle_flush_s=0.3)
    try:
        # When the app reports a few rows and then nothing more
        _two_step(client, range(10))
        # Then they reach the broker without another call
        assert until(lambda: len(_rows(_queued(redis_port))) == 10, 20)
    finally:
        client.close(10)


def test_the_relay_process_marks_rows_due_while_the_apps_thread_sleeps(redis_port):
    # Given a relay-mode client whose own thread would wake only after 60 s of quiet
    client = RetrainClient(f"redis://127.0.0.1:{redis_port}/0", mode="relay", batch_size=5000, flush_interval_s=0.2,
                           idle_flush_s=60)
    relay = client._send
    relay.restart_after_s = 0.1
    try:
        # Then the relay process started with the client, and lowers the calls' threshold itself
        assert relay.pid is not None
        assert until(lambda: client._limit[0] == 0, 10)
        # When a prediction is reported, then its outcome, then (once the relay marks it due) another call
        client.report_prediction("direction", "r00000", [0.1] * 8, 1, "1.0.0")  # due: packed, waits for its outcome
        assert client._limit[0] > 0
        client.report_outcome("direction", "r00000", 1, 0.001)
        assert until(lambda: client._limit[0] == 0, 10)
        client.report_prediction("direction", "r00001", [0.1] * 8, 0, "1.0.0")
        # Then that call sent the joined row, long before the app's thread would have woken
        assert until(lambda: _rows(_queued(redis_port)) == ["r00000"], 10)
        assert _queued(redis_port)[0]["label"] == [1]
        # And a relay started again after a kill keeps the time as well
        os.kill(relay.pid, signal.SIGKILL)
        _two_step(client, range(2, 4))
        assert until(lambda: (client.flush(0.2), relay.stats.starts)[1] == 2, 20)
        client._limit[0] = 10**9
        assert until(lambda: client._limit[0] == 0, 10)
    finally:
        client.close(10)


def test_a_flush_that_finds_the_relay_dead_with_bytes_still_to_write_returns_false_and_counts_the_rows():
    # Given a dry-run relay that was given 100 rows, then killed, with a frame still waiting to be written
    # (the race CI met: the flush's own write found the pipe broken)
    client = RetrainClient("redis://127.0.0.1:1/0", mode="relay", batch_size=100, flush_interval_s=0.1)
    relay = client._send
    relay.dry_run = True
    relay.restart_after_s = 0.1
    try:
        relay("retrain.request", {"model": "m"}, "decision", 0)  # starts the child
        relay._child_written = 100  # as if it had been handed 100 rows it has not acknowledged
        proc = relay._proc
        os.kill(relay.pid, signal.SIGKILL)
        proc.wait(10)
        relay._out = b"x" * 64
        # When the app flushes, the write meets the broken pipe
        flushed = relay.flush(0.5)
        # Then the flush says no rather than raising, and the rows the child held are counted as lost
        assert flushed is False
        assert relay.stats.lost_rows == 100
    finally:
        client.close(10)
