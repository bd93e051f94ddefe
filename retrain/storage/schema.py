"""Alembic migrations, run from code: upgrade, and refuse to run on an old schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from retrain.core.errors import SchemaOutdatedError

__all__ = ["alembic_config", "upgrade", "current_revision", "head_revision", "check_schema", "UPGRADE_COMMAND",
           "TABLES"]

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
UPGRADE_COMMAND = "retrain db upgrade"


def _table_names() -> dict[str, str]:
    from retrain.storage.models import Base

    return {t: t for t in Base.metadata.tables}


#: The tables by name (e.g. ``TABLES["training_runs"]``): for code that watches the database's
#: writes (the backtest's change counter) without importing a row class.
TABLES: dict[str, str] = _table_names()


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutdatedError, naming the command that fixes it, unless the DB is at head."""
    current, head = current_revision(engine), head_revision(engine)
    if current != head:
        url = engine.url.render_as_string(hide_password=True)
        raise SchemaOutdatedError(
            f"database {url} is at schema revision {current or 'none (empty database)'}, "
            f"the code needs {head}. Run: {UPGRADE_COMMAND}"
        )
