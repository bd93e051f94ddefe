"""The trading app's client without a broker: batching, joining, bounds, drops and retries.

A list stands in for the broker through the ``sender`` argument (the client's own seam);
the real Redis side is in tests/integration/test_client_redis.py.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from retrain.client import EncodedIngest, RetrainClient, encode_ingest
from retrain.core.clock import SimClock
from retrain.core.columns import pack_f8, unpack_f8
from retrain.core.errors import PayloadError
from retrain.core.payloads import IngestBatch, parse_payload
from tests.procs import until

T = 1_767_571_200.0


class Broker:
    """A sender that records payloads and can be switched off."""

    def __init__(self) -> None:
        self.up = True
        self.payloads: list[dict] = []
        self.calls = 0

    def __call__(self, task: str, payload: dict, queue: str, priority: int) -> None:
        self.calls += 1
        if not self.up:
            raise ConnectionError("broker down")
        assert (task, queue) in {("retrain.ingest", "monitoring"), ("retrain.request_retraining", "decision")}
        self.payloads.append(payload)

    def rows(self) -> int:
        return sum(len(p["id"]) for p in self.payloads if "id" in p)


def _clock() -> SimClock:
    return SimClock(datetime.fromtimestamp(T, tz=timezone.utc))


def _client(broker: Broker, **kw) -> RetrainClient:
    kw.setdefault("start", False)
    return RetrainClient(sender=broker, **kw)


def test_packed_columns_round_trip():
    values = [0.1, -2.5, float("inf"), 1e-300]
    assert unpack_f8(pack_f8(values)).tolist() == values
    with pytest.raises(PayloadError):
        unpack_f8("not base64!")
    with pytest.raises(PayloadError):
        unpack_f8(pack_f8([1.0, 2.0]), count=3)


def test_rows_go_out_in_packed_batches_that_the_ingest_schema_accepts():
    # Given 2,500 labelled rows and a batch size of 1,000
    broker = Broker()
    c = _client(broker, batch_size=1000)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2500, 8))
    for i in range(2500):
        c.report("direction", f"p{i}", X[i].tolist(), i % 2, "1.0.0", (i // 2) % 2, 0.001 * i, ts=T + i)
    # When flushed
    assert c.flush(1)
    # Then three packed batches carry every row, in order, with the exact values
    assert [len(p["id"]) for p in broker.payloads] == [1000, 1000, 500]
    batches = [parse_payload(IngestBatch, p) for p in broker.payloads]
    assert all(b.n_features == 8 and isinstance(b.x, str) for b in batches)
    got = np.concatenate([unpack_f8(b.x).reshape(-1, 8) for b in batches])
    np.testing.assert_array_equal(got, X)
    assert sum((b.id for b in batches), []) == [f"p{i}" for i in range(2500)]
    assert c.stats.sent_rows == 2500 and c.stats.dropped_rows == 0


def test_outcomes_join_their_predictions_by_id():
    broker = Broker()
    c = _client(broker, prediction_ttl_s=60, clock=_clock())
    # Given predictions, outcomes that arrive later (one for an id never predicted)
    c.report_prediction("direction", "a", [1.0] * 8, 1, "1.0.0", ts=T)
    c.report_prediction("direction", "b", [2.0] * 8, 0, "1.0.0", ts=T)
    c.flush(1)
    assert broker.rows() == 0 and c.stats.pending_predictions == 2
    c.report_outcome("direction", "a", label=1, ret=0.01)
    c.report_outcome("direction", "zzz", label=0)
    # When flushed
    c.flush(1)
    # Then the joined row carries the prediction's features, and the orphan goes as a row without one
    rows = {}
    for p in broker.payloads:
        b = parse_payload(IngestBatch, p)
        for i, pid in enumerate(b.id):
            rows[pid] = (b.prediction[i], b.label[i])
    assert rows == {"a": (1, 1), "zzz": (None, 0)}
    assert c.stats.pending_predictions == 1


def test_a_prediction_whose_outcome_never_comes_is_sent_unlabelled_after_its_ttl():
    clock = _clock()
    broker = Broker()
    c = _client(broker, prediction_ttl_s=60, clock=clock)
    c.report_prediction("direction", "a", [1.0] * 8, 1, "1.0.0", ts=T)
    c.flush(1)
    assert broker.rows() == 0
    clock.advance(timedelta(seconds=61))
    c.flush(1)
    b = parse_payload(IngestBatch, broker.payloads[0])
    assert b.id == ["a"] and b.label == [None] and b.prediction == [1]


def test_rows_the_packed_form_cannot_carry_go_as_lists_for_the_server_to_judge():
    broker = Broker()
    c = _client(broker)
    c.report("direction", "ok", [1.0] * 8, 1, "1.0.0", 1, ts=T)
    c.report("direction", "short", [1.0] * 7, 1, "1.0.0", 1, ts=T)
    c.report("direction", "text", [1.0] * 7 + ["x"], 1, "1.0.0", 1, ts=T)
    c.flush(1)
    by_form = {p.get("n_features"): p for p in broker.payloads}
    assert by_form[8]["id"] == ["ok"]
    assert by_form[None]["id"] == ["short", "text"]
    assert by_form[None]["x"][1][-1] == "x"
    parse_payload(IngestBatch, by_form[None])  # still a valid envelope: rows are judged by ingest


def test_a_full_buffer_drops_counts_and_reports_the_drops():
    # Given a buffer of 100 rows and no flusher running
    broker = Broker()
    c = _client(broker, max_buffer=100)
    # When 150 rows are reported
    for i in range(150):
        c.report("direction", i, [0.0] * 8, 1, "1.0.0", 1, ts=T)
    # Then 50 are dropped and counted, and the next batch tells the server
    assert c.stats.dropped_rows == 50
    c.flush(1)
    assert broker.rows() == 100
    assert broker.payloads[0]["client_dropped"] == 50
    c.report("direction", "later", [0.0] * 8, 1, "1.0.0", 1, ts=T)
    c.flush(1)
    assert "client_dropped" not in broker.payloads[-1]  # reported once, not again


def test_broker_down_keeps_batches_bounded_and_sends_them_when_it_is_back():
    # Given a broker that is down and room for 3 waiting batches of 10 rows
    broker = Broker()
    broker.up = False
    c = _client(broker, batch_size=10, max_waiting_batches=3, retry_max_s=0.01)
    for i in range(25):
        c.report("direction", i, [0.0] * 8, 1, "1.0.0", 1, ts=T)
    # When it cannot send: nothing is lost while the bound holds
    assert not c.flush(0.05)
    assert c.stats.batches_waiting == 3 and c.stats.waiting_rows == 25 and c.stats.dropped_rows == 0
    assert c.stats.send_errors > 0
    # And past the bound the oldest batch is dropped and counted
    for i in range(25, 35):
        c.report("direction", i, [0.0] * 8, 1, "1.0.0", 1, ts=T)
    c.flush(0.05)
    assert c.stats.dropped_rows == 10 and c.stats.waiting_rows == 25
    # Then when the broker is back, everything still held goes out, with the drop count
    broker.up = True
    assert c.flush(1)
    assert broker.rows() == 25
    assert broker.payloads[0]["client_dropped"] == 10
    sent = sorted(int(i) for p in broker.payloads for i in p["id"])
    assert sent == list(range(10, 35))


def test_background_flusher_sends_by_size_and_by_age():
    broker = Broker()
    c = RetrainClient(sender=broker, batch_size=50, flush_interval_s=0.2)
    try:
        for i in range(50):  # a full batch wakes the flusher at once
            c.report("direction", i, [0.0] * 8, 1, "1.0.0", 1, ts=T)
        deadline = time.monotonic() + 5
        while broker.rows() < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.rows() == 50
        c.report("direction", "late", [0.0] * 8, 1, "1.0.0", 1, ts=T)  # one row: sent on age
        deadline = time.monotonic() + 5
        while broker.rows() < 51 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.rows() == 51
    finally:
        c.close(2)


def test_many_threads_report_without_loss():
    broker = Broker()
    c = RetrainClient(sender=broker, batch_size=500, flush_interval_s=0.05)

    def app(t: int) -> None:
        for i in range(5000):
            c.report("direction", f"{t}-{i}", [0.0] * 8, 1, "1.0.0", 1, ts=T)

    threads = [threading.Thread(target=app, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stats = c.close(5)
    assert stats.dropped_rows == 0
    assert broker.rows() == 20_000
    assert len({i for p in broker.payloads for i in p["id"]}) == 20_000


def test_request_retraining_is_sent_at_once_to_the_decision_queue():
    broker = Broker()
    c = _client(broker)
    c.request_retraining("direction", "vendor data changed", approved_by="ops")
    assert broker.payloads == [{"v": 1, "model": "direction", "reason": "vendor data changed", "trigger": "manual",
                                "requested_by": "trading-app", "override_budget": False, "approved_by": "ops"}]


def test_relay_mode_packs_on_the_reporting_call_when_a_batch_is_due_by_size_or_age():
    # Given a client in relay mode, batches of 10 rows, and its timer (the only thread it runs)
    broker = Broker()
    c = RetrainClient(sender=broker, mode="relay", batch_size=10, flush_interval_s=0.5, idle_flush_s=60)
    assert c._thread.name == "retrain-client-timer"
    calling = threading.get_ident()
    sent_on = []
    c._send = lambda *a: (sent_on.append(threading.get_ident()), broker(*a))
    try:
        # When 20 predictions and their outcomes are reported
        for i in range(20):
            c.report_prediction("direction", f"p{i}", [0.0] * 8, 1, "1.0.0")
            c.report_outcome("direction", f"p{i}", 1, 0.001)
        # Then the call that filled the buffer packed and sent them, joined, on the calling thread
        assert broker.rows() == 20 and all(p["label"] == [1] * 10 for p in broker.payloads)
        assert set(sent_on) == {calling}
        # And a lone row goes out with the first call after flush_interval_s, not before
        c.report("direction", "late", [0.0] * 8, 1, "1.0.0", 1)
        assert broker.rows() == 20
        assert until(lambda: c._limit[0] == 0, timeout=5)  # the timer marked it due
        assert broker.rows() == 20
        c.report("direction", "later", [0.0] * 8, 1, "1.0.0", 1)
        assert broker.rows() == 22 and set(sent_on) == {calling}
    finally:
        c.close(5)


def test_relay_mode_from_many_threads_loses_nothing_and_sends_each_row_once():
    broker = Broker()
    c = RetrainClient(sender=broker, mode="relay", batch_size=500, flush_interval_s=0.01, idle_flush_s=0.05)

    def app(t: int) -> None:
        for i in range(5000):
            c.report_prediction("direction", f"{t}-{i}", [0.0] * 8, 1, "1.0.0")
            c.report_outcome("direction", f"{t}-{i}", 0, 0.001)

    threads = [threading.Thread(target=app, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stats = c.close(5)
    ids = [i for p in broker.payloads for i in p["id"]]
    assert stats.dropped_rows == 0 and len(ids) == 20_000 and len(set(ids)) == 20_000
    assert all(label == 0 for p in broker.payloads for label in p["label"])


def test_a_drop_count_carried_by_a_batch_adds_to_the_senders_own():
    # Given a client (a relay's child) handed a batch that already carries a parent's drop count
    broker = Broker()
    c = _client(broker, max_buffer=1)
    c.report("direction", "a", [0.0] * 8, 1, "1.0.0", 1)
    c.report("direction", "b", [0.0] * 8, 1, "1.0.0", 1)  # dropped here: the buffer holds one
    c.enqueue_payload({"v": 1, "batch_id": "x" * 32, "model": "direction", "id": [], "version": [], "ts": [],
                       "x": [], "prediction": [], "label": [], "client_dropped": 7}, 0)
    # When sent, Then the server hears of both
    c.flush(1)
    assert sum(p.get("client_dropped", 0) for p in broker.payloads) == 8


def _decoded(payload) -> dict:
    """What the worker's task receives for a sent payload (an encoded one decoded as Celery would)."""
    return json.loads(payload.body)[0][0] if isinstance(payload, EncodedIngest) else payload


