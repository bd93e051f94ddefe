"""Shadow, staged rollout and automatic rollback with real `celery worker` processes on Redis and Postgres.

Durations are tiny (seconds of wall time) so that a whole rollout fits in a test; beat
runs ``retrain.evaluate_rollouts`` every second. The test process is the trading app:
it serves every prediction through ``ModelRouter.connect`` (on Postgres it follows alias
moves by LISTEN/NOTIFY; it would poll every 0.2 s without them) and reports predictions and outcomes
through the real client in relay mode (a relay process sends the batches to Redis).

Given production fitted on regime A and a candidate fitted on B while live traffic is
in B, the candidate goes shadow -> 10 -> 25 -> 50 -> 100 % and becomes production, and
the router follows every share. Then traffic goes back to A and a candidate fitted on
A passes shadow against it; at 25 % traffic turns to anti-A, the canary is rolled back
automatically and the router serves only production within about a second.

Every step waits at a manual gate, passed by an operator's ``retrain promote --confirm``
(a real CLI process): stages of seconds over per-minute buckets would otherwise race the
test, and a canary left unconfirmed at 25 % stays at 25 % until the evidence rolls it back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from retrain.artifacts import ArtifactStore
from retrain.client import RetrainClient
from retrain.serving import ModelRouter
from retrain.storage.db import Database
from retrain.storage.repo import Store
from tests.procs import ROOT, retrain_env, start_beat, start_worker, wait_for
from tests.rollout_world import MODEL, add_version, draw, make_production, new_candidate_run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CONFIG = """
[policy]
approval_days = 0

[models.direction]
entry_point = "retrain.examples.direction:train"
data_source = "sample"
features = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"]

[models.direction.thresholds]
min_samples = 100000000   # this test is about the rollout: keep the performance trigger quiet

[models.direction.sample]
rate = 1.0
max_rows = 200000
max_per_minute = 0   # every live row may be scored in shadow

[models.direction.drift]
enabled = false

[models.direction.emergency]
enabled = false

[models.direction.validation]
shadow_min_hours = 0.001    # 3.6 s
shadow_max_hours = 0.05
shadow_min_rows = 300

