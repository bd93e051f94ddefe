"""Semantic versions for trained models, and the rule that picks the next one (ADAPT-014).

A model version is ``major.minor.patch``. Which part moves is decided by comparing
what produced the new model (a :class:`VersionSpec`) with what produced its parent:

=========  ==================================================================
kind       when
=========  ==================================================================
initial    there is no parent: the first version, ``1.0.0``
major      the feature schema (names, order or types) or the training entry
           point changed: the model's inputs or its code are different, so
           anything that calls it must be checked
minor      otherwise, the data fingerprint changed: the same code retrained on
           a new data window (the usual scheduled or triggered retraining)
patch      otherwise: only the configuration (hyperparameters) changed, or
           nothing did (a re-run)
=========  ==================================================================

The highest applicable kind wins; the reason lists every field that changed.

The parent is the version in production when the new one is registered (before
any promotion: the highest version issued); ``retrain.registry.register_version``
applies this rule and stores ``bump_kind``, ``bump_reason`` and the parent with the
version, so ``retrain show MODEL@VERSION`` explains every number.

The bump is applied to the *highest version already issued* (``latest``) when it is
above the parent, not to the parent alone. After a rollback to 1.0.0 while 1.1.0
exists, a retrain on new data gives 1.2.0, never a second 1.1.0: a version number
names one model forever, even after it has been deleted.

Fingerprints are sha256 hex digests: :func:`fingerprint_json` for configurations
(canonical JSON) and :func:`fingerprint_array` for data (shape, dtype and bytes).

Example
-------
>>> spec = VersionSpec(("price", "volume"), "models.trading:train",
...                    fingerprint_json({"C": 1.0}), fingerprint_json({"window": "2026-01"}))
>>> decide_bump(None, spec).version
SemVer(major=1, minor=0, patch=0)
>>> newer = VersionSpec(spec.feature_schema, spec.entry_point, spec.config_fingerprint,
...                     fingerprint_json({"window": "2026-02"}))
>>> d = decide_bump(spec, newer, parent_version=SemVer(1, 0, 0))
>>> str(d.version), d.kind
('1.1.0', 'minor')
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from retrain.core.errors import PayloadError

__all__ = [
    "SemVer",
    "INITIAL_VERSION",
    "BumpKind",
    "VersionSpec",
    "BumpDecision",
    "decide_bump",
    "fingerprint_array",
    "fingerprint_json",
]

BumpKind = Literal["major", "minor", "patch", "initial"]

_SEMVER_RE = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_ENTRY_POINT_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

FeatureSchema = tuple[str, ...] | tuple[tuple[str, str], ...]


@dataclass(frozen=True, order=True)
class SemVer:
    """A ``major.minor.patch`` version; orders numerically (``1.10.0 > 1.9.0``)."""

    major: int
    minor: int
    patch: int

    def __post_init__(self) -> None:
        for name in ("major", "minor", "patch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PayloadError(f"SemVer.{name} must be a non-negative int, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> SemVer:
        """Parse ``'1.2.3'``; raise :class:`~retrain.core.errors.PayloadError` on anything else.

        Pre-release and build suffixes are refused: the registry never issues them.
        """
        m = _SEMVER_RE.fullmatch(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise PayloadError(f"not a semantic version 'major.minor.patch': {text!r}")
        return cls(int(m[1]), int(m[2]), int(m[3]))

    def bump(self, kind: BumpKind) -> SemVer:
        """Return the next version of this ``kind``; lower parts reset to 0."""
        if kind == "major":
            return SemVer(self.major + 1, 0, 0)
        if kind == "minor":
            return SemVer(self.major, self.minor + 1, 0)
        if kind == "patch":
            return SemVer(self.major, self.minor, self.patch + 1)
        raise ValueError(f"cannot bump by {kind!r}; expected 'major', 'minor' or 'patch'")

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


INITIAL_VERSION = SemVer(1, 0, 0)


def _normalise_schema(schema: Any) -> FeatureSchema:
    # Schemas arrive as JSON lists from the database; store them as tuples so the
    # spec stays hashable and compares equal to its round-tripped self.
    items = tuple(schema)
    if not items:
        raise PayloadError("feature_schema must name at least one feature")
    if all(isinstance(x, str) for x in items):
        names = items
        out: FeatureSchema = items
    elif all(isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(p, str) for p in x) for x in items):
        out = tuple((str(n), str(t)) for n, t in items)
        names = tuple(n for n, _ in out)
    else:
        raise PayloadError(
            "feature_schema must be all names ('price', ...) or all (name, type) pairs "
            f"(('price', 'float64'), ...), got {items!r}"
        )
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise PayloadError(f"feature_schema names a feature twice: {', '.join(dupes)}")
    return out


@dataclass(frozen=True)
class VersionSpec:
    """What produced a model: its inputs, its code, its configuration and its data.

    ``feature_schema`` is a tuple of feature names, or of ``(name, type)`` pairs;
    order matters, because models take features by position. ``entry_point`` is
    ``'package.module:function'``. The two fingerprints are sha256 hex digests, of
    the training configuration and of the training data window.
    """

    feature_schema: FeatureSchema
    entry_point: str
    config_fingerprint: str
    data_fingerprint: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_schema", _normalise_schema(self.feature_schema))
        if not isinstance(self.entry_point, str) or not _ENTRY_POINT_RE.fullmatch(self.entry_point):
            raise PayloadError(f"entry_point must look like 'package.module:function', got {self.entry_point!r}")
        for name in ("config_fingerprint", "data_fingerprint"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
                raise PayloadError(f"{name} must be a sha256 hex digest, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "feature_schema": [list(f) if isinstance(f, tuple) else f for f in self.feature_schema],
            "entry_point": self.entry_point,
            "config_fingerprint": self.config_fingerprint,
            "data_fingerprint": self.data_fingerprint,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VersionSpec:
        try:
            return cls(d["feature_schema"], d["entry_point"], d["config_fingerprint"], d["data_fingerprint"])
        except (KeyError, TypeError) as exc:
            raise PayloadError(f"not a VersionSpec: {exc}") from exc


@dataclass(frozen=True)
class BumpDecision:
    """The next version, which part moved, and why."""

    kind: BumpKind
    version: SemVer
    reason: str


def _feature_names(schema: FeatureSchema) -> tuple[str, ...]:
    return tuple(f[0] if isinstance(f, tuple) else f for f in schema)


def _describe_schema_change(old: FeatureSchema, new: FeatureSchema) -> str:
    old_names, new_names = _feature_names(old), _feature_names(new)
    parts: list[str] = []
    added = [n for n in new_names if n not in old_names]
    removed = [n for n in old_names if n not in new_names]
    if added:
        parts.append("added " + ", ".join(added))
    if removed:
        parts.append("removed " + ", ".join(removed))
    if not added and not removed:
        if old_names != new_names:
            parts.append("reordered")
        old_types = dict(f for f in old if isinstance(f, tuple))
        new_types = dict(f for f in new if isinstance(f, tuple))
        retyped = [f"{n} {old_types[n]}->{new_types[n]}" for n in new_names if n in old_types and n in new_types
                   and old_types[n] != new_types[n]]
        if retyped:
            parts.append("types changed: " + ", ".join(retyped))
        if bool(old_types) != bool(new_types):
            parts.append("types " + ("added" if new_types else "dropped"))
    return "feature schema changed (" + "; ".join(parts) + ")"


def decide_bump(
    parent: VersionSpec | None,
    new: VersionSpec,
    *,
    parent_version: SemVer | None = None,
    latest: SemVer | None = None,
) -> BumpDecision:
    """Choose the next version for a model trained from ``new`` (rule: module docstring).

    ``parent`` is the spec of the version the new one descends from (usually the
    one in production) and ``parent_version`` its number, required when
    ``parent`` is given. ``latest`` is the highest version ever issued for the
    model, deleted ones included; the bump starts from ``max(parent_version,
    latest)`` so that numbers are never reused.
    """
    if parent is None:
        if latest is None:
            return BumpDecision("initial", INITIAL_VERSION, "initial: no parent version")
        version = latest.bump("major")
        return BumpDecision(
            "initial", version, f"initial: no parent version to compare with; {latest} was already issued, so {version}"
        )
    if parent_version is None:
        raise ValueError("parent_version is required when parent is given")

    changes: list[tuple[BumpKind, str]] = []
    if parent.feature_schema != new.feature_schema:
        changes.append(("major", _describe_schema_change(parent.feature_schema, new.feature_schema)))
    if parent.entry_point != new.entry_point:
        changes.append(("major", f"entry point changed ({parent.entry_point} -> {new.entry_point})"))
    if parent.data_fingerprint != new.data_fingerprint:
        changes.append(("minor", "training data changed"))
    if parent.config_fingerprint != new.config_fingerprint:
        changes.append(("patch", "configuration changed"))

    rank = {"major": 3, "minor": 2, "patch": 1}
    kind: BumpKind = max((k for k, _ in changes), key=rank.__getitem__, default="patch")
    base = parent_version if latest is None or latest <= parent_version else latest
    version = base.bump(kind)
    what = "; ".join(text for _, text in changes) if changes else "nothing changed (a re-run)"
    reason = f"{kind}: {what}; {base} -> {version}"
    if base != parent_version:
        reason += f" (parent {parent_version}, bumped from the highest issued version {base})"
    return BumpDecision(kind, version, reason)


def fingerprint_json(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON: sorted keys, no whitespace, UTF-8.

    Values JSON cannot represent exactly (sets, datetimes, NaN, infinities) raise
    ``TypeError``/``ValueError`` instead of being stringified: two configurations
    that differ must never share a fingerprint by accident.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint_array(*arrays: Any) -> str:
    """sha256 over each array's dtype, shape and bytes (C order), in argument order.

    Equal values with a different dtype or shape fingerprint differently, on
    purpose: the model would see different inputs. Object arrays are refused, as
    their bytes are pointers and would differ from run to run.
    """
    import numpy as np  # deferred: the rest of the module does not need numpy

    h = hashlib.sha256()
    h.update(f"arrays:{len(arrays)};".encode())
    for a in arrays:
        arr = np.ascontiguousarray(a)
        if arr.dtype.hasobject:
            raise TypeError("fingerprint_array cannot hash object arrays; convert to a numeric or string dtype")
        # Length-prefixed header so that (shape, bytes) boundaries cannot be shifted.
        header = f"{arr.dtype.str}|{arr.dtype.descr!r}|{arr.shape!r}".encode()
        h.update(len(header).to_bytes(8, "big"))
        h.update(header)
        h.update(arr.nbytes.to_bytes(8, "big"))
        h.update(arr.reshape(-1).view(np.uint8).data)
    return h.hexdigest()
