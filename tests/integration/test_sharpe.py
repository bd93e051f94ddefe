"""Sharpe end to end: a data source with returns gives every validated version a Sharpe
baseline; Sharpe as the primary metric validates runs to a final state, and as a
trigger metric a live Sharpe drop against that baseline opens a performance request.
Without returns, a Sharpe primary metric fails the run with the field to change.

The data sources below are importable by the steps (``tests.integration.test_sharpe:...``).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.core.lifecycle import FINAL
from retrain.core.windows import Counts, strategy_returns
from retrain.steps.dispatch import drain, run_step
from retrain.steps.requests import sync_models
from retrain.steps.sweep import sweep
from tests.conftest import T0, make_context

pytestmark = pytest.mark.integration

FEATURES = ["f0", "f1"]
ROWS = 2000


def _market(now, n: int, seed: int = 0):
    """Rows a minute apart up to ``now``: the sign of the return follows f0 (about 75 % of the time)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    ret = 0.001 * (X[:, 0] + rng.normal(size=n))
    y = (ret > 0).astype(np.int64)
    ts = now.timestamp() - 60.0 * np.arange(n, 0, -1)
    return X, y, ts, ret


def history_with_returns(now, lookback, params):
    """(X, y, ts, ret): a data source that gives each row's market return."""
    return _market(now, ROWS)


def history_without_returns(now, lookback, params):
    """(X, y, ts): the older form, still accepted."""
    X, y, ts, _ = _market(now, ROWS)
    return X, y, ts


def _config(source: str, primary: str = "accuracy", metrics=("accuracy",)):
    return parse_config({
        "policy": {"max_cpu_load_pct": 10_000, "min_free_memory_mb": 0, "min_free_disk_mb": 0, "approval_days": 0,
                   "cooldown_hours": 0, "max_runs_per_model_per_day": 100},
        "models": {"m": {
            "entry_point": "retrain.examples.direction:train", "data_source": f"tests.integration.test_sharpe:{source}",
            "features": FEATURES, "primary_metric": primary, "lookback_hours": 48,
            "thresholds": {"metrics": list(metrics), "min_samples": 500, "accuracy_floor": 0},
            "validation": {"shadow_enabled": False}, "rollout": {"enabled": False},
            "drift": {"enabled": False}, "emergency": {"enabled": False},
        }},
    })


def _retrain(ctx, reason: str, on_result=None) -> None:
    run_step(ctx, "retrain.request_retraining", {"v": 1, "model": "m", "reason": reason, "requested_by": "test",
                                                 "approved_by": "test", "override_budget": True,
                                                 "override_reason": "test"})
    drain(ctx, on_result=on_result)


def _runs(ctx):
    with ctx.store.tx() as tx:
        return [(r.state, r.error, r.candidate_version) for r in tx.runs.newest("m", limit=10)]


def test_sharpe_as_primary_metric_validates_and_every_run_ends(any_db_url, tmp_path):
    clock = SimClock(T0)
    ctx = make_context(any_db_url, tmp_path, config=_config("history_with_returns", primary="sharpe"), clock=clock)
    sync_models(ctx)
    # Given a data source that returns (X, y, ts, ret)
    # When the first version is trained and validated on Sharpe
    _retrain(ctx, "initial model")
    # Then it is production with a Sharpe baseline, scored on the strategy's returns of its holdout
    with ctx.store.tx() as tx:
        assert tx.aliases.get("m", "production") == "1.0.0"
        v1 = tx.versions.get("m", "1.0.0")
        holdout = ctx.artifacts.load_object(v1.metrics["holdout_sha256"])
        model = ctx.artifacts.load_object(v1.artifact_sha256)
        passed = [e.message for e in tx.audit.events("m", kind="validation")]
    assert v1.metrics["returns"] is True and "ret" in holdout
    pred = model.predict(holdout["X"])
    live_definition = Counts.from_arrays(holdout["y"], pred, strategy_returns(pred, holdout["ret"])).sharpe
    assert v1.metrics["baseline"]["sharpe"] == pytest.approx(live_definition) and live_definition > 0.3
    assert "candidate sharpe" in passed[-1]

    # When a second run is validated against production on Sharpe (same data: no +2 %)
    clock.advance(timedelta(hours=1))
    _retrain(ctx, "again")
    # Then it is judged on Sharpe and every run is in a final state, none stuck in validating
    runs = _runs(ctx)
    assert all(state in {s.value for s in FINAL} for state, _, _ in runs), runs
    assert runs[0][0] == "rejected" and "candidate sharpe" in runs[0][1] and "needs >=" in runs[0][1]


