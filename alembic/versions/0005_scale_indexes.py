"""scale: per-organization live-instance counter, indexes for the list and operator reads

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01 12:15:00

Measured at 1M instances (bench/bench_api_scale.py, bench/results/scheduler-1m.md):

- ``organizations.live_instances`` (not deleted) and ``pollable_instances`` (beat's due
  predicate), kept by triggers on ``instances``: statement-level for INSERT and DELETE,
  row-level for an UPDATE that changes either predicate or moves ``organization_id``.
  Beat's reschedule sets only ``next_poll_at``, so it fires none. ``GET /instances``
  answers ``Elements-Total-Count`` from the first (counting 100k rows of one
  organization took 1.2 s once beat had rewritten 5 % of the table: every reschedule
  clears its page's all-visible bit, so an index-only count reads the heap anyway);
  ``pollinator status`` and ``/metrics`` sum the second over the organizations
  (counting 890k pollable rows took 2.8 s).
- ``ix_instances_org_live`` (organization_id, id) of live instances: a page of one
  organization in id order, and its OFFSET walked in the index alone.
- ``ix_poll_states_failing``: ``pollinator status``, ``/metrics`` and the operator list
  read only the failing resources instead of scanning every poll state.
- ``ix_instances_quarantined``: ``/metrics`` counts quarantined instances without a scan.

Built with CREATE INDEX (not CONCURRENTLY: Alembic runs in a transaction); at 1M
instances each takes seconds.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DUE = 'events_enabled AND NOT disabled AND deleted_at IS NULL AND quarantined_at IS NULL'


def _due(row: str) -> str:
    return ' AND '.join(f'{row}.{term}' for term in _DUE.split(' AND ')).replace(f'{row}.NOT ', f'NOT {row}.')


def _adjust(sign: str, rows: str) -> str:
    """Add (or subtract) the live and pollable rows of a transition table, per organization."""
    return f"""
        UPDATE organizations o SET live_instances = o.live_instances {sign} c.live,
                                   pollable_instances = o.pollable_instances {sign} c.pollable
        FROM (SELECT r.organization_id,
                     count(*) FILTER (WHERE r.deleted_at IS NULL) AS live,
                     count(*) FILTER (WHERE {_due('r')}) AS pollable
              FROM {rows} r GROUP BY r.organization_id) c
        WHERE o.id = c.organization_id AND (c.live > 0 OR c.pollable > 0);"""


_COUNT_FUNCTIONS = f"""
CREATE FUNCTION instances_counts_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_adjust('+', 'new_rows')}
    ELSE
        {_adjust('-', 'old_rows')}
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION instances_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE organizations SET
        live_instances = live_instances - (OLD.deleted_at IS NULL)::integer,
        pollable_instances = pollable_instances - ({_due('OLD')})::integer
    WHERE id = OLD.organization_id;
    UPDATE organizations SET
        live_instances = live_instances + (NEW.deleted_at IS NULL)::integer,
        pollable_instances = pollable_instances + ({_due('NEW')})::integer
    WHERE id = NEW.organization_id;
    RETURN NULL;
END $$;

CREATE TRIGGER instances_counts_insert AFTER INSERT ON instances
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION instances_counts_rows();
CREATE TRIGGER instances_counts_delete AFTER DELETE ON instances
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION instances_counts_rows();
CREATE TRIGGER instances_counts_update
    AFTER UPDATE OF organization_id, deleted_at, events_enabled, disabled, quarantined_at
    ON instances FOR EACH ROW
    WHEN (OLD.organization_id IS DISTINCT FROM NEW.organization_id
          OR (OLD.deleted_at IS NULL) IS DISTINCT FROM (NEW.deleted_at IS NULL)
          OR ({_due('OLD')}) IS DISTINCT FROM ({_due('NEW')}))
    EXECUTE FUNCTION instances_counts_update();
"""


def upgrade() -> None:
    op.add_column('organizations', sa.Column('live_instances', sa.BigInteger(), server_default='0', nullable=False))
    op.add_column('organizations', sa.Column('pollable_instances', sa.BigInteger(), server_default='0', nullable=False))
    # Lock out instance writes between the backfill and the triggers taking over.
    op.execute('LOCK TABLE instances IN SHARE ROW EXCLUSIVE MODE')
    op.execute(f"""
        UPDATE organizations o SET live_instances = c.live, pollable_instances = c.pollable
        FROM (SELECT organization_id, count(*) FILTER (WHERE deleted_at IS NULL) AS live,
                     count(*) FILTER (WHERE {_DUE}) AS pollable
              FROM instances GROUP BY organization_id) c
        WHERE o.id = c.organization_id
    """)
    op.execute(_COUNT_FUNCTIONS)
    op.create_index('ix_instances_org_live', 'instances', ['organization_id', 'id'], unique=False, postgresql_where=sa.text('deleted_at IS NULL'))
    op.create_index('ix_instances_quarantined', 'instances', ['quarantined_at'], unique=False, postgresql_where=sa.text('quarantined_at IS NOT NULL AND deleted_at IS NULL'))
    op.create_index('ix_poll_states_failing', 'poll_states', ['instance_id', 'resource'], unique=False, postgresql_where=sa.text('consecutive_failures > 0'))


def downgrade() -> None:
    op.drop_index('ix_poll_states_failing', table_name='poll_states', postgresql_where=sa.text('consecutive_failures > 0'))
    op.drop_index('ix_instances_quarantined', table_name='instances', postgresql_where=sa.text('quarantined_at IS NOT NULL AND deleted_at IS NULL'))
    op.drop_index('ix_instances_org_live', table_name='instances', postgresql_where=sa.text('deleted_at IS NULL'))
    op.execute('DROP TRIGGER instances_counts_update ON instances')
    op.execute('DROP TRIGGER instances_counts_delete ON instances')
    op.execute('DROP TRIGGER instances_counts_insert ON instances')
    op.execute('DROP FUNCTION instances_counts_update()')
    op.execute('DROP FUNCTION instances_counts_rows()')
    op.drop_column('organizations', 'pollable_instances')
    op.drop_column('organizations', 'live_instances')
