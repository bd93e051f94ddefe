"""A worker that finds an old schema refuses to start and names the command that fixes it."""

from __future__ import annotations

import pytest

from tests.conftest import EXAMPLE_CONFIG
from tests.procs import retrain_env, start_worker

pytestmark = pytest.mark.timeout(90)


def test_worker_refuses_an_unmigrated_database(redis_url, tmp_path):
    # Given an empty SQLite database (never migrated)
    env = retrain_env(RETRAIN_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}", RETRAIN_BROKER_URL=redis_url,
                      RETRAIN_CONFIG=str(EXAMPLE_CONFIG), RETRAIN_HOME=str(tmp_path))
    # When a worker starts on it
    worker = start_worker("stale", "monitoring", env, tmp_path)
    try:
        code = worker.p.wait(60)
    finally:
        worker.stop()
    # Then it exits with an error that says how to upgrade
    assert code != 0
    assert "refuses to start" in worker.log() and "retrain db upgrade" in worker.log()
