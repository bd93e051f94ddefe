"""The sweep's pacing after a candidate was turned down, on a real database: a trigger that keeps
firing waits for new outcomes to fill the rejected candidate's holdout before it asks again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from retrain.core.clock import SimClock
from retrain.core.records import RunRecord
from retrain.steps.sweep import sweep
from tests.conftest import make_context
from tests.integration.test_sweep_triggers import FEATURES, NOW, _buckets, _config, _seed

pytestmark = pytest.mark.integration


def _rejected_candidate(ctx, started, holdout_rows: int) -> None:
    """Version 1.1.0, trained from ``started`` and turned down by validation."""
    with ctx.store.tx() as tx:
        tx.versions.add(model="direction", version="1.1.0", major=1, minor=1, patch=0, status="rejected",
                        created_at=started, deleted_at=None, artifact_sha256="0" * 64, artifact_size=0,
                        bump_kind="minor", bump_reason="test", parent_version="1.0.0", data_start=None, data_end=None,
                        data_rows=4 * holdout_rows, data_fingerprint="", feature_schema=FEATURES, params={},
                        metrics={"holdout_rows": holdout_rows}, git_commit=None, request_id=None, decision_id=None,
                        run_id="run-1", cost_usd=0.0)
        tx.runs.insert(RunRecord(id="run-1", model="direction", request_id="req-0", decision_id="dec-0",
                                 trigger="performance", priority=7, state="rejected", attempt=1, lease_owner=None,
                                 lease_expires_at=None, created_at=started, started_at=started, finished_at=started,
                                 stage="", progress=1.0, error="not better by enough", candidate_version="1.1.0",
                                 blocked_on=None, usage={}, heartbeat_at=None, dispatched_at=None))


def test_after_a_rejected_candidate_the_trigger_waits_for_its_holdouts_worth_of_new_outcomes(sqlite_url, tmp_path):
    clock = SimClock(NOW)
    ctx = make_context(sqlite_url, tmp_path, config=_config(), clock=clock)
    _seed(ctx)
    # Given a model failing its baseline, and a candidate trained 20 minutes ago that was turned down
    # (its holdout held 3,000 rows; 2,000 outcomes have come since)
    _buckets(ctx, [0.60] * 180 + [0.45] * 60, per_minute=100, end=NOW)
    _rejected_candidate(ctx, NOW - timedelta(minutes=20), holdout_rows=3000)
    # When the sweep runs: the trigger fires, but no request is opened
    held = sweep(ctx)
    assert held.firings and not held.requests_opened
    assert "1.1.0 was turned down" in held.held_back[0]["why"] and "3,000" in held.held_back[0]["why"]
    # When ten more minutes of outcomes come (3,000 since that training): it asks again
    _buckets(ctx, [0.45] * 10, per_minute=100, end=NOW + timedelta(minutes=10), seed=1)
    clock.advance(timedelta(minutes=10))
    assert len(sweep(ctx).requests_opened) == 1


def test_a_critical_emergency_is_never_held_back_by_a_rejected_candidate():
    from datetime import datetime, timezone

    from retrain.core.domain import RetrainRequest, Severity, TriggerKind
    from retrain.steps.sweep import _after_rejected_candidate

    req = RetrainRequest("r", "direction", TriggerKind.EMERGENCY, datetime(2026, 1, 1, tzinfo=timezone.utc), "x",
                         severity=Severity.CRITICAL)
    # the store is not even read: a CRITICAL emergency passes whatever the last candidate was
    assert _after_rejected_candidate(None, None, req) is None  # type: ignore[arg-type]
