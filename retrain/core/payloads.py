"""Message schemas: every task's JSON payload, validated at the task boundary.

Messages carry ids and small JSON values with a schema version ``v``; never ORM
objects, never pickle. A payload that does not validate raises PayloadError with
the field that is wrong.

Types are strict (pydantic's strict mode): a value must already be of its field's JSON
type, nothing is coerced. ``override_budget: "yes"``, ``"true"`` or ``1`` is refused,
not read as True; ``"5"``, ``5.0`` and ``True`` are refused where an int is expected
(JSON writes an integer without a point: a ``5.0`` was sent as a float); ``5`` is refused
where a string is expected (ids are strings). What JSON legitimately sends is kept: an
integer where a float is expected (``"ts": [1767571200]``), ``null`` where a field is
optional, and the ingest batch's packed columns, which are strings (base64). In the
unpacked ``ts`` and ``ret`` columns the texts ``"nan"``, ``"inf"`` and ``"-inf"`` stand
for the non-finite numbers JSON cannot write (the client writes them so); the ingest
step judges those rows one by one.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrain.core.errors import PayloadError

__all__ = [
    "SCHEMA_VERSION",
    "MAX_BATCH_ROWS",
    "IngestBatch",
    "SweepPayload",
    "DecidePayload",
    "RunPayload",
    "NotifyPayload",
    "ManualRequestPayload",
    "RollbackPayload",
    "parse_payload",
]

SCHEMA_VERSION = 1
MAX_BATCH_ROWS = 50_000


#: A non-finite float64 as the client writes it into a JSON list (``str(float("nan"))``, ...).
_NonFinite = Literal["nan", "inf", "-inf"]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    v: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)


class IngestBatch(_Payload):
    """A column-oriented batch of one model's results, as the client sends it.

    A row with ``prediction`` and ``label`` is a labelled result; ``label`` None is a
    prediction whose outcome never arrived; ``prediction`` None is an outcome for a
    prediction the client never saw (it is dead-lettered).
    """

    batch_id: str = Field(min_length=8, max_length=64)
    model: str = Field(min_length=1, max_length=128)
    id: list[str]
    version: list[str]
    # ts, x and ret come as JSON numbers, or packed (retrain.core.columns: base64 of little-endian
    # float64, NaN for a missing return). Without n_features, x holds one list (or null) per
    # row; with it, x is flat, row-major: n_features numbers per row, as a list or packed.
    # Rows are checked one by one in the ingest step, not here; their types are checked here.
    ts: list[float | _NonFinite] | str
    x: list[list[Any] | None] | list[float | None] | str
    prediction: list[int | None]
    label: list[int | None]
    ret: list[float | _NonFinite | None] | str
    n_features: int | None = Field(None, ge=1, le=100_000)
    # Rows the client had to drop since its last successful send (broker down, buffer full).
    client_dropped: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _same_length(self) -> IngestBatch:
        n = len(self.id)
        if n > MAX_BATCH_ROWS:
            raise ValueError(f"batch has {n} rows; at most {MAX_BATCH_ROWS}")
        for name in ("version", "prediction", "label"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name!r} has {len(getattr(self, name))} values, 'id' has {n}")
        for name in ("ts", "ret"):
            _check_numbers(name, getattr(self, name), n)
        if self.n_features is not None:
            if self.x and isinstance(self.x, list) and isinstance(self.x[0], list):
                raise ValueError("with 'n_features', 'x' is flat: n_features numbers per row, not one list per row")
            _check_numbers("x", self.x, n * self.n_features)
        elif isinstance(self.x, str) or any(v is not None and not isinstance(v, list) for v in self.x[:1]):
            raise ValueError("a flat or packed 'x' needs 'n_features'")
        elif len(self.x) != n:
            raise ValueError(f"column 'x' has {len(self.x)} rows, 'id' has {n}")
        return self


def _check_numbers(name: str, col: list[Any] | str, count: int) -> None:
    if isinstance(col, str):
        # Base64 of count float64 values has exactly this many characters.
        if len(col) != 4 * ((count * 8 + 2) // 3):
            raise ValueError(f"packed column {name!r} does not hold {count} float64 values")
    elif len(col) != count:
        raise ValueError(f"column {name!r} has {len(col)} values, expected {count}")


class SweepPayload(_Payload):
    models: list[str] | None = None


class DecidePayload(_Payload):
    request_id: str


class NotifyPayload(_Payload):
    """An event to tell people about (:func:`retrain.core.notices.notice_of`), one id per event."""

    event_id: str = Field(min_length=8, max_length=64)
    event: str = Field(max_length=32)
    at: str
    model: str | None = None
    subject: str | None = None
    summary: str = Field(max_length=2000)
    facts: dict[str, Any] = Field(default_factory=dict)


class RunPayload(_Payload):
    run_id: str
    attempt: int | None = None


class ManualRequestPayload(_Payload):
    """A retraining asked for by a person, a script or a beat schedule entry."""

    model: str
    reason: str = Field(min_length=1, max_length=2000)
    trigger: Literal["manual", "schedule"] = "manual"
    # A schedule entry's slot (e.g. 'daily@2026-01-05T02:00'): fires once even with two beats.
    slot: str | None = Field(None, max_length=64)
    requested_by: str = "api"
    # An operator's approval given with the request (skips the first-week approval wait).
    approved_by: str | None = Field(None, max_length=128)
    override_budget: bool = False
    override_reason: str | None = Field(None, max_length=2000)


class RollbackPayload(_Payload):
    """``retrain.rollback``: serve a retained version again (rules: retrain.registry.rollback).

    ``version`` None means the ``previous`` alias, or withdrawing a canary in progress.
    ``from_version`` (the version taken out of service) makes a redelivered message
    harmless: once that version is out, a repeat does nothing.
    """

    model: str = Field(min_length=1, max_length=128)
    version: str | None = Field(None, pattern=r"^\d+\.\d+\.\d+$")
    from_version: str | None = Field(None, pattern=r"^\d+\.\d+\.\d+$")
    reason: str = Field(min_length=1, max_length=2000)
    actor: str = Field("api", min_length=1, max_length=128)


P = TypeVar("P", bound=BaseModel)


def parse_payload(schema: type[P], payload: Any) -> P:
    if not isinstance(payload, dict):
        raise PayloadError(f"{schema.__name__}: expected a JSON object, got {type(payload).__name__}")
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        raise PayloadError(f"{schema.__name__}: {_detail(exc)}") from None


def _detail(exc: ValidationError, limit: int = 5) -> str:
    """The first ``limit`` problems as ``field.index: message``.

    Our schemas are flat: a location is a field, then list indices. Pydantic puts the
    member of a union it tried in between (``ts.list[float].0``); that is left out, and
    of one location's failed members only the first is said.
    """
    seen: dict[str, str] = {}
    for e in exc.errors():
        loc = e["loc"]
        where = ".".join([str(p) for p in loc[:1]] + [str(p) for p in loc[1:] if isinstance(p, int)]) or "(root)"
        seen.setdefault(where, e["msg"])
        if len(seen) == limit:
            break
    return "; ".join(f"{where}: {msg}" for where, msg in seen.items())
