"""Which audit events people hear about (retrain.core.notices): pure, no I/O."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from retrain.core.notices import EVENTS, NotifySettings, notice_of


def _notice(kind, message="", actor="policy", data=None, model="direction", subject="s1"):
    return notice_of(kind, actor, message, model=model, subject=subject, data=data or {})


def test_the_events_worth_a_message_are_picked_out_of_the_audit_trail():
    approval = _notice("decision", "waits", data={"verdict": "pending_approval", "request_id": "req-1", "rules": []})
    assert approval["event"] == "approval" and approval["facts"]["request_id"] == "req-1"
    budget = _notice("decision", "deferred", data={"verdict": "defer", "request_id": "req-2", "rules": [
        {"rule": "cooldown", "passed": True},
        {"rule": "budget_daily", "passed": False, "value": 12.0, "limit": 10.0, "detail": "12 > 10"}]})
    assert budget["event"] == "budget" and (budget["facts"]["value"], budget["facts"]["limit"]) == (12.0, 10.0)
    assert _notice("rollback", "direction rolled back to 1.0.0", data={"from": "1.1.0", "to": "1.0.0"})["event"] \
        == "rollback"
    assert _notice("request", "emergency", data={"severity": "CRITICAL"})["facts"]["severity"] == "CRITICAL"
    assert _notice("run", "gave up", actor="worker", data={"state": "dead", "reason": "OOM"})["event"] == "dead_run"
    assert _notice("admin", "automatic retraining paused by ops", actor="ops")["event"] == "paused"
    assert _notice("promotion", "1.1.0 is production", data={"previous": "1.0.0"})["event"] == "promotion"


@pytest.mark.parametrize("kind, message, data", [
    ("decision", "approved", {"verdict": "approve", "rules": []}),
    ("decision", "deferred by the cooldown", {"verdict": "defer", "rules": [{"rule": "cooldown", "passed": False}]}),
    ("decision", "budget bypassed", {"verdict": "defer", "rules": [
        {"rule": "budget_daily", "passed": False, "bypassed": True}, {"rule": "cooldown", "passed": False}]}),
    ("rollback", "rollback skipped: nothing to roll back", {}),
    ("request", "performance request opened", {}),
    ("run", "training started", {"state": "training"}),
    ("admin", "automatic retraining resumed", {}),
])
def test_routine_events_are_not_sent(kind, message, data):
    assert _notice(kind, message, data=data) is None


def test_the_notify_section_checks_its_targets_and_backs_off_exponentially():
    s = NotifySettings.model_validate({"backoff_s": 10, "max_backoff_s": 60, "max_attempts": 5, "targets": [
        {"name": "hook", "url": "json://127.0.0.1/x"},
        {"name": "mail", "url": "mailto://h", "events": ["rollback"], "models": ["direction"]}]})
    hook, mail = s.targets
    assert hook.events == list(EVENTS) and hook.wants("approval", "other")
    assert mail.wants("rollback", "direction") and not mail.wants("rollback", "other")
    assert not mail.wants("approval", "direction")
    assert [s.backoff(n) for n in range(1, 6)] == [10.0, 20.0, 40.0, 60.0, None]
    with pytest.raises(ValidationError, match="unknown event"):
        NotifySettings.model_validate({"targets": [{"name": "x", "url": "json://h", "events": ["weather"]}]})
    with pytest.raises(ValidationError, match="unique"):
        NotifySettings.model_validate({"targets": [{"name": "x", "url": "json://h"}, {"name": "x", "url": "json://i"}]})
