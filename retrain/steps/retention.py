"""Retention and garbage collection of model versions and artifacts (ADAPT-014).

Run by the ``retrain.retention`` beat task and by ``retrain gc``. Three phases, each
in its own transaction, so that a crash anywhere leaves nothing unsafe behind:

1. **Tombstone.** Per model, under the model's aliases lock: the rule of
   :func:`retrain.core.retention.plan_retention` (default 10 versions and 30 days, per
   model ``[models.X.retention]``) over the live versions, with the protected set
   of :func:`retrain.registry.protected_versions` (every alias target, the rollback
   target, versions of runs still in flight). Each deleted version keeps its row,
   status ``deleted``, with the reason, and an audit event.
2. **Remove their files.** Under the artifacts lock: the model, reference and
   holdout files of the tombstoned versions that no live version of any model still
   references. A crash between 1 and 2 leaves unreferenced files that phase 3 of
   a later run collects.
3. **Collect orphans.** Under the artifacts lock: every stored file no live version
   references and older than the grace period (default 1 h: an artifact written by
   a training that has not registered its version yet is younger than that), and
   the temp files of writes that never finished.

A dry run plans all three and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from retrain.context import Context
from retrain.core.retention import RetentionPolicy, VersionInfo, plan_retention
from retrain.registry import (
    ARTIFACTS_LOCK,
    aliases_lock,
    delete_version,
    protected_versions,
    referenced_digests,
)

__all__ = ["ORPHAN_GRACE", "DeletedVersion", "RemovedFile", "ModelRetention", "GcReport", "retention_policy",
           "run_retention"]

ORPHAN_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class DeletedVersion:
    """A version tombstoned by this run (or that a dry run would tombstone), and why."""

    model: str
    version: str
    created_at: datetime
    reason: str


@dataclass(frozen=True)
class RemovedFile:
    """An artifact file removed (or that a dry run would remove), its size and what it was."""

    sha256: str
    size: int
    what: str


@dataclass(frozen=True)
class ModelRetention:
    """One model's outcome: the policy applied, the versions kept and the protected ones with why."""

    model: str
    max_versions: int
    max_age_days: float
    kept: list[str]
    protected: dict[str, str]
    deleted: list[DeletedVersion]


@dataclass(frozen=True)
class GcReport:
    """What a retention run removed."""

    at: datetime
    dry_run: bool
    models: list[ModelRetention] = field(default_factory=list)
    files: list[RemovedFile] = field(default_factory=list)
    temp_files: int = 0

    @property
    def deleted_versions(self) -> list[DeletedVersion]:
        return [d for m in self.models for d in m.deleted]

    @property
    def bytes_freed(self) -> int:
        return sum(f.size for f in self.files)

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (f"{verb} {len(self.deleted_versions)} version(s) (tombstones kept) and {len(self.files)} "
                f"artifact file(s), {self.bytes_freed:,} bytes"
                + (f", plus {self.temp_files} unfinished temp file(s)" if self.temp_files else ""))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (times as ISO strings): what the task returns and ``retrain gc --json`` prints."""
        return {
            "at": self.at.isoformat(), "dry_run": self.dry_run, "summary": self.summary(),
            "models": [{"model": m.model, "max_versions": m.max_versions, "max_age_days": m.max_age_days,
                        "kept": m.kept, "protected": m.protected,
                        "deleted": [{"version": d.version, "created_at": d.created_at.isoformat(), "reason": d.reason}
                                    for d in m.deleted]} for m in self.models],
            "files": [{"sha256": f.sha256, "size": f.size, "what": f.what} for f in self.files],
            "bytes_freed": self.bytes_freed, "temp_files": self.temp_files,
        }


def retention_policy(ctx: Context, model: str) -> RetentionPolicy:
    """The model's ``[models.X.retention]``, or the defaults for a model no longer in the model file."""
    cfg = ctx.config.models.get(model)
    if cfg is None:
        return RetentionPolicy()
    return RetentionPolicy(max_versions=cfg.retention.max_versions,
                           max_age=timedelta(days=cfg.retention.max_age_days))


def _tombstone(ctx: Context, model: str, now: datetime, actor: str, dry_run: bool,
               doomed: dict[str, str]) -> ModelRetention:
    policy = retention_policy(ctx, model)
    with ctx.store.tx() as tx:
        tx.lock(aliases_lock(model))
        rows = {r.version: r for r in tx.versions.all(model)}
        protected = protected_versions(tx, model)
        plan = plan_retention([VersionInfo(v, r.created_at, r.deleted_at is not None) for v, r in rows.items()],
                              set(protected), now, policy)
        deleted = []
        for version, why in plan.delete:
            row = rows[version]
            metrics = row.metrics or {}
            for digest, kind in ((row.artifact_sha256, "model"), (metrics.get("reference_sha256"), "drift reference"),
                                 (metrics.get("holdout_sha256"), "holdout")):
                if digest:
                    doomed.setdefault(digest, f"{kind} of {model} {version}")
            if not dry_run:
                delete_version(tx, model, version, actor=actor, reason=why, now=now)
            deleted.append(DeletedVersion(model, version, row.created_at, why))
    return ModelRetention(model, policy.max_versions, policy.max_age / timedelta(days=1), plan.keep,
                          {v: why for v, why in protected.items() if v in rows}, deleted)


def run_retention(ctx: Context, models: list[str] | None = None, *, actor: str = "retention", dry_run: bool = False,
                  orphans: bool = True, grace: timedelta = ORPHAN_GRACE) -> GcReport:
    """Apply retention to ``models`` (default: every model with versions) and collect orphans; see module docstring."""
    now = ctx.now()
    with ctx.store.tx() as tx:
        names = tx.versions.models()
    if models:
        wanted = set(models)
        names = [m for m in names if m in wanted]
    doomed: dict[str, str] = {}
    results = [_tombstone(ctx, m, now, actor, dry_run, doomed) for m in names]
    gone = {(d.model, d.version) for r in results for d in r.deleted}

    files: list[RemovedFile] = []
    temp = 0
    with ctx.store.tx() as tx:
        tx.lock(ARTIFACTS_LOCK)
        # In a dry run the doomed versions are still live: leave them out by hand.
        live = referenced_digests(tx, excluding=gone if dry_run else ())
        for digest, what in doomed.items():
            if digest in live:
                continue
            size = ctx.artifacts.size(digest)
            if size is None:
                continue
            if dry_run or ctx.artifacts.delete(digest):
                files.append(RemovedFile(digest, size, what))
        if orphans:
            already = {f.sha256 for f in files}
            for ref in ctx.artifacts.find_orphans(live, grace.total_seconds(), now.timestamp()):
                if ref.sha256 in already:
                    continue
                if dry_run or ctx.artifacts.delete(ref.sha256):
                    files.append(RemovedFile(ref.sha256, ref.size, "orphan: no version references it"))
            if not dry_run:
                temp = ctx.artifacts.collect_temp(grace.total_seconds(), now.timestamp())

    report = GcReport(now, dry_run, results, files, temp)
    if not dry_run and (report.deleted_versions or files or temp):
        with ctx.store.tx() as tx:
            tx.audit.record(now, "retention", actor, f"garbage collection {report.summary()}",
                            data={"versions": [f"{d.model} {d.version}" for d in report.deleted_versions],
                                  "files": [{"sha256": f.sha256, "size": f.size, "what": f.what} for f in files],
                                  "temp_files": temp})
    return report
