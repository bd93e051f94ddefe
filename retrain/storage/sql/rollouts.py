"""Rollouts: a candidate's way from shadow through the canary stages (the rules are in :mod:`retrain.core.rollout`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import select, update

from retrain.core.records import RolloutRecord
from retrain.storage.models import RolloutRow
from retrain.storage.sql.base import SqlRepository, maybe, to_record

__all__ = ["SqlRollouts"]


class SqlRollouts(SqlRepository):
    def add(self, **fields: Any) -> RolloutRecord:
        row = RolloutRow(**fields)
        self.s.add(row)
        self.s.flush()
        return to_record(row, RolloutRecord)

    def get(self, run_id: str, for_update: bool = False) -> RolloutRecord | None:
        q = select(RolloutRow).where(RolloutRow.run_id == run_id)
        if for_update:
            q = q.with_for_update()
        return maybe(self.s.scalars(q).first(), RolloutRecord)

    def active(self, model: str | None = None) -> list[RolloutRecord]:
        """Rollouts still in shadow or in a canary stage, oldest first."""
        q = select(RolloutRow).where(RolloutRow.phase.in_(("shadow", "canary")))
        if model is not None:
            q = q.where(RolloutRow.model == model)
        return [to_record(r, RolloutRecord) for r in self.s.scalars(q.order_by(RolloutRow.started_at))]

    def newest(self, model: str, limit: int = 20) -> list[RolloutRecord]:
        """The model's rollouts, newest first."""
        return [to_record(r, RolloutRecord) for r in self.s.scalars(
            select(RolloutRow).where(RolloutRow.model == model).order_by(RolloutRow.started_at.desc()).limit(limit))]

    def update(self, rollout: RolloutRecord, **changes: Any) -> RolloutRecord:
        """Write the changes of one evaluation (phase, stage, share, gate, figures, history...)."""
        refused = {"run_id", "model", "candidate_version", "started_at"} & set(changes)
        if refused:
            raise ValueError(f"a rollout's {', '.join(sorted(refused))} never changes")
        self.s.execute(update(RolloutRow).where(RolloutRow.run_id == rollout.run_id).values(**changes))
        return replace(rollout, **changes)
