"""When a drift asks for a retraining (retrain.core.drift.judge_drift), and the holdout's Sharpe
ratio is the live one (retrain.core.metrics, retrain.core.windows)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from retrain.core.drift import DriftEpisode, DriftReport, FeatureDrift, judge_drift
from retrain.core.metrics import classification_metrics, finite_metrics
from retrain.core.windows import Counts, strategy_returns

T = datetime(2026, 1, 5, tzinfo=timezone.utc)
H = timedelta(hours=1)


def _report(**effects: float) -> DriftReport:
    feats = tuple(FeatureDrift(name, "ks", e, 1e-9, 1e-9, e, 0.1, 0.2, e >= 0.05) for name, e in effects.items())
    return DriftReport(feats, 0.05, "bh", 0.05)


def test_the_first_drift_against_a_reference_asks_even_with_healthy_accuracy():
    v = judge_drift(_report(a=0.1, b=0.01), DriftEpisode("r"), T, healthy=True)
    assert v.request and "first" in v.reason


def test_no_drift_never_asks():
    assert not judge_drift(_report(a=0.01), DriftEpisode("r"), T, healthy=None).request


def test_a_persistent_drift_waits_for_the_back_off_which_doubles_with_each_request():
    rep = _report(a=0.1)
    ep = DriftEpisode("r").asked_for(rep, T)
    asks = []
    t = T
    for _ in range(24 * 8):  # a week of hourly checks of the same drift
        t += H
        v = judge_drift(rep, ep, t, healthy=None, reask_after=timedelta(hours=24))
        if v.request:
            asks.append((t - T) / H)
            ep = ep.asked_for(rep, t)
    # 24 h after the first request, then 48 h, then 96 h: 3 more in 8 days instead of 192
    assert asks == [24, 72, 168]


def test_without_back_off_a_persistent_drift_asks_once_per_reference():
    rep = _report(a=0.1)
    ep = DriftEpisode("r").asked_for(rep, T)
    assert not any(judge_drift(rep, ep, T + k * H, healthy=False, reask_after=None).request for k in range(1, 500))


def test_worse_means_a_new_feature_or_a_grown_effect():
    ep = DriftEpisode("r").asked_for(_report(a=0.10, b=0.01), T)
    later = T + H
    assert not judge_drift(_report(a=0.14), ep, later, healthy=None).request  # noise around the asked effect
    grown = judge_drift(_report(a=0.16), ep, later, healthy=None)
    assert grown.request and "a effect 0.160 >= 1.5 x 0.100" in grown.reason
    new = judge_drift(_report(a=0.10, b=0.08), ep, later, healthy=False)
    assert new.request and new.worse == ("b drifted (not in an earlier request)",)
    # Once asked for, b at the same effect is no longer new
    ep2 = ep.asked_for(_report(a=0.10, b=0.08), later)
    assert ep2.asked == {"a": 0.10, "b": 0.08} and ep2.asks == 2
    assert not judge_drift(_report(a=0.10, b=0.08), ep2, later + H, healthy=None).request


def test_healthy_accuracy_reports_a_worse_drift_without_asking():
    ep = DriftEpisode("r").asked_for(_report(a=0.1), T)
    v = judge_drift(_report(a=0.5, b=0.3), ep, T + 100 * H, healthy=True)
    assert not v.request and "healthy accuracy" in v.reason and len(v.worse) == 2


def test_an_episode_survives_json():
    ep = DriftEpisode("r").asked_for(_report(a=0.1, b=0.2), T)
    assert DriftEpisode.from_json(ep.to_json()) == ep


def test_the_holdout_sharpe_is_the_live_windows_sharpe():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    pred = np.where(rng.random(500) < 0.6, y, 1 - y)
    ret = rng.normal(0, 0.01, 500)
    m = classification_metrics(y, pred, ret)
    live = Counts.from_arrays(y, pred, strategy_returns(pred, ret))
    assert m["sharpe"] == pytest.approx(live.sharpe) and m["accuracy"] == pytest.approx(live.accuracy)
    # Long on 1, short on 0: right about the direction earns the move
    assert strategy_returns([1, 0], [0.02, -0.03]).tolist() == [0.02, 0.03]
    # No returns: no Sharpe; constant returns: undefined, left out of what is stored
    assert "sharpe" not in classification_metrics(y, pred)
    flat = classification_metrics(y, pred, np.zeros(500))
    assert np.isnan(flat["sharpe"]) and "sharpe" not in finite_metrics(flat)
