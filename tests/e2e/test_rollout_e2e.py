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
The last stage (100 %) has no gate: it lasts its minimum duration from the moment its alias
moves, many times what the router takes to follow a move, and the router itself records
every routing it swaps in (the app's own thread is busy running the operator's command then).
Maximum durations (shadow, stage) and waits are generous: they only bound a failure on a
loaded machine, where a command or a worker can take many seconds to start.
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

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

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
shadow_max_hours = 0.25     # only bounds a failure
shadow_min_rows = 300
# A canary is judged every second from its first labelled outcome, here on a handful of them
# (25 a second at 10 %): at 95 % a candidate right 60 % of the time against 50 % is rolled back
# by chance in about one stage of 170 (simulated); at 99 % in about one of 6,000. The rollback
# this test wants (40 % against 50 % on hundreds of outcomes) and the shadow passes are far beyond 99 %.
confidence = 0.99

[models.direction.rollout]
stages = [10, 25, 50, 100]
manual_gate = true
stage_min_minutes = 0.1     # 6 s: the ungated 100 % stage lasts that long after its alias moves
stage_min_samples = 40
stage_max_minutes = 10      # only bounds a failure
"""


class RecordingRouter(ModelRouter):
    """The real router, noting every routing it swaps in (from its own thread, as it happens)."""

    def __init__(self, *args, **kwargs) -> None:
        self.seen: list[tuple[float, str | None, str | None, float]] = []  # (time, production, canary, share)
        super().__init__(*args, **kwargs)

    def refresh(self) -> bool:
        changed = super().refresh()
        if changed:
            r = self.routing
            self.seen.append((time.monotonic(), r.production, r.canary, r.share_pct))
        return changed


class TradingApp:
    """Serves ``rate`` predictions a second through the router and reports each outcome at once."""

    def __init__(self, pg_url: str, redis_url: str, artifacts: Path) -> None:
        # Relay mode, as the README advises for the desk: batches leave through the relay process.
        self.client = RetrainClient(redis_url, mode="relay", flush_interval_s=0.2)
        self.router = RecordingRouter.connect(MODEL, database_url=pg_url, artifact_root=artifacts,
                                              client=self.client, refresh_s=0.2)
        self.rng = np.random.default_rng(3)
        self.regime = "B"
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
        def promoted_or_over():
            app.serve(0.5)
            _confirm_if_waiting(env, store, run1)
            return _alias(store, "production") == "1.1.0" or _over(store, run1)

        _wait("1.1.0 promoted through its rollout", promoted_or_over, 480, procs, store, run1)
        app.serve(1)
        ro = _rollout(store, run1)
        assert ro.phase == "promoted", _story(store, run1)
        assert [h["action"] for h in ro.history] == ["pass", "advance", "advance", "advance", "complete"]
        seen = app.router.seen
        shares = [s for _, _, c, s in seen if c == "1.1.0"]
        assert shares == [10.0, 25.0, 50.0, 100.0], seen  # the router followed every share
        assert app.router.routing.production == "1.1.0" and app.router.routing.canary is None

        # Given traffic back in regime A, and a candidate fitted on A, better than 1.1.0 there. Stages are
        # judged on per-minute buckets from the minute a stage began, so 1.2.0 starts in a minute after
        # the last regime B row: 1.1.0's own canary outcomes in B (60 % right, where it now serves 50 %)
        # would otherwise count as production's, and a few dozen unlucky canary rows pass for "worse".
        assert app.client.flush()
        last_b = time.time()  # every regime B row is stamped by now
        app.regime = "A"
        wait_for("a minute without regime B rows", lambda: app.serve(0.5) or time.time() // 60 > last_b // 60, 90,
                 procs, every=0)
        run2 = new_candidate_run(store, "1.2.0", datetime.now(timezone.utc))

        def at_25_or_over():
            app.serve(0.3)
            ro = _rollout(store, run2)
            if ro is not None and ro.share_pct < 25:
                _confirm_if_waiting(env, store, run2)  # shadow and 10 %; 25 % is never confirmed
            return (ro is not None and ro.share_pct >= 25) or _over(store, run2)

        _wait("1.2.0 at 25 %", at_25_or_over, 300, procs, store, run2)
        ro = _rollout(store, run2)
        assert ro.phase == "canary" and ro.share_pct == 25.0, _story(store, run2)
        # When the market turns against it
        app.regime = "anti-A"

        def ended():
            app.serve(0.2)
            return _rollout(store, run2).phase != "canary"

        _wait("the canary's rollback", ended, 240, procs, store, run2)
        decided = time.monotonic()
        ro = _rollout(store, run2)
        # Then it was rolled back automatically at 25 %, and the router serves production only within ~1 s
        assert ro.phase == "rolled_back" and ro.history[-1]["share_pct"] == 25.0, _story(store, run2)
        wait_for("the router to drop the canary", lambda: app.router.routing.canary is None, 5, procs, every=0.01)
        follow = time.monotonic() - decided
        before = app.served.get("1.2.0", 0)
        app.serve(1)
        assert app.served.get("1.2.0", 0) == before and app.router.routing.production == "1.1.0"
        assert follow < 2.0
        with store.tx() as tx:
            events = [(e.kind, e.message) for e in tx.audit.events(MODEL, limit=1000)]
            dead = tx.dead_letters.newest()
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
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "confirmed by e2e" in out.stdout, (out.stdout, out.stderr)


def _wait(what: str, check, timeout: float, procs, store: Store, run_id: str):
    """``wait_for``, telling the run's story when it times out."""
    try:
        return wait_for(what, check, timeout, procs, every=0)
    except AssertionError as exc:
        raise AssertionError(f"{_story(store, run_id)}\n{exc}") from None


def _over(store: Store, run_id: str) -> bool:
    """Whether the run ended without a rollout in progress (rejected at validation, or its rollout ended)."""
    with store.tx() as tx:
        run, ro = tx.runs.get(run_id), tx.rollouts.get(run_id)
    return (ro is not None and ro.phase not in ("shadow", "canary")) or (ro is None and run.finished_at is not None)


def _story(store: Store, run_id: str) -> str:
    """The run, its rollout and the model's latest audit events: what a failure needs to be understood."""
    with store.tx() as tx:
        run, ro = tx.runs.get(run_id), tx.rollouts.get(run_id)
        events = [f"  {e.at:%H:%M:%S.%f} {e.kind}: {e.message}" for e in tx.audit.events(MODEL, limit=20)]
        out = [f"run {run_id[:8]}: state {run.state}, stage {run.stage}, error {run.error}"]
        if ro is not None:
            out.append(f"rollout: {ro.phase} at {ro.share_pct:g}%, gate {ro.gate}, outcome {ro.outcome!r}")
            out += [f"  {h['action']} at {h['share_pct']:g}% ({h['started_at']} - {h['ended_at']})" for h in ro.history]
            out.append(f"  figures: {ro.figures}")
    return "\n".join(out + ["audit:"] + events)


def _alias(store: Store, alias: str) -> str | None:
    with store.tx() as tx:
        return tx.aliases.get(MODEL, alias)


def _rollout(store: Store, run_id: str):
    with store.tx() as tx:
        return tx.rollouts.get(run_id)
