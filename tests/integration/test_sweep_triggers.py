"""The sweep's triggers on a real database: performance, drift and emergency, end to end to the decision.

Each test seeds a production version (its validated baseline and its training
reference sample as an artifact) and live buckets or sample rows, runs the sweep
step at a simulated time, and follows its outbox into the decision step.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from datetime import datetime, timedelta

import numpy as np
import pytest

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.steps.decide import decide_request
from retrain.steps.requests import sync_models
from retrain.steps.sweep import sweep
from tests.conftest import T0, make_context

pytestmark = pytest.mark.integration

NOW = T0 + timedelta(days=2)
FEATURES = [f"f{i}" for i in range(8)]


def _config(**model_tables):
    tables = {"thresholds": {"min_samples": 1000}, "drift": {"enabled": False}, "emergency": {"enabled": False}}
    tables.update(model_tables)
    return parse_config({
        # A test machine's CPU load must not defer the decision; the value model must see a benefit.
        "policy": {"max_cpu_load_pct": 10_000, "min_free_memory_mb": 0, "min_free_disk_mb": 0,
                   "value_per_accuracy_point_usd": 0.01},
        "models": {"direction": {"entry_point": "retrain.examples.direction:train", "features": FEATURES,
                                 **tables}},
    })


def _seed(ctx, reference: np.ndarray | None = None, baseline: dict | None = None, deployed_days: float = 2.0,
          now: datetime = NOW) -> None:
    """Version 1.0.0 in production, deployed ``deployed_days`` ago (inside the first-week approval gate)."""
    sync_models(ctx)
    ref = ctx.artifacts.put_object(reference if reference is not None else np.zeros((10, 8)))
    with ctx.store.tx() as tx:
        tx.models.set_deployed("direction", now - timedelta(days=deployed_days))
        tx.versions.add(model="direction", version="1.0.0", major=1, minor=0, patch=0, status="production",
                        created_at=now - timedelta(days=3), deleted_at=None, artifact_sha256=ref.sha256,
                        artifact_size=ref.size, bump_kind="initial", bump_reason="test", parent_version=None,
                        data_start=None, data_end=None, data_rows=0, data_fingerprint="", feature_schema=FEATURES,
                        params={}, metrics={"baseline": baseline or {"accuracy": 0.60}, "reference_sha256": ref.sha256},
                        git_commit=None, request_id=None, decision_id=None, run_id=None, cost_usd=0.0)
        tx.aliases.move("direction", "production", "1.0.0", actor="test", reason="seed", now=now - timedelta(days=3))


def _buckets(ctx, accuracies: list[float], per_minute: int, end: datetime, seed: int = 0) -> None:
    """One bucket a minute up to ``end`` (exclusive), accuracy drawn per minute (all labels 1)."""
    rng = np.random.default_rng(seed)
    start = end - timedelta(minutes=len(accuracies))
    rows = []
    for i, acc in enumerate(accuracies):
        hits = int(rng.binomial(per_minute, acc))
        rows.append({"model": "direction", "version": "1.0.0", "minute": start + timedelta(minutes=i),
                     "n": per_minute, "tp": hits, "fp": 0, "tn": 0, "fn": per_minute - hits,
                     "ret_sum": 0.001 * (2 * hits - per_minute), "ret_sq_sum": 1e-6 * per_minute,
                     "unlabelled": 0})
    with ctx.store.tx() as tx:
        tx.monitoring.add_buckets(rows)


def _requests(ctx, trigger: str):
    with ctx.store.tx() as tx:
        return [(r.id, r.status, r.priority, r.severity, dict(r.evidence)) for r in tx.requests.newest("direction")
                if r.trigger == trigger]


def _outbox(ctx):
    with ctx.store.tx() as tx:
        return [(m.task, m.payload, m.priority) for m in tx.outbox.pending(limit=100)]


# ----------------------------------------------------------------------------- performance


def test_performance_drop_opens_one_request_refreshed_with_new_evidence(any_db_url, tmp_path):
    clock = SimClock(NOW)
    ctx = make_context(any_db_url, tmp_path, config=_config(), clock=clock)
    _seed(ctx)
    # Given three hours at the baseline, then an hour at 0.50
    _buckets(ctx, [0.60] * 180 + [0.50] * 60, per_minute=100, end=NOW)
    # When the sweep runs
    result = sweep(ctx)
    # Then one performance request carries the evidence, and the decision is asked, with priority 7
    [(rid, status, priority, _, evidence)] = _requests(ctx, "performance")
    assert status == "open" and priority == 7 and result.requests_opened == [rid]
    assert evidence["metric"] == "accuracy" and evidence["baseline_accuracy"] == 0.60
    assert evidence["current_accuracy"] < 0.58 and evidence["version"] == "1.0.0"
    assert [(t, p["request_id"], pr) for t, p, pr in _outbox(ctx)] == [("retrain.decide", rid, 7)]

    # When it keeps failing and the sweep runs again ten minutes later
    _buckets(ctx, [0.45] * 10, per_minute=100, end=NOW + timedelta(minutes=10), seed=1)
    clock.advance(timedelta(minutes=10))
    again = sweep(ctx)
    # Then the same request is refreshed with the new figures, and nothing new is sent
    [(rid2, _, _, _, evidence2)] = _requests(ctx, "performance")
    assert rid2 == rid and again.requests_refreshed == [rid] and not again.requests_opened
    assert evidence2["current_accuracy"] < evidence["current_accuracy"]
    assert len(_outbox(ctx)) == 1


def test_a_model_at_its_baseline_opens_nothing(any_db_url, tmp_path):
    ctx = make_context(any_db_url, tmp_path, config=_config(), clock=SimClock(NOW))
    _seed(ctx)
    _buckets(ctx, [0.60] * 240, per_minute=100, end=NOW)
    assert sweep(ctx).firings == [] and _outbox(ctx) == []


def test_thresholds_come_from_the_model_file(sqlite_url, tmp_path):
    # Given recall watched as well, with a 10 % drop rule, no floor and a smaller ARL
    cfg = _config(thresholds={"metrics": ["accuracy", "recall"], "relative_drop": 0.1, "accuracy_floor": 0,
                              "min_samples": 500, "arl0": 1e5})
    ctx = make_context(sqlite_url, tmp_path, config=cfg, clock=SimClock(NOW))
    from retrain.steps.sweep import performance_config

    pc = performance_config(cfg.models["direction"], "recall")
    assert (pc.metric, pc.relative_drop, pc.floor, pc.min_samples, pc.arl0) == ("recall", 0.1, None, 500, 1e5)
    _seed(ctx, baseline={"accuracy": 0.60, "recall": 0.60})
    _buckets(ctx, [0.60] * 120 + [0.40] * 60, per_minute=100, end=NOW)
    sweep(ctx)
    [(_, _, _, _, evidence)] = _requests(ctx, "performance")
    # (every label is 1 here, so recall is accuracy and both fall)
    assert evidence["metrics_fired"] == ["accuracy", "recall"] and evidence["relative"]["arl0"] == 1e5


# ----------------------------------------------------------------------------- drift


def test_a_shifted_live_sample_raises_a_drift_request_and_a_stored_report(any_db_url, tmp_path, monkeypatch):
    clock = SimClock(NOW)
    cfg = _config(drift={"enabled": True, "min_rows": 500, "check_every_minutes": 60})
    ctx = make_context(any_db_url, tmp_path, config=cfg, clock=clock)
    rng = np.random.default_rng(3)
    _seed(ctx, reference=rng.normal(size=(4000, 8)))
    # Given live rows of the last hours whose f0 and f3 moved by half a standard deviation
    live = rng.normal(size=(2000, 8))
    live[:, [0, 3]] += 0.5
    with ctx.store.tx() as tx:
        tx.monitoring.add_samples([{"model": "direction", "version": "1.0.0", "ts": NOW - timedelta(seconds=5 * (i + 1)),
                                    "features": live[i].tolist(), "prediction": 1, "label": 1, "ret": 0.0}
                                   for i in range(len(live))])
    # When the sweep runs
    result = sweep(ctx)
    # Then the drift report names the two features, and a drift request (priority 5) goes to the decision
    assert result.drift_checks == 1
    [(rid, status, priority, _, evidence)] = _requests(ctx, "drift")
    assert status == "open" and priority == 5 and evidence["drifted"] == ["f0", "f3"]
    assert evidence["rows"] == 2000 and evidence["worst"][0]["p_adjusted"] < 1e-10
    assert ("retrain.decide", {"v": 1, "request_id": rid}, 5) in _outbox(ctx)
    with ctx.store.tx() as tx:
        report = tx.monitoring.latest_drift_report("direction")
    assert report.drifted and report.report["drifted_features"] == ["f0", "f3"]

    # And `retrain drift direction` shows it
    monkeypatch.setenv("RETRAIN_DATABASE_URL", any_db_url)
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    from retrain.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["drift", "direction", "--json"]) == 0
    shown = json.loads(out.getvalue())
    assert "f0" in json.dumps(shown) and "f3" in json.dumps(shown)

    # And the cadence: a sweep ten minutes later does not test again; one an hour later does
    clock.advance(timedelta(minutes=10))
    assert sweep(ctx).drift_checks == 0
    clock.advance(timedelta(minutes=51))
    assert sweep(ctx).drift_checks == 1
    assert len(_requests(ctx, "drift")) == 1  # the open request was refreshed, not duplicated


def test_an_unshifted_sample_is_checked_and_reported_clean(sqlite_url, tmp_path):
    cfg = _config(drift={"enabled": True, "min_rows": 500})
    ctx = make_context(sqlite_url, tmp_path, config=cfg, clock=SimClock(NOW))
    rng = np.random.default_rng(4)
    _seed(ctx, reference=rng.normal(size=(4000, 8)))
    with ctx.store.tx() as tx:
        tx.monitoring.add_samples([{"model": "direction", "version": "1.0.0", "ts": NOW - timedelta(seconds=5 * (i + 1)),
                                    "features": rng.normal(size=8).tolist(), "prediction": 1, "label": 1, "ret": 0.0}
                                   for i in range(2000)])
    assert sweep(ctx).drift_checks == 1 and _requests(ctx, "drift") == []
    with ctx.store.tx() as tx:
        assert tx.monitoring.latest_drift_report("direction").drifted is False


# ----------------------------------------------------------------------------- emergency


def test_a_collapse_is_an_emergency_that_skips_approval_and_queues_training_first(any_db_url, tmp_path):
    cfg = _config(emergency={"enabled": True})
    ctx = make_context(any_db_url, tmp_path, config=cfg, clock=SimClock(NOW))
    # Given a model two days into its first week (its retrainings need a person's approval)
    _seed(ctx, deployed_days=2)
    # And ten hours at 0.60, then per-bucket accuracy collapsing to 0.10 for the last 15 minutes
    _buckets(ctx, [0.60] * 600 + [0.10] * 15, per_minute=60, end=NOW)
    # When the sweep runs
    sweep(ctx)
    # Then an emergency request with the highest priority and a severity is open
    [(rid, status, priority, severity, evidence)] = _requests(ctx, "emergency")
    assert (status, priority, severity) == ("open", 9, "CRITICAL")
    assert evidence["z"] > 6 and evidence["metric"] in ("accuracy", "mean_return")
    decide_msgs = [(p["request_id"], pr) for t, p, pr in _outbox(ctx) if t == "retrain.decide"]
    assert (rid, 9) in decide_msgs

    # When the decision takes it
    result = decide_request(ctx, rid)
    # Then it is approved although the approval gate applies, the bypass is audited,
    # and the training run is queued with the highest priority
    assert result.verdict == "approve", result.summary
    with ctx.store.tx() as tx:
        run = tx.runs.get(result.run_id)
        decision = tx.decisions.get(result.decision_id)
        bypass = tx.audit.events("direction", kind="bypass")
    approval = next(r for r in decision.rules if r["rule"] == "approval")
    assert approval["bypassed"] is True and approval["passed"] is False
    assert bypass and "approval" in bypass[-1].message and bypass[-1].subject == result.decision_id
    assert run.priority == 9 and run.trigger == "emergency"
    assert ("retrain.train", {"v": 1, "run_id": result.run_id}, 9) in _outbox(ctx)

    # And while that run is in flight, the collapse seen again opens nothing new
    again = sweep(ctx)
    assert not again.requests_opened and len(_requests(ctx, "emergency")) == 1
    assert any("already joined run" in h["why"] for h in again.held_back)


def test_a_rejected_trigger_asks_again_only_after_refire_minutes(sqlite_url, tmp_path):
    clock = SimClock(NOW)
    ctx = make_context(sqlite_url, tmp_path, config=_config(), clock=clock)
    _seed(ctx)
    _buckets(ctx, [0.60] * 180 + [0.50] * 120, per_minute=100, end=NOW + timedelta(minutes=60))
    # Given a performance request rejected because the model is paused
    with ctx.store.tx() as tx:
        tx.models.set_paused("direction", True, "ops", "maintenance", NOW)
    [rid] = sweep(ctx).requests_opened
    assert decide_request(ctx, rid).verdict == "reject"
    # When the trigger keeps firing: held back for the next hour, then asked again
    clock.advance(timedelta(minutes=30))
    held = sweep(ctx)
    assert not held.requests_opened and "rejected" in held.held_back[0]["why"]
    clock.advance(timedelta(minutes=31))
    assert len(sweep(ctx).requests_opened) == 1


def test_min_severity_holds_back_weaker_emergencies(sqlite_url, tmp_path):
    cfg = _config(emergency={"enabled": True, "min_severity": "CRITICAL"})
    ctx = make_context(sqlite_url, tmp_path, config=cfg, clock=SimClock(NOW))
    _seed(ctx)
    # A dip of about 4 sigma in the latest bucket only: MEDIUM at most
    _buckets(ctx, [0.60] * 600 + [0.45] * 5, per_minute=60, end=NOW)
    sweep(ctx)
    assert _requests(ctx, "emergency") == []


def test_emergency_through_real_workers_lands_first_in_the_training_queue(pg_url, redis_url, tmp_path):
    """The same collapse, with the sweep sent by name to a real `celery worker -Q monitoring,decision`."""
    import base64
    import time as _time
    from datetime import timezone

    import redis

    from retrain.client import kombu_sender
    from tests.procs import retrain_env, start_worker, wait_for

    toml = tmp_path / "retrain.toml"
    toml.write_text(
        '[policy]\nmax_cpu_load_pct = 10000\nmin_free_memory_mb = 0\nmin_free_disk_mb = 0\n'
        'value_per_accuracy_point_usd = 0.01\n'
        '[models.direction]\nentry_point = "retrain.examples.direction:train"\n'
        f'features = {json.dumps(FEATURES)}\n'
        '[models.direction.drift]\nenabled = false\n'
    )
    now = datetime.now(timezone.utc)
    ctx = make_context(pg_url, tmp_path, config=parse_config({"models": {"direction": {
        "entry_point": "retrain.examples.direction:train", "features": FEATURES}}}), clock=SimClock(now))
    _seed(ctx, deployed_days=2, now=now)
    _buckets(ctx, [0.60] * 600 + [0.10] * 15, per_minute=60, end=now.replace(second=0, microsecond=0)
             + timedelta(minutes=1))
    env = retrain_env(RETRAIN_DATABASE_URL=pg_url, RETRAIN_BROKER_URL=redis_url, RETRAIN_CONFIG=str(toml),
                      RETRAIN_HOME=str(tmp_path), RETRAIN_ARTIFACT_ROOT=str(tmp_path / "artifacts"))
    worker = start_worker("monitoring", "monitoring,decision", env, tmp_path)
    try:
        send = kombu_sender(redis_url)
        t0 = _time.monotonic()
        send("retrain.sweep", {"v": 1}, "monitoring", 5)

        def queued_training():
            r = redis.Redis.from_url(redis_url)
            msgs = [json.loads(m) for k in r.keys("training*") if r.type(k) == b"list" for m in r.lrange(k, 0, -1)]
            return msgs

        msgs = wait_for("the emergency's training message", queued_training, 60, [worker])
        latency = _time.monotonic() - t0
        [msg] = msgs
        args = json.loads(base64.b64decode(msg["body"]))[0]
        assert msg["headers"]["task"] == "retrain.train"
        assert msg["properties"]["priority"] == 0  # Redis: 0 is the highest, our 9
        with ctx.store.tx() as tx:
            run = tx.runs.get(args[0]["run_id"])
            bypass = tx.audit.events("direction", kind="bypass")
        assert run.trigger == "emergency" and run.priority == 9 and bypass
        print(f"sweep sent -> emergency training message queued in {latency:.2f} s")
    finally:
        worker.stop()
