"""The registry's tasks through a real Celery worker on Redis and Postgres: ``retrain.rollback``
(what the rollout sends) and ``retrain.retention`` (what beat sends), sent by name."""

from __future__ import annotations

from datetime import timedelta

import pytest

from retrain.client import kombu_sender
from retrain.core.clock import SystemClock
from retrain.core.versioning import VersionSpec, fingerprint_json
from retrain.registry import NewVersion, move_alias, register_version
from tests.conftest import EXAMPLE_CONFIG, make_context
from tests.procs import retrain_env, start_worker, wait_for

pytestmark = pytest.mark.timeout(120)


def test_rollback_and_retention_tasks_run_on_a_worker(pg_url, redis_url, tmp_path):
    # Given three versions registered 40 days ago (production 1.2.0, previous 1.1.0) and one registered now
    ctx = make_context(pg_url, tmp_path, clock=SystemClock())
    now = ctx.now()

    def register(tag: str, at) -> str:
        art = ctx.artifacts.put_object({"model": tag})
        spec = VersionSpec(("f0",), "retrain.examples.direction:train", fingerprint_json({}), fingerprint_json(tag))
        with ctx.store.tx() as tx:
            return register_version(tx, NewVersion(model="m", spec=spec, artifact=art), now=at, actor="test").version

    old = now - timedelta(days=40)
    versions = [register(t, old) for t in ("a", "b", "c")]
    with ctx.store.tx() as tx:
        move_alias(tx, "m", "production", versions[1], actor="test", reason="promote", now=old)
        move_alias(tx, "m", "production", versions[2], actor="test", reason="promote", now=old)
        move_alias(tx, "m", "previous", versions[1], actor="test", reason="replaced", now=old)
    register("d", now)
    env = retrain_env(RETRAIN_DATABASE_URL=pg_url, RETRAIN_BROKER_URL=redis_url, RETRAIN_CONFIG=str(EXAMPLE_CONFIG),
                      RETRAIN_HOME=str(tmp_path), RETRAIN_ARTIFACT_ROOT=str(ctx.artifacts.root))
    worker = start_worker("registry", "promotion,monitoring", env, tmp_path)
    send = kombu_sender(redis_url)
    try:
        # When the rollout sends retrain.rollback by name
        send("retrain.rollback", {"v": 1, "model": "m", "reason": "canary 12 % worse", "actor": "rollout",
                                  "from_version": versions[2]}, "promotion", 5)

        def production():
            with ctx.store.tx() as tx:
                return tx.aliases.get("m", "production")

        # Then production is the previous version within seconds, audited with the sender's reason
        wait_for("the rollback", lambda: production() == versions[1], 60, [worker])
        with ctx.store.tx() as tx:
            (event,) = tx.audit.events("m", kind="rollback")
        assert event.actor == "rollout" and "canary 12 % worse" in event.message

        # When beat sends retrain.retention
        send("retrain.retention", {"v": 1}, "monitoring", 1)

        def deleted():
            with ctx.store.tx() as tx:
                return [v.version for v in tx.versions.all("m") if v.deleted_at is not None]

        # Then the old unaliased version is tombstoned and its file removed; aliased ones stay
        assert wait_for("retention", deleted, 60, [worker]) == [versions[0]]
        with ctx.store.tx() as tx:
            assert not ctx.artifacts.exists(tx.versions.get("m", versions[0]).artifact_sha256)
            assert tx.audit.events("m", kind="retention")
        # And a refused rollback (a deleted version) is kept as a dead letter, never retried
        send("retrain.rollback", {"v": 1, "model": "m", "version": versions[0], "reason": "try", "actor": "op"},
             "promotion", 5)

        def dead():
            with ctx.store.tx() as tx:
                return [d.reason for d in tx.dead_letters.newest() if d.source == "retrain.rollback"]

        assert "deleted by retention" in wait_for("the dead letter", dead, 60, [worker])[0]
        assert production() == versions[1]
    finally:
        worker.stop()
