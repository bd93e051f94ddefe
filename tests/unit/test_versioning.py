"""Semantic versions, the bump rule and the fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.core.errors import PayloadError
from retrain.core.versioning import (
    INITIAL_VERSION,
    BumpDecision,
    SemVer,
    VersionSpec,
    decide_bump,
    fingerprint_array,
    fingerprint_json,
)

CFG_A = fingerprint_json({"C": 1.0, "penalty": "l2"})
CFG_B = fingerprint_json({"C": 0.5, "penalty": "l2"})
DATA_A = fingerprint_json({"window": ["2026-01-01", "2026-01-31"]})
DATA_B = fingerprint_json({"window": ["2026-02-01", "2026-02-28"]})
BASE = VersionSpec(("price", "volume"), "models.trading:train", CFG_A, DATA_A)


def spec(**changes) -> VersionSpec:
    fields = {**BASE.to_json(), **changes}
    return VersionSpec.from_json(fields)


# -- SemVer ------------------------------------------------------------------------------


def test_parse_and_str_round_trip() -> None:
    assert SemVer.parse("1.2.3") == SemVer(1, 2, 3)
    assert str(SemVer.parse("10.0.42")) == "10.0.42"


@pytest.mark.parametrize("bad", ["1.2", "1.2.3.4", "01.2.3", "1.2.3-rc1", "v1.2.3", "a.b.c", "", "-1.0.0"])
def test_parse_refuses_anything_but_major_minor_patch(bad: str) -> None:
    with pytest.raises(PayloadError):
        SemVer.parse(bad)


def test_ordering_is_numeric_not_lexical() -> None:
    assert SemVer.parse("1.10.0") > SemVer.parse("1.9.0")
    assert SemVer.parse("2.0.0") > SemVer.parse("1.99.99")
    assert sorted(map(SemVer.parse, ["1.0.10", "1.0.2", "0.9.9"])) == [
        SemVer(0, 9, 9), SemVer(1, 0, 2), SemVer(1, 0, 10)
    ]


def test_bump_resets_the_lower_parts() -> None:
    v = SemVer(1, 2, 3)
    assert v.bump("major") == SemVer(2, 0, 0)
    assert v.bump("minor") == SemVer(1, 3, 0)
    assert v.bump("patch") == SemVer(1, 2, 4)
    with pytest.raises(ValueError):
        v.bump("initial")


versions = st.builds(SemVer, st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))
kinds = st.sampled_from(["major", "minor", "patch"])


@given(start=versions, steps=st.lists(kinds, max_size=30))
def test_bumped_versions_are_strictly_increasing(start: SemVer, steps: list[str]) -> None:
    # Given any version, When it is bumped repeatedly by any kinds, Then each is above the last
    v = start
    for kind in steps:
        nxt = v.bump(kind)
        assert nxt > v
        v = nxt


@given(versions)
def test_parse_inverts_str(v: SemVer) -> None:
    assert SemVer.parse(str(v)) == v


# -- the bump rule ---------------------------------------------------------------------


def test_no_parent_gives_the_initial_version() -> None:
    assert decide_bump(None, BASE) == BumpDecision("initial", SemVer(1, 0, 0), "initial: no parent version")
    assert INITIAL_VERSION == SemVer(1, 0, 0)


def test_no_parent_never_reuses_an_issued_number() -> None:
    # Given versions up to 1.4.2 were issued once (and deleted), When there is no parent to compare with
    d = decide_bump(None, BASE, latest=SemVer(1, 4, 2))
    # Then a new major line starts above them
    assert (d.kind, d.version) == ("initial", SemVer(2, 0, 0))


@pytest.mark.parametrize(
    ("new", "kind", "version", "reason_has"),
    [
        (spec(feature_schema=["price", "volume", "rsi"]), "major", "2.0.0", "added rsi"),
        (spec(feature_schema=["price"]), "major", "2.0.0", "removed volume"),
        (spec(feature_schema=["volume", "price"]), "major", "2.0.0", "reordered"),
        (spec(entry_point="models.trading_v2:train"), "major", "2.0.0", "entry point changed"),
        (spec(data_fingerprint=DATA_B), "minor", "1.4.0", "training data changed"),
        (spec(config_fingerprint=CFG_B), "patch", "1.3.3", "configuration changed"),
        (BASE, "patch", "1.3.3", "nothing changed"),
    ],
)
def test_bump_kind_follows_what_changed(new: VersionSpec, kind: str, version: str, reason_has: str) -> None:
    # Given a parent at 1.3.2, When a new spec is compared with it
    d = decide_bump(BASE, new, parent_version=SemVer(1, 3, 2))
    # Then the kind, the version and the reason say what changed
    assert (d.kind, str(d.version)) == (kind, version)
    assert reason_has in d.reason


def test_the_highest_change_wins_and_the_reason_lists_every_change() -> None:
    # Given new features, new data and a new configuration at once
    new = spec(feature_schema=["price", "rsi"], data_fingerprint=DATA_B, config_fingerprint=CFG_B)
    # When the bump is decided
    d = decide_bump(BASE, new, parent_version=SemVer(1, 3, 2))
    # Then it is major and every change is named
    assert d.kind == "major" and d.version == SemVer(2, 0, 0)
    for text in ("added rsi", "removed volume", "training data changed", "configuration changed"):
        assert text in d.reason


def test_data_and_config_change_is_minor() -> None:
    d = decide_bump(BASE, spec(data_fingerprint=DATA_B, config_fingerprint=CFG_B), parent_version=SemVer(1, 0, 0))
    assert (d.kind, d.version) == ("minor", SemVer(1, 1, 0))


def test_a_type_change_in_a_typed_schema_is_major() -> None:
    parent = spec(feature_schema=[["price", "float64"], ["volume", "int64"]])
    new = spec(feature_schema=[["price", "float64"], ["volume", "float64"]])
    d = decide_bump(parent, new, parent_version=SemVer(3, 1, 0))
    assert d.kind == "major" and "volume int64->float64" in d.reason


def test_after_a_rollback_the_bump_starts_from_the_highest_issued_version() -> None:
    # Given 1.0.0 and 1.1.0 exist, and production rolled back to 1.0.0
    # When 1.0.0 is retrained on new data
    d = decide_bump(BASE, spec(data_fingerprint=DATA_B), parent_version=SemVer(1, 0, 0), latest=SemVer(1, 1, 0))
    # Then the new version is 1.2.0, not a second 1.1.0
    assert d.version == SemVer(1, 2, 0)
    assert "highest issued version 1.1.0" in d.reason


def test_a_parent_spec_needs_its_version() -> None:
    with pytest.raises(ValueError, match="parent_version"):
        decide_bump(BASE, BASE)


schemas = st.lists(st.sampled_from(["price", "volume", "rsi", "macd", "spread"]), min_size=1, max_size=5, unique=True)
digests = st.sampled_from([CFG_A, CFG_B, DATA_A, DATA_B])
specs = st.builds(
    VersionSpec,
    schemas.map(tuple),
    st.sampled_from(["models.trading:train", "models.trading_v2:train"]),
    digests,
    digests,
)


@settings(max_examples=100)
@given(first=specs, later=st.lists(st.tuples(specs, st.integers(min_value=0)), max_size=15))
def test_issued_versions_strictly_increase_whatever_the_parent(first, later) -> None:
    # Given a history where each new version descends from any earlier one (rollbacks included)
    history = [(decide_bump(None, first).version, first)]
    for new, pick in later:
        parent_version, parent = history[pick % len(history)]
        latest = history[-1][0]
        # When the next version is decided
        d = decide_bump(parent, new, parent_version=parent_version, latest=latest)
        # Then it is above every version issued before it
        assert d.version > latest
        assert d.kind in ("major", "minor", "patch")
        history.append((d.version, new))


# -- VersionSpec -----------------------------------------------------------------------


def test_spec_round_trips_through_json_and_normalises_lists() -> None:
    typed = VersionSpec([["price", "float64"]], "pkg.mod:fn", CFG_A, DATA_A)
    assert typed.feature_schema == (("price", "float64"),)
    assert VersionSpec.from_json(typed.to_json()) == typed
    assert VersionSpec.from_json(BASE.to_json()) == BASE
    assert hash(typed) == hash(VersionSpec.from_json(typed.to_json()))


@pytest.mark.parametrize(
    "fields",
    [
        {"feature_schema": []},
        {"feature_schema": ["price", "price"]},
        {"feature_schema": ["price", ["volume", "int64"]]},
        {"entry_point": "models/trading.py"},
        {"entry_point": "models.trading"},
        {"config_fingerprint": "abc"},
        {"data_fingerprint": "X" * 64},
    ],
)
def test_spec_refuses_malformed_fields(fields: dict) -> None:
    with pytest.raises(PayloadError):
        spec(**fields)


def test_spec_from_json_refuses_missing_fields() -> None:
    with pytest.raises(PayloadError):
        VersionSpec.from_json({"entry_point": "a:b"})


# -- fingerprints ----------------------------------------------------------------------


def test_fingerprint_json_is_canonical() -> None:
    # Given the same configuration written with keys in another order
    a = fingerprint_json({"b": 1, "a": {"y": [1, 2], "x": "é"}})
    b = fingerprint_json({"a": {"x": "é", "y": [1, 2]}, "b": 1})
    # Then the fingerprints agree, and differ from any change of value
    assert a == b and len(a) == 64
    assert fingerprint_json({"b": 2, "a": {"y": [1, 2], "x": "é"}}) != a


def test_fingerprint_json_refuses_values_json_cannot_hold_exactly() -> None:
    with pytest.raises(ValueError):
        fingerprint_json({"lr": float("nan")})
    with pytest.raises(TypeError):
        fingerprint_json({"features": {"a", "b"}})


def test_fingerprint_array_is_deterministic_and_sensitive_to_shape_dtype_and_values() -> None:
    x = np.arange(6, dtype=np.float64)
    fp = fingerprint_array(x)
    assert fp == fingerprint_array(np.arange(6, dtype=np.float64))
    assert fp != fingerprint_array(x.reshape(2, 3))
    assert fp != fingerprint_array(x.astype(np.float32))
    assert fp != fingerprint_array(x + 1e-12)
    # Memory layout does not matter, the logical values do
    m = np.arange(6.0).reshape(2, 3)
    assert fingerprint_array(m.T) == fingerprint_array(np.ascontiguousarray(m.T))


def test_fingerprint_array_separates_its_arguments() -> None:
    x, y = np.arange(4), np.arange(4, 8)
    assert fingerprint_array(x, y) != fingerprint_array(y, x)
    assert fingerprint_array(x, y) != fingerprint_array(np.concatenate([x, y]))
    assert fingerprint_array() != fingerprint_array(np.array([]))


def test_fingerprint_array_handles_non_numeric_dtypes_and_refuses_objects() -> None:
    assert len(fingerprint_array(np.array(["2026-01-01"], dtype="datetime64[D]"), np.array(["a", "bc"]))) == 64
    with pytest.raises(TypeError):
        fingerprint_array(np.array([{"a": 1}], dtype=object))
