"""Domain types shared by the triggers, the decision policy, storage and the tasks.

These are plain frozen dataclasses: they cross the store boundary (ORM rows are
turned into them) and, through ``to_json``/``from_json``, the message boundary.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

__all__ = [
    "TriggerKind",
    "Severity",
    "Verdict",
    "RunState",
    "RetrainRequest",
    "RuleResult",
    "Decision",
    "TRIGGER_PRIORITY",
    "new_id",
]


def new_id() -> str:
    """A new identifier for a request, a decision, a run."""
    return str(uuid.uuid4())


class TriggerKind(str, enum.Enum):
    EMERGENCY = "emergency"
    PERFORMANCE = "performance"
    DRIFT = "drift"
    MANUAL = "manual"
    SCHEDULE = "schedule"


# Higher runs first: emergency > performance > drift > manual > schedule.
# celeryconfig maps these onto each broker's own priority scale.
TRIGGER_PRIORITY: dict[TriggerKind, int] = {
    TriggerKind.EMERGENCY: 9,
    TriggerKind.PERFORMANCE: 7,
    TriggerKind.DRIFT: 5,
    TriggerKind.MANUAL: 3,
    TriggerKind.SCHEDULE: 1,
}


class Severity(str, enum.Enum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


class Verdict(str, enum.Enum):
    APPROVE = "approve"
    DEFER = "defer"
    REJECT = "reject"
    PENDING_APPROVAL = "pending_approval"
    COALESCED = "coalesced"


class RunState(str, enum.Enum):
    QUEUED = "queued"
    TRAINING = "training"
    VALIDATING = "validating"
    SHADOW = "shadow"
    ROLLOUT = "rollout"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_RUN_STATES


_FINAL_RUN_STATES = {RunState.DONE, RunState.REJECTED, RunState.FAILED, RunState.DEAD, RunState.CANCELLED}


@dataclass(frozen=True)
class RetrainRequest:
    """A trigger's wish to retrain a model, with the evidence that made it fire."""

    id: str
    model: str
    trigger: TriggerKind
    created_at: datetime
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    severity: Severity | None = None
    requested_by: str = "system"
    override_budget: bool = False

    @property
    def priority(self) -> int:
        return TRIGGER_PRIORITY[self.trigger]


class RuleResult(NamedTuple):
    """One rule the decision checked: its value against its limit, and the outcome.

    A named tuple: immutable like the rest of the decision, and as cheap to build as a
    tuple (the decision makes about ten per call).
    """

    rule: str
    passed: bool
    value: Any = None
    limit: Any = None
    detail: str = ""
    bypassed: bool = False
    # When a failed rule only delays the request, the earliest time it may pass.
    retry_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        d = self._asdict()
        d["retry_at"] = self.retry_at.isoformat() if self.retry_at else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RuleResult:
        d = dict(d)
        if d.get("retry_at"):
            d["retry_at"] = datetime.fromisoformat(d["retry_at"])
        return cls(**d)


@dataclass(frozen=True)
class Decision:
    """The answer to one request: approve, defer (until when), reject, or wait for a human."""

    request_id: str
    model: str
    verdict: Verdict
    decided_at: datetime
    rules: tuple[RuleResult, ...]
    defer_until: datetime | None = None
    estimated_cost_usd: float = 0.0
    priority: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_rules(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.rules if not r.passed and not r.bypassed)

    @property
    def summary(self) -> str:
        failed = self.failed_rules
        if not failed:
            bypassed = [r.rule for r in self.rules if r.bypassed]
            return (f"{self.verdict.value}: all rules passed"
                    + (f" (bypassed: {', '.join(bypassed)})" if bypassed else ""))
        return f"{self.verdict.value}: " + "; ".join(f"{r.rule} {r.detail}".strip() for r in failed)
