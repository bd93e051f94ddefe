"""Storage against real databases: migrations, the schema guard, idempotent writes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from retrain.core.domain import RetrainRequest, TriggerKind
from retrain.core.errors import SchemaOutdatedError
from retrain.storage.db import Database, make_engine
from retrain.storage.models import Base
from retrain.storage.repo import Store
from retrain.storage.schema import check_schema, upgrade
from tests.conftest import T0


def test_migrations_match_the_models(any_db_url):
    # Given a database migrated to head
    engine = make_engine(any_db_url)
    # When alembic compares it with the SQLAlchemy models
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    # Then there is nothing the migrations forgot
    assert diff == []
    check_schema(engine)


def test_an_old_schema_is_refused_with_the_command_that_fixes_it(tmp_path):
    # Given an empty database (no migration applied)
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    # When the schema is checked, Then it is refused and the fix is named
    with pytest.raises(SchemaOutdatedError, match="retrain db upgrade"):
        check_schema(engine)
    upgrade(engine)
    check_schema(engine)


def test_batches_are_counted_once_and_buckets_add_up(any_db_url):
    store = Store(Database(any_db_url))
    row = {"model": "m", "version": "1.0.0", "minute": T0, "n": 10, "tp": 3, "fp": 2, "tn": 4, "fn": 1,
           "ret_sum": 0.5, "ret_sq_sum": 0.1, "unlabelled": 0}
    with store.tx() as tx:
        assert tx.monitoring.claim_batch("batch-1", T0, 10, 0)
        tx.monitoring.add_buckets([row])
    with store.tx() as tx:
        assert not tx.monitoring.claim_batch("batch-1", T0, 10, 0)
        tx.monitoring.add_buckets([row])  # a second, different batch for the same minute adds up
    with store.tx() as tx:
        (b,) = tx.monitoring.buckets("m", "1.0.0", T0 - timedelta(minutes=1))
        assert (b.n, b.tp, b.fp, b.tn, b.fn) == (20, 6, 4, 8, 2)
        assert b.ret_sum == pytest.approx(1.0)


def test_one_open_request_per_model_and_trigger(any_db_url):
    store = Store(Database(any_db_url))
    mk = lambda i, trig=TriggerKind.PERFORMANCE: RetrainRequest(  # noqa: E731
        id=f"00000000-0000-0000-0000-00000000000{i}", model="m", trigger=trig, created_at=T0 + timedelta(minutes=i),
        reason=f"r{i}", evidence={"i": i})
    with store.tx() as tx:
        first, created1 = tx.requests.open(mk(1))
        again, created2 = tx.requests.open(mk(2))
        other, created3 = tx.requests.open(mk(3, TriggerKind.DRIFT))
    assert created1 and not created2 and created3
    assert again == first and other != first
    with store.tx() as tx:
        row = tx.requests.get(first)
        assert row.evidence == {"i": 2}  # refreshed with the newest evidence
        tx.requests.close(row, "approved")
    with store.tx() as tx:
        _, created = tx.requests.open(mk(4))
    assert created  # once closed, a new one may open


def test_alias_moves_are_recorded_with_actor_and_reason(any_db_url):
    store = Store(Database(any_db_url))
    with store.tx() as tx:
        tx.aliases.move("m", "production", "1.0.0", actor="a", reason="first", now=T0)
        tx.aliases.move("m", "production", "1.1.0", actor="b", reason="better", now=T0 + timedelta(hours=1))
    with store.tx() as tx:
        assert tx.aliases.get("m", "production") == "1.1.0"
        hist = [(h.from_version, h.to_version, h.actor) for h in tx.aliases.history("m")]
    assert hist == [(None, "1.0.0", "a"), ("1.0.0", "1.1.0", "b")]


def test_published_outbox_rows_are_pruned_and_pending_ones_kept(any_db_url):
    from retrain.outbox import prune_published

    store = Store(Database(any_db_url))
    with store.tx() as tx:
        for i in range(3):
            tx.outbox.enqueue("retrain.sweep", {"v": 1, "i": i}, T0)
    with store.tx() as tx:
        first, second, _third = tx.outbox.pending()
        tx.outbox.mark_published([first.id], T0)
        tx.outbox.mark_published([second.id], T0 + timedelta(days=2))
    # When the relay prunes two days later with a one-day keep
    assert prune_published(store, T0 + timedelta(days=2, hours=1), keep=timedelta(days=1)) == 1
    with store.tx() as tx:
        # Then the old published row is gone, the recent one and the unpublished one stay
        assert [m.payload["i"] for m in tx.outbox.pending()] == [2]
    assert prune_published(store, T0 + timedelta(days=2, hours=1), keep=timedelta(days=1)) == 0
