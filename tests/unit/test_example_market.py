"""Tests of the example model: the synthetic market and the direction classifier.

Accuracy bounds are checked on the default seed (7), which is deterministic, so
these are not statistical flakes; the bands leave room around the measured values.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from retrain.examples.direction import history, market_from_params, train
from retrain.examples.market import (
    DEFAULT_START,
    MarketRows,
    Regime,
    SyntheticMarket,
    bayes_accuracy,
)

H = timedelta(hours=1)
S = DEFAULT_START


def _accuracy(model: object, rows: MarketRows) -> float:
    return float((model.predict(rows.X) == rows.y).mean())  # type: ignore[attr-defined]


def _assert_rows_equal(a: MarketRows, b: MarketRows) -> None:
    for name in ("ts", "X", "y", "ret", "regime"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return SyntheticMarket()


def test_same_range_twice_is_identical() -> None:
    a = SyntheticMarket().rows(S + 3 * H, S + 7 * H)
    b = SyntheticMarket().rows(S + 3 * H, S + 7 * H)
    _assert_rows_equal(a, b)
    assert len(a) == 4 * 60 * 10
    assert a.X.dtype == np.float64 and a.X.shape == (2400, 8)
    assert a.y.dtype == np.int8 and a.ret.dtype == np.float64 and a.ts.dtype == np.int64


def test_sub_range_is_a_slice_of_a_bigger_range() -> None:
    big = SyntheticMarket().rows(S - 2 * H, S + 30 * H)
    # Odd boundaries, not aligned to minutes or generation blocks, on a fresh market.
    lo = S + timedelta(hours=5, minutes=17, seconds=7)
    hi = S + timedelta(hours=9, minutes=3, seconds=59)
    sub = SyntheticMarket().rows(lo, hi)
    mask = (big.ts >= lo.timestamp()) & (big.ts < hi.timestamp())
    _assert_rows_equal(sub, MarketRows(big.ts[mask], big.X[mask], big.y[mask], big.ret[mask], big.regime[mask]))


def test_ranges_tile_and_seeds_differ() -> None:
    m = SyntheticMarket()
    whole = m.rows(S, S + 3 * H)
    parts = [m.rows(S + i * H / 2, S + (i + 1) * H / 2) for i in range(6)]
    np.testing.assert_array_equal(whole.ts, np.concatenate([p.ts for p in parts]))
    np.testing.assert_array_equal(whole.X, np.concatenate([p.X for p in parts]))
    assert np.all(np.diff(whole.ts) > 0)
    other = SyntheticMarket(seed=8).rows(S, S + 3 * H)
    assert not np.array_equal(whole.X, other.X)


def test_labels_are_return_signs_and_empty_ranges(market: SyntheticMarket) -> None:
    r = market.rows(S, S + H)
    np.testing.assert_array_equal(r.y, (r.ret > 0).astype(np.int8))
    assert len(market.rows(S + H, S + H)) == 0
    assert market.rows(S + H, S).X.shape == (0, 8)


def test_default_regimes(market: SyntheticMarket) -> None:
    assert market.feature_names == tuple(f"f{i}" for i in range(8))
    assert [r.starts_at for r in market.regimes] == [S, S + 36 * H, S + 84 * H]
    assert market.regime_at(S - H) is market.regimes[0]  # the stream extends before start
    assert market.regime_at(S + 36 * H - timedelta(seconds=1)) is market.regimes[0]
    assert market.regime_at(S + 36 * H) is market.regimes[1]
    assert market.regime_at(S + 100 * H) is market.regimes[2]
    w = market.weights
    np.testing.assert_allclose(w @ w.T, np.eye(3), atol=1e-12)
    r = market.rows(S + 35 * H, S + 37 * H)
    assert set(np.unique(r.regime)) == {0, 1}
    assert np.all(r.regime[r.ts >= (S + 36 * H).timestamp()] == 1)


def test_explicit_regimes() -> None:
    w = np.zeros(8)
    w[0] = 2.0
    m = SyntheticMarket(regimes=[Regime(S + H, 3), Regime(S, w)])
    assert m.regime_at(S).weights is w  # sorted by start
    np.testing.assert_allclose(m.weights[0], np.eye(8)[0])
    assert np.isclose(np.linalg.norm(m.weights[1]), 1.0)
    with pytest.raises(ValueError):
        SyntheticMarket(regimes=[Regime(S, [1.0, 2.0])])


def test_accuracy_stable_after_shift_and_after_retraining(market: SyntheticMarket) -> None:
    fit = market.rows(S, S + 24 * H)  # regime 0
    model = train(fit.X, fit.y, {"C": 1.0})
    stable = _accuracy(model, market.rows(S + 24 * H, S + 36 * H))
    shifted = _accuracy(model, market.rows(S + 36 * H, S + 48 * H))
    refit = market.rows(S + 36 * H, S + 60 * H)  # regime 1
    retrained = _accuracy(train(refit.X, refit.y, {}), market.rows(S + 60 * H, S + 84 * H))
    print(f"stable={stable:.4f} shifted={shifted:.4f} retrained={retrained:.4f} bayes={bayes_accuracy():.4f}")
    assert 0.58 <= stable <= 0.62
    assert 0.45 <= shifted <= 0.55
    assert retrained >= 0.57


def test_history_has_no_look_ahead() -> None:
    params = {"seed": 7, "start": "2026-01-05T00:00:00+00:00"}
    now = S + timedelta(hours=30, minutes=10, seconds=3)
    X, y, ts, ret = history(now, 6 * H, params)
    cutoff = (now - timedelta(minutes=1)).timestamp()
    assert ts.max() <= cutoff
    assert ts.max() > cutoff - 60  # the newest realised rows are included
    assert ts.min() >= cutoff - 6 * 3600
    assert X.shape == (len(ts), 8) and y.shape == ts.shape == ret.shape
    # The returns column: each row's market return, whose sign is the label.
    np.testing.assert_array_equal(y, (ret > 0).astype(y.dtype))
    # What was visible then is unchanged later: the past does not depend on the future.
    X2, y2, ts2, _ = history(now + 5 * H, 12 * H, params)
    keep = np.isin(ts2, ts)
    np.testing.assert_array_equal(ts2[keep], ts)
    np.testing.assert_array_equal(X2[keep], X)
    np.testing.assert_array_equal(y2[keep], y)
    # A longer label delay hides more.
    _, _, ts3, _ = history(now, 6 * H, {**params, "label_delay": 600})
    assert ts3.max() <= (now - timedelta(minutes=10)).timestamp()
    # A row stamped exactly at the cutoff is visible (inclusive bound).
    aligned = S + 10 * H + timedelta(minutes=1)
    _, _, ts4, _ = history(aligned, H, params)
    assert ts4.max() == (S + 10 * H).timestamp()


def test_history_matches_market_and_params(market: SyntheticMarket) -> None:
    assert market_from_params({}) is market_from_params({"seed": 7, "start": S})
    m = market_from_params({"start": datetime(2026, 1, 5, tzinfo=timezone.utc), "rows_per_minute": 4})
    assert m.rows_per_minute == 4
    X, y, ts, _ = history(S + 2 * H, H, {})
    r = market.rows(S + H - timedelta(minutes=1), S + 2 * H)
    np.testing.assert_array_equal(ts, r.ts[r.ts <= (S + 2 * H - timedelta(minutes=1)).timestamp()])
    assert len(ts) == 601


def test_generation_and_training_speed() -> None:
    t0 = time.perf_counter()
    rows = SyntheticMarket(seed=11).rows(S, S + timedelta(days=3))
    gen = time.perf_counter() - t0
    assert len(rows) == 3 * 1440 * 10
    X, y = rows.X[:30_000], rows.y[:30_000]
    t0 = time.perf_counter()
    train(X, y, {})
    fit = time.perf_counter() - t0
    print(f"generate 3 days: {gen * 1000:.1f} ms; train on {len(X)} x 8: {fit * 1000:.1f} ms")
    # Generous bounds: the measured values are ~100x smaller; this only catches regressions to loops.
    assert gen < 5.0
    assert fit < 5.0
