"""Engines and sessions: one managed session that commits, rolls back and closes.

Engines are created lazily in the process that uses them (never at import), so a
prefork worker's children never share a parent's connections.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from retrain.core.errors import ConfigError, StoreUnavailableError

__all__ = ["make_engine", "Database", "normalize_url"]


def normalize_url(url: str) -> str:
    """Map a bare ``postgresql://`` URL to psycopg2 (SQLAlchemy 2.1 would pick psycopg 3)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL lets readers run beside the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=10, pool_recycle=1800)
    raise ConfigError(f"RETRAIN_DATABASE_URL: unsupported database URL {url!r} (use postgresql:// or sqlite:///)")


# Postgres SQLSTATE classes of a lost or refused connection: 08 (connection exception) and
# 57P (the server is shutting down, crashed or starting up).
_CONNECTION_SQLSTATES = ("08", "57P")
# libpq reports a refused or broken connection without a SQLSTATE; these are its words.
_CONNECTION_WORDS = ("could not connect", "connection refused", "server closed the connection",
                     "connection to server", "terminating connection", "connection already closed",
                     "the database system is", "no connection to the server", "ssl connection has been closed")


def _connection_lost(exc: DBAPIError) -> bool:
    """True when the error says the database is out of reach (worth retrying), not that the
    statement is wrong."""
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "pgcode", None)
    if code:
        return code.startswith(_CONNECTION_SQLSTATES)
    text = str(exc.orig).lower()
    return any(w in text for w in _CONNECTION_WORDS)


def _rollback(session: Session) -> None:
    try:
        session.rollback()
    except DBAPIError:  # the connection is gone: nothing to roll back on it
        pass


class Database:
    """A lazily created engine and session factory for one URL."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
            self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        return self._engine

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success, rolls back on error, always closes."""
        self.engine  # noqa: B018 - creates the factory
        assert self._sessions is not None
        session = self._sessions()
        try:
            yield session
            session.commit()
        except OperationalError as exc:
            _rollback(session)
            if _connection_lost(exc):
                raise StoreUnavailableError(f"database unavailable: {exc.orig}") from exc
            raise
        except DBAPIError as exc:
            _rollback(session)
            if _connection_lost(exc):
                raise StoreUnavailableError(f"database connection lost: {exc.orig}") from exc
            raise
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        """Drop pooled connections (after a fork, or at shutdown)."""
        if self._engine is not None:
            self._engine.dispose(close=False)
