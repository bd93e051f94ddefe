"""Counts and the sliding windows: equal to a brute-force recomputation, bounded, expiring on time."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.core.windows import Counts, CountWindow, TimeWindow

outcome = st.tuples(st.integers(0, 1), st.integers(0, 1), st.floats(-1, 1, allow_nan=False))


def brute(outcomes) -> Counts:
    total = Counts()
    for y, p, r in outcomes:
        total = total + Counts.of(y, p, r)
    return total


def assert_counts_close(a: Counts, b: Counts) -> None:
    assert (a.n, a.tp, a.fp, a.tn, a.fn) == (b.n, b.tp, b.fp, b.tn, b.fn)
    assert a.ret_sum == pytest.approx(b.ret_sum, abs=1e-9)
    assert a.ret_sq_sum == pytest.approx(b.ret_sq_sum, abs=1e-9)


def test_counts_add_and_sum():
    # Given two sets of outcomes
    a = Counts.from_arrays([1, 0, 1], [1, 1, 0], [0.1, -0.2, 0.3])
    b = Counts.from_arrays([0, 0], [0, 1], [0.5, 0.5])
    # When they are added, or summed as a list
    total = a + b
    # Then every field adds up and sum() needs no start value
    assert total == Counts(n=5, tp=1, fp=2, tn=1, fn=1, ret_sum=pytest.approx(1.2), ret_sq_sum=pytest.approx(0.64))
    assert sum([a, b]) == total
    assert_counts_close(total - b, a)


def test_counts_metrics():
    # Given tp=3, fp=1, tn=4, fn=2 and returns 1, 2, 3, 4 (and zeros)
    c = Counts(n=10, tp=3, fp=1, tn=4, fn=2, ret_sum=10.0, ret_sq_sum=30.0)
    # Then the metrics are the textbook ones
    assert c.accuracy == 0.7
    assert c.precision == 0.75
    assert c.recall == 0.6
    assert c.f1 == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    sd = math.sqrt((30 - 100 / 10) / 9)
    assert c.sharpe == pytest.approx(1.0 / sd)
    assert c.sharpe_ratio(252) == pytest.approx(math.sqrt(252) / sd)
    assert c.metrics().keys() == {"accuracy", "precision", "recall", "f1", "sharpe"}


def test_empty_counts_have_undefined_metrics():
    # Given nothing, or only negatives predicted, or constant returns
    # Then undefined metrics are nan, never 0
    assert math.isnan(Counts().accuracy)
    assert math.isnan(Counts(n=3, tn=3).precision)
    assert math.isnan(Counts.from_arrays([1, 1], [1, 1], [0.1, 0.1]).sharpe)


def test_from_arrays_matches_one_by_one():
    # Given a random stream
    rng = np.random.default_rng(3)
    y, p, r = rng.integers(0, 2, 1000), rng.integers(0, 2, 1000), rng.normal(size=1000)
    # When counted at once and one by one
    # Then both agree
    assert_counts_close(Counts.from_arrays(y, p, r), brute(zip(y, p, r)))
    assert Counts.from_json(Counts.from_arrays(y, p, r).to_json()) == Counts.from_arrays(y, p, r)


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 25), outcomes=st.lists(outcome, max_size=120))
def test_count_window_equals_brute_force(size, outcomes):
    # Given a window of `size` and any stream
    w = CountWindow(size)
    # When each outcome is added
    for i, (y, p, r) in enumerate(outcomes):
        w.update(y, p, r)
        # Then the window's counts are those of the last `size` outcomes
        assert_counts_close(w.counts, brute(outcomes[max(0, i + 1 - size) : i + 1]))
    assert w.n == min(size, len(outcomes))


def test_count_window_rounding_stays_bounded():
    # Given a long stream of returns of mixed magnitude
    rng = np.random.default_rng(0)
    r = rng.normal(size=50_000) * 10.0 ** rng.integers(-3, 3, 50_000)
    w = CountWindow(1000)
    for x in r:
        w.update(1, 1, x)
    # Then the running sums still match an exact sum of the last 1000
    assert w.counts.ret_sum == pytest.approx(math.fsum(r[-1000:]), rel=1e-9, abs=1e-9)


def test_count_window_properties_are_read_only():
    w = CountWindow(3).update(1, 1)
    with pytest.raises(AttributeError):
        w.accuracy = 0.5  # type: ignore[misc]


def test_time_window_expires_old_buckets():
    # Given a 60 s window of 1 s buckets
    w = TimeWindow(span=60, bucket=1)
    w.update(1, 1, t=0.2).update(0, 1, t=30.0).update(1, 0, t=59.9)
    assert w.n == 3
    # When time reaches 60 s, the bucket of t=0.2 leaves the window
    assert w.advance(60.0).n == 2
    # And at 90 s the one of t=30
    assert w.advance(90.5).n == 1
    # And after a long gap nothing is left
    assert w.advance(10_000).n == 0
    assert w.counts == Counts()


def test_time_window_drops_late_outcomes():
    # Given a window that has moved to t=100
    w = TimeWindow(span=10, bucket=1).advance(100)
    # When an outcome from t=50 arrives, it is dropped and counted; one from t=95 is kept
    w.update(1, 1, t=50).update(1, 1, t=95)
    assert (w.n, w.late) == (1, 1)


def test_time_window_accepts_datetimes_and_an_injected_clock():
    # Given a window read with datetimes
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    w = TimeWindow(span=3600, bucket=60)
    for minute in range(120):
        w.update(1, minute % 2, t=t0 + timedelta(minutes=minute))
    # Then the last hour (60 one-minute buckets) is kept
    assert w.n == 60
    # Given a fake clock
    now = [0.0]
    w2 = TimeWindow(span=5, bucket=1, clock=lambda: now[0])
    w2.update(1, 1)
    now[0] = 7.0
    w2.update(0, 0)
    assert w2.n == 1


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(0, 7, allow_nan=False), st.integers(0, 1), st.integers(0, 1)), max_size=80),
    span=st.integers(1, 20),
    bucket=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_time_window_equals_brute_force(steps, span, bucket):
    # Given outcomes at increasing times
    w = TimeWindow(span=span, bucket=bucket)
    seen = []
    t = 0.0
    for dt, y, p in steps:
        t += dt
        w.update(y, p, 0.0, t=t)
        seen.append((t, y, p))
        # Then the window holds exactly the outcomes of the newest ceil(span/bucket) buckets
        head = math.floor(t / bucket)
        keep = [(y_, p_, 0.0) for t_, y_, p_ in seen if math.floor(t_ / bucket) > head - w.n_buckets]
        assert_counts_close(w.counts, brute(keep))
    assert len(w.buckets()) <= w.n_buckets


def test_time_window_sharpe_is_annualised():
    w = TimeWindow(span=10, annualisation=4.0)
    for i, r in enumerate([0.1, 0.2, 0.3, -0.1]):
        w.update(1, 1, r, t=i)
    assert w.sharpe == pytest.approx(2 * w.counts.sharpe)
