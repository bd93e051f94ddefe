"""The audit trail: append-only in the code and in the database, and complete.

* No code updates or deletes an audit row or a ledger row (the source is read for it).
* The database refuses it too: the triggers of migration 0005, on Postgres and SQLite.
* Every kind of event the requirement names is written somewhere, and a request's
  way through the decision, an approval and a training leaves all of its events.
"""

from __future__ import annotations

import ast
import re
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.core.policy import RULES
from retrain.steps.decide import resolve_pending
from retrain.steps.dispatch import drain, run_step
from retrain.steps.requests import sync_models
from retrain.storage.db import Database
from retrain.storage.models import AuditRow
from retrain.storage.repo import Store
from tests.conftest import EXAMPLE_CONFIG, T0, make_context

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("retrain", "workers") for p in (ROOT / d).rglob("*.py"))
APPEND_ONLY = {"AuditRow": "audit_events", "CostRow": "cost_ledger"}
# Every kind of event the requirement asks the trail to hold (ARCHITECTURE: "every decision is
# explained, budgeted and audited"; issue 4: request, decision, approval, bypass, training,
# version, promotion, rollback, configuration change; plus administration and runs).
REQUIRED_KINDS = {"request", "decision", "bypass", "approval", "run", "training", "version", "validation",
                  "promotion", "rollback", "config", "admin"}


def _write_patterns() -> list[re.Pattern[str]]:
    pats = []
    for cls, table in APPEND_ONLY.items():
        pats += [
            re.compile(rf"\b(update|delete)\(\s*{cls}\b"),                   # update(AuditRow) / delete(AuditRow)
            re.compile(rf"\b{cls}\.__table__\.(update|delete)\("),         # AuditRow.__table__.delete()
            re.compile(rf"(?i)\bupdate\s+{table}\b(?!\s+(for|of)\b)"),      # UPDATE audit_events SET ...
            re.compile(rf"(?i)\bdelete\s+from\s+{table}\b"),               # DELETE FROM audit_events
            re.compile(rf"(?i)\btruncate\s+(table\s+)?{table}\b"),         # TRUNCATE audit_events
        ]
    return pats


def test_no_code_updates_or_deletes_audit_or_ledger_rows():
    # Given every module of the core and the workers
    offenders = []
    for path in SOURCES:
        src = path.read_text()
        # When their source is searched for a write other than an insert to the two tables
        for pat in _write_patterns():
            for m in pat.finditer(src):
                line = src[: m.start()].count("\n") + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
        # (and no session.delete(...) of a row loaded from them)
        tree = ast.parse(src)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "delete"
                    and node.args and isinstance(node.args[0], ast.Name)
                    and node.args[0].id.lower() in ("audit", "event", "audit_row", "cost_row", "ledger_row")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: session.delete({node.args[0].id})")
    # Then there is none: the audit trail and the ledger are append-only by construction
    assert offenders == []


def test_the_search_would_find_such_a_write():
    # Given statements that do what the search above must catch, Then each is caught
    samples = ["s.execute(delete(AuditRow).where(AuditRow.id < 5))", "update(CostRow).values(amount_usd=0)",
               "AuditRow.__table__.delete()", 'text("UPDATE audit_events SET message = \'\'")',
               'text("delete from cost_ledger")', 'op.execute("TRUNCATE audit_events")']
    pats = _write_patterns()
    assert all(any(p.search(s) for p in pats) for s in samples)
    # and the trigger DDL of migration 0005 ("BEFORE UPDATE OR DELETE ON audit_events") is not a write
    assert not any(p.search("BEFORE UPDATE OR DELETE ON audit_events FOR EACH ROW") for p in pats)


