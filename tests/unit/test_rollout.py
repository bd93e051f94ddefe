"""The pure rollout rules: paired counts, McNemar, the canary's evidence test, the shadow and stage
judges, and the state machine."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from scipy import stats

from retrain.config import RolloutSettings, ValidationSettings
from retrain.core.domain import Severity, TriggerKind
from retrain.core.emergency import EmergencyConfig
from retrain.core.rollout import (
    PairedCounts,
    Phase,
    RolloutState,
    canary_emergency,
    judge_shadow,
    judge_stage,
    mcnemar_p,
    relative_change,
    worse_p,
)
from retrain.core.triggers import TriggerFiring
from retrain.core.windows import Counts
from tests.conftest import T0

V = ValidationSettings(shadow_min_hours=24, shadow_max_hours=48, shadow_min_rows=1000, min_improvement=0.02,
                       confidence=0.95)
R = RolloutSettings(stages=(10, 25, 50, 100), stage_min_minutes=60, stage_min_samples=500, stage_max_minutes=600,
                    rollback_degradation=0.10)


def _paired(n: int, p_cand: float, p_prod: float, seed: int = 0) -> PairedCounts:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    cand = np.where(rng.random(n) < p_cand, y, 1 - y)
    prod = np.where(rng.random(n) < p_prod, y, 1 - y)
    return PairedCounts.from_arrays(y, cand, prod, rng.normal(0, 0.001, n))


def _counts(n: int, acc: float) -> Counts:
    hits = int(round(n * acc))
    return Counts(n=n, tp=hits // 2, tn=hits - hits // 2, fp=(n - hits) // 2, fn=n - hits - (n - hits) // 2)


# ---------------------------------------------------------------- statistics
def test_paired_counts_count_each_models_hits_and_the_discordant_rows():
    # Given rows where the candidate is right on 5 and production on 2
    y = [1, 0, 1, 1, 0, 1]
    p = PairedCounts.from_arrays(y, [1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 0], [0.01, -0.02, 0.03, 0.0, 0.01, -0.01])
    # Then hits, discordant pairs and strategy returns (long on 1, short on 0) are per model
    assert (p.candidate.hits, p.production.hits, p.candidate_only, p.production_only) == (5, 2, 3, 0)
    assert p.candidate.ret_sum == pytest.approx(0.01 + 0.02 + 0.03 + 0.0 - 0.01 + 0.01)
    # And they add up and survive JSON
    assert (p + p).n == 12 and PairedCounts.from_json(p.to_json()) == p


def test_mcnemar_matches_the_exact_binomial_test_and_mid_p_is_less_conservative():
    for b, c in [(30, 10), (12, 9), (0, 5), (200, 150)]:
        exact = stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert mcnemar_p(b, c, mid_p=False) == pytest.approx(exact)
        assert mcnemar_p(b, c) < exact
    assert mcnemar_p(0, 0) == 1.0


def test_worse_p_is_one_sided_fisher_on_hits_and_welch_on_returns():
    # Given a canary at 0.50 on 2,000 outcomes and production at 0.60 on 20,000
    canary, prod = _counts(2000, 0.50), _counts(20000, 0.60)
    assert worse_p(canary, prod) < 1e-10
    assert worse_p(prod, canary) > 0.99
    assert worse_p(Counts(), prod) == 1.0
    # And for the Sharpe ratio the strategy returns' means are compared
    good = Counts(n=1000, ret_sum=1.0, ret_sq_sum=1000 * 0.01 ** 2 + 1.0 ** 2 / 1000)
    bad = Counts(n=1000, ret_sum=-1.0, ret_sq_sum=1000 * 0.01 ** 2 + 1.0 ** 2 / 1000)
    assert worse_p(bad, good, "sharpe") < 1e-3 < 0.999 < worse_p(good, bad, "sharpe")


def test_relative_change_is_nan_when_undefined():
    assert relative_change(0.55, 0.5) == pytest.approx(0.1)
    assert np.isnan(relative_change(0.5, 0.0)) and np.isnan(relative_change(float("nan"), 0.5))


# ---------------------------------------------------------------- shadow
def test_shadow_waits_for_its_minimum_duration_and_rows_and_says_what_is_missing():
    v = judge_shadow(_paired(400, 0.62, 0.52), timedelta(hours=3), V)
    assert v.action == "wait"
    assert any("21.0 h more" in n for n in v.needs) and any("600 more labelled rows" in n for n in v.needs)


def test_a_clearly_better_candidate_passes_with_the_figures():
    v = judge_shadow(_paired(3000, 0.62, 0.55), timedelta(hours=25), V)
    assert v.action == "pass", v.reason
    f = v.figures
    assert f["relative"] > 0.02 and f["p_better"] <= 0.05 and f["rows"] == 3000
    assert f["candidate_only"] > f["production_only"]


def test_a_worse_candidate_is_rejected_as_soon_as_the_minimums_are_met():
    v = judge_shadow(_paired(1500, 0.50, 0.60), timedelta(hours=24), V)
    assert v.action == "reject" and "worse than production" in v.reason


def test_a_candidate_that_cannot_reach_the_margin_is_rejected_and_a_maybe_goes_on_until_the_maximum():
    # Given a candidate that is the same as production on many rows: it cannot reach +2 %
    same = _paired(40_000, 0.58, 0.58, seed=3)
    v = judge_shadow(same, timedelta(hours=30), V)
    assert v.action == "reject" and "cannot reach" in v.reason
    # And one slightly better on few rows is not decided before the maximum, then inconclusive
    maybe = _paired(1200, 0.585, 0.575, seed=4)
    assert judge_shadow(maybe, timedelta(hours=30), V).action == "wait"
    end = judge_shadow(maybe, timedelta(hours=48), V)
    assert end.action == "inconclusive" and "maximum 48 h" in end.reason


def test_a_big_improvement_without_significance_is_not_enough():
    # 2 discordant rows out of 1,000: +100 % relative on a tiny base but p is large
    p = PairedCounts(Counts(n=1000, tp=2, fp=998), Counts(n=1000, tp=1, fp=999), 1, 0)
    v = judge_shadow(p, timedelta(hours=25), V)
    assert v.action == "wait" and any("McNemar" in n for n in v.needs)


def test_the_manual_gate_holds_a_passing_shadow_until_confirmed():
    p = _paired(3000, 0.62, 0.55)
    assert judge_shadow(p, timedelta(hours=25), V, manual_gate=True).action == "gate"
    assert judge_shadow(p, timedelta(hours=25), V, manual_gate=True, confirmed=True).action == "pass"


# ---------------------------------------------------------------- stages
def _stage(canary: Counts, prod: Counts, minutes: float = 61, stage: int = 0, **kw):
    share = R.stages[stage]
    return judge_stage(canary, prod, share=share, stage=stage, n_stages=len(R.stages),
                       elapsed=timedelta(minutes=minutes), settings=kw.pop("settings", R), confidence=0.95, **kw)


def test_a_stage_waits_for_its_duration_and_its_labelled_samples():
    v = _stage(_counts(100, 0.6), _counts(900, 0.6), minutes=30)
    assert v.action == "wait"
    assert v.needs == ("30 min more (minimum 60 min)", "400 more labelled canary outcomes (minimum 500)")
    # Unlabelled predictions do not count: a stage with no labels yet is not judged at all
    assert _stage(Counts(), _counts(900, 0.6), minutes=500).action == "wait"


def test_a_healthy_stage_advances_and_the_last_one_completes():
    assert _stage(_counts(600, 0.60), _counts(5400, 0.60)).action == "advance"
    assert _stage(_counts(600, 0.60), _counts(5400, 0.60), stage=3).action == "complete"


def test_the_manual_gate_waits_between_stages_but_not_after_the_last():
    gated = RolloutSettings(**{**R.model_dump(), "manual_gate": True})
    assert _stage(_counts(600, 0.6), _counts(5400, 0.6), settings=gated).action == "gate"
    assert _stage(_counts(600, 0.6), _counts(5400, 0.6), settings=gated, confirmed=True).action == "advance"
    assert _stage(_counts(600, 0.6), _counts(5400, 0.6), settings=gated, stage=3).action == "complete"


def test_a_clearly_worse_canary_is_rolled_back_at_any_point_of_a_stage():
    # 20 % worse with plenty of evidence, 5 minutes into the stage and below its sample minimum
    v = _stage(_counts(400, 0.48), _counts(3600, 0.60), minutes=5)
    assert v.action == "rollback"
    assert v.figures["relative"] == pytest.approx(-0.2) and v.figures["p_worse"] < 0.05


def test_worse_without_evidence_holds_and_small_differences_do_not_roll_back():
    # 15 % worse on 40 outcomes: not enough evidence yet, so the stage holds
    held = _stage(_counts(40, 0.51), _counts(360, 0.60), minutes=90, stage=1)
    assert held.action == "hold" and any("evidence" in n for n in held.needs)
    # 5 % worse with lots of evidence: significant but under the 10 % limit, so it advances
    assert _stage(_counts(20000, 0.57), _counts(180000, 0.60), stage=1).action == "advance"


def test_a_stage_that_cannot_gather_its_evidence_stalls_at_its_maximum():
    v = _stage(_counts(10, 0.6), _counts(900, 0.6), minutes=601)
    assert v.action == "stall"


def test_an_emergency_on_the_canary_rolls_back_whatever_the_counts():
    firing = TriggerFiring(TriggerKind.EMERGENCY, "accuracy 0.1 is 6 sigma below", {}, Severity.CRITICAL)
    v = _stage(_counts(5, 0.6), _counts(900, 0.6), minutes=1, emergency=firing)
    assert v.action == "rollback" and "emergency" in v.reason and v.figures["emergency"]["severity"] == "CRITICAL"


def test_canary_emergency_judges_the_canarys_newest_buckets_against_productions_history():
    cfg = EmergencyConfig.from_sigma(3.0, history_buckets=24, bucket_minutes=5)
    now = T0 + timedelta(hours=3)
    minutes = [now - timedelta(minutes=m) for m in range(1, 120)]
    prod = [(t, _counts(60, 0.6)) for t in minutes]
    healthy = [(t, _counts(20, 0.6)) for t in minutes[:20]]
    collapsed = [(t, _counts(20, 0.05)) for t in minutes[:20]]
    assert canary_emergency(prod, healthy, now, cfg) is None
    firing = canary_emergency(prod, collapsed, now, cfg)
    assert firing is not None and firing.severity in (Severity.HIGH, Severity.CRITICAL)
    assert canary_emergency(prod, [], now, cfg) is None


# ---------------------------------------------------------------- state machine
def test_the_state_machine_walks_shadow_through_every_stage_to_promoted():
    s = RolloutState.begin((10, 25, 50, 100), T0)
    assert (s.phase, s.share_pct) == (Phase.SHADOW, 0.0)
    assert s.next("wait", T0) is s and s.next("gate", T0) is s
    s = s.next("pass", T0 + timedelta(hours=24))
    shares = [s.share_pct]
    for i in range(3):
        s = s.next("advance", T0 + timedelta(hours=25 + i))
        shares.append(s.share_pct)
    assert shares == [10.0, 25.0, 50.0, 100.0] and s.stage_started_at == T0 + timedelta(hours=27)
    done = s.next("complete", T0 + timedelta(hours=28))
    assert done.phase is Phase.PROMOTED and done.is_final and done.finished_at == T0 + timedelta(hours=28)


@pytest.mark.parametrize("phase_action,final", [
    (("shadow", "reject"), Phase.REJECTED), (("shadow", "inconclusive"), Phase.INCONCLUSIVE),
    (("canary", "rollback"), Phase.ROLLED_BACK), (("canary", "stall"), Phase.INCONCLUSIVE),
    (("canary", "abort"), Phase.ABORTED), (("shadow", "abort"), Phase.ABORTED),
])
def test_every_way_out_is_final_with_no_share(phase_action, final):
    phase, action = phase_action
    s = RolloutState.begin((10, 100), T0, shadow=phase == "shadow")
    out = s.next(action, T0)
    assert out.phase is final and out.share_pct == 0.0 and out.is_final


def test_impossible_moves_are_refused():
    s = RolloutState.begin((10, 100), T0)
    with pytest.raises(ValueError):
        s.next("advance", T0)  # shadow has no stage to advance
    c = s.next("pass", T0)
    with pytest.raises(ValueError):
        c.next("complete", T0)  # not at the last stage yet
    last = c.next("advance", T0)
    with pytest.raises(ValueError):
        last.next("advance", T0)
    with pytest.raises(ValueError):
        last.next("complete", T0).next("rollback", T0)
    with pytest.raises(ValueError):
        RolloutState.begin((10, 50), T0)


def test_rollout_settings_refuse_stages_that_do_not_end_at_100():
    from retrain.config import parse_config
    from retrain.core.errors import ConfigError

    base = {"models": {"m": {"entry_point": "a.b:c", "features": ["x"]}}}
    for stages in ([10, 50], [50, 10, 100], [0, 100], [10, 10, 100]):
        raw = {"models": {"m": {**base["models"]["m"], "rollout": {"stages": stages}}}}
        with pytest.raises(ConfigError, match="stages"):
            parse_config(raw)