[models.direction.rollout]
stages = [10, 25, 50, 100]
manual_gate = true
stage_min_minutes = 0.04    # 2.4 s
stage_min_samples = 40
stage_max_minutes = 2
"""


class TradingApp:
    """Serves ``rate`` predictions a second through the router and reports each outcome at once."""

    def __init__(self, pg_url: str, redis_url: str, artifacts: Path) -> None:
        # Relay mode, as the README advises for the desk: batches leave through the relay process.
        self.client = RetrainClient(redis_url, mode="relay", flush_interval_s=0.2)
        self.router = ModelRouter.connect(MODEL, database_url=pg_url, artifact_root=artifacts, client=self.client,
                                          refresh_s=0.2)
        self.rng = np.random.default_rng(3)
        self.regime = "B"
        self.seen: list[tuple[float, str | None, float]] = []  # (time, canary, share) at each change
        self.served: dict[str, int] = {}
        self.n = 0

    def serve(self, seconds: float, rate: int = 250) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            X, y, ret = draw(self.regime, rate // 10, self.rng)
            for i in range(len(y)):
                pid = f"p{self.n}"
                self.n += 1
                _, version = self.router.predict(X[i], pid, prediction_id=pid)
                self.client.report_outcome(MODEL, pid, int(y[i]), float(ret[i]))
                self.served[version] = self.served.get(version, 0) + 1
            r = self.router.routing
            if not self.seen or self.seen[-1][1:] != (r.canary, r.share_pct):
                self.seen.append((time.monotonic(), r.canary, r.share_pct))
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))

    def close(self) -> None:
        self.router.close()
        self.client.close(5)


def test_a_candidate_is_promoted_through_every_stage_and_a_later_one_rolled_back(pg_url, redis_url, tmp_path):
    cfg = tmp_path / "rollout.toml"
    cfg.write_text(CONFIG)
    env = retrain_env(RETRAIN_DATABASE_URL=pg_url, RETRAIN_BROKER_URL=redis_url, RETRAIN_CONFIG=str(cfg),
                      RETRAIN_HOME=str(tmp_path), RETRAIN_ARTIFACT_ROOT=str(tmp_path / "artifacts"),
                      RETRAIN_SWEEP_INTERVAL_S="1", RETRAIN_RELAY_INTERVAL_S="1")
    store = Store(Database(pg_url))
    artifacts = ArtifactStore(tmp_path / "artifacts")
    now = datetime.now(timezone.utc)
    add_version(None, "1.0.0", "A", store=store, artifacts=artifacts, now=now)
    add_version(None, "1.1.0", "B", store=store, artifacts=artifacts, now=now)
    add_version(None, "1.2.0", "A", seed=98, store=store, artifacts=artifacts, now=now)
    make_production(None, "1.0.0", store=store, now=now)
    procs = [
        start_worker("monitoring", "monitoring,decision", env, tmp_path),
        start_worker("validation", "validation,promotion", env, tmp_path),
        start_beat(env, tmp_path),
    ]
    app = TradingApp(pg_url, redis_url, tmp_path / "artifacts")
    try:
        # Given production 1.0.0 serving regime B traffic, and a candidate fitted on B
        app.serve(1)
        assert app.served == {"1.0.0": app.n}
        run1 = new_candidate_run(store, "1.1.0", datetime.now(timezone.utc))  # beat's relay sends retrain.validate

        # When the app keeps serving, Then the candidate passes shadow and every stage, and becomes production
        def promoted():
            app.serve(0.5)
            _confirm_if_waiting(env, store, run1)
            return _alias(store, "production") == "1.1.0"

        wait_for("1.1.0 promoted through its rollout", promoted, 120, procs, every=0)
        app.serve(1)
        ro = _rollout(store, run1)
        assert ro.phase == "promoted"
        assert [h["action"] for h in ro.history] == ["pass", "advance", "advance", "advance", "complete"]
        shares = [s for _, c, s in app.seen if c == "1.1.0"]
        assert shares == [10.0, 25.0, 50.0, 100.0], app.seen  # the router followed every share
        assert app.router.routing.production == "1.1.0" and app.router.routing.canary is None

        # Given traffic back in regime A and a candidate fitted on A, better than 1.1.0 there
        app.regime = "A"
        run2 = new_candidate_run(store, "1.2.0", datetime.now(timezone.utc))

        def at_25():
            app.serve(0.3)
            ro = _rollout(store, run2)
            if ro is not None and ro.share_pct < 25:
                _confirm_if_waiting(env, store, run2)  # shadow and 10 %; 25 % is never confirmed
            return ro is not None and ro.share_pct >= 25

        wait_for("1.2.0 at 25 %", at_25, 90, procs, every=0)
        # When the market turns against it
        app.regime = "anti-A"

        def ended():
            app.serve(0.2)
            return _rollout(store, run2).phase != "canary"

        wait_for("the canary's rollback", ended, 60, procs, every=0)
        decided = time.monotonic()
        ro = _rollout(store, run2)
        # Then it was rolled back automatically at 25 %, and the router serves production only within ~1 s
        assert ro.phase == "rolled_back" and ro.history[-1]["share_pct"] == 25.0, (ro.phase, ro.outcome)
        wait_for("the router to drop the canary", lambda: app.router.routing.canary is None, 5, procs, every=0.01)
        follow = time.monotonic() - decided
        before = app.served.get("1.2.0", 0)
        app.serve(1)
        assert app.served.get("1.2.0", 0) == before and app.router.routing.production == "1.1.0"
        assert follow < 2.0
        with store.tx() as tx:
            events = [(e.kind, e.message) for e in tx.audit_events(MODEL, limit=1000)]
            dead = tx.dead_letters()
        assert any(k == "rollback" and "rolled back automatically at 25%" in m for k, m in events)
        confirmed = [m for k, m in events if k == "approval" and "1.1.0" in m]
        assert len(confirmed) == 4, confirmed  # shadow, 10, 25 and 50 %; the last stage has no gate
        assert dead == []
    finally:
        app.close()
        for p in procs:
            p.stop()


def _confirm_if_waiting(env: dict[str, str], store: Store, run_id: str) -> None:
    """What an operator does at the gate: `retrain promote MODEL --confirm`, as a process of its own."""
    ro = _rollout(store, run_id)
    if ro is None or ro.gate != "waiting":
        return
    out = subprocess.run([sys.executable, "-m", "retrain.cli", "promote", MODEL, "--confirm", "--actor", "e2e"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "confirmed by e2e" in out.stdout, (out.stdout, out.stderr)


def _alias(store: Store, alias: str) -> str | None:
    with store.tx() as tx:
        return tx.alias(MODEL, alias)


def _rollout(store: Store, run_id: str):
    with store.tx() as tx:
        return tx.rollout(run_id)