@pytest.mark.parametrize("table", ["audit_events", "cost_ledger"])
def test_the_database_refuses_to_update_or_delete_audit_and_ledger_rows(any_db_url, table):
    # Given a migrated database with one audit event and one ledger row
    store = Store(Database(any_db_url))
    with store.tx() as tx:
        tx.audit.record(T0, "admin", "ops", "something happened", model="m")
        tx.ledger.add("run-1", "m", "reservation", 1.25, T0)
    column = "message" if table == "audit_events" else "amount_usd"
    value = "'rewritten'" if table == "audit_events" else "0"
    statements = [f"UPDATE {table} SET {column} = {value}", f"DELETE FROM {table}"]
    if store.db.is_postgres:
        statements.append(f"TRUNCATE {table}")
    # When anything tries to change or remove it, Then the database refuses, naming the rule
    for stmt in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            with store.tx() as tx:
                tx.s.execute(text(stmt))
    # and the row is as it was written
    with store.tx() as tx:
        rows = tx.s.execute(text(f"SELECT {column} FROM {table}")).all()
    assert rows == [("something happened",)] if table == "audit_events" else rows == [(1.25,)]


def test_an_orm_change_to_an_audit_row_is_refused_too(any_db_url):
    store = Store(Database(any_db_url))
    with store.tx() as tx:
        tx.audit.record(T0, "admin", "ops", "original", model="m")
    with pytest.raises(DBAPIError, match="append-only"):
        with store.tx() as tx:
            (event,) = tx.audit.log()
            tx.s.get(AuditRow, event.id).message = "edited"  # the ORM row itself, under the repository
    with store.tx() as tx:
        assert [e.message for e in tx.audit.log()] == ["original"]


def _audit_kinds_in_code() -> set[str]:
    """The kind (second argument) of every ``audit.record(at, "kind", ...)`` call with a literal kind."""
    kinds = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "record"
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "audit"
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str)):
                kinds.add(node.args[1].value)
    return kinds


def test_every_kind_of_event_the_requirement_names_is_written_somewhere():
    # Given the code of the core and the workers, When its audit calls are read
    kinds = _audit_kinds_in_code()
    # Then each kind of event the requirement asks for is written by some code path
    assert REQUIRED_KINDS <= kinds, f"no code writes: {sorted(REQUIRED_KINDS - kinds)}"


def test_a_request_leaves_its_whole_story_in_the_trail(sqlite_url, tmp_path):
    # Given the example model, not deployed yet (so its first run needs an operator's approval)
    raw = tomllib.loads(EXAMPLE_CONFIG.read_text())
    ctx = make_context(sqlite_url, tmp_path, config=parse_config(raw, "direction.toml"), clock=SimClock(T0))
    sync_models(ctx)
    with ctx.store.tx() as tx:
        tx.models.set_paused("direction", True, "ops", "maintenance", ctx.now())
        tx.models.set_paused("direction", False, "ops", "maintenance over", ctx.now())
    # When an operator asks for a retraining, it waits for approval, another operator approves it,
    # and the loop trains and validates the model
    run_step(ctx, "retrain.request_retraining", {"v": 1, "model": "direction", "reason": "first model",
                                                 "requested_by": "alice"})
    drain(ctx)
    with ctx.store.tx() as tx:
        (pending,) = tx.requests.newest(statuses=["pending_approval"])
    ctx.clock.advance(timedelta(minutes=5))
    resolve_pending(ctx, pending.id, approve=True, actor="bob", reason="go ahead")
    drain(ctx)
    # Then the trail holds every step, in order, each with who did it
    with ctx.store.tx() as tx:
        events = tx.audit.log(limit=1000)
    kinds = [e.kind for e in events]
    for kind in ("config", "admin", "request", "decision", "approval", "run", "training", "version", "validation"):
        assert kind in kinds, f"no {kind} event in {kinds}"
    assert kinds.index("request") < kinds.index("decision") < kinds.index("approval") < kinds.index("training")
    assert all(e.at is not None and e.actor and e.message for e in events)
    by_kind = {k: [e for e in events if e.kind == k] for k in set(kinds)}
    assert [e.actor for e in by_kind["request"]] == ["alice"]
    assert [e.actor for e in by_kind["approval"]] == ["bob"]
    assert [e.data["verdict"] for e in by_kind["decision"]] == ["pending_approval", "approve"]
    assert all([r["rule"] for r in e.data["rules"]] == list(RULES) for e in by_kind["decision"])
