"""monitoring: the index the sweep reads the live sample by

* ``ix_feature_samples_model_id``: the sweep prunes each model's sample to its newest
  ``sample.max_rows`` rows (the cut is found by walking the model's ids from the newest)
  and the drift check reads the newest rows first; without it both scan every model's rows.

The beat lease and the drift-check cadence need no table of their own: the lease is a
``controls`` row (``lease:beat``), the cadence reads ``drift_reports``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('feature_samples', schema=None) as batch_op:
        batch_op.create_index('ix_feature_samples_model_id', ['model', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('feature_samples', schema=None) as batch_op:
        batch_op.drop_index('ix_feature_samples_model_id')
