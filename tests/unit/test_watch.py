"""The rules that send production back to ``previous`` (retrain.core.watch) and the emergency episode."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from retrain.core.domain import Severity
from retrain.core.emergency import EmergencyEpisode
from retrain.core.rollout import worse_p
from retrain.core.watch import judge_previous, judge_watch, level_worse_p
from retrain.core.windows import Counts

T = datetime(2026, 1, 5, tzinfo=timezone.utc)


def acc(n: int, accuracy: float) -> Counts:
    """``n`` outcomes, half of each label, at ``accuracy``."""
    hits = round(n * accuracy)
    tp = hits // 2
    fn = n // 2 - tp
    tn = hits - tp
    fp = n - hits - fn
    return Counts(n=n, tp=tp, fp=fp, tn=tn, fn=fn)


def rets(n: int, mean: float, sd: float) -> Counts:
    return Counts(n=n, tp=n // 2, tn=n - n // 2, ret_sum=mean * n, ret_sq_sum=(sd * sd * (n - 1) + mean * mean * n))


# ----------------------------------------------------------------------------- level test
def test_level_worse_p_is_small_far_below_the_level_and_large_at_or_above_it():
    assert level_worse_p(acc(2000, 0.50), 0.60) < 1e-10
    assert level_worse_p(acc(2000, 0.60), 0.60) > 0.4
    assert level_worse_p(acc(2000, 0.62), 0.60) > 0.9
    assert level_worse_p(acc(20, 0.50), 0.60) > 0.05  # the same gap on 20 outcomes proves nothing


def test_precision_and_recall_are_tested_on_their_own_denominators():
    # 100 predicted positives, 40 right: precision 0.40
    c = Counts(n=1000, tp=40, fp=60, tn=850, fn=50)
    assert level_worse_p(c, 0.60, "precision") < 0.001
    assert level_worse_p(c, 0.40, "recall") > 0.5  # recall 40/90 = 0.44
    assert level_worse_p(Counts(n=10, tn=10), 0.5, "precision") == 1.0  # nothing predicted positive


def test_f1_and_sharpe_use_normal_approximations():
    c = acc(4000, 0.50)
    assert level_worse_p(c, c.f1 + 0.05, "f1") < 0.001 < 0.4 < level_worse_p(c, c.f1, "f1")
    live = rets(5000, 0.0, 1.0)
    assert level_worse_p(live, 0.10, "sharpe") < 0.001
    assert level_worse_p(live, -0.10, "sharpe") > 0.99
    with pytest.raises(ValueError):
        level_worse_p(c, 0.5, "auc")


# ----------------------------------------------------------------------------- on an emergency
def test_previous_with_live_outcomes_that_scored_better_is_served_again():
    v = judge_previous(acc(3000, 0.45), acc(3000, 0.59), {"accuracy": 0.50}, min_samples=1000)
    assert v.rollback and v.figures["reference"] == "recent" and v.figures["reference_n"] == 3000
    assert v.figures["previous"] == 0.59 and v.figures["production"] == 0.45 and v.figures["p_worse"] < 0.05


def test_previous_that_did_not_score_better_stays_the_rollback_target():
    v = judge_previous(acc(3000, 0.55), acc(3000, 0.50), {"accuracy": 0.70}, min_samples=1000)
    assert not v.rollback and v.figures["reference"] == "recent"  # live figures win over its baseline
    assert "not better" in v.reason


def test_recent_outcomes_of_previous_win_over_its_service_before_it_was_replaced():
    v = judge_previous(acc(3000, 0.50), acc(1500, 0.51), {"accuracy": 0.70}, min_samples=1000,
                       previous_service=acc(9000, 0.60))
    assert not v.rollback and v.figures["reference"] == "recent" and v.figures["reference_n"] == 1500
    assert v.figures["recent_n"] == 1500 and v.figures["service_n"] == 9000


# previous served nothing in the window: its live level from its last service is the reference
def test_previous_that_served_no_better_live_before_it_was_replaced_is_not_served_again_despite_its_holdout():
    # 1.2.0 validated at 0.6275 but served at 0.49 during 1.5.0's rollout; 1.5.0 collapses to 0.50
    then = acc(9000, 0.49)
    v = judge_previous(acc(2400, 0.50), Counts(), {"accuracy": 0.6275}, min_samples=1000, previous_service=then,
                       service_span="during the rollout of 1.5.0")
    assert not v.rollback and v.figures["reference"] == "service" and v.figures["reference_n"] == 9000
    assert v.figures["previous"] == 0.49 and "not better" in v.reason
    assert "0.4900 on 9000 outcomes during the rollout of 1.5.0, 0 in the window" in v.reason
    # against the holdout alone it would have gone back
    assert judge_previous(acc(2400, 0.50), Counts(), {"accuracy": 0.6275}, min_samples=1000).rollback


def test_previous_that_served_better_live_before_it_was_replaced_is_served_again_by_a_two_sample_test():
    then, now_ = acc(9000, 0.62), acc(2400, 0.40)
    v = judge_previous(now_, acc(200, 0.30), {"accuracy": 0.55}, min_samples=1000, previous_service=then)
    assert v.rollback and v.figures["reference"] == "service" and v.figures["previous"] == 0.62
    assert v.figures["p_worse"] == round(worse_p(now_, then), 8) <= 0.05
    assert v.figures["recent_n"] == 200 and v.figures["service_n"] == 9000
    # better by a little on a few outcomes: not significantly
    v = judge_previous(acc(1000, 0.58), Counts(), {"accuracy": 0.70}, min_samples=1000,
                       previous_service=acc(1000, 0.60))
    assert not v.rollback and v.figures["reference"] == "service" and "not significantly" in v.reason


def test_sharpe_against_previous_returns_from_its_service_uses_welch():
    then, now_ = rets(4000, 0.10, 1.0), rets(4000, -0.05, 1.0)
    v = judge_previous(now_, Counts(), {"sharpe": -0.5}, metric="sharpe", min_samples=1000, previous_service=then)
    assert v.rollback and v.figures["reference"] == "service"
    assert v.figures["p_worse"] == round(worse_p(now_, then, "sharpe"), 8) < 0.001


def test_without_enough_live_outcomes_previous_is_judged_by_its_validated_level():
    v = judge_previous(acc(3000, 0.50), acc(30, 0.40), {"accuracy": 0.60}, min_samples=1000,
                       previous_service=acc(999, 0.40), holdout_n=961)
    assert v.rollback and v.figures["reference"] == "holdout" and v.figures["previous"] == 0.60
    assert v.figures["reference_n"] == 961 and v.figures["recent_n"] == 30 and v.figures["service_n"] == 999
    assert "validated (holdout) accuracy 0.6000" in v.reason
    v = judge_previous(acc(3000, 0.61), Counts(), {"accuracy": 0.60}, min_samples=1000)
    assert not v.rollback and v.figures["reference"] == "holdout"
    # precision without a predicted positive in its service: no live level there either
    v = judge_previous(Counts(n=2000, tp=300, fp=700, tn=500, fn=500), Counts(), {"precision": 0.60},
                       metric="precision", min_samples=1000, previous_service=Counts(n=2000, tn=1000, fn=1000))
    assert v.figures["reference"] == "holdout" and v.rollback


def test_a_better_previous_without_significance_or_data_does_not_move_production():
    # 0.58 vs 0.60 on 1,000 outcomes: better, not significantly
    v = judge_previous(acc(1000, 0.58), Counts(), {"accuracy": 0.60}, min_samples=1000)
    assert not v.rollback and "not significantly" in v.reason
    assert judge_previous(acc(500, 0.30), Counts(), {"accuracy": 0.60}, min_samples=1000).figures["reference"] is None
    v = judge_previous(acc(3000, 0.30), Counts(), None, min_samples=1000, previous_service=acc(10, 0.9))
    assert not v.rollback and v.figures["reference"] is None and "nothing to compare" in v.reason


# ----------------------------------------------------------------------------- after a promotion
def watch(live: Counts, hours: float = 5.0, level: float = 0.60, metric: str = "accuracy", **kw):
    args = {"watch_hours": 72.0, "degradation": 0.10, "confidence": 0.95, "min_samples": 1000, **kw}
    return judge_watch(live, {metric: level}, promoted_at=T, now=T + timedelta(hours=hours), metric=metric, **args)


def test_a_significant_degradation_of_ten_percent_or_more_rolls_back():
    v = watch(acc(5000, 0.52))  # -13 %
    assert v.action == "rollback" and v.figures["relative"] <= -0.10 and v.figures["p_worse"] <= 0.05
    assert v.figures["predecessor"] == 0.60 and v.figures["production_n"] == 5000
    assert v.figures["reference"] == "holdout" and v.figures["reference_n"] == 0


# the predecessor's live level before the promotion is the reference when it has min_samples outcomes
def test_a_version_serving_as_well_as_its_predecessor_did_live_is_kept_despite_a_higher_holdout():
    # 1.2.0 validated at 0.63 but served at 0.54; 1.5.0 serves at 0.54 too
    v = watch(acc(5000, 0.54), level=0.63, predecessor_live=acc(3000, 0.54), live_span="during its rollout")
    assert v.action == "watch" and v.figures["reference"] == "live" and v.figures["reference_n"] == 3000
    assert v.figures["predecessor"] == 0.54 and v.figures["relative"] == 0.0 and v.figures["p_worse"] > 0.4
    assert "live 0.5400 of the version it replaced on 3000 outcomes during its rollout" in v.reason
    # against the holdout alone it would have been rolled back
    assert watch(acc(5000, 0.54), level=0.63).action == "rollback"


def test_a_significant_drop_below_the_predecessors_live_level_rolls_back_by_a_two_sample_test():
    before = acc(3000, 0.60)
    v = watch(acc(5000, 0.52), level=0.55, predecessor_live=before)  # -13 % live; above the holdout 0.55
    assert v.action == "rollback" and v.figures["reference"] == "live" and v.figures["predecessor"] == 0.60
    assert v.figures["p_worse"] == round(worse_p(acc(5000, 0.52), before), 8) <= 0.05
    # the same drop on a few outcomes of each: hold, and the two-sample test is less sure than the one-sample one
    v = watch(acc(150, 0.50), predecessor_live=acc(150, 0.58), min_samples=100)
    assert v.action == "hold" and v.figures["reference"] == "live"
    assert v.figures["p_worse"] > watch(acc(150, 0.50), level=0.58, min_samples=100).figures["p_worse"]


def test_sharpe_against_the_predecessors_live_returns_uses_welch():
    before, now_ = rets(4000, 0.10, 1.0), rets(4000, 0.0, 1.0)
    v = watch(now_, level=0.05, metric="sharpe", predecessor_live=before)
    assert v.action == "rollback" and v.figures["reference"] == "live"
    assert v.figures["p_worse"] == round(worse_p(now_, before, "sharpe"), 8) < 0.001
    assert watch(rets(4000, 0.10, 1.0), level=0.5, metric="sharpe", predecessor_live=before).action == "watch"


def test_too_few_or_undefined_live_outcomes_of_the_predecessor_fall_back_to_its_holdout_level():
    v = watch(acc(5000, 0.52), predecessor_live=acc(999, 0.52))  # one short of min_samples
    assert v.action == "rollback" and v.figures["reference"] == "holdout" and v.figures["reference_n"] == 999
    assert "validated (holdout) 0.6000" in v.reason and "999 live outcomes" in v.reason
    # precision without a predicted positive before the promotion: no live level
    v = watch(Counts(n=2000, tp=400, fp=600, tn=500, fn=500), level=0.60, metric="precision",
              predecessor_live=Counts(n=2000, tn=1000, fn=1000))
    assert v.figures["reference"] == "holdout" and v.action == "rollback"
    v = judge_watch(acc(5000, 0.4), None, promoted_at=T, now=T + timedelta(hours=1), watch_hours=72, degradation=0.1,
                    confidence=0.95, min_samples=1000, predecessor_live=acc(10, 0.6))
    assert v.action == "watch" and v.figures["reference"] is None and "nothing to compare" in v.reason


def test_a_small_or_insignificant_degradation_does_not():
    assert watch(acc(20000, 0.57)).action == "watch"  # -5 %: significant, but under the limit
    v = watch(acc(50, 0.50), min_samples=50)  # -17 % on 50 outcomes: not significant
    assert v.action == "hold" and v.figures["p_worse"] > 0.05
    assert watch(acc(200, 0.40)).action == "watch"  # fewer than min_samples outcomes: not judged
    # exactly -10 % (up to rounding) counts as 10 %
    assert watch(Counts(n=1200, tp=300, tn=240, fp=330, fn=330), level=0.50).action == "rollback"


def test_the_watch_ends_after_its_period_and_can_be_switched_off():
    assert watch(acc(5000, 0.40), hours=72.5).action == "ended"
    assert watch(acc(5000, 0.40), watch_hours=0).action == "off"
    assert judge_watch(acc(5000, 0.4), None, promoted_at=T, now=T + timedelta(hours=1), watch_hours=72,
                       degradation=0.1, confidence=0.95).action == "watch"


# ----------------------------------------------------------------------------- the episode
def test_firings_no_more_than_the_gap_apart_are_one_episode():
    gap = timedelta(minutes=60)
    e = EmergencyEpisode.observe(None, T, Severity.HIGH, "1.2.0", gap)
    e = EmergencyEpisode.observe(e, T + timedelta(minutes=50), Severity.MEDIUM, "1.2.0", gap)
    e = EmergencyEpisode.observe(e, T + timedelta(minutes=100), Severity.CRITICAL, "1.1.0", gap)
    assert (e.started_at, e.last_fired_at, e.severity, e.production) == (T, T + timedelta(minutes=100), "CRITICAL",
                                                                         "1.2.0")
    e = EmergencyEpisode(e.started_at, e.last_fired_at, e.severity, e.production, "req-1", {"from": "a", "to": "b"},
                         ("run-1",))
    assert EmergencyEpisode.from_json(e.to_json()) == e
    later = EmergencyEpisode.observe(e, T + timedelta(minutes=161), Severity.LOW, "1.2.0", gap)
    assert later.started_at == T + timedelta(minutes=161) and later.request_id is None and later.rolled_back is None
