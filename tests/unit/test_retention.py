"""Retention: at most max_versions versions, none older than max_age, aliases always kept."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retrain.core.retention import RetentionPlan, RetentionPolicy, VersionInfo, plan_retention

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def daily(n: int, *, start_age: timedelta = timedelta(0)) -> list[VersionInfo]:
    """n versions 1.0.0 … 1.(n-1).0, one a day, the newest ``start_age`` old."""
    return [VersionInfo(f"1.{i}.0", NOW - start_age - (n - 1 - i) * DAY) for i in range(n)]


def deleted_names(plan: RetentionPlan) -> list[str]:
    return [v for v, _ in plan.delete]


def test_defaults_are_ten_versions_and_thirty_days() -> None:
    assert RetentionPolicy() == RetentionPolicy(max_versions=10, max_age=timedelta(days=30))


def test_keeps_the_newest_max_versions_and_deletes_the_rest() -> None:
    # Given 12 daily versions and no aliases
    plan = plan_retention(daily(12), protected=set(), now=NOW)
    # Then the 10 newest are kept (newest first) and the 2 oldest deleted, saying why
    assert plan.keep == [f"1.{i}.0" for i in range(11, 1, -1)]
    assert deleted_names(plan) == ["1.1.0", "1.0.0"]
    assert all("beyond the newest 10 versions" in why for _, why in plan.delete)


def test_protected_versions_count_toward_max_versions() -> None:
    # Given 12 daily versions, with production on the newest and the rollback target on the oldest
    plan = plan_retention(daily(12), protected={"1.11.0", "1.0.0"}, now=NOW)
    # Then both are kept and only 8 unprotected ones join them: 10 in all
    assert len(plan.keep) == 10
    assert "1.0.0" in plan.keep and "1.11.0" in plan.keep
    assert deleted_names(plan) == ["1.2.0", "1.1.0"]
    assert "2 slots used by protected versions" in plan.delete[0][1]


def test_more_protected_versions_than_max_versions_keeps_them_all_and_nothing_else() -> None:
    policy = RetentionPolicy(max_versions=2)
    plan = plan_retention(daily(5), protected={"1.0.0", "1.1.0", "1.2.0"}, now=NOW, policy=policy)
    assert sorted(plan.keep) == ["1.0.0", "1.1.0", "1.2.0"]
    assert deleted_names(plan) == ["1.4.0", "1.3.0"]


def test_deletes_unprotected_versions_older_than_max_age() -> None:
    # Given 5 versions, the newest 28 days old (so the others are 29 to 32 days old)
    versions = daily(5, start_age=28 * DAY)
    # When retention runs with production on the oldest one
    plan = plan_retention(versions, protected={"1.0.0"}, now=NOW)
    # Then the versions over 30 days old go, except the protected one
    assert plan.keep == ["1.4.0", "1.3.0", "1.2.0", "1.0.0"]
    assert plan.delete == [("1.1.0", "older than 30 d (age 31 d)")]


def test_exactly_max_age_is_not_older_than_max_age() -> None:
    plan = plan_retention([VersionInfo("1.0.0", NOW - 30 * DAY)], protected=set(), now=NOW)
    assert plan.keep == ["1.0.0"]
    plan = plan_retention([VersionInfo("1.0.0", NOW - 30 * DAY - timedelta(seconds=1))], protected=set(), now=NOW)
    assert deleted_names(plan) == ["1.0.0"]


def test_both_reasons_are_given_when_both_apply() -> None:
    plan = plan_retention(daily(3, start_age=40 * DAY), set(), NOW, RetentionPolicy(max_versions=1))
    assert plan.keep == []
    why = dict(plan.delete)["1.0.0"]
    assert "older than 30 d" in why and "beyond the newest 1 versions" in why


def test_tombstoned_versions_are_ignored() -> None:
    # Given 11 versions of which the 2 oldest are already deleted
    versions = [VersionInfo(v.version, v.created_at, deleted=i < 2) for i, v in enumerate(daily(11))]
    plan = plan_retention(versions, protected=set(), now=NOW)
    # Then the 9 live ones are kept and nothing is deleted twice
    assert len(plan.keep) == 9 and plan.delete == []


def test_equal_timestamps_are_ordered_by_version_whatever_the_input_order() -> None:
    same = NOW - DAY
    a = [VersionInfo("1.9.0", same), VersionInfo("1.10.0", same), VersionInfo("1.8.0", same)]
    policy = RetentionPolicy(max_versions=1)
    assert plan_retention(a, set(), NOW, policy).keep == ["1.10.0"]
    assert plan_retention(list(reversed(a)), set(), NOW, policy).keep == ["1.10.0"]


def test_naive_and_aware_timestamps_are_both_taken_as_utc() -> None:
    naive = VersionInfo("1.0.0", (NOW - 31 * DAY).replace(tzinfo=None))
    assert deleted_names(plan_retention([naive], set(), NOW)) == ["1.0.0"]


def test_duplicate_live_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="1.0.0"):
        plan_retention([VersionInfo("1.0.0", NOW), VersionInfo("1.0.0", NOW - DAY)], set(), NOW)


@pytest.mark.parametrize("kwargs", [{"max_versions": 0}, {"max_age": timedelta(0)}])
def test_policy_refuses_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RetentionPolicy(**kwargs)


# -- properties ------------------------------------------------------------------------

version_sets = st.lists(
    st.tuples(st.integers(0, 90 * 24), st.booleans(), st.booleans()),  # age in hours, deleted, protected
    max_size=40,
)
policies = st.builds(RetentionPolicy, st.integers(1, 12), st.integers(1, 60).map(lambda d: timedelta(days=d)))


def _build(rows):
    versions = [VersionInfo(f"1.{i}.0", NOW - timedelta(hours=h), deleted=d) for i, (h, d, _) in enumerate(rows)]
    protected = {f"1.{i}.0" for i, (_, _, p) in enumerate(rows) if p}
    return versions, protected


@given(rows=version_sets, policy=policies)
def test_property_protected_versions_are_never_deleted(rows, policy) -> None:
    versions, protected = _build(rows)
    plan = plan_retention(versions, protected, NOW, policy)
    assert not protected & set(deleted_names(plan))


@given(rows=version_sets, policy=policies)
def test_property_every_live_version_is_decided_exactly_once(rows, policy) -> None:
    versions, protected = _build(rows)
    plan = plan_retention(versions, protected, NOW, policy)
    live = {v.version for v in versions if not v.deleted}
    decided = plan.keep + deleted_names(plan)
    assert len(decided) == len(set(decided))
    assert set(decided) == live


@given(rows=version_sets, policy=policies)
def test_property_kept_versions_fit_the_policy_where_possible(rows, policy) -> None:
    versions, protected = _build(rows)
    plan = plan_retention(versions, protected, NOW, policy)
    by_name = {v.version: v for v in versions if not v.deleted}
    live_protected = protected & by_name.keys()
    # At most max_versions are kept, unless the protected ones alone exceed it
    assert len(plan.keep) <= max(policy.max_versions, len(live_protected))
    # Every kept unprotected version is young enough
    for name in set(plan.keep) - protected:
        assert NOW - by_name[name].created_at <= policy.max_age
    # Nothing young is deleted while a slot is free: a young version goes only when the
    # kept ones already fill max_versions
    for name, _ in plan.delete:
        if NOW - by_name[name].created_at <= policy.max_age:
            assert len(plan.keep) >= policy.max_versions
