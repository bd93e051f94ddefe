"""Drift that means something: the reference is the production version's training window,
refreshed at each promotion; a drift that persists does not ask again every hour; a
drift that worsens, or one found against a new reference, does; a drift with healthy
accuracy is reported (``retrain drift MODEL``) but not asked for again.

The data source below is importable by the steps (``tests.integration.test_drift_reference:history``);
``WORLD`` says what the training data looks like when a version is trained.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from datetime import timedelta

import numpy as np
import pytest

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.steps.decide import decide_request
from retrain.steps.dispatch import drain, run_step
from retrain.steps.promote import rollback
from retrain.steps.requests import sync_models
from retrain.steps.sweep import drift_state, sweep
from tests.conftest import T0, make_context

pytestmark = pytest.mark.integration

FEATURES = ["f0", "f1", "f2", "f3"]
WORLD = {"shift": {}, "flip": False}


def history(now, lookback, params):
    """1,500 rows a minute apart up to ``now``: the label follows f1 (inverted when ``WORLD['flip']``),
    features standard normal but shifted as ``WORLD['shift']`` says."""
    rng = np.random.default_rng(int(now.timestamp()) % 2**32)
    n = 1500
    X = rng.normal(size=(n, len(FEATURES)))
    for j, by in WORLD["shift"].items():
        X[:, j] += by
    y = ((X[:, 1] + 0.3 * rng.normal(size=n) > 0) ^ WORLD["flip"]).astype(np.int64)
    return X, y, now.timestamp() - 60.0 * np.arange(n, 0, -1)


@pytest.fixture(autouse=True)
def _world():
    WORLD.update(shift={}, flip=False)
    yield
    WORLD.update(shift={}, flip=False)


def _config(**model):
    body = {"entry_point": "retrain.examples.direction:train",
            "data_source": "tests.integration.test_drift_reference:history", "features": FEATURES,
            "thresholds": {"min_samples": 1000}, "emergency": {"enabled": False},
            "validation": {"shadow_enabled": False}, "rollout": {"enabled": False},
            "drift": {"min_rows": 500, "check_every_minutes": 60, "current_minutes": 60}}
    body.update(model)
    return parse_config({"policy": {"max_cpu_load_pct": 10_000, "min_free_memory_mb": 0, "min_free_disk_mb": 0,
                                    "approval_days": 0, "cooldown_hours": 0, "max_runs_per_model_per_day": 100,
                                    "value_per_accuracy_point_usd": 0.01},
                         "models": {"m": body}})


def _retrain(ctx, reason: str) -> None:
    run_step(ctx, "retrain.request_retraining", {"v": 1, "model": "m", "reason": reason, "requested_by": "test",
                                                 "approved_by": "test", "override_budget": True,
                                                 "override_reason": "test"})
    drain(ctx)


def _live(ctx, shift: dict[int, float], seed: int, rows: int = 800) -> None:
    """``rows`` live sample rows over the last 50 minutes, shifted as ``shift`` says."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, len(FEATURES)))
    for j, by in shift.items():
        X[:, j] += by
    now = ctx.now()
    with ctx.store.tx() as tx:
        version = tx.aliases.get("m", "production")
        tx.monitoring.add_samples([{"model": "m", "version": version, "ts": now - timedelta(seconds=3 * (i + 1)),
                                    "features": X[i].tolist(), "prediction": 1, "label": 1, "ret": 0.0} for i in range(rows)])


def _drift_requests(ctx):
    with ctx.store.tx() as tx:
        return [r for r in tx.requests.newest("m", limit=100) if r.trigger == "drift"]


def _reject(ctx, rid: str) -> None:
    """The request is rejected (the model is paused), as a drift with nothing to recover often is."""
    with ctx.store.tx() as tx:
        tx.models.set_paused("m", True, "ops", "test", ctx.now())
    assert decide_request(ctx, rid).verdict == "reject"
    with ctx.store.tx() as tx:
        tx.models.set_paused("m", False, "ops", "test", ctx.now())


def _latest(ctx):
    with ctx.store.tx() as tx:
        return tx.monitoring.latest_drift_report("m").report


