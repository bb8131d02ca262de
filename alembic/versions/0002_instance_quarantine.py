"""instance quarantine: poll_crashes, quarantined_at, quarantine_reason; due index skips them

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_DUE = 'events_enabled AND NOT disabled AND deleted_at IS NULL'
_NEW_DUE = 'events_enabled AND NOT disabled AND deleted_at IS NULL AND quarantined_at IS NULL'


def upgrade() -> None:
    op.add_column('instances', sa.Column('poll_crashes', sa.Integer(), server_default='0', nullable=False))
    op.add_column('instances', sa.Column('quarantined_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('instances', sa.Column('quarantine_reason', sa.Text(), nullable=True))
    # The claim predicate gained "quarantined_at IS NULL"; the partial index must match it.
    op.drop_index('ix_instances_due', table_name='instances', postgresql_where=sa.text(_OLD_DUE))
    op.create_index('ix_instances_due', 'instances', ['next_poll_at'], unique=False, postgresql_where=sa.text(_NEW_DUE))


def downgrade() -> None:
    op.drop_index('ix_instances_due', table_name='instances', postgresql_where=sa.text(_NEW_DUE))
    op.create_index('ix_instances_due', 'instances', ['next_poll_at'], unique=False, postgresql_where=sa.text(_OLD_DUE))
    op.drop_column('instances', 'quarantine_reason')
    op.drop_column('instances', 'quarantined_at')
    op.drop_column('instances', 'poll_crashes')
