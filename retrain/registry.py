"""The model registry: versions, aliases, rollback, tombstones and verified loading (ADAPT-014).

A service over one transaction (:class:`~retrain.core.ports.UnitOfWork`): every function
that changes state takes the ``tx`` of the step that calls it, so the version, the
alias move and its audit event commit together or not at all. The one exception is
:func:`load_verified`, which writes its refusal to the audit log in a transaction of
its own: a refused load must leave a trace even though the caller's work fails.

What a version records (one ``model_versions`` row, shown by ``retrain show``):
the semantic version and why it has that number (``bump_kind``, ``bump_reason``;
rule in :mod:`retrain.core.versioning`), the parent version, the artifact's sha256 and
size, the training data window, row count and fingerprint, the feature schema, the
training entry point and configuration fingerprint (``params['spec']``), the
hyperparameters (``params['params']``), the validation metrics (``metrics['holdout']``,
written by the validate step), the digests of the drift reference and holdout
samples (``metrics['reference_sha256'|'holdout_sha256']``), the git commit of the
training code, the request, decision and run that produced it, and its cost.

Aliases are ``production``, ``candidate`` (in shadow), ``canary`` (in a staged
rollout) and ``previous`` (the rollback target). Every move goes into
``alias_history`` with its time, actor and reason, so :func:`aliases_at` answers
"which version served at time T".

Locks (Postgres advisory locks held until commit; SQLite serialises writers anyway),
always taken in this order:

* ``retrain:aliases:<model>``: alias moves, rollbacks and retention of one model,
  so retention never tombstones a version an alias is being moved to.
* ``retrain:versions:<model>``: registration. The next number is read and written
  under it, so concurrent registrations never share a number (the unique
  constraint on (model, version) is the backstop).
* ``retrain:artifacts``: registering a version, and deleting artifact files. A file
  is never deleted between the check that nothing references it and the commit of a
  version that does.

Example
-------
>>> describe_alias_state(None)
'-'
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from retrain.artifacts import ArtifactRef
from retrain.core.errors import ArtifactError, PayloadError, VersionProtectedError, VersionUnavailableError
from retrain.core.ports import UnitOfWork
from retrain.core.records import AliasMove, StoredVersion
from retrain.core.versioning import BumpDecision, SemVer, VersionSpec, decide_bump

__all__ = [
    "ALIASES",
    "ARTIFACTS_LOCK",
    "VersionUnavailableError",
    "VersionProtectedError",
    "NewVersion",
    "Registered",
    "VersionRecord",
    "AliasState",
    "RollbackOutcome",
    "aliases_lock",
    "versions_lock",
    "register_version",
    "move_alias",
    "resolve_rollback",
    "rollback",
    "protected_versions",
    "delete_version",
    "referenced_digests",
    "version_digests",
    "aliases_at",
    "served_at",
    "version_record",
    "version_records",
    "resolve_ref",
    "load_verified",
    "verify_artifact",
    "describe_alias_state",
]

ALIASES: tuple[str, ...] = ("production", "candidate", "canary", "previous")
ARTIFACTS_LOCK = "retrain:artifacts"
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def aliases_lock(model: str) -> str:
    return f"retrain:aliases:{model}"


def versions_lock(model: str) -> str:
    return f"retrain:versions:{model}"


# ---------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class NewVersion:
    """Everything known about a freshly trained model, before it has a number.

    ``parent_version`` defaults to the version in production when it is registered,
    or, with nothing in production yet, to the highest version issued (so a second
    training before any promotion is compared with the first, not numbered as new).
    ``params`` are the hyperparameters; ``settings`` other training settings stored
    beside them (e.g. the lookback). ``metrics`` are merged into the version's
    metrics next to the reference and holdout digests.
    """

    model: str
    spec: VersionSpec
    artifact: ArtifactRef
    reference_sha256: str | None = None
    holdout_sha256: str | None = None
    data_start: datetime | None = None
    data_end: datetime | None = None
    data_rows: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    request_id: str | None = None
    decision_id: str | None = None
    run_id: str | None = None
    cost_usd: float = 0.0
    parent_version: str | None = None


@dataclass(frozen=True)
class Registered:
    """The number a new version got, from which parent, and why."""

    model: str
    version: str
    parent: str | None
    bump: BumpDecision
    sha256: str


def _parent_spec(row: StoredVersion | None) -> VersionSpec | None:
    spec = (row.params or {}).get("spec") if row is not None else None
    if not spec:
        return None
    try:
        return VersionSpec.from_json(spec)
    except PayloadError:
        return None  # a version registered by hand without a spec: compare with nothing


def register_version(tx: UnitOfWork, new: NewVersion, *, now: datetime, actor: str, artifacts: Any = None,
                     note: str = "", audit_data: dict[str, Any] | None = None) -> Registered:
    """Give ``new`` the next semantic version of its model and record it, with its audit event.

    The caller has already written the artifact (and the samples) to the artifact
    store. When ``artifacts`` (an :class:`~retrain.artifacts.ArtifactStore`) is
    given, every digest is checked to be on disk under the artifacts lock, so a
    garbage collection that ran between the write and now is caught here instead of
    leaving a version without its file.
    """
    tx.lock(versions_lock(new.model))
    tx.lock(ARTIFACTS_LOCK)
    digests = [d for d in (new.artifact.sha256, new.reference_sha256, new.holdout_sha256) if d]
    if artifacts is not None:
        missing = [d for d in digests if not artifacts.exists(d)]
        if missing:
            raise ArtifactError(f"cannot register a version of {new.model}: artifact(s) "
                                f"{', '.join(d[:12] for d in missing)} vanished after they were written "
                                "(collected as orphans?); retrain to write them again")
    latest_row = tx.versions.latest(new.model)
    parent = new.parent_version if new.parent_version is not None else tx.aliases.get(new.model, "production")
    if parent is None and latest_row is not None:
        parent = latest_row.version
    parent_row = tx.versions.get(new.model, parent) if parent else None
    if parent_row is None:
        parent = None
    parent_spec = _parent_spec(parent_row)
    bump = decide_bump(parent_spec, new.spec,
                       parent_version=SemVer.parse(parent) if parent and parent_spec else None,
                       latest=SemVer.parse(latest_row.version) if latest_row else None)
    v = bump.version
    metrics: dict[str, Any] = dict(new.metrics)
    if new.reference_sha256:
        metrics["reference_sha256"] = new.reference_sha256
    if new.holdout_sha256:
        metrics["holdout_sha256"] = new.holdout_sha256
    tx.versions.add(
        model=new.model, version=str(v), major=v.major, minor=v.minor, patch=v.patch, status="registered",
        created_at=now, deleted_at=None, deleted_reason=None, artifact_sha256=new.artifact.sha256,
        artifact_size=new.artifact.size, bump_kind=bump.kind, bump_reason=bump.reason, parent_version=parent,
        data_start=new.data_start, data_end=new.data_end, data_rows=int(new.data_rows),
        data_fingerprint=new.spec.data_fingerprint, feature_schema=list(new.spec.to_json()["feature_schema"]),
        params={"params": dict(new.params), "spec": new.spec.to_json(), **new.settings}, metrics=metrics,
        git_commit=new.git_commit, request_id=new.request_id, decision_id=new.decision_id, run_id=new.run_id,
        cost_usd=float(new.cost_usd),
    )
    tx.audit.record(now, "version", actor, f"{new.model} {v} registered ({bump.reason}){note}", model=new.model,
                    subject=str(v), data={"sha256": new.artifact.sha256, "size": new.artifact.size, "parent": parent,
                                          "bump": bump.kind, "run_id": new.run_id, **(audit_data or {})})
    return Registered(new.model, str(v), parent, bump, new.artifact.sha256)


# ---------------------------------------------------------------------------- aliases
def _live_row(tx: UnitOfWork, model: str, version: str) -> StoredVersion:
    row = tx.versions.get(model, version)
    if row is None:
        live = [r.version for r in tx.versions.all(model, include_deleted=False)]
        raise VersionUnavailableError(
            f"{model} has no version {version}; live versions: {', '.join(live) or 'none'} "
            f"(see: retrain versions {model})")
    if row.deleted_at is not None:
        raise VersionUnavailableError(
            f"{model} {version} was deleted by retention on {row.deleted_at:%Y-%m-%d %H:%M} UTC "
            f"({row.deleted_reason or 'no reason recorded'}); its artifact is gone and only its record is kept")
    return row


def move_alias(tx: UnitOfWork, model: str, alias: str, version: str | None, *, actor: str, reason: str, now: datetime,
               share_pct: float = 0.0) -> str | None:
    """Point ``alias`` at a live ``version`` (None clears it); recorded in the alias history.

    Returns the version the alias pointed to before. Refuses unknown aliases and
    versions that do not exist or were deleted.
    """
    if alias not in ALIASES:
        raise PayloadError(f"unknown alias {alias!r}; aliases are {', '.join(ALIASES)}")
    tx.lock(aliases_lock(model))
    if version is not None:
        _live_row(tx, model, version)
    return tx.aliases.move(model, alias, version, actor=actor, reason=reason, now=now, share_pct=share_pct)


@dataclass(frozen=True)
class RollbackOutcome:
    """What a rollback did: ``rolled_back``, ``unchanged`` (nothing to do) or ``skipped`` (already done)."""

    model: str
    status: str
    production: str | None
    replaced: str | None
    cancelled_canary: str | None = None
    detail: str = ""


def resolve_rollback(tx: UnitOfWork, model: str, version: str | None = None) -> str:
    """The version a rollback goes to: ``version`` if named; else, while a canary is out,
    the production version (the canary is withdrawn); else the ``previous`` alias.

    Raises :class:`VersionUnavailableError` when there is none, or it was deleted.
    """
    if version is None:
        aliases = tx.aliases.all(model)
        canary = aliases.get("canary")
        prod = aliases.get("production")
        if canary is not None and canary.version and prod is not None and prod.version:
            version = prod.version
        else:
            version = tx.aliases.get(model, "previous")
        if version is None:
            raise VersionUnavailableError(
                f"{model} has no previous version to roll back to; name one (see: retrain versions {model})")
    _live_row(tx, model, version)
    return version


def rollback(tx: UnitOfWork, model: str, version: str | None = None, *, actor: str, reason: str, now: datetime,
             from_version: str | None = None, data: dict | None = None) -> RollbackOutcome:
    """Serve ``version`` (default: see :func:`resolve_rollback`) as production; audited.

    The replaced production version becomes ``previous`` and its status
    ``rolled_back``; a canary in progress is withdrawn (alias cleared, status
    ``rolled_back``). ``from_version`` makes a repeated message harmless: when that
    version is no longer production or canary, nothing is done (``skipped``). ``data``
    (e.g. the figures of an automatic rollback) is added to the audit event.
    """
    tx.lock(aliases_lock(model))
    current = tx.aliases.get(model, "production")
    canary = tx.aliases.get(model, "canary")
    if from_version is not None and from_version not in (current, canary):
        detail = f"{from_version} is already out of service (production {current or '-'}); nothing to do"
        tx.audit.record(now, "rollback", actor, f"{model} rollback skipped: {detail}", model=model,
                        subject=from_version,
                        data={"from": from_version, "production": current, "reason": reason})
        return RollbackOutcome(model, "skipped", current, None, None, detail)
    target = resolve_rollback(tx, model, version)
    row = _live_row(tx, model, target)
    if target == current and canary is None:
        detail = f"{target} is already production; nothing to roll back"
        tx.audit.record(now, "rollback", actor, f"{model} rollback to {target}: {detail}", model=model, subject=target,
                        data={"from": current, "to": target, "reason": reason})
        return RollbackOutcome(model, "unchanged", current, None, None, detail)

    why = f"rollback: {reason}"
    withdrawn = None
    if canary is not None and canary != target:
        tx.aliases.move(model, "canary", None, actor=actor, reason=why, now=now)
        withdrawn = canary
        canary_row = tx.versions.get(model, canary)
        if canary_row is not None and canary_row.deleted_at is None:
            tx.versions.update(canary_row, status="rolled_back")
    elif canary is not None:
        tx.aliases.move(model, "canary", None, actor=actor, reason=f"{canary} is now production", now=now)
    replaced = None
    if current != target:
        tx.aliases.move(model, "production", target, actor=actor, reason=why, now=now)
        if current:
            tx.aliases.move(model, "previous", current, actor=actor, reason=f"rolled back from {current} to {target}",
                            now=now)
            cur_row = tx.versions.get(model, current)
            if cur_row is not None:
                tx.versions.update(cur_row, status="rolled_back")
            replaced = current
    if tx.aliases.get(model, "candidate") == withdrawn and withdrawn is not None:
        tx.aliases.move(model, "candidate", None, actor=actor, reason=why, now=now)
    tx.versions.update(row, status="production")
    parts = [f"production {current or '-'} -> {target}" if current != target else f"production stays {target}"]
    if withdrawn:
        parts.append(f"canary {withdrawn} withdrawn")
    detail = "; ".join(parts)
    tx.audit.record(now, "rollback", actor, f"{model} rolled back: {detail}: {reason}", model=model, subject=target,
                    data={**(data or {}), "from": current, "to": target, "canary_withdrawn": withdrawn,
                          "reason": reason})
    return RollbackOutcome(model, "rolled_back", target, replaced, withdrawn, detail)


# ---------------------------------------------------------------------------- retention support
def protected_versions(tx: UnitOfWork, model: str) -> dict[str, str]:
    """Versions retention must keep, each with why: alias targets, the rollback target, runs in flight."""
    out: dict[str, str] = {}
    aliases = tx.aliases.all(model)
    for name in ALIASES:
        row = aliases.get(name)
        if row is not None and row.version:
            out.setdefault(row.version, "rollback target (previous)" if name == "previous" else f"{name} alias")
    for name, row in sorted(aliases.items()):
        if name not in ALIASES and row.version:
            out.setdefault(row.version, f"{name} alias")
    prod = aliases.get("production")
    if prod is not None and prod.version and not (aliases.get("previous") and aliases["previous"].version):
        # No 'previous' alias yet: production's parent is what a rollback would need.
        prod_row = tx.versions.get(model, prod.version)
        if prod_row is not None and prod_row.parent_version:
            out.setdefault(prod_row.parent_version, "parent of production (rollback target)")
    for version, run_id in tx.runs.active_versions(model).items():
        out.setdefault(version, f"run {run_id[:8]} is still validating or rolling it out")
    return out


def delete_version(tx: UnitOfWork, model: str, version: str, *, actor: str, reason: str,
                   now: datetime) -> StoredVersion:
    """Tombstone a version: status ``deleted``, ``deleted_at`` and the reason set, row and history kept.

    Refuses a protected version (:func:`protected_versions`). The artifact files are
    removed by the caller after the commit, and only when no live version of any
    model still references them (:func:`referenced_digests`).
    """
    tx.lock(aliases_lock(model))
    row = _live_row(tx, model, version)
    guard = protected_versions(tx, model)
    if version in guard:
        raise VersionProtectedError(f"{model} {version} cannot be deleted: {guard[version]}")
    before = row.status
    row = tx.versions.update(row, status="deleted", deleted_at=now, deleted_reason=reason)
    tx.audit.record(now, "retention", actor, f"{model} {version} deleted ({reason}); record and history kept",
                    model=model, subject=version,
                    data={"sha256": row.artifact_sha256, "size": row.artifact_size, "status_before": before,
                          "reference_sha256": (row.metrics or {}).get("reference_sha256"),
                          "holdout_sha256": (row.metrics or {}).get("holdout_sha256"), "reason": reason})
    return row


def version_digests(row: StoredVersion) -> list[str]:
    """The artifact files a version needs: the model, and its drift reference and holdout samples."""
    metrics = row.metrics or {}
    found = [row.artifact_sha256, metrics.get("reference_sha256"), metrics.get("holdout_sha256")]
    return [d for d in found if isinstance(d, str) and _DIGEST_RE.fullmatch(d)]


def referenced_digests(tx: UnitOfWork, *, excluding: Collection[tuple[str, str]] = ()) -> set[str]:
    """Every artifact digest a live version of any model references.

    The one definition garbage collection trusts: an artifact kept anywhere else
    must be added here, or ``retrain gc`` removes it as an orphan. ``excluding``
    names (model, version) pairs to leave out, e.g. the ones a dry run would delete.
    """
    skip = set(excluding)
    out: set[str] = set()
    for model, version, sha, metrics in tx.versions.live_refs():
        if (model, version) in skip:
            continue
        for d in (sha, metrics.get("reference_sha256"), metrics.get("holdout_sha256")):
            if isinstance(d, str) and _DIGEST_RE.fullmatch(d):
                out.add(d)
    return out


# ---------------------------------------------------------------------------- history
@dataclass(frozen=True)
class AliasState:
    """Where an alias pointed at some time, and the move that put it there."""

    alias: str
    version: str | None
    since: datetime
    actor: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"alias": self.alias, "version": self.version, "since": self.since, "actor": self.actor,
                "reason": self.reason}


def describe_alias_state(state: AliasState | None) -> str:
    """One line for an alias at some time: ``'1.2.0 since 2026-01-06 02:10 (promotion: ...)'``."""
    if state is None or state.version is None:
        return "-"
    return f"{state.version} since {state.since:%Y-%m-%d %H:%M:%S} ({state.actor}: {state.reason})"


def aliases_at(tx: UnitOfWork, model: str, at: datetime) -> dict[str, AliasState]:
    """Every alias of ``model`` as it was at ``at`` (aliases never set by then are left out)."""
    out: dict[str, AliasState] = {}
    for name in tx.aliases.names(model):
        h: AliasMove | None = tx.aliases.set_at(model, name, at)
        if h is not None:
            out[name] = AliasState(name, h.to_version, h.at, h.actor, h.reason)
    return out


def served_at(tx: UnitOfWork, model: str, at: datetime) -> str | None:
    """The production version of ``model`` at time ``at`` (None: nothing in production then)."""
    h = tx.aliases.set_at(model, "production", at)
    return h.to_version if h is not None else None


# ---------------------------------------------------------------------------- read model
@dataclass(frozen=True)
class VersionRecord:
    """One version as operators and scripts see it (rows never leave the store)."""

    model: str
    version: str
    status: str
    aliases: tuple[str, ...]
    created_at: datetime
    deleted_at: datetime | None
    deleted_reason: str | None
    bump_kind: str
    bump_reason: str
    parent_version: str | None
    artifact_sha256: str
    artifact_size: int
    data_start: datetime | None
    data_end: datetime | None
    data_rows: int
    data_fingerprint: str
    feature_schema: list[Any]
    entry_point: str | None
    config_fingerprint: str | None
    hyperparameters: dict[str, Any]
    settings: dict[str, Any]
    validation: dict[str, Any] | None
    baseline: dict[str, Any] | None
    reference_sha256: str | None
    holdout_sha256: str | None
    holdout_rows: int | None
    git_commit: str | None
    request_id: str | None
    decision_id: str | None
    run_id: str | None
    cost_usd: float

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _record(row: StoredVersion, aliases: Iterable[str]) -> VersionRecord:
    params = dict(row.params or {})
    spec = params.pop("spec", None) or {}
    hyper = params.pop("params", {}) or {}
    metrics = row.metrics or {}
    return VersionRecord(
        model=row.model, version=row.version, status="deleted" if row.deleted_at else row.status,
        aliases=tuple(a for a in ALIASES if a in set(aliases)) + tuple(sorted(set(aliases) - set(ALIASES))),
        created_at=row.created_at, deleted_at=row.deleted_at, deleted_reason=row.deleted_reason,
        bump_kind=row.bump_kind, bump_reason=row.bump_reason, parent_version=row.parent_version,
        artifact_sha256=row.artifact_sha256, artifact_size=row.artifact_size, data_start=row.data_start,
        data_end=row.data_end, data_rows=row.data_rows, data_fingerprint=row.data_fingerprint,
        feature_schema=list(row.feature_schema or []), entry_point=spec.get("entry_point"),
        config_fingerprint=spec.get("config_fingerprint"), hyperparameters=hyper, settings=params,
        validation=metrics.get("holdout"), baseline=metrics.get("baseline"),
        reference_sha256=metrics.get("reference_sha256"), holdout_sha256=metrics.get("holdout_sha256"),
        holdout_rows=metrics.get("holdout_rows"), git_commit=row.git_commit, request_id=row.request_id,
        decision_id=row.decision_id, run_id=row.run_id, cost_usd=row.cost_usd,
    )


def _alias_map(tx: UnitOfWork, model: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, row in tx.aliases.all(model).items():
        if row.version:
            out.setdefault(row.version, []).append(name)
    return out


def version_records(tx: UnitOfWork, model: str, *, include_deleted: bool = True) -> list[VersionRecord]:
    """Every version of ``model``, newest number first."""
    amap = _alias_map(tx, model)
    rows = tx.versions.all(model, include_deleted=include_deleted)
    return [_record(r, amap.get(r.version, ())) for r in reversed(rows)]


def resolve_ref(tx: UnitOfWork, ref: str) -> tuple[str, str]:
    """``MODEL@VERSION`` or ``MODEL@ALIAS`` (or just ``MODEL``: production) to (model, version)."""
    model, _, name = ref.partition("@")
    if not model:
        raise PayloadError(f"expected MODEL@VERSION, got {ref!r}")
    name = name or "production"
    if name in tx.aliases.names(model) or name in ALIASES:
        version = tx.aliases.get(model, name)
        if version is None:
            raise VersionUnavailableError(f"{model} has no version behind alias {name!r}")
        return model, version
    return model, name


def version_record(tx: UnitOfWork, model: str, version: str) -> VersionRecord:
    row = tx.versions.get(model, version)
    if row is None:
        live = [r.version for r in tx.versions.all(model, include_deleted=False)]
        raise VersionUnavailableError(f"{model} has no version {version}; live versions: {', '.join(live) or 'none'}")
    return _record(row, _alias_map(tx, model).get(version, ()))


# ---------------------------------------------------------------------------- verified loading
def _refuse(ctx: Any, exc: ArtifactError, sha256: str, *, model: str | None, version: str | None, purpose: str,
            actor: str | None) -> None:
    what = f"{model} {version}" if model and version else (model or "an artifact")
    with ctx.store.tx() as tx:
        tx.audit.record(ctx.now(), "artifact", actor or ctx.worker_id,
                        f"refused to load {what} for {purpose}: {exc}", model=model, subject=version,
                        data={"sha256": sha256, "purpose": purpose, "error": str(exc)})


def verify_artifact(ctx: Any, sha256: str, *, model: str | None = None, version: str | None = None,
                    purpose: str, actor: str | None = None) -> bytes:
    """Return the artifact's bytes if they hash to ``sha256``; otherwise audit the refusal and raise.

    ``ctx`` is a :class:`~retrain.context.Context`. Raises
    :class:`~retrain.core.errors.ArtifactError` (missing or altered file).
    """
    try:
        return ctx.artifacts.get_bytes(sha256)
    except ArtifactError as exc:
        _refuse(ctx, exc, sha256, model=model, version=version, purpose=purpose, actor=actor)
        raise


def load_verified(ctx: Any, sha256: str, *, model: str | None = None, version: str | None = None,
                  purpose: str, actor: str | None = None) -> Any:
    """Load an artifact after checking its sha256; a mismatch is audited and refused, never unpickled.

    Every place that unpickles an artifact (training outputs, drift references,
    holdouts, the serving side of the demo) should load through here: joblib runs
    code on load, so an altered file must never reach it.
    """
    try:
        return ctx.artifacts.load_object(sha256)
    except ArtifactError as exc:
        _refuse(ctx, exc, sha256, model=model, version=version, purpose=purpose, actor=actor)
        raise
