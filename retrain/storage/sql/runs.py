"""Training runs. A run's state is written by :mod:`retrain.core.lifecycle` alone, through :meth:`SqlRuns.write`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update

from retrain.core.errors import StaleLeaseError
from retrain.core.records import RunRecord
from retrain.storage.models import RunRow
from retrain.storage.sql.base import SqlRepository, maybe, rowcount, to_record

__all__ = ["SqlRuns", "ACTIVE_RUN_STATES"]

ACTIVE_RUN_STATES = ("queued", "training", "validating", "shadow", "rollout")

#: What a step may change outside the lifecycle: bookkeeping that never moves the run.
_BOOKKEEPING = frozenset({"blocked_on", "dispatched_at", "heartbeat_at", "lease_expires_at", "progress", "usage"})


class SqlRuns(SqlRepository):
    def insert(self, run: RunRecord) -> None:
        """A new run (the lifecycle's ``new_run`` builds it)."""
        self.s.add(RunRow(**{k: getattr(run, k) for k in RunRecord.__dataclass_fields__}))

    def get(self, run_id: str, for_update: bool = False) -> RunRecord | None:
        q = select(RunRow).where(RunRow.id == run_id)
        if for_update:
            q = q.with_for_update()
        return maybe(self.s.scalars(q).first(), RunRecord)

    def newest(self, model: str | None = None, states: Sequence[str] | None = None, limit: int = 100
             ) -> list[RunRecord]:
        """Newest first."""
        q = select(RunRow)
        if model:
            q = q.where(RunRow.model == model)
        if states:
            q = q.where(RunRow.state.in_(list(states)))
        return [to_record(r, RunRecord) for r in self.s.scalars(q.order_by(RunRow.created_at.desc()).limit(limit))]

    def active(self, model: str) -> RunRecord | None:
        """The model's oldest run still in flight."""
        return maybe(self.s.scalars(select(RunRow).where(RunRow.model == model, RunRow.state.in_(ACTIVE_RUN_STATES))
                                    .order_by(RunRow.created_at).limit(1)).first(), RunRecord)

    def expired_leases(self, now: datetime) -> list[RunRecord]:
        return [to_record(r, RunRecord) for r in self.s.scalars(select(RunRow).where(
            RunRow.state.in_(("training", "validating")), RunRow.lease_expires_at < now))]

    def active_versions(self, model: str) -> dict[str, str]:
        """Candidate version -> run id, for the model's runs still in flight (validating, shadow, rollout)."""
        q = select(RunRow.candidate_version, RunRow.id).where(
            RunRow.model == model, RunRow.state.in_(ACTIVE_RUN_STATES), RunRow.candidate_version.is_not(None))
        return {v: rid for v, rid in self.s.execute(q) if v is not None}

    def blocker(self, run: RunRecord, depends_on: Sequence[str]) -> RunRecord | None:
        """The oldest active run of one of ``depends_on`` created before ``run``, if any."""
        earlier = or_(RunRow.created_at < run.created_at,
                      and_(RunRow.created_at == run.created_at, RunRow.id < run.id))
        q = (select(RunRow).where(RunRow.model.in_(list(depends_on)), RunRow.state.in_(ACTIVE_RUN_STATES), earlier)
             .order_by(RunRow.created_at, RunRow.id).limit(1))
        return maybe(self.s.scalars(q).first(), RunRecord)

    def waiting(self, limit: int) -> list[RunRecord]:
        """Queued runs that tried and were held back, best first (priority, then age); on Postgres
        rows being claimed right now are skipped (they are in good hands) and the rest locked."""
        q = (select(RunRow).where(RunRow.state == "queued", RunRow.blocked_on.is_not(None))
             .order_by(RunRow.priority.desc(), RunRow.created_at, RunRow.id).limit(limit))
        if self.pg:
            q = q.with_for_update(skip_locked=True)
        return [to_record(r, RunRecord) for r in self.s.scalars(q)]

    def note(self, run: RunRecord, **changes: Any) -> RunRecord:
        """Write bookkeeping that does not move the run (what it waits for, when it was sent, usage...)."""
        refused = set(changes) - _BOOKKEEPING
        if refused:
            raise ValueError(f"a run's {', '.join(sorted(refused))} changes only through retrain.core.lifecycle")
        self.s.execute(update(RunRow).where(RunRow.id == run.id).values(**changes))
        return replace(run, **changes)

    def write(self, run: RunRecord, changes: dict[str, Any]) -> RunRecord:
        """Write a lifecycle move, only if the run is still as ``run`` says (state and attempt):
        two writers cannot both move it. For :mod:`retrain.core.lifecycle` only."""
        res = self.s.execute(update(RunRow).where(RunRow.id == run.id, RunRow.state == run.state,
                                                  RunRow.attempt == run.attempt).values(**changes))
        if rowcount(res) != 1:
            now = self.get(run.id)
            raise StaleLeaseError(f"run {run.id} changed under this step (it was {run.state}, attempt {run.attempt}; "
                                  f"now {now.state if now else 'gone'}, attempt {now.attempt if now else '-'})")
        return replace(run, **changes)
