"""data lifecycle: retention overrides and progress, replay jobs, rewind, erasure

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00

Only nullable columns without defaults and two new small tables: on a populated
database every step is a catalog change (no table rewrite, no index build on
``events``/``deliveries``/``delivery_attempts``), so it runs in milliseconds
whatever the size of the event log.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('organizations', sa.Column('payload_retention_days', sa.Float(), nullable=True))
    op.add_column('organizations', sa.Column('metadata_retention_days', sa.Float(), nullable=True))
    op.add_column('organizations', sa.Column('erasing_since', sa.DateTime(timezone=True), nullable=True))
    op.add_column('poll_states', sa.Column('rewound_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('retention_progress',
    sa.Column('instance_id', sa.BigInteger(), nullable=False),
    sa.Column('payload_before', sa.DateTime(timezone=True), nullable=True),
    sa.Column('metadata_before', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], name=op.f('fk_retention_progress_instance_id_instances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('instance_id', name=op.f('pk_retention_progress'))
    )
    op.create_table('replay_jobs',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('instance_id', sa.BigInteger(), nullable=False),
    sa.Column('since', sa.DateTime(timezone=True), nullable=False),
    sa.Column('until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('only_failed', sa.Boolean(), nullable=False),
    sa.Column('state', sa.String(length=16), server_default='queued', nullable=False),
    sa.Column('selected', sa.Integer(), server_default='0', nullable=False),
    sa.Column('sent', sa.Integer(), server_default='0', nullable=False),
    sa.Column('cursor_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cursor_id', sa.UUID(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], name=op.f('fk_replay_jobs_instance_id_instances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_replay_jobs'))
    )
    op.create_index(op.f('ix_replay_jobs_instance_id'), 'replay_jobs', ['instance_id'], unique=False)
    op.create_index('ix_replay_jobs_open', 'replay_jobs', ['created_at'], unique=False, postgresql_where=sa.text("state <> 'done'"))


def downgrade() -> None:
    op.drop_index('ix_replay_jobs_open', table_name='replay_jobs', postgresql_where=sa.text("state <> 'done'"))
    op.drop_index(op.f('ix_replay_jobs_instance_id'), table_name='replay_jobs')
    op.drop_table('replay_jobs')
    op.drop_table('retention_progress')
    op.drop_column('poll_states', 'rewound_at')
    op.drop_column('organizations', 'erasing_since')
    op.drop_column('organizations', 'metadata_retention_days')
    op.drop_column('organizations', 'payload_retention_days')
