"""Which events people are told about, and where they are sent (the ``[notify]`` section).

Every state change a person may need to act on is already an audit event, written in the
transaction of the change. :func:`notice_of` picks out the ones worth a message. The store
calls an audit hook in that same transaction (:class:`retrain.core.ports.AuditHook`; a
process's :class:`retrain.context.Context` installs :func:`retrain.monitoring.events.enqueue_notice`),
which puts each one in the outbox: a notification is sent at least once for every committed
event, and never for a rolled-back one. The ``retrain.notify`` task delivers it. Pure: no I/O.

===============  =====================================================================
event            when
===============  =====================================================================
``approval``     a decision waits for a person (``retrain approve ID``)
``promotion``    a version became production
``rollback``     production went back to an older version, or a canary was withdrawn
``emergency``    the emergency detector opened a request
``budget``       a decision was deferred or rejected by the daily or monthly budget
``dead_run``     a training run gave up after its last attempt
``paused``       automatic retraining was paused (a model, or all)
===============  =====================================================================

>>> notice_of("promotion", "promotion", "direction 1.1.0 is production (previous: 1.0.0)",
...           model="direction", subject="1.1.0", data={"previous": "1.0.0"})["event"]
'promotion'
>>> notice_of("run", "worker", "training started", model="direction", subject="r1", data={}) is None
True
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["EVENTS", "BUDGET_RULES", "notice_of", "NotifyTarget", "NotifySettings"]

EVENTS: tuple[str, ...] = ("approval", "promotion", "rollback", "emergency", "budget", "dead_run", "paused")
BUDGET_RULES = frozenset({"budget_daily", "budget_monthly"})


def _failed_budget_rule(rules: list[Any]) -> dict[str, Any] | None:
    for r in rules:
        if isinstance(r, dict) and r.get("rule") in BUDGET_RULES and not r.get("passed") and not r.get("bypassed"):
            return r
    return None


def notice_of(kind: str, actor: str, message: str, *, model: str | None, subject: str | None,
              data: dict[str, Any]) -> dict[str, Any] | None:
    """The notification fields (event, model, subject, summary, facts) of an audit event, or None."""
    event: str | None = None
    facts: dict[str, Any] = {"actor": actor}
    if kind == "decision":
        verdict = data.get("verdict")
        if verdict == "pending_approval":
            event = "approval"
            facts["request_id"] = data.get("request_id")
        elif verdict in ("defer", "reject"):
            rule = _failed_budget_rule(data.get("rules") or [])
            if rule is not None:
                event = "budget"
                facts.update(verdict=verdict, rule=rule.get("rule"), value=rule.get("value"), limit=rule.get("limit"),
                             detail=rule.get("detail"), defer_until=data.get("defer_until"),
                             request_id=data.get("request_id"))
    elif kind == "promotion":
        event = "promotion"
        facts.update(previous=data.get("previous"), reason=data.get("reason"))
    elif kind == "rollback":
        # A rollback that changed nothing is audited too; nobody needs to hear about it.
        if " skipped: " not in message and "nothing to roll back" not in message:
            event = "rollback"
            facts.update({k: data[k] for k in ("from", "to", "reason", "production", "share_pct", "figures", "cause")
                          if k in data})
    elif kind == "request":
        if data.get("severity"):
            event = "emergency"
            facts.update(severity=data.get("severity"), request_id=subject)
    elif kind == "run":
        if data.get("state") == "dead":
            event = "dead_run"
            facts.update(reason=data.get("reason"), attempt=data.get("attempt"))
    elif kind == "admin":
        if message.startswith("automatic retraining paused"):
            event = "paused"
    if event is None:
        return None
    return {"event": event, "model": model, "subject": subject, "summary": message[:2000],
            "facts": {k: v for k, v in facts.items() if v is not None}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NotifyTarget(_Strict):
    """Where messages go: an apprise URL (``slack://``, ``msteams://``, ``mailto://``, ``json://``...)."""

    name: str = Field(min_length=1, max_length=64)
    url: str = Field(min_length=3)
    #: The events this target receives (default: all).
    events: list[str] = Field(default_factory=lambda: list(EVENTS))
    #: The models it hears about (default: all).
    models: list[str] = Field(default_factory=list)

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(EVENTS))
        if unknown:
            raise ValueError(f"unknown event(s) {', '.join(unknown)}; known: {', '.join(EVENTS)}")
        return v

    def wants(self, event: str, model: str | None) -> bool:
        return event in self.events and (not self.models or model is None or model in self.models)


class NotifySettings(_Strict):
    """The ``[notify]`` section: targets, a dashboard link, and the retry policy of a delivery."""

    targets: list[NotifyTarget] = Field(default_factory=list)
    #: Linked from every message; ``{model}`` is replaced by the model's name.
    dashboard_url: str = ""
    max_attempts: int = Field(8, ge=1)
    backoff_s: float = Field(30.0, gt=0)
    max_backoff_s: float = Field(3600.0, gt=0)
    #: How long a claimed delivery may take before another worker may try it again.
    claim_s: float = Field(120.0, gt=0)

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, v: list[NotifyTarget]) -> list[NotifyTarget]:
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError("target names must be unique")
        return v

    def backoff(self, attempts: int) -> float | None:
        """Seconds before the next try after ``attempts`` failed ones (None: give up)."""
        if attempts >= self.max_attempts:
            return None
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1)))
