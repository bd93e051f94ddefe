"""The sweep's pacing rules, as pure functions: a trigger waits for new data after a candidate was
turned down (retry_wait), and a version trained in answer to a change is retrained once its
training window has turned over since the change (turnover_due)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from retrain.steps.sweep import TURNOVER_KEY, retry_wait, turnover_due

T = datetime(2014, 3, 3, tzinfo=timezone.utc)


def test_a_trigger_waits_until_new_outcomes_fill_the_rejected_candidates_holdout():
    why = retry_wait("1.3.0", {"holdout_rows": 37}, 146, 0.2, new_rows=0, since=T)
    assert why is not None and "1.3.0" in why and "37" in why
    assert retry_wait("1.3.0", {"holdout_rows": 37}, 146, 0.2, new_rows=36, since=T) is not None
    assert retry_wait("1.3.0", {"holdout_rows": 37}, 146, 0.2, new_rows=37, since=T) is None


def test_without_a_recorded_holdout_it_is_sized_from_the_training_rows():
    # 800 training rows at a 20 % holdout held 200
    assert retry_wait("2.0.0", {}, 800, 0.2, new_rows=199, since=T) is not None
    assert retry_wait("2.0.0", {}, 800, 0.2, new_rows=200, since=T) is None
    # nothing to size it by: no wait
    assert retry_wait("2.0.0", {}, None, 0.2, new_rows=0, since=T) is None
    assert retry_wait("2.0.0", {"holdout_rows": True}, 0, 0.2, new_rows=0, since=T) is None


def test_a_version_answering_a_change_is_due_once_its_window_turned_over():
    lookback = timedelta(days=180)
    for trigger in ("performance", "emergency", "drift"):
        due = turnover_due(trigger=trigger, evidence={}, asked_at=T, data_start=T - timedelta(days=150),
                           lookback=lookback)
        assert due == T + lookback


def test_no_turnover_for_schedules_follow_ups_or_windows_after_the_change():
    lookback = timedelta(days=180)
    start = T - timedelta(days=150)
    assert turnover_due(trigger="schedule", evidence={}, asked_at=T, data_start=start, lookback=lookback) is None
    assert turnover_due(trigger="manual", evidence={}, asked_at=T, data_start=start, lookback=lookback) is None
    # a follow-up is not followed up in turn
    assert turnover_due(trigger="performance", evidence={TURNOVER_KEY: "1.4.0"}, asked_at=T, data_start=start,
                        lookback=lookback) is None
    # its window already began after the detection: it learnt from the new concept only
    assert turnover_due(trigger="performance", evidence={}, asked_at=T, data_start=T + timedelta(days=1),
                        lookback=lookback) is None


def test_a_rejected_request_is_not_asked_again_on_the_same_evidence():
    from retrain.steps.sweep import same_evidence

    stored = {"n": 84, "value": 0.933, "rules": ["relative_drop"], "relative": {"statistic": 6.42}}
    # what the next hourly sweep of a daily model finds: the same outcomes (tuples stored as lists)
    assert same_evidence({"n": 84, "value": 0.933, "rules": ("relative_drop",), "relative": {"statistic": 6.42}},
                         stored)
    # a new outcome changes the figures: the decision is asked again
    assert not same_evidence({"n": 85, "value": 0.929, "rules": ["relative_drop"], "relative": {"statistic": 6.9}},
                             stored)
