"""The whole loop in-process on the embedded default (SQLite) and on Postgres.

The same steps the workers run, driven through the outbox on a simulated clock:
the example model serves the synthetic market, the regime shifts at +36 h, the
performance trigger fires, a retrained version is promoted, and the audit trail
and `retrain status` tell the story.
"""

from __future__ import annotations

import json
import tomllib
import uuid
from datetime import timedelta

import numpy as np
import pytest

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.examples.direction import market_from_params
from retrain.serving import StoreRoutingReader, routes_to_canary
from retrain.steps.dispatch import STEPS, drain, run_step
from retrain.steps.requests import sync_models
from tests.conftest import EXAMPLE_CONFIG, T0, make_context

pytestmark = pytest.mark.timeout(240)


def _config():
    raw = tomllib.loads(EXAMPLE_CONFIG.read_text())
    raw["policy"]["approval_days"] = 0  # no operator in this test
    return parse_config(raw, "direction.toml (test)")


def _tick(ctx, market, cfg, step):
    now = ctx.now()
    # The trading app's split, as retrain.serving.ModelRouter does it: production, and the
    # canary for the keys its share routes to it.
    route = StoreRoutingReader(ctx.store)("direction")
    rows = market.rows(now, now + step)
    ctx.clock.advance(step)
    if route.production is None:
        return None
    ids = [f"{int(t)}-{i}" for i, t in enumerate(rows.ts)]
    pred = ctx.artifacts.load_object(route.production_sha256).predict(rows.X)
    versions = [route.production] * len(rows)
    if route.canary is not None:
        to_canary = np.array([routes_to_canary(k, route.share_pct) for k in ids])
        pred = np.where(to_canary, ctx.artifacts.load_object(route.canary_sha256).predict(rows.X), pred)
        versions = [route.canary if c else route.production for c in to_canary]
    run_step(ctx, "retrain.ingest", {
        "v": 1, "batch_id": uuid.uuid4().hex, "model": "direction",
        "id": ids, "version": versions,
        "ts": rows.ts.astype(float).tolist(), "x": rows.X.tolist(), "prediction": pred.astype(int).tolist(),
        "label": rows.y.astype(int).tolist(), "ret": rows.ret.astype(float).tolist()})
    return float(np.mean(pred == rows.y))


def test_regime_change_is_detected_retrained_and_promoted(any_db_url, tmp_path, capsys, monkeypatch):
    # Given the example model with its first version in production
    ctx = make_context(any_db_url, tmp_path, config=_config(), clock=SimClock(T0))
    sync_models(ctx)
    run_step(ctx, "retrain.request_retraining", {"v": 1, "model": "direction", "reason": "initial model",
                                                 "requested_by": "test", "approved_by": "test"})
    drain(ctx)
    with ctx.store.tx() as tx:
        assert tx.aliases.get("direction", "production") == "1.0.0"

    # When the market runs for three simulated days (the regime shifts at +36 h)
    market = market_from_params(dict(ctx.config.model("direction").params))
    step = timedelta(minutes=10)
    for i in range(int(timedelta(days=3) / step)):
        _tick(ctx, market, ctx.config.model("direction"), step)
        if i % 3 == 2:
            run_step(ctx, "retrain.sweep", {"v": 1})
            if "retrain.evaluate_rollouts" in STEPS:
                run_step(ctx, "retrain.evaluate_rollouts", {"v": 1})
        drain(ctx)

    # Then a performance request after the shift led to a new production version
    with ctx.store.tx() as tx:
        requests = tx.requests.newest("direction", limit=500)
        prod = tx.aliases.get("direction", "production")
        history = tx.aliases.history("direction")
        events = tx.audit.events("direction", limit=5000)
        dead = tx.dead_letters.newest()
    shift = T0 + timedelta(hours=36)
    perf = [r for r in requests if r.trigger == "performance"]
    assert perf and min(r.created_at for r in perf) > shift
    assert min(r.created_at for r in perf) < shift + timedelta(hours=6)  # detected within hours
    promoted_after_shift = [h for h in history if h.alias == "production" and h.at > shift]
    assert promoted_after_shift, [(h.alias, h.to_version, h.at) for h in history]
    assert prod != "1.0.0"
    kinds = {e.kind for e in events}
    assert {"request", "decision", "run", "training", "version", "validation", "promotion"} <= kinds
    assert dead == []

    # And the live accuracy of the new production version is back in the model's band
    acc = [_tick(ctx, market, ctx.config.model("direction"), step) for _ in range(18)]
    assert np.mean(acc) > 0.56

    # And `retrain status --json` reads the same database
    if any_db_url.startswith("sqlite"):
        from retrain.cli import main

        monkeypatch.setenv("RETRAIN_DATABASE_URL", any_db_url)
        monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
        monkeypatch.setenv("RETRAIN_CONFIG", str(EXAMPLE_CONFIG))
        capsys.readouterr()
        assert main(["status", "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        (model,) = status["models"]
        assert model["model"] == "direction" and model["production"] == prod