def test_reference_is_refreshed_at_promotion_and_a_persistent_drift_asks_once(any_db_url, tmp_path):
    clock = SimClock(T0)
    ctx = make_context(any_db_url, tmp_path, config=_config(), clock=clock)
    sync_models(ctx)
    # Given version 1.0.0 trained on unshifted data and promoted
    _retrain(ctx, "initial model")
    with ctx.store.tx() as tx:
        v1 = tx.versions.get("m", "1.0.0")
        state = drift_state(tx, "m")
        audit = [e.message for e in tx.audit.events("m", kind="drift")]
    # Then the drift reference is its training window, set by the promotion
    assert (state["version"], state["set_by"], state["reference_sha256"]) == ("1.0.0", "promotion",
                                                                            v1.metrics["reference_sha256"])
    assert state["window"] == [v1.data_start.isoformat(), v1.data_end.isoformat()]
    assert state["reference_rows"] == v1.data_rows == 1200 and state["episode"]["asks"] == 0
    assert audit and "training window of 1.0.0 (1200 rows" in audit[-1]

    # When live f0 moves by 0.8 sd and the sweep checks
    clock.advance(timedelta(hours=1))
    _live(ctx, {0: 0.8}, seed=1)
    first = sweep(ctx)
    # Then one drift request is opened, and rejected
    [req] = _drift_requests(ctx)
    assert first.requests_opened == [req.id] and req.evidence["drifted"] == ["f0"]
    assert req.evidence["reference"]["version"] == "1.0.0" and "first drift" in req.evidence["why"]
    _reject(ctx, req.id)

    # When the same drift persists for the next six hours, checked every hour
    for hour in range(6):
        clock.advance(timedelta(hours=1))
        _live(ctx, {0: 0.8}, seed=10 + hour)
        result = sweep(ctx)
        assert result.drift_checks == 1 and not result.requests_opened
        # Then each check is reported, and says why it asked nothing
        report = _latest(ctx)
        assert report["drifted_features"] == ["f0"] and report["request"]["asked"] is False
        assert "persists" in report["request"]["why"] and report["reference"]["version"] == "1.0.0"
    assert len(_drift_requests(ctx)) == 1

    # When it worsens (f2 moves too)
    clock.advance(timedelta(hours=1))
    _live(ctx, {0: 0.8, 2: 0.8}, seed=20)
    worse = sweep(ctx)
    # Then it asks again, saying what got worse
    assert len(worse.requests_opened) == 1
    req2 = next(r for r in _drift_requests(ctx) if r.id == worse.requests_opened[0])
    assert "f2 drifted" in req2.evidence["why"] and req2.evidence["drifted"] == ["f0", "f2"]
    _reject(ctx, req2.id)

    # When version 1.1.0, trained on unshifted data too (the label flipped), is promoted
    clock.advance(timedelta(hours=1))
    WORLD["flip"] = True
    _retrain(ctx, "concept changed")
    with ctx.store.tx() as tx:
        assert tx.aliases.get("m", "production") == "1.1.0"
        state = drift_state(tx, "m")
        v2 = tx.versions.get("m", "1.1.0")
    # Then the reference is the new version's training window, and nothing is remembered as asked
    assert (state["version"], state["reference_sha256"]) == ("1.1.0", v2.metrics["reference_sha256"])
    assert state["episode"] == {"reference": v2.metrics["reference_sha256"], "asked": {}, "asks": 0,
                                "last_asked_at": None}
    # And the same drift asks once against the new reference
    _live(ctx, {0: 0.8, 2: 0.8}, seed=30)
    again = sweep(ctx)
    assert len(again.requests_opened) == 1
    req3 = next(r for r in _drift_requests(ctx) if r.id == again.requests_opened[0])
    assert req3.evidence["reference"]["version"] == "1.1.0" and "first drift" in req3.evidence["why"]
    _reject(ctx, req3.id)

    # When version 1.2.0 is trained on the moved data and promoted
    clock.advance(timedelta(hours=1))
    WORLD.update(shift={0: 0.8, 2: 0.8}, flip=False)
    _retrain(ctx, "concept changed back")
    _live(ctx, {0: 0.8, 2: 0.8}, seed=40)
    clean = sweep(ctx)
    # Then, against its training window, the live data has not drifted
    assert clean.drift_checks == 1 and not clean.requests_opened
    report = _latest(ctx)
    assert report["drifted_features"] == [] and report["reference"]["version"] == "1.2.0"

    # And after a rollback (not a promotion) the sweep follows production to 1.1.0's reference
    rollback(ctx, "m", actor="ops", reason="test")
    clock.advance(timedelta(hours=1))
    _live(ctx, {0: 0.8, 2: 0.8}, seed=50)
    sweep(ctx)
    with ctx.store.tx() as tx:
        state = drift_state(tx, "m")
    assert (state["version"], state["set_by"]) == ("1.1.0", "sweep")
    assert _latest(ctx)["reference"]["version"] == "1.1.0" and len(_drift_requests(ctx)) == 4


