"""Message schemas: every task's JSON payload, validated at the task boundary.

Messages carry ids and small JSON values with a schema version ``v``; never ORM
objects, never pickle. A payload that does not validate raises PayloadError with
the field that is wrong.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrain.errors import PayloadError

__all__ = [
    "SCHEMA_VERSION",
    "MAX_BATCH_ROWS",
    "IngestBatch",
    "SweepPayload",
    "DecidePayload",
    "RunPayload",
    "ManualRequestPayload",
    "parse_payload",
]

SCHEMA_VERSION = 1
MAX_BATCH_ROWS = 50_000


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")
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
    ts: list[float]
    x: list[list[Any] | None]
    prediction: list[int | None]
    label: list[int | None]
    ret: list[float | None]
    # Rows the client had to drop since its last successful send (broker down, buffer full).
    client_dropped: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _same_length(self):
        n = len(self.id)
        if n > MAX_BATCH_ROWS:
            raise ValueError(f"batch has {n} rows; at most {MAX_BATCH_ROWS}")
        for name in ("version", "ts", "x", "prediction", "label", "ret"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name!r} has {len(getattr(self, name))} values, 'id' has {n}")
        return self


class SweepPayload(_Payload):
    models: list[str] | None = None


class DecidePayload(_Payload):
    request_id: str


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


P = TypeVar("P", bound=BaseModel)


def parse_payload(schema: type[P], payload: Any) -> P:
    if not isinstance(payload, dict):
        raise PayloadError(f"{schema.__name__}: expected a JSON object, got {type(payload).__name__}")
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])
        raise PayloadError(f"{schema.__name__}: {detail}") from None
