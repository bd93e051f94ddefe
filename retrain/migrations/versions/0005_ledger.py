"""ledger: append-only audit log and cost ledger, and the indexes the decision reads

* ``audit_events`` and ``cost_ledger`` refuse UPDATE and DELETE (and, on Postgres,
  TRUNCATE) with a trigger: the audit trail is append-only by construction, and
  a reservation is never edited, only released by a negative ``release`` row.
  The code never updates or deletes these rows either (a test greps for it);
  the triggers make the database say no to anything else that tries.
* ``ix_cost_ledger_month_model``: the decision sums this month's spend, in total
  and for one model, in one query under its lock; ``ix_cost_ledger_model_kind``:
  it reads the model's last measured costs (the estimate).
* ``ix_training_runs_model_created``: the decision reads a model's run starts of
  the last 31 days (cooldown, daily limit); ``ix_training_runs_created``: it
  counts every model's runs of the day (the global cap).
* ``ix_metric_buckets_model_minute``: the decision sums a model's traffic of the
  last day over all its versions; the primary key (model, version, minute) would
  make that scan every version's whole history, which grows by 1,440 rows a day.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

APPEND_ONLY = ("audit_events", "cost_ledger")

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION retrain_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'retrain: % is append-only; % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    with op.batch_alter_table('cost_ledger', schema=None) as batch_op:
        batch_op.create_index('ix_cost_ledger_month_model', ['month', 'model'], unique=False)
        batch_op.create_index('ix_cost_ledger_model_kind', ['model', 'kind', 'id'], unique=False)
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.create_index('ix_training_runs_model_created', ['model', 'created_at'], unique=False)
        batch_op.create_index('ix_training_runs_created', ['created_at'], unique=False)
    with op.batch_alter_table('metric_buckets', schema=None) as batch_op:
        batch_op.create_index('ix_metric_buckets_model_minute', ['model', 'minute'], unique=False)

    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(_PG_FUNCTION)
        for table in APPEND_ONLY:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       f"FOR EACH ROW EXECUTE FUNCTION retrain_append_only()")
            op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION retrain_append_only()")
    elif dialect == "sqlite":
        for table in APPEND_ONLY:
            for what in ("UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_no_{what.lower()} BEFORE {what} ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, 'retrain: {table} is append-only; {what} is not allowed'); END")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS retrain_append_only()")
    elif dialect == "sqlite":
        for table in APPEND_ONLY:
            for what in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{what}")

    with op.batch_alter_table('metric_buckets', schema=None) as batch_op:
        batch_op.drop_index('ix_metric_buckets_model_minute')
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_training_runs_created')
        batch_op.drop_index('ix_training_runs_model_created')
    with op.batch_alter_table('cost_ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_cost_ledger_model_kind')
        batch_op.drop_index('ix_cost_ledger_month_model')
