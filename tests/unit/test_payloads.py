"""The task payloads are strict: a value of the wrong JSON type is refused, naming its field,
never coerced ("yes" is not True, "5" is not 5); what JSON and our own senders legitimately
write still parses.

Decided here: a float where an int is expected is refused even when whole (``5.0``): JSON
writes an integer without a point, so ``5.0`` was sent as a float; our senders write ints.
An int where a float is expected is accepted (``1767571200`` is a JSON number like any other).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import BaseModel

import retrain.core.payloads as payloads
from retrain.client import RetrainClient, encode_ingest
from retrain.core.columns import pack_f8, unpack_f8
from retrain.core.errors import PayloadError
from retrain.core.payloads import (
    DecidePayload,
    IngestBatch,
    ManualRequestPayload,
    NotifyPayload,
    RollbackPayload,
    RunPayload,
    SweepPayload,
    parse_payload,
)

T = 1_767_571_200.0

_INGEST = {"v": 1, "batch_id": "b" * 32, "model": "direction", "id": ["p1", "p2"], "version": ["1.0.0", "1.0.0"],
           "ts": [T, T + 1], "x": [[0.5] * 8, [0.25] * 8], "prediction": [1, 0], "label": [1, None],
           "ret": [0.01, None]}
_PACKED = {**_INGEST, "ts": pack_f8([T, T + 1]), "x": pack_f8([0.5] * 16), "n_features": 8,
           "ret": pack_f8([0.01, math.nan])}

# schema -> (a valid payload, its required fields)
BASE = {
    IngestBatch: _INGEST,
    SweepPayload: {"v": 1},
    DecidePayload: {"v": 1, "request_id": "0b7e6a52-3f0e-4a63-9d43-5a8c2f0f3c11"},
    RunPayload: {"v": 1, "run_id": "0b7e6a52-3f0e-4a63-9d43-5a8c2f0f3c11"},
    ManualRequestPayload: {"v": 1, "model": "direction", "reason": "vendor data changed"},
    RollbackPayload: {"v": 1, "model": "direction", "reason": "canary 12 % worse"},
    NotifyPayload: {"v": 1, "event_id": "5f0c0a3e9b6d4c1a", "event": "rollback", "at": "2026-01-05T00:00:00+00:00",
                    "model": "direction", "summary": "direction rolled back to 1.0.0"},
}

# (schema, field, a value pydantic's lax mode would have coerced or that is of another JSON type)
REFUSED = [
    *[(schema, "v", bad) for schema in BASE for bad in ("1", True, 1.0)],
    (IngestBatch, "batch_id", 12345678901234567890),
    (IngestBatch, "model", 5),
    (IngestBatch, "id", [1, 2]),
    (IngestBatch, "version", [1, 1]),
    (IngestBatch, "ts", [str(T), str(T + 1)]),
    (IngestBatch, "ts", [True, True]),
    (IngestBatch, "ts", ["NaN", "Infinity"]),  # not how our client spells them
    (IngestBatch, "prediction", ["1", "0"]),
    (IngestBatch, "prediction", [True, False]),
    (IngestBatch, "prediction", [1.0, 0.0]),
    (IngestBatch, "prediction", [1.5, 0]),
    (IngestBatch, "label", ["yes", None]),
    (IngestBatch, "label", [True, None]),
    (IngestBatch, "label", [1.0, None]),
    (IngestBatch, "ret", ["0.01", None]),
    (IngestBatch, "ret", [False, None]),
    (IngestBatch, "client_dropped", "3"),
    (IngestBatch, "client_dropped", 3.0),
    (IngestBatch, "client_dropped", True),
    (SweepPayload, "models", "direction"),
    (SweepPayload, "models", [5]),
    (DecidePayload, "request_id", 5),
    (RunPayload, "run_id", 5),
    (RunPayload, "attempt", "2"),
    (RunPayload, "attempt", 2.0),
    (RunPayload, "attempt", True),
    *[(ManualRequestPayload, "override_budget", bad) for bad in ("yes", "true", "True", "1", 1, 0, 1.0, None)],
    (ManualRequestPayload, "model", 5),
    (ManualRequestPayload, "reason", 5),
    (ManualRequestPayload, "trigger", 1),
    (ManualRequestPayload, "slot", 5),
    (ManualRequestPayload, "requested_by", 5),
    (ManualRequestPayload, "approved_by", 5),
    (ManualRequestPayload, "override_reason", False),
    (RollbackPayload, "model", 5),
    (RollbackPayload, "version", 1),
    (RollbackPayload, "from_version", 1.2),
    (RollbackPayload, "reason", ["x"]),
    (RollbackPayload, "actor", 5),
]

# (schema, field, a legitimate value, what it parses to)
ACCEPTED = [
    *[(schema, "v", 1, 1) for schema in BASE],
    (IngestBatch, "ts", [1_767_571_200, 1_767_571_201], [T, T + 1]),  # JSON integers where floats go
    (IngestBatch, "ts", ["nan", "inf"], ["nan", "inf"]),  # non-finite, as the client spells them: judged by ingest
    (IngestBatch, "ts", pack_f8([T, T + 1]), pack_f8([T, T + 1])),
    (IngestBatch, "prediction", [1, None], [1, None]),
    (IngestBatch, "label", [None, None], [None, None]),
    (IngestBatch, "ret", [None, 0], [None, 0.0]),
    (IngestBatch, "ret", ["nan", "-inf"], ["nan", "-inf"]),
    (IngestBatch, "ret", pack_f8([0.1, math.nan]), pack_f8([0.1, math.nan])),
    (IngestBatch, "x", [None, [0.5, "high", None]], [None, [0.5, "high", None]]),  # rows are judged by ingest
    (IngestBatch, "client_dropped", 3, 3),
    (SweepPayload, "models", None, None),
    (SweepPayload, "models", ["direction"], ["direction"]),
    (RunPayload, "attempt", 2, 2),
    (RunPayload, "attempt", None, None),
    (ManualRequestPayload, "override_budget", True, True),
    (ManualRequestPayload, "override_budget", False, False),
    (ManualRequestPayload, "trigger", "schedule", "schedule"),
    (ManualRequestPayload, "slot", None, None),
    (ManualRequestPayload, "approved_by", None, None),
    (ManualRequestPayload, "override_reason", None, None),
    (RollbackPayload, "version", None, None),
    (RollbackPayload, "version", "1.2.0", "1.2.0"),
    (RollbackPayload, "from_version", None, None),
]


def _id(v) -> str:
    return repr(v) if not isinstance(v, str) or len(v) < 20 else "packed"


@pytest.mark.parametrize("schema, field, value", REFUSED,
                         ids=[f"{s.__name__}.{f}={_id(v)}" for s, f, v in REFUSED])
def test_a_lax_value_is_refused_and_the_error_names_its_field(schema, field, value):
    # Given a valid payload with one field of the wrong JSON type
    payload = {**BASE[schema], field: value}
    # When it is parsed at the task boundary, Then it is refused, naming the schema and the field
    with pytest.raises(PayloadError, match=rf"^{schema.__name__}: {field}[.:]"):
        parse_payload(schema, payload)


@pytest.mark.parametrize("schema, field, value, parsed", ACCEPTED,
                         ids=[f"{s.__name__}.{f}={_id(v)}" for s, f, v, _ in ACCEPTED])
def test_what_json_legitimately_sends_still_parses(schema, field, value, parsed):
    p = parse_payload(schema, {**BASE[schema], field: value})
    got = getattr(p, field)
    assert got == parsed and type(got) is type(parsed)
    if isinstance(got, list):  # ints read as floats where floats go, not kept as ints
        assert [type(v) for v in got] == [type(v) for v in parsed]


@pytest.mark.parametrize("field, value", [("x", ["0.5"] * 16), ("n_features", "8"), ("n_features", 8.0),
                                          ("n_features", True)])
def test_the_flat_and_packed_forms_are_strict_too(field, value):
    parse_payload(IngestBatch, _PACKED)
    parse_payload(IngestBatch, {**_PACKED, "x": [0.5] * 15 + [1]})  # an integer among the features: a number
    with pytest.raises(PayloadError, match=f"^IngestBatch: {field}"):
        parse_payload(IngestBatch, {**_PACKED, field: value})


def test_every_payload_schema_has_its_table():
    schemas = {getattr(payloads, n) for n in payloads.__all__}
    schemas = {s for s in schemas if isinstance(s, type) and issubclass(s, BaseModel)}
    assert schemas == set(BASE)
    for schema, base in BASE.items():
        parse_payload(schema, base)
        assert {f for f, info in schema.model_fields.items() if info.is_required()} <= set(base)


def test_a_union_member_pydantic_tried_is_left_out_of_the_message():
    with pytest.raises(PayloadError) as err:
        parse_payload(IngestBatch, {**_INGEST, "ts": ["5", T]})
    assert str(err.value) == "IngestBatch: ts.0: Input should be a valid number; ts: Input should be a valid string"


# ---------------------------------------------------------------- what our own code sends
def _client_payloads(rows: list[tuple], **kw) -> list[dict]:
    sent: list[dict] = []
    client = RetrainClient(sender=lambda task, p, q, prio: sent.append(p), start=False, **kw)
    for r in rows:
        client.report(*r[:-1], ts=r[-1])
    client.report_outcome("direction", "never-predicted", True, float("nan"))
    assert client.flush(1)
    return sent


def test_what_the_client_encodes_packed_and_unpacked_still_parses():
    # Given rows the packed form carries, with the types a trading app hands over (numpy
    # integers and floats, bools), and rows it cannot (another width, a word, no features)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 8))
    pred = rng.integers(0, 2, 20)
    rows = [("direction", f"g{i}", X[i], pred[i], "1.0.0", bool(i % 2), np.float64(0.001 * i), T + i)
            for i in range(20)]
    odd = [("direction", "short", [0.5] * 7, np.int64(1), "1.0.0", True, float("nan"), T),
           ("direction", "word", [0.5] * 7 + ["high"], 1.0, "1.0.0", np.float64(0.0), 0.01, np.int64(T)),
           ("direction", "future", [0.5] * 9, 0, "1.0.0", 1, float("inf"), float("inf")),
           ("direction", "none", None, 1, "1.0.0", None, None, T)]
    sent = _client_payloads(rows[:10] + odd + rows[10:])
    # When each batch is parsed as the worker would, sent as it is and after the one-pass encoding
    parsed = [parse_payload(IngestBatch, p) for p in sent]
    encoded = [parse_payload(IngestBatch, json.loads(encode_ingest(p).body)[0][0]) for p in sent]
    # Then every batch parses, both ways alike, the good rows packed with their exact values
    assert [b.model_dump() for b in parsed] == [b.model_dump() for b in encoded]
    packed = [b for b in parsed if b.n_features == 8]
    unpacked = [b for b in parsed if b.n_features is None]
    assert len(packed) == 1 and len(unpacked) == 2  # the orphan outcome goes in a batch of its own
    assert packed[0].id == [f"g{i}" for i in range(20)]
    np.testing.assert_array_equal(unpack_f8(packed[0].x).reshape(-1, 8), X)
    assert packed[0].prediction == pred.tolist() and packed[0].label == [i % 2 for i in range(20)]
    # And the rows the packed form cannot carry keep their values, integers read as the packed path reads them
    odd_rows, orphan = unpacked
    assert odd_rows.id == ["short", "word", "future", "none"]
    assert odd_rows.prediction == [1, 1, 0, 1] and odd_rows.label == [1, 0, 1, None]
    assert odd_rows.ts == [T, T, "inf", T] and odd_rows.ret == ["nan", 0.01, "inf", None]
    assert orphan.id == ["never-predicted"] and orphan.prediction == [None] and orphan.label == [1]
    assert orphan.ret == ["nan"]


def test_the_clients_request_and_drop_notice_parse_and_a_lax_override_is_refused_at_the_caller():
    sent: list[dict] = []
    client = RetrainClient(sender=lambda task, p, q, prio: sent.append(p), start=False)
    client.request_retraining("direction", "vendor data changed", approved_by="ops", override_budget=True,
                              override_reason="desk asked")
    p = parse_payload(ManualRequestPayload, sent[0])
    assert p.override_budget is True and p.approved_by == "ops"
    with pytest.raises(TypeError, match="override_budget"):
        client.request_retraining("direction", "x", override_budget="yes")
    from retrain.client import _drop_notice

    parse_payload(IngestBatch, {**_drop_notice("direction"), "client_dropped": 4})


def test_beat_schedule_args_parse_with_their_tasks_schemas():
    import celeryconfig

    schema = {"retrain.sweep": SweepPayload, "retrain.relay": SweepPayload, "retrain.reconcile": SweepPayload,
              "retrain.retention": SweepPayload, "retrain.evaluate_rollouts": SweepPayload,
              "retrain.request_retraining": ManualRequestPayload, "retrain.notify_retry": SweepPayload}
    for name, entry in celeryconfig.beat_schedule.items():
        assert entry["task"] in schema, name
        parse_payload(schema[entry["task"]], entry["args"][0])
