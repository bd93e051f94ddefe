"""Model versions and the aliases that point at them (production, previous, canary, candidate...)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, text, update

from retrain.core.records import AliasMove, AliasRecord, StoredVersion
from retrain.storage.models import AliasHistoryRow, AliasRow, VersionRow
from retrain.storage.sql.base import SqlRepository, maybe, to_record

__all__ = ["SqlVersions", "SqlAliases", "ROUTES_CHANNEL"]

#: The Postgres channel on which every alias move is announced (payload: the model's name).
ROUTES_CHANNEL = "retrain_routes"

#: What may change on a registered version: its status, its figures, its tombstone.
_VERSION_FIELDS = frozenset({"status", "metrics", "deleted_at", "deleted_reason"})


class SqlVersions(SqlRepository):
    def all(self, model: str, include_deleted: bool = True) -> list[StoredVersion]:
        """Oldest first (by semantic version)."""
        q = select(VersionRow).where(VersionRow.model == model)
        if not include_deleted:
            q = q.where(VersionRow.deleted_at.is_(None))
        return [to_record(r, StoredVersion)
                for r in self.s.scalars(q.order_by(VersionRow.major, VersionRow.minor, VersionRow.patch))]

    def get(self, model: str, version: str) -> StoredVersion | None:
        return maybe(self.s.scalars(select(VersionRow).where(VersionRow.model == model,
                                                             VersionRow.version == version)).first(), StoredVersion)

    def latest(self, model: str) -> StoredVersion | None:
        return maybe(self.s.scalars(select(VersionRow).where(VersionRow.model == model)
                                    .order_by(VersionRow.major.desc(), VersionRow.minor.desc(),
                                              VersionRow.patch.desc()).limit(1)).first(), StoredVersion)

    def add(self, **fields: Any) -> StoredVersion:
        """Register a version (every column but the id given)."""
        row = VersionRow(**fields)
        self.s.add(row)
        self.s.flush()
        return to_record(row, StoredVersion)

    def update(self, version: StoredVersion, **changes: Any) -> StoredVersion:
        """Write a version's status, metrics or tombstone; returns it as it is now."""
        refused = set(changes) - _VERSION_FIELDS
        if refused:
            raise ValueError(f"a registered version's {', '.join(sorted(refused))} never changes")
        self.s.execute(update(VersionRow).where(VersionRow.id == version.id).values(**changes))
        return replace(version, **changes)

    def models(self) -> list[str]:
        """Every model that has at least one version row, tombstones included."""
        return list(self.s.scalars(select(VersionRow.model).distinct().order_by(VersionRow.model)))

    def live_refs(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(model, version, artifact sha256, metrics) of every version not deleted, all models."""
        q = select(VersionRow.model, VersionRow.version, VersionRow.artifact_sha256, VersionRow.metrics).where(
            VersionRow.deleted_at.is_(None))
        return [(m, v, sha, metrics or {}) for m, v, sha, metrics in self.s.execute(q)]


class SqlAliases(SqlRepository):
    def get(self, model: str, alias: str) -> str | None:
        """The version the alias points to (None: not set)."""
        row = self.s.get(AliasRow, (model, alias))
        return row.version if row else None

    def all(self, model: str) -> dict[str, AliasRecord]:
        return {r.alias: to_record(r, AliasRecord)
                for r in self.s.scalars(select(AliasRow).where(AliasRow.model == model))}

    def move(self, model: str, alias: str, version: str | None, *, actor: str, reason: str, now: datetime,
             share_pct: float = 0.0) -> str | None:
        """Point an alias at a version (None clears it); the row lock makes the move atomic.
        Returns where it pointed before."""
        row = self.s.scalars(select(AliasRow).where(AliasRow.model == model, AliasRow.alias == alias)
                             .with_for_update()).first()
        old = row.version if row else None
        if row is None:
            self.s.add(AliasRow(model=model, alias=alias, version=version, updated_at=now, share_pct=share_pct))
        else:
            row.version, row.updated_at, row.share_pct = version, now, share_pct
        if old != version:
            self.s.add(AliasHistoryRow(model=model, alias=alias, from_version=old, to_version=version, at=now,
                                       actor=actor, reason=reason))
        if self.pg:
            # Delivered at commit, never for a rolled-back move: routers listening follow at once.
            self.s.execute(text("SELECT pg_notify(:channel, :model)"), {"channel": ROUTES_CHANNEL, "model": model})
        return old

    def history(self, model: str, limit: int = 200) -> list[AliasMove]:
        """The oldest ``limit`` moves, oldest first."""
        return [to_record(r, AliasMove) for r in self.s.scalars(
            select(AliasHistoryRow).where(AliasHistoryRow.model == model).order_by(AliasHistoryRow.id).limit(limit))]

    def set_at(self, model: str, alias: str, at: datetime) -> AliasMove | None:
        """The last move of ``alias`` at or before ``at``: what it pointed to then (None: never set yet)."""
        return maybe(self.s.scalars(select(AliasHistoryRow).where(
            AliasHistoryRow.model == model, AliasHistoryRow.alias == alias, AliasHistoryRow.at <= at)
            .order_by(AliasHistoryRow.at.desc(), AliasHistoryRow.id.desc()).limit(1)).first(), AliasMove)

    def names(self, model: str) -> list[str]:
        """Every alias a model has or ever had."""
        q = select(AliasHistoryRow.alias).where(AliasHistoryRow.model == model).union(
            select(AliasRow.alias).where(AliasRow.model == model))
        return sorted(self.s.scalars(q))

    def moves(self, model: str, *, alias: str | None = None, until: datetime | None = None,
              limit: int = 200) -> list[AliasMove]:
        """The newest ``limit`` alias moves (up to ``until``), oldest first."""
        q = select(AliasHistoryRow).where(AliasHistoryRow.model == model)
        if alias is not None:
            q = q.where(AliasHistoryRow.alias == alias)
        if until is not None:
            q = q.where(AliasHistoryRow.at <= until)
        rows = self.s.scalars(q.order_by(AliasHistoryRow.at.desc(), AliasHistoryRow.id.desc()).limit(limit))
        return [to_record(r, AliasMove) for r in reversed(rows.all())]

    def serving_routes(self, model: str) -> dict[str, tuple[str, float, str]]:
        """alias -> (version, share in percent, artifact sha256) for the aliases the router serves."""
        a, v = AliasRow, VersionRow
        q = (select(a.alias, a.version, a.share_pct, v.artifact_sha256)
             .join(v, and_(v.model == a.model, v.version == a.version))
             .where(a.model == model, a.alias.in_(("production", "canary")), a.version.is_not(None)))
        return {alias: (version, float(share or 0.0), sha) for alias, version, share, sha in self.s.execute(q)
                if version is not None}  # q filters None out already

    def production_metrics(self, model: str) -> tuple[str | None, dict[str, Any]]:
        """The production version of a model and its metrics (baseline, reference sample), in one read."""
        a, v = AliasRow, VersionRow
        row = self.s.execute(select(a.version, v.metrics).outerjoin(v, and_(v.model == a.model, v.version == a.version))
                             .where(a.model == model, a.alias == "production")).first()
        if row is None or row[0] is None:
            return None, {}
        return row[0], dict(row[1] or {})

    def counts(self, model: str) -> dict[str, int]:
        """alias -> how many rows it has (a row per alias: a check that moves never duplicate one)."""
        q = select(AliasRow.alias, func.count()).where(AliasRow.model == model).group_by(AliasRow.alias)
        return {a: int(n) for a, n in self.s.execute(q)}
