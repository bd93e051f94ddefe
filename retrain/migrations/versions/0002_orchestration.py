"""orchestration: global training slots under a lease, and the run's liveness marks

* ``training_slots``: one row per global training slot, claimed with
  ``FOR UPDATE SKIP LOCKED`` under a lease (retrain/slots.py). Three rows are
  seeded, the most ``RETRAIN_TRAINING_SLOTS`` allows; the setting decides how many
  of them are used, and more are created on demand if the ceiling ever rises.
* ``training_runs.heartbeat_at``: the last lease renewal by the holder.
* ``training_runs.dispatched_at``: the last time the reconciler (or a freed slot)
  sent the run's current step again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

SEEDED_SLOTS = 3


def upgrade() -> None:
    slots = op.create_table(
        'training_slots',
        sa.Column('slot', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('run_id', sa.String(length=36), nullable=True),
        sa.Column('attempt', sa.Integer(), nullable=True),
        sa.Column('owner', sa.String(length=128), nullable=True),
        sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('slot'),
    )
    op.bulk_insert(slots, [{'slot': i} for i in range(SEEDED_SLOTS)])
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_column('dispatched_at')
        batch_op.drop_column('heartbeat_at')
    op.drop_table('training_slots')