def test_an_encoded_ingest_body_is_what_kombu_would_send_with_the_packed_columns_put_in_as_they_are():
    # Given a batch whose strings need escaping, and its packed columns
    payload = {"v": 1, "batch_id": "b" * 32, "model": 'dir"ection', "id": ['a"}],{},', "\\x\n"],
               "version": ["1.0.0", "1.0.0"], "prediction": [1, 0], "label": [None, 1], "client_dropped": 4,
               "ts": pack_f8([T, T]), "x": pack_f8([0.5] * 16), "n_features": 8, "ret": pack_f8([0.1, float("nan")])}
    # When encoded once
    enc = encode_ingest(payload)
    # Then the body is the Celery protocol-2 body of retrain.ingest(payload), valid for the ingest schema
    assert json.loads(enc.body) == [[payload], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    parse_payload(IngestBatch, json.loads(enc.body)[0][0])
    assert (enc.batch_id, enc.model, enc.rows, enc.client_dropped) == ("b" * 32, 'dir"ection', 2, 4)
    # And a packed column that is not plain base64 is encoded, not put in
    odd = encode_ingest({**payload, "x": 'not"base64'})
    assert json.loads(odd.body)[0][0]["x"] == 'not"base64'


@pytest.mark.parametrize("column, values", [
    ("id", ["plain", "ACCT-00001-7"]), ("id", ['quo"te', "back\\slash"]), ("id", ["tab\tand\x01", "é", "日本"]),
    ("id", []), ("id", ["text", 5]), ("version", ["1.0.0", "2.0.0"]), ("version", ["1.0.0\n"]),
    ("prediction", [0, 1, 1]), ("prediction", [2, -1]), ("prediction", [0.5, 1]), ("label", [None, 0, 1]),
    ("label", [True, False]), ("label", [[1], 0]),
])
def test_every_column_written_without_the_encoder_reads_back_as_the_encoder_writes_it(column, values):
    # Given a batch whose column holds plain values, values that need escaping, or others
    payload = {"v": 1, "batch_id": "b", "model": "direction", "id": ["p1"], "version": ["1.0.0"],
               "prediction": [1], "label": [1], "ts": pack_f8([T]), "x": pack_f8([0.5] * 8), "n_features": 8,
               "ret": pack_f8([0.1])}
    payload[column] = values
    # When encoded, then read back, each value is what json would have written
    body = json.loads(encode_ingest(payload).body)[0][0]
    assert body == json.loads(json.dumps(payload))


def test_drops_beside_encoded_batches_go_to_the_server_in_a_message_of_their_own():
    # Given a relay's child holding encoded batches while the broker is down, room for two
    broker = Broker()
    broker.up = False
    c = _client(broker, max_waiting_batches=2, retry_max_s=0.01)
    batches = []
    for i in range(3):
        p = {"v": 1, "batch_id": f"{i}" * 32, "model": "direction", "id": [f"r{i}-{j}" for j in range(5)],
             "version": ["1.0.0"] * 5, "prediction": [1] * 5, "label": [1] * 5, "ts": pack_f8([T] * 5),
             "x": pack_f8([0.0] * 40), "n_features": 8, "ret": pack_f8([0.0] * 5)}
        if i == 0:
            p["client_dropped"] = 3  # the parent's drops, carried by the batch the child will drop
        batches.append(encode_ingest(p))
    # When a third arrives, the oldest (5 rows, carrying 3) is dropped
    for b in batches:
        c.enqueue_payload(b, b.rows)
    assert c.stats.dropped_rows == 8 and c.stats.waiting_rows == 10
    # Then, the broker back, a batch of no rows carries the 8 first, and the encoded bodies go unchanged
    broker.up = True
    assert c.flush(1)
    sent = [_decoded(p) for p in broker.payloads]
    assert sent[0]["id"] == [] and sent[0]["client_dropped"] == 8
    parse_payload(IngestBatch, sent[0])
    assert broker.payloads[1:] == batches[1:]
    assert sum(p.get("client_dropped", 0) for p in sent) == 8
