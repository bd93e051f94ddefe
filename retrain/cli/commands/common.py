"""What every command shares: the context, output as text or JSON, publishing the outbox,
and the one-line error for a database or broker that cannot be used."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from retrain.core.errors import BrokerUnavailableError, ConfigError, RetrainError, StoreUnavailableError
from retrain.core.text import clip

__all__ = ["_ctx", "_out", "_publish_outbox", "_short", "with_json", "note_database_url", "unreachable", "clip",
           "positive_int", "non_negative_int", "positive_float", "non_negative_float", "iso_time", "check_models",
           "demo_now", "DEMO_CLOCK_FILE", "retrain_command", "port", "decision_consumers"]

#: A demo home (``retrain demo``) records its simulated clock here: ``costs`` and ``status`` use it as "now".
DEMO_CLOCK_FILE = "demo-clock.json"


def _ctx():
    from retrain.context import Context
    from retrain.core.clock import SystemClock
    from retrain.settings import load_settings
    from retrain.storage.schema import check_schema

    settings = load_settings()
    _point_at_demo_home(settings)
    ctx = Context.from_settings(settings, SystemClock(), "cli")
    check_schema(ctx.store.db.engine)
    return ctx


def _database_exists(url: str) -> bool:
    """False only for a SQLite file that is not there (opening it would create it)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or Path(u.database).exists()


def demo_now(ctx) -> Any:
    """The simulated "now" a demo home recorded (``RETRAIN_HOME/demo-clock.json``), else None.

    ``retrain demo`` lives in simulated time (January 2026): read commands that need a "now"
    (``costs``, ``status``) use its clock on its home, and say so.
    """
    import json
    from datetime import datetime

    path = Path(ctx.settings.home) / DEMO_CLOCK_FILE
    try:
        data = json.loads(path.read_text())
        return datetime.fromisoformat(data["now"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _point_at_demo_home(settings) -> None:
    """A plain ``retrain`` next to a demo's folder, on an empty default home: say where the demo's state is."""
    import os

    if any(os.environ.get(k) for k in ("RETRAIN_HOME", "RETRAIN_DATABASE_URL")):
        return
    db = Path(settings.home) / "retrain.db"
    if db.exists() and db.stat().st_size > 0:
        return
    demos = sorted(p.parent for p in Path.cwd().glob(f"*/{DEMO_CLOCK_FILE}"))
    if demos:
        homes = " or ".join(f"RETRAIN_HOME={d.name}" for d in demos)
        raise DemoHomeHint(f"no database in {settings.home}/ (the default home); the demo's is in "
                           f"{', '.join(d.name + '/' for d in demos)}: run it with {homes}, e.g. "
                           f"RETRAIN_HOME={demos[0].name} {retrain_command()} status")


def retrain_command(script: str = "retrain") -> str:
    """How this shell runs ``script`` (``retrain``, ``celery``): its name when that is on PATH, else
    this venv's copy (``.venv/bin/retrain`` from the clone), for hints that can be pasted as they are."""
    import shutil

    mine = Path(sys.executable).with_name(script)
    found = shutil.which(script)
    if found and (not mine.exists() or Path(found).resolve() == mine.resolve()):
        return script
    if not mine.exists():
        return script
    try:
        return str(mine.relative_to(Path.cwd()))
    except ValueError:
        return str(mine)


class DemoHomeHint(RetrainError):
    """Raised when the default home is empty and a demo's home is next to it: names it."""


def _publish_outbox(ctx) -> bool:
    """Best effort: hand committed messages to the broker now; the relay on beat retries. True if sent."""
    try:
        workers_base = importlib.import_module("workers.base")
        workers_base.relay_now()
        return True
    except Exception as exc:  # broker unreachable: the outbox keeps the messages
        print(f"(messages kept in the outbox for the relay: {unreachable(exc) or exc})", file=sys.stderr)
        return False


def decision_consumers(broker_url: str, timeout: float = 1.0) -> list[str] | None:
    """Workers on the ``decision`` queue (:func:`workers.base.queue_consumers`); None when the broker
    cannot tell or cannot be asked."""
    del broker_url  # the Celery app reads the same settings
    try:
        return importlib.import_module("workers.base").queue_consumers("decision", timeout=timeout)
    except Exception:  # noqa: BLE001 - a broker out of reach was said already by the publish
        return None


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
    return clip("" if v is None else str(v), 24)


# ---------------------------------------------------------------- option types
def _number(kind, text: str, low: float, strict: bool, what: str):
    import argparse

    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
    if v != v or (v <= low if strict else v < low):  # NaN too
        raise argparse.ArgumentTypeError(f"must be {what} (got {text})")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--limit``, ``--jobs``)."""
    return _number(int, text, 0, True, "at least 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (``--days``)."""
    return _number(int, text, 0, False, "0 or more")


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    return _number(float, text, 0.0, True, "more than 0")


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    return _number(float, text, 0.0, False, "0 or more")


def port(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    v = _number(int, text, 0, True, "a port, 1-65535")
    if v > 65535:
        import argparse

        raise argparse.ArgumentTypeError(f"must be a port, 1-65535 (got {text})")
    return v


def iso_time(text: str):
    """argparse type: an ISO date or time, UTC unless it has an offset; argparse names the option."""
    import argparse
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time (e.g. 2026-01-06 or 2026-01-06T12:00): "
                                         f"{text!r}") from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


# ---------------------------------------------------------------- models named on the command line
def check_models(names: list[str]) -> None:
    """Every name must be a configured model, or one with history in the database (versions, audit
    events: the model file may have dropped it since); else one clear error.

    :class:`~retrain.core.errors.UnknownModelError`: ``unknown model 'x'; configured: a, b`` (exit 2).
    """
    from retrain.config import load_config
    from retrain.core.errors import UnknownModelError
    from retrain.settings import load_settings

    settings = load_settings()
    config = load_config(settings.config_path())
    unknown = [n for n in names if n not in config.models]
    if not unknown:
        return
    if _database_exists(settings.database_url):
        # A model no longer in the model file keeps its history: read commands may still show it.
        try:
            ctx = _ctx()
            with ctx.store.tx() as tx:
                stored = set(tx.models.names())
                unknown = [n for n in unknown if n not in stored and not tx.versions.all(n)
                           and not tx.audit.log(model=n, limit=1)]
        except RetrainError:  # no schema yet: nothing has history
            pass
    if unknown:
        raise UnknownModelError(f"unknown model {unknown[0]!r}; configured: {', '.join(sorted(config.models))}")


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


def plain(text: str) -> str:
    """reST markup out of a docstring for ``--help``: ``x`` -> x, :mod:`a.b` -> a.b."""
    import re

    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")
