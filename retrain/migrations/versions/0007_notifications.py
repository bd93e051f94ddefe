"""notifications: deliveries of events to people, and the indexes the metrics exporter reads

* ``notifications``: one row per (event, target), unique, so a redelivered outbox
  message never notifies twice; ``status`` and ``next_attempt_at`` drive the retries.
* ``ix_audit_events_kind_at``: the exporter counts rollbacks and the client's dropped
  rows (audit kinds ``rollback``, ``client``) since a time without scanning the trail.
* ``ix_ingested_batches_received_at``, ``ix_dead_letters_at``, ``ix_decisions_decided_at``,
  ``ix_retrain_requests_created``: the exporter's counters read only what is new since
  its last full count.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_INDEXES = (
    ("audit_events", "ix_audit_events_kind_at", ["kind", "at"]),
    ("ingested_batches", "ix_ingested_batches_received_at", ["received_at"]),
    ("dead_letters", "ix_dead_letters_at", ["at"]),
    ("decisions", "ix_decisions_decided_at", ["decided_at"]),
    ("retrain_requests", "ix_retrain_requests_created", ["created_at"]),
)


def upgrade() -> None:
    op.create_table(
        'notifications',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('target', sa.String(length=64), nullable=False),
        sa.Column('event', sa.String(length=32), nullable=False),
        sa.Column('model', sa.String(length=128), nullable=True),
        sa.Column('subject', sa.String(length=64), nullable=True),
        sa.Column('title', sa.Text(), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('event_id', 'target', name='uq_notifications_event_target'),
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index('ix_notifications_status_next', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_notifications_created', ['created_at'], unique=False)
    for table, name, cols in _INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, cols, unique=False)


def downgrade() -> None:
    for table, name, _cols in _INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(name)
    op.drop_table('notifications')
