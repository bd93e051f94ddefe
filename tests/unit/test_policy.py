"""The retraining decision (ADAPT-013): every rule approving, deferring, rejecting; precedence; bypasses."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, time, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.core.domain import Decision, RetrainRequest, RuleResult, Severity, TriggerKind, Verdict
from retrain.core.errors import ConfigError
from retrain.core.policy import RULES, Policy, ResourceReading, StateSnapshot, decide, value_model

UTC = timezone.utc
NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # a Wednesday, mid-month, far from DST changes
AMPLE = ResourceReading(free_memory_mb=8000.0, cpu_load_pct=20.0, free_disk_mb=100_000.0)
EVIDENCE = {"baseline_accuracy": 0.60, "current_accuracy": 0.54}  # a 6-point drop


def request(trigger: TriggerKind = TriggerKind.PERFORMANCE, **kw: Any) -> RetrainRequest:
    kw.setdefault("evidence", dict(EVIDENCE))
    return RetrainRequest(id="req-1", model="direction", trigger=trigger, created_at=NOW, reason="test", **kw)


def state(**kw: Any) -> StateSnapshot:
    """A state in which every rule passes: old deployment, no runs, money left, busy model."""
    base: dict[str, Any] = dict(
        model="direction",
        deployed_at=NOW - timedelta(days=60),
        estimated_cost_usd=2.0,
        predictions_per_day=1e8,
        resources=AMPLE,
    )
    base.update(kw)
    return StateSnapshot(**base)


def rule(d: Decision, name: str) -> RuleResult:
    return next(r for r in d.rules if r.rule == name)


def names(d: Decision) -> tuple[str, ...]:
    return tuple(r.rule for r in d.rules)


# -- the happy path and the audit shape ----------------------------------------------------


def test_all_rules_pass_approves_and_lists_every_rule_in_order() -> None:
    # Given a healthy state and a performance request
    # When deciding
    d = decide(request(), state(), Policy(), NOW)
    # Then it approves, lists all 14 rules in the documented order, all passed
    assert d.verdict is Verdict.APPROVE
    assert names(d) == RULES
    assert all(r.passed and not r.bypassed for r in d.rules)
    assert d.defer_until is None
    assert d.estimated_cost_usd == 2.0
    assert d.priority == 7
    assert d.decided_at == NOW


def test_every_rule_is_listed_with_value_and_limit_even_when_several_fail() -> None:
    # Given a state where pause, cooldown, daily budget and ROI all fail
    s = state(paused=True, recent_run_starts=(NOW - timedelta(hours=1),), spend_today_usd=9.5,
              predictions_per_day=10.0)
    # When deciding
    d = decide(request(), s, Policy(), NOW)
    # Then every rule is still listed and every failure is recorded
    assert names(d) == RULES
    failed = {r.rule for r in d.failed_rules}
    assert failed == {"paused", "cooldown", "budget_daily", "roi"}
    assert d.verdict is Verdict.REJECT
    assert set(d.detail["reject_rules"]) == {"paused", "roi"}
    assert set(d.detail["defer_rules"]) == {"cooldown", "budget_daily"}
    assert rule(d, "cooldown").value == 1.0 and rule(d, "cooldown").limit == 6.0
    assert rule(d, "budget_daily").value == pytest.approx(11.5) and rule(d, "budget_daily").limit == 10.0


def test_the_decision_serialises_to_strict_json() -> None:
    # Given a decision with every kind of value (dict readings, datetimes in retry_at, None ROI)
    s = state(resources=ResourceReading(100.0, 99.0, 10.0), estimated_cost_usd=0.0)
    d = decide(request(TriggerKind.SCHEDULE), s, Policy(), NOW)
    # When dumping rules and detail as JSON without NaN/Infinity
    text = json.dumps({"rules": [r.to_json() for r in d.rules], "detail": d.detail}, allow_nan=False)
    # Then it round-trips
    back = [RuleResult.from_json(r) for r in json.loads(text)["rules"]]
    assert tuple(back) == d.rules


# -- paused ------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{"paused": True}, {"globally_paused": True}])
def test_paused_model_or_global_pause_rejects_with_reason_paused(kw: dict[str, bool]) -> None:
    # Given a paused model (or all retraining paused)
    # When an emergency arrives
    d = decide(request(TriggerKind.EMERGENCY), state(**kw), Policy(), NOW)
    # Then it is rejected: a pause is the operators' control and emergencies do not bypass it
    assert d.verdict is Verdict.REJECT
    assert d.detail["reject_rules"] == ["paused"]
    assert not rule(d, "paused").passed and not rule(d, "paused").bypassed


# -- coalescing --------------------------------------------------------------------------


def test_active_run_coalesces_with_the_run_id_even_when_other_rules_fail() -> None:
    # Given a queued run for the model, and a pause and an exhausted budget besides
    s = state(active_run_id="run-42", paused=True, spend_month_usd=99.0)
    # When deciding
    d = decide(request(), s, Policy(), NOW)
    # Then coalesced wins the precedence, names the run, and still lists the other failures
    assert d.verdict is Verdict.COALESCED
    assert d.detail["coalesced_with"] == "run-42"
    assert rule(d, "coalesce").value == "run-42"
    assert {"paused", "budget_monthly"} <= {r.rule for r in d.failed_rules}
    assert d.defer_until is None


# -- approval ----------------------------------------------------------------------------


def test_young_deployment_needs_manual_approval() -> None:
    # Given a model deployed 3 days ago
    d = decide(request(), state(deployed_at=NOW - timedelta(days=3)), Policy(), NOW)
    # Then the request waits for a human
    assert d.verdict is Verdict.PENDING_APPROVAL
    r = rule(d, "approval")
    assert not r.passed and r.value == 3.0 and r.limit == 7.0


def test_deployment_older_than_the_approval_period_approves() -> None:
    d = decide(request(), state(deployed_at=NOW - timedelta(days=7)), Policy(), NOW)
    assert d.verdict is Verdict.APPROVE


def test_never_deployed_model_needs_approval_and_approval_days_zero_turns_it_off() -> None:
    assert decide(request(), state(deployed_at=None), Policy(), NOW).verdict is Verdict.PENDING_APPROVAL
    assert decide(request(), state(deployed_at=None), Policy(approval_days=0), NOW).verdict is Verdict.APPROVE


def test_recorded_approval_lets_a_young_model_through() -> None:
    # Given an operator approved the request (the approval flow records approved_by)
    req = request(evidence={**EVIDENCE, "approved_by": "alice"})
    d = decide(req, state(deployed_at=NOW - timedelta(days=1)), Policy(), NOW)
    assert d.verdict is Verdict.APPROVE
    assert "alice" in rule(d, "approval").detail


def test_emergency_bypasses_approval() -> None:
    d = decide(request(TriggerKind.EMERGENCY), state(deployed_at=NOW - timedelta(days=1)), Policy(), NOW)
    assert d.verdict is Verdict.APPROVE
    r = rule(d, "approval")
    assert r.bypassed and not r.passed


# -- cooldown ----------------------------------------------------------------------------


def test_cooldown_defers_until_six_hours_after_the_last_start() -> None:
    # Given the last retraining started 2 h ago
    last = NOW - timedelta(hours=2)
    d = decide(request(), state(recent_run_starts=(NOW - timedelta(days=3), last)), Policy(), NOW)
    # Then it is deferred to exactly last + 6 h
    assert d.verdict is Verdict.DEFER
    assert d.defer_until == last + timedelta(hours=6)
    assert rule(d, "cooldown").retry_at == d.defer_until


def test_cooldown_passes_at_exactly_six_hours() -> None:
    d = decide(request(), state(recent_run_starts=(NOW - timedelta(hours=6),)), Policy(), NOW)
    assert d.verdict is Verdict.APPROVE


def test_emergency_bypasses_cooldown() -> None:
    d = decide(request(TriggerKind.EMERGENCY), state(recent_run_starts=(NOW - timedelta(minutes=5),)), Policy(), NOW)
    assert d.verdict is Verdict.APPROVE
    assert rule(d, "cooldown").bypassed and not rule(d, "cooldown").passed


# -- daily run limit ---------------------------------------------------------------------


def test_rolling_daily_limit_defers_until_the_oldest_start_leaves_the_24h_window() -> None:
    # Given two starts in the last 24 h (23 h and 7 h ago), the cooldown already over
    s = state(recent_run_starts=(NOW - timedelta(hours=23), NOW - timedelta(hours=7), NOW - timedelta(days=2)))
    d = decide(request(), s, Policy(), NOW)
    # Then it defers until the 23-h-old start is 24 h old: in 1 h
    assert d.verdict is Verdict.DEFER
    assert d.defer_until == NOW + timedelta(hours=1)
    assert rule(d, "daily_runs").value == 2 and rule(d, "daily_runs").limit == 2
    assert rule(d, "cooldown").passed


def test_rolling_limit_over_the_cap_waits_until_enough_starts_have_aged_out() -> None:
    # Given three starts in the last 24 h (emergencies may exceed the limit): 23 h, 20 h and 7 h ago
    s = state(recent_run_starts=(NOW - timedelta(hours=23), NOW - timedelta(hours=20), NOW - timedelta(hours=7)))
    d = decide(request(), s, Policy(), NOW)
    # Then one more slot opens only when the 20-h-old start leaves the window: in 4 h
    assert rule(d, "daily_runs").value == 3
    assert d.defer_until == NOW + timedelta(hours=4)


def test_utc_day_limit_defers_to_next_utc_midnight() -> None:
    s = state(recent_run_starts=(NOW - timedelta(hours=11), NOW - timedelta(hours=7)))
    d = decide(request(), s, Policy(daily_window="utc_day"), NOW)
    assert d.verdict is Verdict.DEFER
    assert d.defer_until == datetime(2026, 6, 11, tzinfo=UTC)


def test_utc_day_limit_ignores_yesterdays_runs() -> None:
    s = state(recent_run_starts=(NOW - timedelta(hours=13), NOW - timedelta(hours=7)))  # 23:00 yesterday
    assert decide(request(), s, Policy(daily_window="utc_day"), NOW).verdict is Verdict.APPROVE


def test_emergency_bypasses_the_daily_limit() -> None:
    s = state(recent_run_starts=(NOW - timedelta(hours=20), NOW - timedelta(hours=10)))
    d = decide(request(TriggerKind.EMERGENCY), s, Policy(), NOW)
    assert d.verdict is Verdict.APPROVE
    assert rule(d, "daily_runs").bypassed


def test_global_daily_cap_defers_to_midnight_and_is_off_by_default() -> None:
    s = state(runs_today_global=5)
    assert decide(request(), s, Policy(), NOW).verdict is Verdict.APPROVE
    d = decide(request(), s, Policy(max_runs_global_per_day=5), NOW)
    assert d.verdict is Verdict.DEFER
    assert d.defer_until == datetime(2026, 6, 11, tzinfo=UTC)


# -- off-peak window ---------------------------------------------------------------------


def test_scheduled_request_outside_the_window_defers_to_the_next_opening() -> None:
    d = decide(request(TriggerKind.SCHEDULE), state(), Policy(), NOW)
    assert d.verdict is Verdict.DEFER
    assert d.defer_until == datetime(2026, 6, 11, 1, 0, tzinfo=UTC)
    assert rule(d, "offpeak").value == "12:00"


def test_scheduled_request_inside_the_window_approves() -> None:
    at = datetime(2026, 6, 10, 2, 0, tzinfo=UTC)
    assert decide(request(TriggerKind.SCHEDULE), state(), Policy(), at).verdict is Verdict.APPROVE


def test_unscheduled_requests_ignore_the_window() -> None:
    d = decide(request(TriggerKind.DRIFT), state(), Policy(), NOW)
    assert d.verdict is Verdict.APPROVE
    assert rule(d, "offpeak").passed and not rule(d, "offpeak").bypassed


def test_emergency_outside_the_window_is_recorded_as_bypassed() -> None:
    d = decide(request(TriggerKind.EMERGENCY), state(), Policy(), NOW)
    assert d.verdict is Verdict.APPROVE
    r = rule(d, "offpeak")
    assert r.bypassed and not r.passed


@pytest.mark.parametrize(
    ("at", "verdict", "opens"),
    [
        (datetime(2026, 6, 10, 23, 30, tzinfo=UTC), Verdict.APPROVE, None),
        (datetime(2026, 6, 11, 1, 30, tzinfo=UTC), Verdict.APPROVE, None),
        (datetime(2026, 6, 11, 2, 0, tzinfo=UTC), Verdict.DEFER, datetime(2026, 6, 11, 22, 0, tzinfo=UTC)),
        (datetime(2026, 6, 10, 21, 59, tzinfo=UTC), Verdict.DEFER, datetime(2026, 6, 10, 22, 0, tzinfo=UTC)),
    ],
)
def test_window_that_wraps_midnight(at: datetime, verdict: Verdict, opens: datetime | None) -> None:
    # Given a 22:00-02:00 window
    p = Policy(offpeak_start="22:00", offpeak_end="02:00")
    d = decide(request(TriggerKind.SCHEDULE), state(), p, at)
    assert d.verdict is verdict
    assert d.defer_until == opens


def test_window_in_another_zone_opens_at_local_one_oclock() -> None:
    # Given a New York window at noon UTC in summer (EDT, UTC-4): 08:00 local
    p = Policy(timezone="America/New_York")
    d = decide(request(TriggerKind.SCHEDULE), state(), p, NOW)
    # Then it opens at 01:00 EDT tomorrow = 05:00 UTC
    assert d.defer_until == datetime(2026, 6, 11, 5, 0, tzinfo=UTC)
    assert rule(d, "offpeak").value == "08:00"


def test_window_across_london_spring_forward_opens_at_the_transition() -> None:
    # Given Europe/London: on 2026-03-29 clocks jump from 01:00 GMT to 02:00 BST, so 01:00 never happens
    p = Policy(timezone="Europe/London")
    d = decide(request(TriggerKind.SCHEDULE), state(), p, datetime(2026, 3, 28, 12, tzinfo=UTC))
    # Then the window opens at the jump (01:00 UTC = 02:00 BST) ...
    assert d.defer_until == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    # ... and closes at 05:00 BST = 04:00 UTC that night
    assert p.in_offpeak(datetime(2026, 3, 29, 3, 59, tzinfo=UTC))
    assert not p.in_offpeak(datetime(2026, 3, 29, 4, 0, tzinfo=UTC))


def test_window_across_london_fall_back_opens_at_the_first_one_oclock() -> None:
    # Given 2026-10-25 in London: 01:00-02:00 happens twice (BST, then GMT)
    p = Policy(timezone="Europe/London")
    d = decide(request(TriggerKind.SCHEDULE), state(), p, datetime(2026, 10, 24, 12, tzinfo=UTC))
    # Then the window opens at the first 01:00 (BST = 00:00 UTC), and ends at 05:00 GMT = 05:00 UTC
    assert d.defer_until == datetime(2026, 10, 25, 0, 0, tzinfo=UTC)
    assert p.in_offpeak(datetime(2026, 10, 25, 4, 59, tzinfo=UTC))
    assert not p.in_offpeak(datetime(2026, 10, 25, 5, 0, tzinfo=UTC))


def test_window_starting_inside_a_new_york_dst_gap_opens_when_the_clock_jumps() -> None:
    # Given a 02:30-05:00 New York window: on 2026-03-08 02:00 EST jumps to 03:00 EDT (07:00 UTC)
    p = Policy(timezone="America/New_York", offpeak_start="02:30", offpeak_end="05:00")
    d = decide(request(TriggerKind.SCHEDULE), state(), p, datetime(2026, 3, 7, 12, tzinfo=UTC))
    # Then it opens at 03:00 EDT, the first instant the local clock reads >= 02:30
    assert d.defer_until == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert not p.in_offpeak(datetime(2026, 3, 8, 6, 59, 59, tzinfo=UTC))


def test_a_scheduled_deferral_for_another_reason_still_lands_inside_the_window() -> None:
    # Given a scheduled request at 04:00 UTC (inside) whose cooldown ends at 06:00 (outside)
    at = datetime(2026, 6, 10, 4, 0, tzinfo=UTC)
    s = state(recent_run_starts=(at - timedelta(hours=4),))
    d = decide(request(TriggerKind.SCHEDULE), s, Policy(), at)
    # Then it is deferred to the next opening after the cooldown, not to 06:00
    assert d.verdict is Verdict.DEFER
    assert rule(d, "cooldown").retry_at == datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
    assert d.defer_until == datetime(2026, 6, 11, 1, 0, tzinfo=UTC)


# -- resources ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reading",
    [
        ResourceReading(free_memory_mb=500.0, cpu_load_pct=20.0, free_disk_mb=100_000.0),
        ResourceReading(free_memory_mb=8000.0, cpu_load_pct=250.0, free_disk_mb=100_000.0),
        ResourceReading(free_memory_mb=8000.0, cpu_load_pct=20.0, free_disk_mb=1000.0),
    ],
)
def test_short_resources_defer_by_the_retry_interval(reading: ResourceReading) -> None:
    d = decide(request(), state(resources=reading), Policy(), NOW)
    assert d.verdict is Verdict.DEFER
    assert d.defer_until == NOW + timedelta(minutes=5)
    assert rule(d, "resources").value["free_memory_mb"] == reading.free_memory_mb
    assert rule(d, "resources").limit["max_cpu_load_pct"] == 200.0


def test_unknown_resources_pass_with_no_reading() -> None:
    d = decide(request(), state(resources=None), Policy(), NOW)
    assert d.verdict is Verdict.APPROVE
    assert rule(d, "resources").detail == "no reading"


# -- budgets -----------------------------------------------------------------------------


def test_daily_budget_exhausted_defers_to_next_utc_midnight() -> None:
    d = decide(request(), state(spend_today_usd=9.0), Policy(), NOW)
    assert d.verdict is Verdict.DEFER
    assert d.defer_until == datetime(2026, 6, 11, tzinfo=UTC)
    assert rule(d, "budget_daily").value == 11.0


def test_monthly_budget_exhausted_defers_to_the_first_of_next_month_even_in_december() -> None:
    at = datetime(2026, 12, 20, 12, tzinfo=UTC)
    d = decide(request(), state(spend_month_usd=99.0), Policy(), at)
    assert d.verdict is Verdict.DEFER
    assert d.defer_until == datetime(2027, 1, 1, tzinfo=UTC)


def test_an_estimate_larger_than_a_cap_by_itself_is_rejected() -> None:
    d = decide(request(), state(estimated_cost_usd=12.0), Policy(), NOW)
    assert d.verdict is Verdict.REJECT
    assert d.detail["reject_rules"] == ["budget_daily"]


def test_spend_exactly_at_the_cap_fits_and_a_cent_over_does_not() -> None:
    assert decide(request(), state(spend_today_usd=8.0), Policy(), NOW).verdict is Verdict.APPROVE
    assert decide(request(), state(spend_today_usd=8.01), Policy(), NOW).verdict is Verdict.DEFER


def test_per_model_caps_are_checked_when_set() -> None:
    s = state(model_spend_today_usd=2.5, model_spend_month_usd=10.0)
    assert decide(request(), s, Policy(), NOW).verdict is Verdict.APPROVE
    d = decide(request(), s, Policy(model_daily_budget_usd=4.0, model_monthly_budget_usd=11.0), NOW)
    assert d.verdict is Verdict.DEFER
    assert set(d.detail["defer_rules"]) == {"model_budget_daily", "model_budget_monthly"}
    assert d.defer_until == datetime(2026, 7, 1, tzinfo=UTC)  # the latest of the two resets


def test_emergency_bypasses_the_daily_budget_but_not_the_monthly_cap() -> None:
    s = state(spend_today_usd=9.5)
    d = decide(request(TriggerKind.EMERGENCY), s, Policy(), NOW)
    assert d.verdict is Verdict.APPROVE
    assert rule(d, "budget_daily").bypassed
    # Given the month exhausted too
    d = decide(request(TriggerKind.EMERGENCY), replace(s, spend_month_usd=99.0), Policy(), NOW)
    assert d.verdict is Verdict.DEFER
    assert d.defer_until == datetime(2026, 7, 1, tzinfo=UTC)
    assert not rule(d, "budget_monthly").bypassed


def test_emergency_bypasses_the_monthly_cap_only_when_configured() -> None:
    s = state(spend_month_usd=99.0)
    d = decide(request(TriggerKind.EMERGENCY), s, Policy(emergency_bypasses_monthly_cap=True), NOW)
    assert d.verdict is Verdict.APPROVE
    assert rule(d, "budget_monthly").bypassed


def test_override_budget_with_a_reason_skips_budgets_and_roi() -> None:
    req = request(override_budget=True, requested_by="bob", evidence={"override_reason": "desk needs it"})
    s = state(spend_today_usd=20.0, spend_month_usd=150.0, predictions_per_day=1.0)
    d = decide(req, s, Policy(), NOW)
    assert d.verdict is Verdict.APPROVE
    for name in ("budget_daily", "budget_monthly", "model_budget_daily", "model_budget_monthly", "roi"):
        assert rule(d, name).bypassed, name
    assert not rule(d, "budget_daily").passed  # evaluated all the same
    assert "bob" in d.detail["override"] and "desk needs it" in d.detail["override"]


def test_override_budget_without_a_reason_is_ignored_and_rejected() -> None:
    req = request(override_budget=True)
    d = decide(req, state(spend_today_usd=9.0), Policy(), NOW)
    assert d.verdict is Verdict.REJECT
    assert d.detail["reject_rules"] == ["budget_override"]
    assert not rule(d, "budget_daily").bypassed and not rule(d, "budget_daily").passed


# -- ROI and the value model -------------------------------------------------------------


def test_low_roi_rejects_with_the_value_model_in_the_audit() -> None:
    # Given a quiet model: 1e4 predictions/day, 3 points recovered, $1e-5 per point per prediction
    d = decide(request(), state(predictions_per_day=1e4), Policy(), NOW)
    # Then benefit = 1e-5 x 3 x 1e4 x 7 days = $2.10 for $2.00: ROI 1.05 < 1.5
    assert d.verdict is Verdict.REJECT
    r = rule(d, "roi")
    assert r.value == pytest.approx(1.05) and r.limit == 1.5
    vm = d.detail["value_model"]
    assert vm["gap_points"] == pytest.approx(6.0)
    assert vm["recovery_points"] == pytest.approx(3.0)
    assert vm["benefit_usd"] == pytest.approx(2.10)
    assert vm["gap_source"] == "evidence.baseline_accuracy-current_accuracy"
    assert vm["basis"] == "per_correct" and vm["value_per_correct_usd"] == pytest.approx(1e-3)
    assert "1e+04/d x 7 d" in r.detail


@pytest.mark.parametrize(
    ("evidence", "gap"),
    [
        ({"expected_recovery_points": 4.0}, 4.0),
        ({"baseline_accuracy": 60.0, "current_accuracy": 57.0}, 3.0),  # percentages, not scaled again
        ({"baseline_accuracy": 0.60, "current_accuracy": 0.20}, 10.0),  # capped at max_gap_points
        ({"baseline_accuracy": 0.50, "current_accuracy": 0.60}, 0.0),  # an improvement recovers nothing
        ({}, 2.0),  # default for drift and schedules
        # under the accuracy floor, the floor is the target when it is above the baseline
        ({"baseline_accuracy": 0.50, "current_accuracy": 0.52, "accuracy_floor": 0.55}, 3.0),
        ({"baseline_accuracy": 0.60, "current_accuracy": 0.52, "accuracy_floor": 0.55}, 8.0),
        ({"current_accuracy": 0.50, "accuracy_floor": 0.55}, 5.0),
        ({"baseline_accuracy": 50.0, "current_accuracy": 52.0, "accuracy_floor": 0.55}, 3.0),  # floor as fraction
        ({"baseline_accuracy": 0.58, "current_accuracy": 0.59, "accuracy_floor": 0.55}, 0.0),  # healthy
    ],
)
def test_value_model_gap_sources(evidence: dict[str, float], gap: float) -> None:
    vm = value_model(request(evidence=evidence), state(), Policy())
    assert vm["gap_points"] == pytest.approx(gap)


def test_a_free_run_has_no_roi_and_passes() -> None:
    d = decide(request(), state(estimated_cost_usd=0.0), Policy(), NOW)
    assert d.verdict is Verdict.APPROVE
    assert rule(d, "roi").value is None


# -- precedence ----------------------------------------------------------------------------


def test_reject_beats_defer_beats_pending_approval() -> None:
    young = NOW - timedelta(days=1)
    cooling = (NOW - timedelta(hours=1),)
    # defer beats pending approval
    d = decide(request(), state(deployed_at=young, recent_run_starts=cooling), Policy(), NOW)
    assert d.verdict is Verdict.DEFER
    # reject beats defer and pending approval
    d = decide(request(), state(deployed_at=young, recent_run_starts=cooling, predictions_per_day=1.0), Policy(), NOW)
    assert d.verdict is Verdict.REJECT
    assert d.defer_until is None


def test_defer_until_is_the_latest_retry_time() -> None:
    s = state(recent_run_starts=(NOW - timedelta(hours=1),), spend_today_usd=9.0)
    d = decide(request(), s, Policy(), NOW)
    assert rule(d, "cooldown").retry_at == NOW + timedelta(hours=5)
    assert d.defer_until == datetime(2026, 6, 11, tzinfo=UTC)


# -- configuration -------------------------------------------------------------------------


def test_policy_accepts_hh_mm_strings_and_reports_bad_fields_by_name() -> None:
    assert Policy(offpeak_start="22:30").offpeak_start == time(22, 30)
    with pytest.raises(ConfigError, match="policy.timezone"):
        Policy(timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match="policy.cooldown_hours"):
        Policy(cooldown_hours=-1)
    with pytest.raises(ConfigError, match="policy.offpeak_end"):
        Policy(offpeak_start="01:00", offpeak_end="01:00")
    with pytest.raises(ConfigError, match="colldown_hours"):
        Policy.from_mapping({"colldown_hours": 3})
    assert Policy.from_mapping({"daily_budget_usd": 5}, cooldown_hours=2).cooldown_hours == 2


def test_no_window_means_scheduled_requests_run_any_time() -> None:
    p = Policy(offpeak_start=None, offpeak_end=None)
    assert decide(request(TriggerKind.SCHEDULE), state(), p, NOW).verdict is Verdict.APPROVE


def test_a_non_utc_now_is_taken_as_the_same_instant() -> None:
    from zoneinfo import ZoneInfo

    local = NOW.astimezone(ZoneInfo("Asia/Tokyo"))
    assert decide(request(), state(), Policy(), local) == decide(request(), state(), Policy(), NOW)


# -- properties ----------------------------------------------------------------------------

# Ranges straddle the default caps ($10/day, $100/month) so that approvals near them are common.
_day_money = st.floats(min_value=0.0, max_value=12.0)
_month_money = st.floats(min_value=0.0, max_value=110.0)
_triggers = st.sampled_from(list(TriggerKind))
_times = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[RetrainRequest, StateSnapshot, Policy, datetime]:
    now = draw(_times)
    trig = draw(_triggers)
    override = draw(st.sampled_from([False, False, False, True]))
    evidence: dict[str, Any] = {}
    if draw(st.booleans()):
        evidence = {"baseline_accuracy": draw(st.floats(0.5, 0.7)), "current_accuracy": draw(st.floats(0.3, 0.6)),
                    "accuracy_floor": 0.55, "n": draw(st.sampled_from([None, 50, 5000]))}
    if override and draw(st.booleans()):
        evidence["override_reason"] = "ops"
    req = RetrainRequest("r", "m", trig, now, "prop", evidence=evidence, override_budget=override)
    starts = tuple(now - timedelta(minutes=m) for m in draw(st.lists(st.integers(0, 31 * 24 * 60), max_size=6)))
    s = StateSnapshot(
        model="m",
        deployed_at=draw(st.none() | st.just(now - timedelta(days=draw(st.floats(0, 90))))),
        recent_run_starts=starts,
        runs_today_global=draw(st.integers(0, 10)),
        active_run_id=draw(st.sampled_from([None, None, None, None, "run-1"])),
        spend_today_usd=draw(_day_money),
        spend_month_usd=draw(_month_money),
        model_spend_today_usd=draw(_day_money),
        model_spend_month_usd=draw(_month_money),
        estimated_cost_usd=draw(st.floats(0.0, 12.0)),
        predictions_per_day=draw(st.sampled_from([0.0, 1.0, 288.0, 1e4, 1e8, 1e8, 1e8])),
        return_rms=draw(st.none() | st.floats(1e-5, 0.05)),
        below_floor_since=draw(st.none() | st.just(now - timedelta(hours=draw(st.floats(0, 200))))),
        paused=draw(st.sampled_from([False] * 9 + [True])),
        resources=draw(st.none() | st.builds(ResourceReading, st.floats(0, 10_000), st.floats(0, 100),
                                             st.floats(0, 100_000))),
    )
    p = Policy(
        timezone=draw(st.sampled_from(["UTC", "Europe/London", "America/New_York"])),
        offpeak_start=draw(st.sampled_from(["01:00", "22:00", "02:30"])),
        max_runs_global_per_day=draw(st.none() | st.integers(1, 5)),
        model_daily_budget_usd=draw(st.none() | st.floats(2.0, 20.0)),
        model_monthly_budget_usd=draw(st.none() | st.floats(20.0, 100.0)),
        daily_window=draw(st.sampled_from(["rolling", "utc_day"])),
    )
    return req, s, p, now


def _honoured_override(req: RetrainRequest) -> bool:
    return req.override_budget and bool(req.evidence.get("override_reason"))


@settings(max_examples=200, deadline=None)
@given(_cases())
def test_property_never_approves_beyond_a_cap_without_an_override(case: tuple) -> None:
    req, s, p, now = case
    d = decide(req, s, p, now)
    if d.verdict is not Verdict.APPROVE or _honoured_override(req):
        return
    cost = s.estimated_cost_usd
    assert s.spend_month_usd + cost <= p.monthly_budget_usd
    if p.model_monthly_budget_usd is not None:
        assert s.model_spend_month_usd + cost <= p.model_monthly_budget_usd
    if req.trigger is not TriggerKind.EMERGENCY:  # emergencies may overspend the day, by design
        assert s.spend_today_usd + cost <= p.daily_budget_usd
        if p.model_daily_budget_usd is not None:
            assert s.model_spend_today_usd + cost <= p.model_daily_budget_usd


@settings(max_examples=200, deadline=None)
@given(_cases())
def test_property_an_emergency_is_never_held_for_approval(case: tuple) -> None:
    req, s, p, now = case
    req = replace(req, trigger=TriggerKind.EMERGENCY)
    d = decide(req, s, p, now)
    assert d.verdict is not Verdict.PENDING_APPROVAL
    assert rule(d, "approval").passed or rule(d, "approval").bypassed


@settings(max_examples=200, deadline=None)
@given(_cases())
def test_property_same_inputs_same_decision_and_a_well_formed_audit(case: tuple) -> None:
    req, s, p, now = case
    d = decide(req, s, p, now)
    # Determinism, with a fresh but equal policy too (its memo must not change answers)
    assert d == decide(req, s, p, now) == decide(req, s, replace(p), now)
    assert names(d) == RULES
    if d.verdict is Verdict.DEFER:
        assert d.defer_until is not None and d.defer_until > now
        if req.trigger is TriggerKind.SCHEDULE:
            assert p.in_offpeak(d.defer_until)
    else:
        assert d.defer_until is None
    if d.verdict is Verdict.APPROVE:
        assert not d.failed_rules


@settings(max_examples=200, deadline=None)
@given(
    trig=_triggers,
    today=_day_money,
    month=_month_money,
    model_today=_day_money,
    cost=st.floats(0.0, 12.0),
    override=st.booleans(),
)
def test_property_budgets_hold_at_their_edges(
    trig: TriggerKind, today: float, month: float, model_today: float, cost: float, override: bool
) -> None:
    # Given an otherwise healthy state inside the window, with money near every cap
    at = datetime(2026, 6, 10, 2, 0, tzinfo=UTC)
    evidence = {**EVIDENCE, "override_reason": "ops"} if override else dict(EVIDENCE)
    req = RetrainRequest("r", "m", trig, at, "prop", evidence=evidence, override_budget=override)
    s = state(spend_today_usd=today, spend_month_usd=month, model_spend_today_usd=model_today,
              estimated_cost_usd=cost)
    p = Policy(model_daily_budget_usd=5.0)
    # When deciding
    d = decide(req, s, p, at)
    # Then an approval without an override always fits the caps (emergencies: the monthly one)
    fits_month = month + cost <= 100.0
    fits_day = today + cost <= 10.0 and model_today + cost <= 5.0
    if override:
        assert d.verdict is Verdict.APPROVE
    elif trig is TriggerKind.EMERGENCY:
        assert (d.verdict is Verdict.APPROVE) == fits_month
    else:
        assert (d.verdict is Verdict.APPROVE) == (fits_month and fits_day)


@settings(max_examples=200, deadline=None)
@given(_cases())
def test_property_no_approval_breaks_a_pause_a_cooldown_a_daily_limit_or_the_window(case: tuple) -> None:
    # Given any state, When a non-emergency request is approved
    req, s, p, now = case
    d = decide(req, s, p, now)
    if d.verdict is not Verdict.APPROVE:
        return
    # Then nothing is paused, no run is in flight, the cooldown has passed, the daily limit has room,
    assert not (s.paused or s.globally_paused) and s.active_run_id is None
    if req.trigger is TriggerKind.EMERGENCY:
        return
    assert all(now - t >= timedelta(hours=p.cooldown_hours) for t in s.recent_run_starts)
    if p.daily_window == "rolling":
        in_window = [t for t in s.recent_run_starts if t > now - timedelta(days=1)]
    else:
        in_window = [t for t in s.recent_run_starts if t.date() == now.date()]
    assert len(in_window) < p.max_runs_per_model_per_day
    if p.max_runs_global_per_day is not None:
        assert s.runs_today_global < p.max_runs_global_per_day
    # and a scheduled run starts inside the off-peak window
    if req.trigger is TriggerKind.SCHEDULE:
        assert p.in_offpeak(now)


@settings(max_examples=200, deadline=None)
@given(_cases())
def test_property_an_emergency_is_only_held_back_by_a_pause_money_resources_or_a_run_in_flight(case: tuple) -> None:
    req, s, p, now = case
    d = decide(replace(req, trigger=TriggerKind.EMERGENCY), s, p, now)
    for name in ("approval", "cooldown", "daily_runs", "global_daily_runs", "offpeak"):
        r = rule(d, name)
        assert r.passed or r.bypassed, name
    held = set(d.detail.get("defer_rules", ())) | set(d.detail.get("reject_rules", ()))
    assert held <= {"paused", "resources", "budget_override", "budget_monthly", "model_budget_monthly", "roi",
                    "budget_daily", "model_budget_daily"}
    if p.emergency_bypasses_daily_budget:
        assert not held & {"budget_daily", "model_budget_daily"}


@settings(max_examples=100, deadline=None)
@given(_cases(), st.floats(0.0, 50.0))
def test_property_spending_more_never_turns_a_refusal_into_an_approval(case: tuple, extra: float) -> None:
    # Given any decision that did not approve
    req, s, p, now = case
    d = decide(req, s, p, now)
    if d.verdict is Verdict.APPROVE:
        return
    # When more money had been spent (today, this month, by the model)
    richer = replace(s, spend_today_usd=s.spend_today_usd + extra, spend_month_usd=s.spend_month_usd + extra,
                     model_spend_today_usd=s.model_spend_today_usd + extra,
                     model_spend_month_usd=s.model_spend_month_usd + extra)
    # Then it still does not approve
    assert decide(req, richer, p, now).verdict is not Verdict.APPROVE


@settings(max_examples=200, deadline=None)
@given(_cases())
def test_property_a_run_in_flight_always_coalesces_and_only_then(case: tuple) -> None:
    req, s, p, now = case
    d = decide(req, s, p, now)
    assert (d.verdict is Verdict.COALESCED) == (s.active_run_id is not None)
    if d.verdict is Verdict.COALESCED:
        assert d.detail["coalesced_with"] == s.active_run_id


@settings(max_examples=200, deadline=None)
@given(_cases())
def test_property_a_critical_emergency_is_never_rejected_on_roi(case: tuple) -> None:
    # Given any state, When the request is a CRITICAL emergency
    req, s, p, now = case
    d = decide(replace(req, trigger=TriggerKind.EMERGENCY, severity=Severity.CRITICAL), s, p, now)
    # Then ROI never stands in its way: it passed, or it yielded
    assert "roi" not in d.detail.get("reject_rules", ())
    r = rule(d, "roi")
    assert r.passed or r.bypassed
