"""The performance trigger: calibrated false-alarm rate, firing on real drops and below the floor."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from retrain.core.domain import TriggerKind
from retrain.core.triggers import (
    PerformanceDetector,
    PerformanceTriggerConfig,
    TriggerFiring,
    bernoulli_cusum_arl,
    cusum_threshold,
    evaluate_performance,
    wilson_upper,
)
from retrain.core.windows import Counts


def accuracy_buckets(rng: np.random.Generator, accs: list[float], per_bucket: int) -> list[Counts]:
    """Buckets of `per_bucket` outcomes whose hit rate is accs[i] (labels all 1)."""
    hits = rng.binomial(per_bucket, accs)
    return [Counts(n=per_bucket, tp=int(k), fn=per_bucket - int(k)) for k in hits]


def strict_json(x) -> str:
    return json.dumps(x, allow_nan=False)


def test_arl_matches_simulation():
    # Given a chart 0.60 -> 0.50 with a low threshold, so that a run is short
    p0, p1, h = 0.6, 0.5, 4.0
    a, b = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    rng = np.random.default_rng(11)
    runs, s = 3000, np.zeros(3000)
    length = np.zeros(3000)
    alive = np.ones(3000, dtype=bool)
    # When simulated until every run has crossed
    for t in range(1, 60_000):
        s = np.maximum(0.0, s + np.where(rng.random(runs) < p0, a, b))
        crossed = alive & (s >= h)
        length[crossed] = t
        alive &= ~crossed
        if not alive.any():
            break
    # Then the mean run length is the computed ARL (standard error about 2 %)
    assert not alive.any()
    assert length.mean() == pytest.approx(bernoulli_cusum_arl(p0, p0, p1, h), rel=0.07)


def test_threshold_reaches_the_target_arl():
    # Given a target in-control run length
    h = cusum_threshold(0.6, 0.57, 1e6)
    # Then the threshold's ARL reaches it, and is below Lorden's bound ln(ARL0)
    assert bernoulli_cusum_arl(0.6, 0.6, 0.57, h) >= 1e6
    assert bernoulli_cusum_arl(0.6, 0.6, 0.57, h * 0.97) < 1e6
    assert h < math.log(1e6)


def test_stable_stream_rarely_fires():
    # Given 400 independent hours of a model holding its baseline 0.60,
    # 60 one-minute buckets of 100 outcomes each (6,000 outcomes an hour)
    rng = np.random.default_rng(2026)
    fired = 0
    for _ in range(400):
        buckets = accuracy_buckets(rng, [0.60] * 60, 100)
        fired += evaluate_performance(buckets, {"accuracy": 0.60}) is not None
    # Then the trigger fires in at most 1 % of them (the CUSUM bank's bound:
    # 6,000 outcomes / ARL0 of 10,000,000 = 0.06 %; the floor is 10 standard errors away)
    assert fired <= 4


def test_streaming_false_alarms_respect_the_arl_bound():
    # Given a detector calibrated for a short ARL0 of 20,000 outcomes
    cfg = PerformanceTriggerConfig(arl0=20_000, min_samples=1)
    det = PerformanceDetector(0.60, cfg)
    rng = np.random.default_rng(5)
    # When it watches 200,000 outcomes at its baseline
    alarms = sum(det.update(1, int(h)).drift_detected for h in rng.random(200_000) < 0.60)
    # Then it raises at most about 200,000 / 20,000 = 10 alarms (a bound: charts overlap)
    assert 1 <= alarms <= 15


def test_drop_from_060_to_050_fires():
    # Given an hour at 0.60 and then 15 minutes at 0.50, 100 outcomes a minute
    rng = np.random.default_rng(1)
    buckets = accuracy_buckets(rng, [0.60] * 60 + [0.50] * 15, 100)
    cfg = PerformanceTriggerConfig(floor=None)
    # When evaluated over the last 75 buckets
    firing = evaluate_performance(buckets, {"accuracy": 0.60}, cfg)
    # Then the relative-drop rule fires, with its figures
    assert firing is not None and firing.kind is TriggerKind.PERFORMANCE
    rel = firing.evidence["relative"]
    assert rel["statistic"] >= rel["threshold"]
    assert 0.45 < rel["segment_value"] < 0.55
    assert "baseline 0.600" in firing.reason and "CUSUM" in firing.reason
    strict_json(firing.to_json())
    assert TriggerFiring.from_json(json.loads(strict_json(firing.to_json()))) == firing


def test_small_drop_of_5_percent_fires_with_enough_evidence():
    # Given 0.57 (5 % below 0.60) for 10,000 outcomes
    rng = np.random.default_rng(4)
    buckets = accuracy_buckets(rng, [0.57] * 100, 100)
    # Then the 5 % chart fires; 2,000 outcomes are not enough evidence
    assert evaluate_performance(buckets, {"accuracy": 0.60}) is not None
    assert evaluate_performance(buckets[:20], {"accuracy": 0.60}) is None


def test_accuracy_below_floor_fires_without_a_baseline():
    # Given accuracy 0.50 over 1,000 outcomes and no baseline at all
    rng = np.random.default_rng(7)
    buckets = accuracy_buckets(rng, [0.50] * 10, 100)
    # When evaluated
    firing = evaluate_performance(buckets, {})
    # Then the floor rule fires, citing the Wilson bound
    assert firing is not None
    assert firing.evidence["rules"] == ["floor"]
    assert firing.evidence["floor_test"]["upper_bound"] < 0.55
    assert "below the floor 0.55" in firing.reason


def test_floor_needs_min_samples_and_evidence():
    # Given accuracy 0.50 but only 100 outcomes: not enough
    assert evaluate_performance([Counts(n=100, tp=50, fn=50)], {}) is None
    # Given 0.54 over 400 outcomes: below the floor, but not surely so
    assert evaluate_performance([Counts(n=400, tp=216, fn=184)], {}) is None
    assert wilson_upper(216, 400, 0.99) > 0.55


def test_detector_finds_the_drop_faster_than_adwin_baseline():
    # Given 50,000 outcomes at 0.60 and then 0.50
    rng = np.random.default_rng(8)
    hits = np.r_[rng.random(50_000) < 0.60, rng.random(3_000) < 0.50]
    det = PerformanceDetector({"accuracy": 0.60})
    # When fed one by one
    fired, firings = [], []
    for i, h in enumerate(hits):
        if det.update(1, int(h)).drift_detected:
            fired.append(i)
            firings.append(det.firing)
    # Then it first fires after the change, within ~1,000 outcomes (ADWIN's median is 559),
    # on the relative drop, and keeps firing (after each reset) while the model stays bad
    assert 50_000 < fired[0] < 51_200 and len(fired) > 1
    assert firings[0].evidence["relative"]["segment_value"] < 0.56


@pytest.mark.parametrize("metric", ["precision", "recall", "f1"])
def test_other_bernoulli_metrics_fire_on_their_drop(metric):
    # Given a model whose positive predictions degrade: precision and recall 0.60 -> 0.45
    rng = np.random.default_rng(12)

    def bucket(q: float) -> Counts:
        y = rng.random(400) < 0.5
        p = np.where(rng.random(400) < q, y, ~y)
        return Counts.from_arrays(y, p)

    good = [bucket(0.60) for _ in range(30)]
    bad = [bucket(0.45) for _ in range(10)]
    base = sum(good, Counts()).metrics()
    cfg = PerformanceTriggerConfig(metric=metric, floor=None)
    # Then the stable hour is quiet and the degraded one fires on that metric
    assert evaluate_performance(good, base, cfg) is None
    firing = evaluate_performance(good + bad, base, cfg)
    assert firing is not None and firing.evidence["metric"] == metric


def test_sharpe_rule_fires_when_returns_turn():
    # Given per-trade returns with Sharpe 0.2 and then -0.1
    rng = np.random.default_rng(9)
    good = [Counts.from_arrays(np.ones(200), np.ones(200), rng.normal(0.2, 1, 200)) for _ in range(10)]
    bad = [Counts.from_arrays(np.ones(200), np.ones(200), rng.normal(-0.1, 1, 200)) for _ in range(10)]
    cfg = PerformanceTriggerConfig(metric="sharpe", floor=None)
    # Then only the degraded window fires
    assert evaluate_performance(good, {"sharpe": 0.2}, cfg) is None
    firing = evaluate_performance(bad, {"sharpe": 0.2}, cfg)
    assert firing is not None and firing.evidence["relative"]["test"] == "sharpe_upper_bound"
    strict_json(firing.evidence)


def test_config_is_validated():
    with pytest.raises(ValueError):
        PerformanceTriggerConfig(metric="auc")
    with pytest.raises(ValueError):
        PerformanceTriggerConfig(relative_drop=1.5)
    with pytest.raises(ValueError):
        PerformanceTriggerConfig(floor=55)