def test_sharpe_primary_metric_without_returns_fails_the_run_naming_the_field(any_db_url, tmp_path):
    ctx = make_context(any_db_url, tmp_path, config=_config("history_without_returns", primary="sharpe"),
                       clock=SimClock(T0))
    sync_models(ctx)
    # Given a data source that returns (X, y, ts) only, and primary_metric = "sharpe"
    # When a retraining runs
    _retrain(ctx, "initial model")
    # Then the run failed before any fit, with the field and the fix, and nothing is stuck
    [(state, error, version)] = _runs(ctx)
    assert state == "failed" and version is None
    assert "models.m.primary_metric = 'sharpe' needs returns" in error and "(X, y, ts, ret)" in error


def test_validation_without_returns_fails_cleanly_when_sharpe_is_primary(sqlite_url, tmp_path):
    ctx = make_context(sqlite_url, tmp_path, config=_config("history_without_returns"), clock=SimClock(T0))
    sync_models(ctx)
    sharpe = _config("history_without_returns", primary="sharpe")

    def switch(task, result):  # the model file changes between training and validation
        if task == "retrain.train":
            ctx.config = sharpe

    # Given a candidate whose holdout has no returns, validated under primary_metric = "sharpe"
    _retrain(ctx, "initial model", on_result=switch)
    # Then validation fails the run with the field named: no KeyError, no run left in validating
    [(state, error, version)] = _runs(ctx)
    assert (state, version) == ("failed", "1.0.0")
    assert "models.m.primary_metric = 'sharpe' needs returns" in error and "holdout has none" in error
    with ctx.store.tx() as tx:
        assert tx.aliases.get("m", "production") is None and tx.versions.get("m", "1.0.0").status == "rejected"


def _ingest(ctx, model, X, y, ret, end) -> None:
    n = len(y)
    ts = end.timestamp() - 6.0 * np.arange(n, 0, -1)  # 10 outcomes a minute up to ``end``
    run_step(ctx, "retrain.ingest", {
        "v": 1, "batch_id": uuid.uuid4().hex, "model": "m", "id": [f"p-{uuid.uuid4().hex}" for _ in range(n)],
        "version": ["1.0.0"] * n, "ts": ts.tolist(), "x": X.tolist(),
        "prediction": model.predict(X).astype(int).tolist(), "label": y.astype(int).tolist(),
        "ret": ret.astype(float).tolist()})


def test_a_live_sharpe_drop_against_the_validated_baseline_fires_the_trigger(any_db_url, tmp_path):
    clock = SimClock(T0)
    ctx = make_context(any_db_url, tmp_path, clock=clock,
                       config=_config("history_with_returns", metrics=("sharpe",)))
    sync_models(ctx)
    _retrain(ctx, "initial model")
    with ctx.store.tx() as tx:
        v1 = tx.versions.get("m", "1.0.0")
    baseline = v1.metrics["baseline"]
    model = ctx.artifacts.load_object(v1.artifact_sha256)
    assert baseline["sharpe"] > 0.3

    # Given two hours of live outcomes at the baseline's accuracy and Sharpe
    clock.advance(timedelta(hours=3))
    X, y, _, ret = _market(clock.now(), 1200, seed=1)
    _ingest(ctx, model, X, y, ret, clock.now() - timedelta(minutes=1))
    # Then nothing fires
    assert sweep(ctx).firings == []

    # Given the next two hours: as many right calls, but the wrong ones now lose big and the right ones earn little
    clock.advance(timedelta(hours=2))
    X, y, _, ret = _market(clock.now(), 1200, seed=2)
    right = model.predict(X) == y
    ret = np.sign(ret) * np.where(right, 0.0002, 0.003)
    _ingest(ctx, model, X, y, ret, clock.now() - timedelta(minutes=1))
    # When the sweep runs
    result = sweep(ctx)
    # Then a performance request opens on the Sharpe rule, with the validated baseline in its evidence
    assert len(result.requests_opened) == 1, result
    with ctx.store.tx() as tx:
        [req] = [r for r in tx.requests.newest("m") if r.trigger == "performance"]
    ev = req.evidence
    assert ev["metrics_fired"] == ["sharpe"] and ev["metric"] == "sharpe"
    assert abs(ev["current_accuracy"] - baseline["accuracy"]) < 0.05  # as many right calls as before
    assert ev["baseline"] == pytest.approx(baseline["sharpe"]) and ev["value"] < 0.5 * baseline["sharpe"]
    assert ev["relative"]["test"] == "sharpe_upper_bound" and "sharpe fell from its baseline" in req.reason.lower()
