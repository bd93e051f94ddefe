"""Which model versions to keep and which to delete (ADAPT-014: at most 10 versions, 30 days).

Pure: the caller passes the versions, the set of protected versions and ``now``;
:func:`plan_retention` returns a :class:`RetentionPlan` and touches nothing.

The rule, precisely. Tombstoned versions (``deleted=True``) are ignored: they are
neither kept nor deleted again. Among the live versions:

1. A *protected* version is always kept. Protected means an alias points to it:
   production, candidate, canary, and the previous version (the rollback target).
   The caller builds that set (``retrain.registry.protected_versions`` also adds the
   versions of runs still validating or rolling out); names that match no live
   version are ignored.
2. Protected versions use up slots: ``slots = max(0, max_versions - P)`` where P
   is the number of live protected versions.
3. An unprotected version is deleted when it is **older than** ``max_age``
   (``now - created_at > max_age``) **or** it is not among the newest ``slots``
   unprotected versions. Otherwise it is kept.

So at most ``max(max_versions, P)`` versions are kept, and every version kept
beyond the protected ones is younger than ``max_age``. "Newest" orders by
``created_at``, then by semantic version for equal timestamps.

Example
-------
>>> from datetime import datetime, timedelta, timezone
>>> now = datetime(2026, 3, 1, tzinfo=timezone.utc)
>>> vs = [VersionInfo(f"1.{i}.0", now - timedelta(days=10 * (3 - i))) for i in range(4)]
>>> plan = plan_retention(vs, protected={"1.0.0"}, now=now, policy=RetentionPolicy(max_versions=2))
>>> plan.keep
['1.3.0', '1.0.0']
>>> plan.delete
[('1.2.0', 'beyond the newest 2 versions (1 slot used by protected versions)'), \
('1.1.0', 'beyond the newest 2 versions (1 slot used by protected versions)')]
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from retrain.core.clock import utc
from retrain.core.errors import PayloadError
from retrain.core.versioning import SemVer

__all__ = ["RetentionPolicy", "VersionInfo", "RetentionPlan", "plan_retention"]


@dataclass(frozen=True)
class RetentionPolicy:
    """How many versions to keep at most, and how old an unprotected one may get."""

    max_versions: int = 10
    max_age: timedelta = timedelta(days=30)

    def __post_init__(self) -> None:
        if self.max_versions < 1:
            raise ValueError(f"max_versions must be >= 1, got {self.max_versions}")
        if self.max_age <= timedelta(0):
            raise ValueError(f"max_age must be positive, got {self.max_age}")


@dataclass(frozen=True)
class VersionInfo:
    """One version as retention sees it: its name, when it was created, whether it is tombstoned."""

    version: str
    created_at: datetime
    deleted: bool = False


@dataclass(frozen=True)
class RetentionPlan:
    """Versions to keep (newest first) and versions to delete with the reason (newest first)."""

    keep: list[str] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)


def _newest_first_key(v: VersionInfo) -> tuple[Any, ...]:
    # Equal timestamps happen (batch imports, coarse clocks); break ties by the
    # version number so the plan never depends on input order. Names that are
    # not semantic versions sort below those that are, by string.
    try:
        return (utc(v.created_at), 1, SemVer.parse(v.version))
    except PayloadError:
        return (utc(v.created_at), 0, v.version)


def _age_text(age: timedelta) -> str:
    days, rest = divmod(age, timedelta(days=1))
    hours = rest // timedelta(hours=1)
    if days and hours:
        return f"{days} d {hours} h"
    return f"{days} d" if days else f"{hours} h"


def plan_retention(
    versions: Sequence[VersionInfo],
    protected: Set[str],
    now: datetime,
    policy: RetentionPolicy = RetentionPolicy(),
) -> RetentionPlan:
    """Split the live versions into keep and delete (rule: module docstring)."""
    live = [v for v in versions if not v.deleted]
    names = [v.version for v in live]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"a version appears twice among the live versions: {', '.join(dupes)}")
    live.sort(key=_newest_first_key, reverse=True)
    now = utc(now)

    n_protected = sum(1 for v in live if v.version in protected)
    slots = max(0, policy.max_versions - n_protected)
    keep: list[str] = []
    delete: list[tuple[str, str]] = []
    unprotected_rank = 0
    for v in live:
        if v.version in protected:
            keep.append(v.version)
            continue
        unprotected_rank += 1
        reasons: list[str] = []
        age = now - utc(v.created_at)
        if age > policy.max_age:
            reasons.append(f"older than {_age_text(policy.max_age)} (age {_age_text(age)})")
        if unprotected_rank > slots:
            used = f"{n_protected} slot{'s' if n_protected != 1 else ''} used by protected versions"
            reasons.append(f"beyond the newest {policy.max_versions} versions ({used})")
        if reasons:
            delete.append((v.version, "; ".join(reasons)))
        else:
            keep.append(v.version)
    return RetentionPlan(keep=keep, delete=delete)
