"""Gates sized by evidence (retrain.core.evidence) and the offline paired judgement (retrain.core.rollout.judge_paired).

The sample sizes are checked by simulation: at the sized number of rows the test
finds the configured improvement about as often as the configured power says.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from retrain.core.evidence import independent_rows_needed, paired_rows_needed, plan_gate, walk_forward_folds
from retrain.core.rollout import PairedCounts, judge_paired, mcnemar_p


def _paired_power(n: int, p_prod: float, gain: float, discordance: float, trials: int, rng) -> float:
    # Discordant pairs split so that the candidate is right on (discordance + gain) / 2 of the rows.
    p_cand_only = (discordance + gain) / 2
    p_prod_only = (discordance - gain) / 2
    hits = 0
    for _ in range(trials):
        cand_only, prod_only, _ = rng.multinomial(n, [p_cand_only, p_prod_only, 1 - discordance])
        hits += mcnemar_p(cand_only, prod_only) <= 0.05
    return hits / trials


def test_the_paired_size_gives_the_configured_power_by_simulation():
    rng = np.random.default_rng(7)
    # Given production at 60 % and candidates disagreeing with it on 20 % of rows
    n = paired_rows_needed(0.60, 0.02, discordance=0.20, confidence=0.95, power=0.8)
    # Then the McNemar test at that size finds a +2 % candidate about 80 % of the time
    assert 0.74 <= _paired_power(n, 0.60, 0.012, 0.20, 400, rng) <= 0.88
    # and at a quarter of the size it mostly cannot
    assert _paired_power(n // 4, 0.60, 0.012, 0.20, 400, rng) < 0.45


def test_the_paired_size_grows_with_disagreement_and_shrinks_with_a_larger_goal():
    base = paired_rows_needed(0.6, 0.02, discordance=0.2, confidence=0.95, power=0.8)
    assert paired_rows_needed(0.6, 0.02, discordance=0.4, confidence=0.95, power=0.8) > base
    assert paired_rows_needed(0.6, 0.10, discordance=0.2, confidence=0.95, power=0.8) < base / 10
    assert paired_rows_needed(0.6, 0.02, discordance=0.2, confidence=0.95, power=0.9) > base
    # Two near-identical fits are sized at the floor disagreement, not at a handful of rows
    assert paired_rows_needed(0.6, 0.02, discordance=0.0, confidence=0.95, power=0.8) > 1000


def test_the_canary_size_sees_a_ten_percent_drop_at_the_configured_power_by_simulation():
    rng = np.random.default_rng(11)
    n = independent_rows_needed(0.60, 0.10, confidence=0.95, power=0.8)
    seen = 0
    for _ in range(300):
        a, b = rng.binomial(n, 0.54), rng.binomial(n, 0.60)
        seen += stats.fisher_exact([[a, n - a], [b, n - b]], alternative="less").pvalue <= 0.05
    # Fisher's exact test is a little conservative against the normal approximation
    assert 0.65 <= seen / 300 <= 0.9


@pytest.mark.parametrize("per_hour, gate", [(1 / 24, "walk_forward"), (288 / 24, "walk_forward"),
                                            (5000 * 3600, "shadow")])
def test_the_gate_follows_the_rate_of_labelled_rows(per_hour, gate):
    # Given the sizes at 60 % and the default stages and limits
    paired = paired_rows_needed(0.6, 0.02, discordance=0.2, confidence=0.95, power=0.8)
    canary = independent_rows_needed(0.6, 0.10, confidence=0.95, power=0.8)
    plan = plan_gate(paired, labelled_per_hour=per_hour, max_hours=48, canary_rows_needed=canary,
                     stages=(10.0, 25.0, 50.0, 100.0), stage_max_hours=24)
    # Then a daily model and one with 288 a day are judged by walk-forward, a streaming one live
    assert plan.gate == gate
    assert f"{paired:,}" in plan.reason
    assert plan.to_json()["rows_needed"] == paired


def test_a_live_rate_too_slow_for_the_first_canary_stage_is_judged_by_walk_forward():
    plan = plan_gate(8585, labelled_per_hour=300, max_hours=48, canary_rows_needed=841, stages=(10.0, 100.0),
                     stage_max_hours=24)
    assert plan.gate == "walk_forward" and "10% canary stage" in plan.reason
    # unless walk-forward is turned off: then live anyway, saying what will be short
    off = plan_gate(8585, labelled_per_hour=300, max_hours=48, canary_rows_needed=841, stages=(10.0, 100.0),
                    stage_max_hours=24, walk_forward=False)
    assert off.gate == "shadow" and "walk_forward is off" in off.reason


def test_walk_forward_folds_score_only_rows_newer_than_production_and_never_rows_their_fit_saw():
    ts = np.arange(1000.0)
    folds = walk_forward_folds(ts, after=700.5, max_rows=10_000, folds=4, min_train_rows=100)
    assert folds[0][0] == 701 and folds[-1][1] == 1000
    assert all(a < b for a, b in folds) and all(f[1] == g[0] for f, g in zip(folds, folds[1:]))
    # at most the rows the test needs, the newest ones
    assert walk_forward_folds(ts, after=None, max_rows=90, folds=3, min_train_rows=100)[0][0] == 910
    # never so many that the first fit has too few rows
    assert walk_forward_folds(ts, after=None, max_rows=10_000, folds=3, min_train_rows=500)[0][0] == 500
    # nothing newer than production: nothing to compare
    assert walk_forward_folds(ts, after=2000.0, max_rows=100, folds=3, min_train_rows=10) == []


def _pairs(y, cand, prod):
    return PairedCounts.from_arrays(np.array(y), np.array(cand), np.array(prod))


def test_the_final_offline_gate_needs_both_the_goal_and_significance():
    y = [1] * 40
    clearly_better = _pairs(y, [1] * 40, [1] * 20 + [0] * 20)
    verdict, said = judge_paired(clearly_better, metric="accuracy", min_improvement=0.02, confidence=0.95,
                                 rows_needed=8000, final=True)
    assert verdict == "pass" and "McNemar" in said
    slightly_better = _pairs(y, [1] * 21 + [0] * 19, [1] * 20 + [0] * 20)
    assert judge_paired(slightly_better, metric="accuracy", min_improvement=0.02, confidence=0.95,
                        rows_needed=8000, final=True)[0] == "reject"


def test_a_holdout_screen_rejects_only_what_it_can_show():
    y = [1] * 60
    same = _pairs(y, [1] * 30 + [0] * 30, [1] * 30 + [0] * 30)
    # too few rows to show +2 %, and not worse: passed on to the live gate, saying how many it would need
    verdict, said = judge_paired(same, metric="accuracy", min_improvement=0.02, confidence=0.95, rows_needed=8000,
                                 final=False)
    assert verdict == "screen" and "8,000" in said
    # significantly worse: rejected
    worse = _pairs(y, [1] * 10 + [0] * 50, [1] * 40 + [0] * 20)
    assert judge_paired(worse, metric="accuracy", min_improvement=0.02, confidence=0.95, rows_needed=8000,
                        final=False)[0] == "reject"
    # enough rows for the test and not better by the goal: rejected
    assert judge_paired(same, metric="accuracy", min_improvement=0.02, confidence=0.95, rows_needed=50,
                        final=False)[0] == "reject"
