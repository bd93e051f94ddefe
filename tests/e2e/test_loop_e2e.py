"""The whole loop with real `celery worker` processes on Redis and Postgres.

Given workers per queue group and beat sweeping every 2 s, when the trading app reports
through the client a regime it was trained on and then one it was not, then the
performance trigger retrains it and a new version becomes production, and the audit
trail tells the whole story.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from retrain.artifacts import ArtifactStore
from retrain.client import RetrainClient, kombu_sender
from retrain.examples.market import Regime, SyntheticMarket
from retrain.storage.db import Database
from retrain.storage.repo import Store
from tests.procs import retrain_env, start_beat, start_worker, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
CONFIG = Path(__file__).with_name("e2e.toml")


def test_performance_drop_retrains_and_promotes_through_real_workers(pg_url, redis_url, tmp_path):
    env = retrain_env(RETRAIN_DATABASE_URL=pg_url, RETRAIN_BROKER_URL=redis_url, RETRAIN_CONFIG=str(CONFIG),
                      RETRAIN_HOME=str(tmp_path), RETRAIN_ARTIFACT_ROOT=str(tmp_path / "artifacts"),
                      RETRAIN_SWEEP_INTERVAL_S="2", RETRAIN_RELAY_INTERVAL_S="2")
    procs = [
        start_worker("monitoring", "monitoring,decision", env, tmp_path),
        start_worker("training", "training", env, tmp_path, pool="prefork"),
        start_worker("validation", "validation,promotion", env, tmp_path),
        start_beat(env, tmp_path),
    ]
    store = Store(Database(pg_url))
    artifacts = ArtifactStore(tmp_path / "artifacts")
    client = RetrainClient(sender=kombu_sender(redis_url), flush_interval_s=0.2)
    try:
        now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        market = SyntheticMarket(seed=11, rows_per_minute=30, start=now - timedelta(hours=3),
                                 regimes=[Regime(now - timedelta(hours=3), 1), Regime(now - timedelta(hours=2), 2)])
        old = market.rows(now - timedelta(hours=3), now - timedelta(hours=2))
        new = market.rows(now - timedelta(hours=2), now)

        # Given the trading app reported one regime with a placeholder model
        for i in range(len(old)):
            client.report("direction", f"old-{i}", old.X[i].tolist(), 1, "none", int(old.y[i]), float(old.ret[i]),
                          ts=float(old.ts[i]))
        assert client.flush(20)
        wait_for("the old regime's rows in the sample", lambda: _sample_count(store) >= len(old), 60, procs)

        # When an operator asks for the first model
        client.request_retraining("direction", "initial model", requested_by="e2e")
        first = wait_for("an initial production version", lambda: _alias(store, "production"), 90, procs)
        assert first == "1.0.0"

        # And the app then serves that version on a regime it never saw
        with store.tx() as tx:
            sha = tx.versions.get("direction", first).artifact_sha256
        pred = artifacts.load_object(sha).predict(new.X)
        assert 0.45 < float(np.mean(pred == new.y)) < 0.56
        for i in range(len(new)):
            client.report("direction", f"new-{i}", new.X[i].tolist(), int(pred[i]), first, int(new.y[i]),
                          float(new.ret[i]), ts=float(new.ts[i]))
        assert client.flush(20)

        # Then beat's sweep fires the performance trigger and a retrained version becomes production
        second = wait_for("a retrained production version", lambda: (_alias(store, "production") or "1.0.0") != "1.0.0"
                          and _alias(store, "production"), 150, procs)
        assert second == "1.1.0"

        # And the audit trail tells the whole story, in order
        with store.tx() as tx:
            events = [(e.kind, e.message) for e in tx.audit.events("direction", limit=1000)]
            decisions = tx.decisions.newest("direction")
            dead = tx.dead_letters.newest()
            runs = tx.runs.newest("direction")
            ingested = sum(b.n for b in tx.monitoring.buckets("direction", None, now - timedelta(hours=4)))
        kinds = [k for k, _ in events]
        story = ["request", "decision", "run", "training", "version", "validation", "promotion"]
        first_story = _subsequence_index(kinds, story)
        assert first_story is not None, kinds
        second_story = _subsequence_index(kinds[first_story + 1:], story)
        assert second_story is not None, kinds
        perf = [m for k, m in events if k == "request" and m.startswith("performance trigger fired")]
        assert perf, events
        assert any("1.1.0 is production (previous: 1.0.0)" in m for _, m in events)
        assert {d.verdict for d in decisions} == {"approve"}
        assert all(r.state == "done" for r in runs) and len(runs) == 2
        assert dead == []
        assert ingested == len(old) + len(new)  # every reported outcome counted exactly once
    finally:
        client.close(5)
        for p in procs:
            p.stop()


def _sample_count(store: Store) -> int:
    with store.tx() as tx:
        return len(tx.monitoring.samples("direction"))


def _alias(store: Store, alias: str) -> str | None:
    with store.tx() as tx:
        return tx.aliases.get("direction", alias)


def _subsequence_index(seq: list[str], wanted: list[str]) -> int | None:
    """Index in ``seq`` where ``wanted`` finishes as an ordered subsequence, or None."""
    i = 0
    for j, item in enumerate(seq):
        if item == wanted[i]:
            i += 1
            if i == len(wanted):
                return j
    return None