# ------------------------------------------------------------------ healthy accuracy


def _seed_production(ctx, reference: np.ndarray) -> None:
    sync_models(ctx)
    ref = ctx.artifacts.put_object(reference)
    now = ctx.now()
    with ctx.store.tx() as tx:
        tx.versions.add(model="m", version="1.0.0", major=1, minor=0, patch=0, status="production",
                        created_at=now - timedelta(days=3), deleted_at=None, artifact_sha256=ref.sha256,
                        artifact_size=ref.size, bump_kind="initial", bump_reason="test", parent_version=None,
                        data_start=None, data_end=None, data_rows=len(reference), data_fingerprint="",
                        feature_schema=FEATURES, params={},
                        metrics={"baseline": {"accuracy": 0.60}, "reference_sha256": ref.sha256},
                        git_commit=None, request_id=None, decision_id=None, run_id=None, cost_usd=0.0)
        tx.aliases.move("m", "production", "1.0.0", actor="test", reason="seed", now=now - timedelta(days=3))


def _healthy_buckets(ctx, minutes: int = 240, per_minute: int = 20, seed: int = 0) -> None:
    """Live outcomes at the baseline accuracy (0.60) for the last ``minutes``."""
    rng = np.random.default_rng(seed)
    end = ctx.now().replace(second=0, microsecond=0)
    rows = []
    for i in range(minutes):
        hits = int(rng.binomial(per_minute, 0.60))
        rows.append({"model": "m", "version": "1.0.0", "minute": end - timedelta(minutes=minutes - i),
                     "n": per_minute, "tp": hits, "fp": 0, "tn": 0, "fn": per_minute - hits, "ret_sum": 0.0,
                     "ret_sq_sum": 0.0, "unlabelled": 0})
    with ctx.store.tx() as tx:
        tx.monitoring.add_buckets(rows)


def test_drift_with_healthy_accuracy_is_reported_not_asked_again(sqlite_url, tmp_path, monkeypatch):
    clock = SimClock(T0 + timedelta(days=3))
    ctx = make_context(sqlite_url, tmp_path, config=_config(), clock=clock)
    _seed_production(ctx, np.random.default_rng(0).normal(size=(4000, len(FEATURES))))
    # Given live accuracy at its baseline, and live f0 moved by 0.8 sd
    _healthy_buckets(ctx)
    _live(ctx, {0: 0.8}, seed=1)
    # When the sweep checks: the first drift against this reference asks once
    first = sweep(ctx)
    [req] = _drift_requests(ctx)
    assert first.requests_opened == [req.id] and _latest(ctx)["accuracy"]["healthy"] is True
    _reject(ctx, req.id)

    # When the drift grows (f3 moves too, f0 further) while accuracy stays healthy, for two days of hourly checks
    for hour in range(48):
        clock.advance(timedelta(hours=1))
        _healthy_buckets(ctx, minutes=60, seed=hour + 1)
        _live(ctx, {0: 1.5, 3: 0.8}, seed=100 + hour)
        result = sweep(ctx)
        assert result.drift_checks == 1 and not result.requests_opened
    # Then every check is reported, drifted, and none asked: accuracy is healthy
    assert len(_drift_requests(ctx)) == 1
    report = _latest(ctx)
    assert report["drifted_features"] == ["f0", "f3"] and report["request"]["asked"] is False
    assert "healthy accuracy" in report["request"]["why"] and report["accuracy"]["healthy"] is True

    # And `retrain drift m --json` shows that report with its reference and why nothing was asked
    monkeypatch.setenv("RETRAIN_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    from retrain.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["drift", "m", "--json"]) == 0
    shown = json.loads(out.getvalue())
    assert shown["drifted"] is True and "healthy accuracy" in shown["report"]["request"]["why"]
    assert shown["report"]["reference"]["version"] == "1.0.0"

    # When accuracy is no longer known to be healthy (no outcomes), the grown drift asks again
    clock.advance(timedelta(hours=5))
    _live(ctx, {0: 1.5, 3: 0.8}, seed=999)
    assert len(sweep(ctx).requests_opened) == 1
