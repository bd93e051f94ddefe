"""What every SQL repository shares: the unit of work's session and the row-to-record mapping."""

from __future__ import annotations

import typing
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result

if TYPE_CHECKING:
    from retrain.storage.repo import Tx

R = TypeVar("R")


def rowcount(res: Result[Any]) -> int:
    """The rows an UPDATE, DELETE or INSERT matched (0 when the driver does not say)."""
    # Session.execute types its result as Result; for these statements it is a CursorResult.
    return typing.cast("CursorResult[Any]", res).rowcount or 0


def table(row: type[Any]) -> Table:
    # The declarative __table__ is typed as a FromClause; for our mapped rows it is a Table.
    return typing.cast(Table, row.__table__)


_NAMES: dict[type[Any], tuple[str, ...]] = {}


def to_record(row: Any, cls: type[R]) -> R:
    """The frozen record of ``cls`` holding ``row``'s columns (the MLflow ``to_mlflow_entity`` idea)."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    return cls(**{name: getattr(row, name) for name in names})


def maybe(row: Any, cls: type[R]) -> R | None:
    return None if row is None else to_record(row, cls)


class SqlRepository:
    """A repository bound to one unit of work: its session, its dialect, its sibling repositories."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self.s = tx.s
        self.pg = tx.pg

    def _insert(self, t: Any) -> Any:
        return (postgresql.insert if self.pg else sqlite.insert)(t)
