"""What every command shares: the context, output as text or JSON, publishing the outbox,
and the one-line error for a database or broker that cannot be used."""

from __future__ import annotations

import importlib
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

from retrain.core.errors import BrokerUnavailableError, ConfigError, RetrainError, StoreUnavailableError

__all__ = ["_ctx", "_out", "_publish_outbox", "_short", "with_json", "note_database_url", "unreachable"]


def _ctx():
    from retrain.context import Context
    from retrain.core.clock import SystemClock
    from retrain.settings import load_settings
    from retrain.storage.schema import check_schema

    ctx = Context.from_settings(load_settings(), SystemClock(), "cli")
    check_schema(ctx.store.db.engine)
    return ctx


def _publish_outbox(ctx) -> None:
    """Best effort: hand committed messages to the broker now; the relay on beat retries."""
    try:
        workers_base = importlib.import_module("workers.base")
        workers_base.relay_now()
    except Exception as exc:  # broker unreachable: the outbox keeps the messages
        print(f"(messages kept in the outbox for the relay: {unreachable(exc) or exc})", file=sys.stderr)


def _out(args, data: Any, text: str) -> None:
    from retrain.report import to_json

    print(to_json(data) if getattr(args, "json", False) else text)


def with_json(parser):
    """Give a subcommand's parser ``--json`` (what :func:`_out` reads); returns the parser."""
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = "" if v is None else str(v)
    return s if len(s) <= 24 else s[:21] + "..."


# ---------------------------------------------------------------- services out of reach
def note_database_url(context) -> None:
    """SQLAlchemy ``handle_error`` hook: keep the failing engine's URL on the exception.

    The exception alone does not say which database failed; with this the message names
    the right one (a benchmark's or a backtest's database is not ``RETRAIN_DATABASE_URL``).
    """
    exc = context.sqlalchemy_exception
    if exc is not None and context.engine is not None:
        exc.retrain_url = context.engine.url


def unreachable(exc: BaseException) -> RetrainError | None:
    """The one-line error for a database or broker that cannot be used, else None.

    Looks at ``exc`` and its explicit causes (the store raises
    :class:`~retrain.core.errors.StoreUnavailableError` *from* the driver's error). The
    message names the URL with its password masked, the driver's first line, and
    what to check. Other errors (a bug, a constraint) are not this function's
    business: they keep their traceback.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        found = _database_error(e) or _broker_error(e)
        if found is not None:
            return found
        e = e.__cause__
    return None


def _database_error(e: BaseException) -> StoreUnavailableError | None:
    from sqlalchemy import exc as sa
    from sqlalchemy.engine import make_url

    from retrain.storage.db import normalize_url

    if isinstance(e, (sa.OperationalError, sa.InterfaceError)) or (
            isinstance(e, sa.DBAPIError) and e.connection_invalidated):
        url, detail = getattr(e, "retrain_url", None), str(e.orig)
    elif isinstance(e, sa.TimeoutError):  # the pool waited in vain for a connection
        url, detail = getattr(e, "retrain_url", None), str(e)
    elif _is_raw_dbapi_error(e):
        url, detail = None, str(e)
    else:
        return None
    configured = _settings_url("database_url")
    ours = None if configured is None else make_url(normalize_url(configured))
    url = url if url is not None else ours
    if url is None:
        return StoreUnavailableError(f"cannot use the database: {_first_line(detail)}; set RETRAIN_DATABASE_URL")
    hint = ("does its folder exist and may this user write there?" if url.get_backend_name() == "sqlite"
            else "is Postgres running and the URL right?")
    # Only the settings' own database is fixed by RETRAIN_DATABASE_URL (not a benchmark's, say).
    if ours is not None and url.render_as_string(hide_password=False) == ours.render_as_string(hide_password=False):
        hint += " set RETRAIN_DATABASE_URL"
    return StoreUnavailableError(f"cannot use the database {url.render_as_string(hide_password=True)}: "
                                 f"{_first_line(detail, url.password)}; {hint}")


def _broker_error(e: BaseException) -> BrokerUnavailableError | None:
    from kombu.exceptions import OperationalError as KombuOperationalError

    kinds: tuple[type[BaseException], ...] = (KombuOperationalError,)
    try:
        import redis.exceptions

        kinds += (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    except ImportError:  # pragma: no cover - redis is a dependency of the client
        pass
    if not isinstance(e, kinds):
        return None
    from kombu.utils.url import maybe_sanitize_url

    url = _settings_url("broker_url")
    where = "the broker" if url is None else f"the broker {maybe_sanitize_url(url, mask='***')}"
    password = None if url is None else urlsplit(url).password
    return BrokerUnavailableError(f"cannot reach {where}: {_first_line(str(e), password and unquote(password))}; "
                                  "is it running and the URL right? set RETRAIN_BROKER_URL")


def _is_raw_dbapi_error(e: BaseException) -> bool:
    # A driver's own error that SQLAlchemy did not wrap (a raw connection's LISTEN, say).
    import sqlite3

    kinds: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
    try:
        import psycopg2

        kinds += (psycopg2.OperationalError, psycopg2.InterfaceError)
    except ImportError:  # pragma: no cover - psycopg2 is a dependency
        pass
    return isinstance(e, kinds)


def _settings_url(name: str) -> str | None:
    from retrain.settings import load_settings

    try:
        return getattr(load_settings(), name)
    except ConfigError:
        return None


def _first_line(text: str, secret: str | None = None) -> str:
    """The driver's first non-empty line, without a trailing full stop and never with the password."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no detail")
    if secret:
        line = line.replace(secret, "***")
    return line.rstrip(".")
