"""Ingest on SQLite and Postgres: good rows land, malformed ones are kept with a reason,
a redelivered batch counts once, and the vectorised buckets equal a row-by-row count."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from retrain.client import RetrainClient
from retrain.core.payloads import IngestBatch, parse_payload
from retrain.core.windows import Counts
from retrain.steps.ingest import UNKNOWN_PREDICTION, ingest
from tests.conftest import T0, make_context

pytestmark = pytest.mark.integration
T = T0.timestamp()


def _payloads(rows: list[tuple]) -> list[dict]:
    """What the real client sends for these ``report(...)`` rows."""
    sent: list[dict] = []
    client = RetrainClient(sender=lambda task, p, q, prio: sent.append(p), start=False, batch_size=10_000)
    for r in rows:
        client.report(*r)
    client.report_outcome("direction", "never-predicted", 1, 0.01)
    assert client.flush(1)
    return sent


def _ingest_all(ctx, payloads: list[dict]):
    return [ingest(ctx, parse_payload(IngestBatch, p)) for p in payloads]


def _stored(ctx) -> tuple[int, int, list]:
    with ctx.store.tx() as tx:
        buckets = tx.monitoring.buckets("direction", None, T0 - timedelta(days=1))
        return sum(b.n for b in buckets), len(tx.monitoring.samples("direction")), [d.reason for d in tx.dead_letters.newest()]


def test_bad_records_are_kept_with_a_reason_while_the_good_ones_land(any_db_url, tmp_path):
    ctx = make_context(any_db_url, tmp_path)
    rng = np.random.default_rng(1)
    good = [("direction", f"g{i}", rng.normal(size=8).tolist(), i % 2, "1.0.0", (i // 3) % 2, 0.001, T + i)
            for i in range(300)]
    bad = [
        ("direction", "short", [0.5] * 7, 1, "1.0.0", 1, 0.0, T),
        ("direction", "nan", [float("nan")] + [0.5] * 7, 1, "1.0.0", 1, 0.0, T),
        ("direction", "word", [0.5] * 7 + ["high"], 1, "1.0.0", 1, 0.0, T),
    ]
    # Given one client flush with good rows, three malformed ones and an outcome for an unknown prediction
    payloads = _payloads(good[:150] + bad + good[150:])
    # When ingested
    results = _ingest_all(ctx, payloads)
    # Then the good rows are in the buckets and each bad one is a dead letter with its reason
    n, samples, dead = _stored(ctx)
    assert n == 300 and 0 < samples <= 300
    assert sorted(dead) == sorted([
        "expected 8 features, got 7",
        "feature value nan is not a finite number",
        "feature value 'high' is not a finite number",
        "label for an unknown prediction (no prediction with this id was reported)",
    ])
    assert sum(r.accepted for r in results) == 300 and sum(r.rejected for r in results) == 4
    with ctx.store.tx() as tx:
        kept = {d.payload["id"]: d.payload for d in tx.dead_letters.newest()}
    assert kept["short"]["x"] == [0.5] * 7 and kept["never-predicted"]["label"] == 1

    # And a redelivered batch is not counted twice
    again = _ingest_all(ctx, payloads)
    assert all(r.duplicate for r in again)
    assert _stored(ctx)[0] == 300 and len(_stored(ctx)[2]) == 4


def test_unknown_model_and_json_number_payloads(any_db_url, tmp_path):
    ctx = make_context(any_db_url, tmp_path)
    base = {"v": 1, "id": ["a", "b"], "version": ["1.0.0", "1.0.0"], "ts": [T, T + 61],
            "prediction": [1, 0], "label": [1, None], "ret": [0.01, None]}
    # Given a batch for a model nobody configured
    r = ingest(ctx, parse_payload(IngestBatch, {**base, "batch_id": uuid.uuid4().hex, "model": "nope",
                                                 "x": [[0.0] * 8, [0.0] * 8]}))
    assert r.rejected == 2 and r.reasons == {"unknown model": 2}
    # And the first version of the payload (one list per row), and the flat one
    r1 = ingest(ctx, parse_payload(IngestBatch, {**base, "batch_id": uuid.uuid4().hex, "model": "direction",
                                                  "x": [[0.1] * 8, [0.2] * 8]}))
    r2 = ingest(ctx, parse_payload(IngestBatch, {**base, "batch_id": uuid.uuid4().hex, "model": "direction",
                                                  "x": [0.1] * 16, "n_features": 8}))
    # Then both are read alike: one labelled row and one prediction without an outcome each
    assert (r1.accepted, r1.rejected, r2.accepted, r2.rejected) == (2, 0, 2, 0)
    with ctx.store.tx() as tx:
        rows = tx.monitoring.buckets("direction", "1.0.0", T0 - timedelta(hours=1))
        dead = tx.dead_letters.newest()
    assert [(b.minute, b.n, b.tp, b.unlabelled) for b in rows] == [(T0, 2, 2, 0), (T0 + timedelta(minutes=1), 0, 0, 2)]
    assert [d.reason for d in dead] == ["unknown model 'nope'"]


def test_vectorised_buckets_equal_a_row_by_row_count(any_db_url, tmp_path):
    ctx = make_context(any_db_url, tmp_path)
    rng = np.random.default_rng(7)
    n = 4000
    ts = T + np.sort(rng.uniform(0, 600, n))
    version = rng.choice(["1.0.0", "1.1.0"], n)
    pred, label = rng.integers(0, 2, n), rng.integers(0, 2, n)
    ret = rng.normal(0, 1e-3, n)
    rows = [("direction", f"r{i}", rng.normal(size=8).tolist(), int(pred[i]), str(version[i]), int(label[i]),
             float(ret[i]), float(ts[i])) for i in range(n)]
    _ingest_all(ctx, _payloads(rows))
    with ctx.store.tx() as tx:
        got = {(b.version, b.minute): b for b in tx.monitoring.buckets("direction", None, T0 - timedelta(hours=1))}
    minute = (ts // 60).astype(int)
    for (v, m), b in got.items():
        sel = (version == v) & (minute == int(b.minute.timestamp() // 60))
        strat = np.where(pred[sel] == 1, ret[sel], -ret[sel])
        want = Counts.from_arrays(label[sel], pred[sel], strat)
        assert (b.n, b.tp, b.fp, b.tn, b.fn) == (want.n, want.tp, want.fp, want.tn, want.fn)
        assert b.ret_sum == pytest.approx(want.ret_sum) and b.ret_sq_sum == pytest.approx(want.ret_sq_sum)
    assert sum(b.n for b in got.values()) == n and len(got) == 20


def test_client_drops_are_written_to_the_audit_trail(sqlite_url, tmp_path):
    ctx = make_context(sqlite_url, tmp_path)
    sent: list[dict] = []
    client = RetrainClient(sender=lambda task, p, q, prio: sent.append(p), start=False, max_buffer=10)
    for i in range(12):
        client.report("direction", i, [0.0] * 8, 1, "1.0.0", 1, 0.0, T)
    client.flush(1)
    _ingest_all(ctx, sent)
    with ctx.store.tx() as tx:
        events = tx.audit.events("direction", kind="client")
    assert len(events) == 1 and events[0].data["dropped"] == 2


def test_the_sample_keeps_at_most_max_per_minute_rows(sqlite_url, tmp_path):
    from retrain.config import load_config
    from tests.conftest import EXAMPLE_CONFIG

    cfg = load_config(EXAMPLE_CONFIG)
    model = cfg.models["direction"].model_copy(update={"sample": cfg.models["direction"].sample.model_copy(
        update={"rate": 1.0, "max_per_minute": 25})})
    ctx = make_context(sqlite_url, tmp_path, config=cfg.model_copy(update={"models": {"direction": model}}))
    # Given 3 minutes of 100 rows each, sent in two batches
    rows = [("direction", f"s{i}", [0.0] * 8, 1, "1.0.0", 1, 0.0, T + i * 0.6) for i in range(300)]
    _ingest_all(ctx, _payloads(rows[:150]) + _payloads(rows[150:]))
    with ctx.store.tx() as tx:
        per_minute = {}
        for s in tx.monitoring.samples("direction"):
            per_minute[s.ts.replace(second=0, microsecond=0)] = per_minute.get(s.ts.replace(second=0, microsecond=0), 0) + 1
    # Then each minute keeps 25, the cap, and no more
    assert sorted(per_minute.values()) == [25, 25, 25]


def _future_reason(row_ts: float, skew: str = "86400") -> str:
    row = datetime.fromtimestamp(row_ts, tz=timezone.utc).isoformat()
    return (f"timestamp {row_ts!r} is more than RETRAIN_MAX_CLOCK_SKEW_S={skew} s ahead of the clock "
            f"(row at {row}, clock at {T0.isoformat()})")


def test_rows_too_far_ahead_of_the_clock_are_dead_lettered_while_the_good_ones_land(any_db_url, tmp_path):
    # Given a worker whose clock reads T0 (the default skew: one day) and one client flush of good
    # rows, rows dated 50 years ahead, one a second past the skew and one exactly at it
    ctx = make_context(any_db_url, tmp_path)
    day = 86_400.0
    good = [("direction", f"g{i}", [0.1 * (i % 5)] * 8, i % 2, "1.0.0", 1, 0.001, T + i) for i in range(200)]
    far = T + 50 * 365.25 * day
    future = [("direction", "2076", [0.5] * 8, 1, "1.0.0", 1, 0.0, far),
              ("direction", "2076b", [0.5] * 8, 0, "1.0.0", 0, 0.0, far + 60),
              ("direction", "past-skew", [0.5] * 8, 1, "1.0.0", 1, 0.0, T + day + 1)]
    edge = [("direction", "at-skew", [0.5] * 8, 1, "1.0.0", 0, 0.0, T + day)]
    payloads = _payloads(good[:100] + future + edge + good[100:])
    # When ingested
    results = _ingest_all(ctx, payloads)
    # Then the good rows and the one at the bound land, each future row is a dead letter saying the
    # row's time, the clock's time and the setting, and no bucket lies past the bound
    assert sum(r.accepted for r in results) == 201
    with ctx.store.tx() as tx:
        buckets = tx.monitoring.buckets("direction", None, T0 - timedelta(days=1))
        dead = {d.payload["id"]: d for d in tx.dead_letters.newest()}
    assert sum(b.n for b in buckets) == 201
    assert max(b.minute for b in buckets) == T0 + timedelta(days=1)
    assert set(dead) == {"2076", "2076b", "past-skew", "never-predicted"}
    assert dead["2076"].reason == _future_reason(far)
    assert "row at 2076-01-0" in dead["2076"].reason and "clock at 2026-01-05T00:00:00+00:00" in dead["2076"].reason
    assert dead["past-skew"].reason == _future_reason(T + day + 1)
    assert dead["2076"].source == "retrain.ingest" and dead["2076"].payload["ts"] == far
    assert dead["2076"].payload["x"] == [0.5] * 8 and dead["2076"].payload["prediction"] == 1
    summary = {k: v for r in results for k, v in r.reasons.items()}
    assert summary["timestamp … is more than RETRAIN_MAX_CLOCK_SKEW_S=… s ahead of the clock"] == 3


def test_the_skew_setting_moves_the_bound(any_db_url, tmp_path):
    # Given a worker allowing one hour of clock skew, and rows 30 minutes and 2 hours ahead,
    # one older than any live model (a backtest replays such history) and one before 1970
    ctx = make_context(any_db_url, tmp_path, max_clock_skew_s=3600)
    rows = [("direction", "soon", [0.5] * 8, 1, "1.0.0", 1, 0.0, T + 1800),
            ("direction", "later", [0.5] * 8, 1, "1.0.0", 1, 0.0, T + 7200),
            ("direction", "1990", [0.5] * 8, 1, "1.0.0", 1, 0.0, 631_152_000.0),
            ("direction", "1969", [0.5] * 8, 1, "1.0.0", 1, 0.0, -1.0)]
    # When ingested
    results = _ingest_all(ctx, _payloads(rows))
    # Then the bound is the setting's: the row 2 hours ahead is refused, saying so; the old one lands
    with ctx.store.tx() as tx:
        dead = {d.payload["id"]: d.reason for d in tx.dead_letters.newest()}
    assert sum(r.accepted for r in results) == 2
    assert dead == {"later": _future_reason(T + 7200, "3600"), "1969": "timestamp -1.0 is not a valid epoch time",
                    "never-predicted": UNKNOWN_PREDICTION}

    # And with the default skew, the same row 2 hours ahead is accepted
    default = make_context(any_db_url, tmp_path / "default")
    assert sum(r.accepted for r in _ingest_all(default, _payloads(rows[1:2]))) == 1
