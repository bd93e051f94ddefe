"""rollout: shadow validation and staged rollout state (table rollouts)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_JSON = sa.JSON()


def upgrade() -> None:
    op.create_table(
        'rollouts',
        sa.Column('run_id', sa.String(length=36), nullable=False),
        sa.Column('model', sa.String(length=128), nullable=False),
        sa.Column('candidate_version', sa.String(length=32), nullable=False),
        sa.Column('baseline_version', sa.String(length=32), nullable=True),
        sa.Column('phase', sa.String(length=16), nullable=False),
        sa.Column('stages', _JSON, nullable=False),
        sa.Column('stage', sa.Integer(), nullable=False),
        sa.Column('share_pct', sa.Float(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stage_started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('canary_started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('gate', sa.String(length=16), nullable=True),
        sa.Column('gate_by', sa.String(length=128), nullable=True),
        sa.Column('scored_until', sa.BigInteger(), nullable=False),
        sa.Column('paired', _JSON, nullable=False),
        sa.Column('figures', _JSON, nullable=False),
        sa.Column('history', _JSON, nullable=False),
        sa.Column('outcome', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('run_id'),
    )
    op.create_index('ix_rollouts_model_phase', 'rollouts', ['model', 'phase'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_rollouts_model_phase', table_name='rollouts')
    op.drop_table('rollouts')
