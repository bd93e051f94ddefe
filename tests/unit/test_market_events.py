"""The example market's optional events: a feature drift that keeps the label relation,
and a flash crash that turns returns against the regime; both deterministic."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from retrain.examples.direction import market_from_params
from retrain.examples.market import DEFAULT_START, FeatureShift, FlashCrash, SyntheticMarket, events_from_params

H = timedelta(hours=1)
S = DEFAULT_START


def _oracle_accuracy(m: SyntheticMarket, lo, hi) -> float:
    """Accuracy of sign(w . x) with the regime's own weights: what a model that reads the regime right scores."""
    r = m.rows(lo, hi)
    s = np.einsum("ij,ij->i", r.X, m.weights[r.regime])
    return float(((s > 0).astype(int) == r.y).mean())


def test_no_events_leaves_the_stream_unchanged():
    a, b = SyntheticMarket().rows(S, S + 3 * H), SyntheticMarket(events=()).rows(S, S + 3 * H)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.ret, b.ret)


def test_a_feature_shift_moves_the_features_but_keeps_the_label_relation():
    # Given f0 and f2 moving by 0.5 sd from start + 10 h
    m = SyntheticMarket(events=[FeatureShift(S + 10 * H, (0, 2), 0.5)])
    plain = SyntheticMarket()
    before, after = m.rows(S + 4 * H, S + 10 * H), m.rows(S + 10 * H, S + 16 * H)
    # Then only the chosen features move, by the amount asked, and only from then on
    np.testing.assert_array_equal(before.X, plain.rows(S + 4 * H, S + 10 * H).X)
    moved = after.X - plain.rows(S + 10 * H, S + 16 * H).X
    np.testing.assert_allclose(moved[:, [0, 2]], 0.5)
    np.testing.assert_allclose(moved[:, [1, 3, 4, 5, 6, 7]], 0.0)
    # And a model that read the regime right before keeps its accuracy after
    acc_before = _oracle_accuracy(m, S + 4 * H, S + 10 * H)
    acc_after = _oracle_accuracy(m, S + 10 * H, S + 16 * H)
    assert 0.57 < acc_before < 0.64 and 0.57 < acc_after < 0.66


def test_a_flash_crash_collapses_accuracy_for_its_span_only():
    # Given a 45-minute crash in regime 0
    m = SyntheticMarket(events=[FlashCrash(S + 20 * H, S + 20 * H + timedelta(minutes=45))])
    during = _oracle_accuracy(m, S + 20 * H, S + 20 * H + timedelta(minutes=45))
    after = _oracle_accuracy(m, S + 21 * H, S + 27 * H)
    # Then a model of the regime is right about 3 times in 10 during it, and back at 0.60 after
    assert 0.2 < during < 0.4 and 0.57 < after < 0.64
    # And so is a stale model of another regime (which scores 0.50 outside the crash)
    r = m.rows(S + 20 * H, S + 20 * H + timedelta(minutes=45))
    stale = ((r.X @ m.weights[2]) > 0).astype(int)
    assert 0.2 < float((stale == r.y).mean()) < 0.4
    np.testing.assert_array_equal(r.y, (r.ret > 0).astype(np.int8))  # labels are still return signs


def test_events_come_from_params_and_streams_stay_deterministic():
    params = {"drift_at_hours": 60, "drift_features": ["f1", "f4"], "crash_at_hours": 100, "crash_minutes": 30}
    events = events_from_params(params, S)
    assert events == (FeatureShift(S + 60 * H, (1, 4), 0.5, None),
                      FlashCrash(S + 100 * H, S + 100 * H + timedelta(minutes=30), 20.0))
    assert events_from_params({}, S) == ()
    a = market_from_params(params).rows(S + 59 * H, S + 61 * H)
    b = SyntheticMarket(events=events).rows(S + 59 * H + timedelta(minutes=7), S + 61 * H)
    mask = a.ts >= (S + 59 * H + timedelta(minutes=7)).timestamp()
    np.testing.assert_array_equal(a.X[mask], b.X)
    np.testing.assert_array_equal(a.y[mask], b.y)
