"""Runs in a given state for a test's setting, walked there through the lifecycle like real ones."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from retrain.core import lifecycle
from retrain.core.ports import UnitOfWork
from retrain.core.records import RunRecord

_PATH = {"queued": (), "training": ("training",), "validating": ("training", "validating"),
         "shadow": ("training", "validating", "shadow"), "rollout": ("training", "validating", "rollout"),
         "done": ("training", "validating", "rollout", "done"), "rejected": ("training", "validating", "rejected")}


def make_run(tx: UnitOfWork, model: str, now: datetime, *, state: str = "queued", trigger: str = "manual",
             priority: int = 3, request_id: str | None = None, decision_id: str | None = None,
             version: str | None = None) -> RunRecord:
    """A run of ``model`` created at ``now`` and moved to ``state`` (failed, dead and cancelled
    through :func:`retrain.core.lifecycle.finish` from ``queued``)."""
    run = lifecycle.new_run(tx, model=model, request_id=request_id or str(uuid.uuid4()),
                            decision_id=decision_id or str(uuid.uuid4()), trigger=trigger, priority=priority, now=now)
    for step in _PATH.get(state, ()):
        if step == "training":
            run = lifecycle.start_training(tx, run, owner="test", now=now, lease_until=now + timedelta(minutes=5))
        elif step == "validating":
            run = lifecycle.to_validating(tx, run, version, attempt=run.attempt, owner="test")
        elif step == "shadow":
            run = lifecycle.enter_shadow(tx, run)
        elif step == "rollout":
            run = lifecycle.to_promotion(tx, run)
        elif step == "done":
            run = lifecycle.complete(tx, run, now)
        elif step == "rejected":
            run = lifecycle.reject(tx, run, "test", now)
    if state not in _PATH:
        assert lifecycle.finish(tx, run, state, "test", now), f"a queued run cannot end {state}"
        run = tx.runs.get(run.id) or run
    return run


def end_run(tx: UnitOfWork, run_id: str, state: str, now: datetime) -> RunRecord:
    """Move an existing run on to ``state`` at ``now``: done and rejected through training and
    validation (as a real run gets there), the other final states through finish()."""
    run = tx.runs.get(run_id, for_update=True)
    assert run is not None
    if state in ("done", "rejected"):
        if run.state == "queued":
            run = lifecycle.start_training(tx, run, owner="test", now=now, lease_until=now)
        if run.state == "training":
            run = lifecycle.to_validating(tx, run, run.candidate_version, attempt=run.attempt,
                                          owner=run.lease_owner or "test")
        if state == "rejected":
            return lifecycle.reject(tx, run, "test", now)
        if run.state == "validating":
            run = lifecycle.to_promotion(tx, run)
        return lifecycle.complete(tx, run, now)
    assert lifecycle.finish(tx, run, state, "test", now)
    got = tx.runs.get(run_id)
    assert got is not None
    return got


def backdate(tx: UnitOfWork, run_id: str, created_at: datetime) -> None:
    """Pretend the run was created earlier (a cooldown or a day's count in a test's setting)."""
    from sqlalchemy import text

    tx.s.execute(text("UPDATE training_runs SET created_at = :t WHERE id = :id"),  # type: ignore[attr-defined]
                 {"t": created_at, "id": run_id})
