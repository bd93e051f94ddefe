"""Shared fixtures: real Postgres and Redis, throwaway databases, a core Context.

A fixture that needs a service fails under CI (CI=true) instead of skipping, so a
missing service can never pass as a green run.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("RETRAIN_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RETRAIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "retrain" / "examples" / "direction.toml"
T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)


def _unavailable(what: str, exc: Exception):
    msg = f"{what} is not reachable: {exc}"
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI must run against the real service; .ci/test starts it)")
    pytest.skip(msg)


def _admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_template():
    """A migrated Postgres database used as the template for each test's own database."""
    from sqlalchemy import text

    try:
        admin = _admin_engine()
        with admin.connect() as c:
            c.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        _unavailable("Postgres", exc)
    name = f"retrain_tpl_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    from retrain.storage.db import make_engine
    from retrain.storage.schema import upgrade

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield name
    with admin.connect() as c:
        c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_template):
    """A fresh, migrated Postgres database for one test."""
    from sqlalchemy import text

    admin = _admin_engine()
    name = f"retrain_t_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as c:
        c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(port: int, tmp: Path):
    """A private redis-server without persistence (each test session has its own)."""
    import shutil
    import subprocess
    import time

    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        return None
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.05)
    proc.kill()
    return None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of this test session's own, so parallel runs never share keys;
    RETRAIN_TEST_REDIS_URL points the tests at an existing server instead."""
    import redis

    if os.environ.get("RETRAIN_TEST_REDIS_URL"):
        yield REDIS_URL.rsplit("/", 1)[0]
        return
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    if proc is None:
        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        except Exception as exc:  # noqa: BLE001
            _unavailable("Redis", exc)
        yield REDIS_URL.rsplit("/", 1)[0]
        return
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server):
    import redis

    url = f"{redis_server}/0" if not os.environ.get("RETRAIN_TEST_REDIS_URL") else REDIS_URL
    try:
        r = redis.Redis.from_url(url, socket_connect_timeout=2)
        r.flushdb()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", exc)
    yield url
    r.flushdb()


@pytest.fixture
def sqlite_url(tmp_path):
    from retrain.storage.db import make_engine
    from retrain.storage.schema import upgrade

    url = f"sqlite:///{tmp_path / 'retrain.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def make_context(db_url: str, tmp_path: Path, *, config=None, clock=None, **settings):
    from retrain.config import load_config
    from retrain.context import Context
    from retrain.core.clock import SimClock
    from retrain.settings import Settings

    s = Settings(home=tmp_path, database_url=db_url, broker_url="memory://", artifact_root=tmp_path / "artifacts",
                 **settings)
    cfg = config if config is not None else load_config(EXAMPLE_CONFIG)
    return Context.from_settings(s, clock or SimClock(T0), "test-worker", config=cfg)


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request, tmp_path):
    """The same test on the embedded default and on Postgres."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")
