"""The router follows alias moves on Postgres by LISTEN/NOTIFY, not by polling.

Against a real Postgres: a committed move wakes the router at once while its poll
interval is a minute; a move that rolls back says nothing; a listening connection
that the server kills is replaced, and what moved meanwhile is read.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import text

from retrain.artifacts import ArtifactStore
from retrain.serving import ModelRouter, Routing
from retrain.storage.db import Database
from retrain.storage.repo import Store
from tests.procs import until
from tests.rollout_world import MODEL, add_version, make_production

pytestmark = pytest.mark.integration




@pytest.fixture
def world(pg_url, tmp_path):
    store = Store(Database(pg_url))
    artifacts = ArtifactStore(tmp_path / "artifacts")
    now = datetime.now(timezone.utc)
    add_version(None, "1.0.0", "A", store=store, artifacts=artifacts, now=now)
    add_version(None, "1.1.0", "B", store=store, artifacts=artifacts, now=now)
    make_production(None, "1.0.0", store=store, now=now)
    yield store, now
    store.db.dispose()


def _move_canary(store: Store, now: datetime, version: str | None, share: float) -> None:
    with store.tx() as tx:
        tx.aliases.move(MODEL, "canary", version, actor="test", reason="test", now=now, share_pct=share)


def test_a_committed_move_wakes_the_router_and_a_rolled_back_one_does_not(world, pg_url, tmp_path):
    store, now = world
    # Given a router on Postgres that would poll only once a minute
    router = ModelRouter.connect(MODEL, database_url=pg_url, artifact_root=tmp_path / "artifacts",
                                 refresh_s=60, resync_s=60)
    try:
        assert until(lambda: router.stats.refreshes >= 2)  # the first read, and the one on listening
        assert router.routing.production == "1.0.0" and router.routing.canary is None
        idle = router.stats.refreshes
        time.sleep(0.5)
        assert router.stats.refreshes == idle  # nothing moved: no reads
        # When a canary move commits, Then the router serves the split moments later
        t0 = time.monotonic()
        _move_canary(store, now, "1.1.0", 25.0)
        assert until(lambda: router.routing.canary == "1.1.0", 5)
        assert time.monotonic() - t0 < 5 and router.routing.share_pct == 25.0
        # When a move rolls back, Then nothing is announced and nothing is read
        reads = router.stats.refreshes
        with pytest.raises(RuntimeError):
            with store.tx() as tx:
                tx.aliases.move(MODEL, "canary", None, actor="test", reason="test", now=now)
                raise RuntimeError("the rest of the step failed")
        time.sleep(0.5)
        assert router.stats.refreshes == reads and router.routing.canary == "1.1.0"
        # And a rollback (canary cleared) is followed as fast
        _move_canary(store, now, None, 0.0)
        assert until(lambda: router.routing.canary is None, 5)
    finally:
        t0 = time.monotonic()
        router.close()
        assert time.monotonic() - t0 < 5  # close does not wait for the minute


def test_a_killed_listening_connection_is_replaced_and_the_moves_meanwhile_are_read(world, pg_url, tmp_path):
    store, now = world
    router = ModelRouter.connect(MODEL, database_url=pg_url, artifact_root=tmp_path / "artifacts",
                                 refresh_s=0.2, resync_s=60)
    try:
        assert until(lambda: router.stats.refreshes >= 2)
        # When the server ends the listening connection (a restart, an operator's pg_terminate_backend)
        with store.tx() as tx:
            killed = tx.s.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                       "WHERE datname = current_database() AND query LIKE 'LISTEN%'")).scalars().all()
        assert killed == [True]
        # Then the router notices, counts it, and listens again; a move after that is followed
        assert until(lambda: router.stats.errors >= 1
                     and "listening for alias moves" in (router.stats.last_error or ""), 10)
        def listening() -> int:
            with store.tx() as tx:
                return tx.s.execute(text("SELECT count(*) FROM pg_stat_activity "
                                         "WHERE datname = current_database() AND query LIKE 'LISTEN%'")).scalar()

        # (the router reads everything again after the error, possibly before it listens again)
        assert until(lambda: listening() == 1, 30)
        _move_canary(store, now, "1.1.0", 10.0)
        assert until(lambda: router.routing == Routing("1.0.0", router.routing.production_sha256, "1.1.0",
                                                       router.routing.canary_sha256, 10.0), 10)
        assert listening() == 1
    finally:
        router.close()
