"""Validation sized by evidence, through the real train and validate steps on a real store.

* A daily model (no live rate that could fill a shadow) is judged by walk-forward on
  the rows production never trained on; after a concept flip the retrained candidate
  wins there and is promoted at once, and the record says which gate and why.
* No look-ahead: a model that memorizes its training rows (perfect on rows it saw,
  a coin flip elsewhere) is rejected by walk-forward; any leak would have passed it.
* A streaming model goes to shadow, which waits for the paired rows its test needs
  (stated), not for a fixed count.

The data sources and the memorizing entry point are importable by the steps.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.steps.dispatch import drain, run_step
from retrain.steps.requests import sync_models
from retrain.steps.rollout_step import describe_rollout
from tests.conftest import T0, make_context

pytestmark = pytest.mark.integration

DAY = 86400.0


def daily_with_a_flip(now, lookback, params):
    """One row a day over the lookback, the label visible a day later; the link between f0 and the
    label flips at ``params['flip_at']``."""
    end = now.timestamp() - DAY
    ts = np.arange(end - lookback.total_seconds(), end + 1, DAY)
    rng = np.random.default_rng(int(ts[0] // DAY))  # the same day always has the same row
    X = rng.normal(size=(len(ts), 2))
    sign = np.where(ts < params["flip_at"], 1.0, -1.0)
    y = ((sign * X[:, 0] + 0.3 * rng.normal(size=len(ts))) > 0).astype(np.int64)
    return X, y, ts


def daily_coin_flips(now, lookback, params):
    """One row a day, the label a coin flip, f0 the day itself: nothing to learn but the rows seen."""
    end = now.timestamp() - DAY
    ts = np.arange(end - lookback.total_seconds(), end + 1, DAY)
    y = np.array([hash(int(t // DAY)) % 2 for t in ts], dtype=np.int64)
    X = np.column_stack([ts / DAY, np.zeros(len(ts))])
    return X, y, ts


def memorize(X, y, params):
    """Right on every row it trained on, a coin flip on any other."""
    return KNeighborsClassifier(n_neighbors=1).fit(X, y)


def streaming(now, lookback, params):
    """A row a minute over the lookback (as a sample of a fast stream)."""
    n = int(lookback.total_seconds() // 60)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, 2))
    y = ((X[:, 0] + 0.8 * rng.normal(size=n)) > 0).astype(np.int64)
    return X, y, now.timestamp() - 60.0 * np.arange(n, 0, -1)


def _config(source: str, *, entry="retrain.examples.direction:train", lookback_days=120, params=None):
    return parse_config({
        "policy": {"max_cpu_load_pct": 10_000, "min_free_memory_mb": 0, "min_free_disk_mb": 0, "approval_days": 0,
                   "cooldown_hours": 0, "max_runs_per_model_per_day": 100},
        "models": {"m": {
            "entry_point": entry, "data_source": f"tests.integration.test_validation_gates:{source}",
            "features": ["f0", "f1"], "lookback_hours": lookback_days * 24, "params": params or {},
            "thresholds": {"min_samples": 500, "accuracy_floor": 0},
            "drift": {"enabled": False}, "emergency": {"enabled": False},
        }},
    })


def _retrain(ctx, reason: str) -> None:
    run_step(ctx, "retrain.request_retraining", {"v": 1, "model": "m", "reason": reason, "requested_by": "test",
                                                 "approved_by": "test", "override_budget": True,
                                                 "override_reason": "test"})
    drain(ctx)


def _latest(ctx):
    with ctx.store.tx() as tx:
        run = tx.runs.newest("m", limit=1)[0]
        v = tx.versions.get("m", run.candidate_version)
        return run.state, run.error, v, tx.aliases.get("m", "production"), \
            [e.message for e in tx.audit.events("m", kind="validation")]


def test_a_daily_model_after_a_concept_flip_is_promoted_by_walk_forward(any_db_url, tmp_path):
    clock = SimClock(T0)
    ctx = make_context(any_db_url, tmp_path, clock=clock,
                       config=_config("daily_with_a_flip", params={"flip_at": T0.timestamp()}))
    sync_models(ctx)
    # Given production trained on the old concept (the first version goes straight to production)
    _retrain(ctx, "initial model")
    assert _latest(ctx)[3] == "1.0.0"
    # When the concept flipped 100 days ago and a retraining runs, with no live rows at all
    clock.advance(timedelta(days=100))
    _retrain(ctx, "accuracy collapsed")
    state, error, v2, production, said = _latest(ctx)
    gate = v2.metrics["gate"]
    # Then it was judged by walk-forward, saying why (no live rate could fill a shadow in time)
    assert gate["gate"] == "walk_forward" and "walk-forward on recent history" in gate["reason"]
    assert gate["refits"] == 3 and gate["rows"] >= 30 and gate["rows_needed"] > gate["rows"]
    # and it won there and became production at once, without shadow or canary
    assert gate["verdict"] == "passed", gate["detail"]
    assert production == v2.version == "1.1.0" and state == "done", (state, error)
    assert "Walk-forward over the" in said[-1] and "McNemar" in said[-1]
    # And every row compared is newer than production's training data
    with ctx.store.tx() as tx:
        v1 = tx.versions.get("m", "1.0.0")
    walk = ctx.artifacts.load_object(v2.metrics["holdout_sha256"])["walk_forward"]
    assert walk["ts"].min() > v1.data_end.timestamp()
    assert len(walk["y"]) == len(walk["candidate"]) == len(walk["production"]) == gate["rows"]


def test_walk_forward_has_no_look_ahead_a_memorizing_model_is_rejected(any_db_url, tmp_path):
    clock = SimClock(T0)
    ctx = make_context(any_db_url, tmp_path, clock=clock,
                       config=_config("daily_coin_flips", entry="tests.integration.test_validation_gates:memorize",
                                      lookback_days=400))
    sync_models(ctx)
    _retrain(ctx, "initial model")
    # Given a model that is perfect on every row it trained on and a coin flip elsewhere
    clock.advance(timedelta(days=200))
    # When a retraining is judged by walk-forward
    _retrain(ctx, "scheduled")
    state, error, v2, production, _ = _latest(ctx)
    # Then the comparison saw no row any fit trained on: a coin flip against a coin flip, rejected
    assert v2.metrics["gate"]["gate"] == "walk_forward"
    walk = ctx.artifacts.load_object(v2.metrics["holdout_sha256"])["walk_forward"]
    accuracy = float(np.mean(walk["candidate"] == walk["y"]))
    assert 0.3 < accuracy < 0.7, accuracy
    assert state == "rejected" and production == "1.0.0", (state, error)


def test_a_streaming_model_goes_to_shadow_which_waits_for_the_rows_its_test_needs(any_db_url, tmp_path):
    clock = SimClock(T0)
    ctx = make_context(any_db_url, tmp_path, clock=clock, config=_config("streaming", lookback_days=2))
    sync_models(ctx)
    _retrain(ctx, "initial model")
    # Given 5,000 labelled predictions a minute over the last two days
    with ctx.store.tx() as tx:
        tx.monitoring.add_buckets([{"model": "m", "version": "1.0.0", "minute": T0 - timedelta(minutes=m),
                                    "n": 5000, "tp": 1500, "tn": 1500, "fp": 1000, "fn": 1000, "ret_sum": 0.0,
                                    "ret_sq_sum": 0.0, "unlabelled": 0}
                                   for m in range(0, 48 * 60, 10)])
    clock.advance(timedelta(hours=1))
    # When a retraining is validated
    _retrain(ctx, "scheduled")
    state, error, v2, production, said = _latest(ctx)
    gate = v2.metrics["gate"]
    # Then it goes live, to shadow, which waits for the paired rows the test needs, said in the record
    assert gate["gate"] == "shadow" and state == "shadow", (gate, state, error)
    assert f"{gate['rows_needed']:,} (what the paired test needs)" in " ".join(
        e for e in _audit(ctx) if "enters shadow" in e)
    shown = describe_rollout(ctx, "m")
    assert any(f"(minimum {gate['rows_needed']})" in n for n in shown["needs"]), shown


def _audit(ctx):
    with ctx.store.tx() as tx:
        return [e.message for e in tx.audit.events("m")]


def test_training_prices_the_opportunity_at_the_serving_rate_even_with_a_label_delay(any_db_url, tmp_path):
    from retrain.core.policy import serving_rate

    ctx = make_context(any_db_url, tmp_path, clock=SimClock(T0), config=_config("streaming", lookback_days=2))
    # Given one prediction a day for four weeks whose outcomes arrive a day late (the last day is empty)
    with ctx.store.tx() as tx:
        tx.monitoring.add_buckets([{"model": "m", "version": "1.0.0", "minute": T0 - timedelta(days=d), "n": 1, "tp": 1,
                                    "tn": 0, "fp": 0, "fn": 0, "ret_sum": 0.0, "ret_sq_sum": 0.0, "unlabelled": 0}
                                   for d in range(2, 30)])
        served = tx.monitoring.served("m", T0 - timedelta(days=30), T0)
    # Then the rate the training's opportunity cost uses reads one a day, not zero
    assert serving_rate(*served, T0)[0] == pytest.approx(1.0)
