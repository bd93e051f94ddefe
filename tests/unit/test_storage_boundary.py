"""The storage boundary, checked on the source: SQLAlchemy rows and sessions stay in retrain/storage/,
everything else speaks to the repositories of retrain.core.ports and gets frozen records back."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from retrain.core import records
from retrain.core.ports import UnitOfWork

ROOT = Path(__file__).resolve().parents[2]
ROW_MODULE = "retrain.storage.models"


def _sources():
    for top in ("retrain", "workers"):
        for p in sorted((ROOT / top).rglob("*.py")):
            rel = p.relative_to(ROOT)
            if rel.parts[:2] not in (("retrain", "storage"), ("retrain", "migrations")):
                yield rel, ast.parse(p.read_text())


def _offences(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == ROW_MODULE or node.module.startswith("retrain.storage.sql")):
            found.append(f"{node.lineno}: imports {node.module}")
        if isinstance(node, ast.ImportFrom) and node.module == "retrain.storage" and any(
                a.name in ("models", "sql") for a in node.names):
            found.append(f"{node.lineno}: imports retrain.storage's rows")
        if isinstance(node, ast.Attribute) and node.attr == "s" and isinstance(node.value, ast.Name) \
                and node.value.id == "tx":
            found.append(f"{node.lineno}: reaches the session (tx.s)")
    return found


def test_no_row_class_or_session_is_used_outside_storage():
    # Given every module of retrain/ and workers/ outside retrain/storage/
    offenders = [f"{rel}:{o}" for rel, tree in _sources() for o in _offences(tree)]
    # Then none imports a row class or the SQL repositories, nor touches the session
    assert offenders == []


@pytest.mark.parametrize("src", [
    "from retrain.storage.models import RunRow",
    "from retrain.storage.sql.runs import SqlRuns",
    "from retrain.storage import models",
    "tx.s.execute(q)",
])
def test_the_check_sees_each_way_across(src):
    assert _offences(ast.parse(src))


def test_every_record_is_frozen():
    # A record is a snapshot: a step changes stored state only through a repository method.
    for name in records.__all__:
        cls = getattr(records, name)
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name  # type: ignore[attr-defined]


def test_the_sql_unit_of_work_has_every_repository_the_port_names():
    from retrain.storage.repo import Tx

    ported = {n for n, v in vars(UnitOfWork).items() if isinstance(v, property)}
    tx = Tx.__new__(Tx)
    Tx.__init__(tx, session=None, is_postgres=False)  # type: ignore[arg-type]
    assert ported and all(hasattr(tx, n) for n in ported)
