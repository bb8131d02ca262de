"""scale: per-organization live-instance counter, indexes for the list and operator reads

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01 12:15:00

Measured at 1M instances (bench/bench_api_scale.py, bench/results/scheduler-1m.md):

- ``organizations.live_instances``: the organization's instances that are not deleted,
  kept by triggers on ``instances`` (statement-level for INSERT and DELETE, row-level for
  an UPDATE that sets ``deleted_at`` or moves ``organization_id``; beat's reschedule sets
  neither, so it fires none). ``GET /instances`` answers ``Elements-Total-Count`` from it:
  counting 100k rows of one organization took 1.2 s once beat had rewritten a few
  percent of the table (every reschedule clears the page's all-visible bit, so an
  index-only count fetches the heap anyway).
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

_COUNT_FUNCTIONS = """
CREATE FUNCTION instances_live_count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE organizations o SET live_instances = o.live_instances + n.c
        FROM (SELECT organization_id, count(*) AS c FROM new_rows
              WHERE deleted_at IS NULL GROUP BY organization_id) n
        WHERE o.id = n.organization_id;
    ELSE
        UPDATE organizations o SET live_instances = o.live_instances - d.c
        FROM (SELECT organization_id, count(*) AS c FROM old_rows
              WHERE deleted_at IS NULL GROUP BY organization_id) d
        WHERE o.id = d.organization_id;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION instances_live_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.deleted_at IS NULL THEN
        UPDATE organizations SET live_instances = live_instances - 1
        WHERE id = OLD.organization_id;
    END IF;
    IF NEW.deleted_at IS NULL THEN
        UPDATE organizations SET live_instances = live_instances + 1
        WHERE id = NEW.organization_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER instances_live_count_insert AFTER INSERT ON instances
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION instances_live_count_rows();
CREATE TRIGGER instances_live_count_delete AFTER DELETE ON instances
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION instances_live_count_rows();
CREATE TRIGGER instances_live_count_update AFTER UPDATE OF deleted_at, organization_id
    ON instances FOR EACH ROW
    WHEN ((OLD.deleted_at IS NULL) IS DISTINCT FROM (NEW.deleted_at IS NULL)
          OR OLD.organization_id IS DISTINCT FROM NEW.organization_id)
    EXECUTE FUNCTION instances_live_count_update();
"""


def upgrade() -> None:
    op.add_column('organizations', sa.Column('live_instances', sa.BigInteger(), server_default='0', nullable=False))
    # Lock out instance writes between the backfill and the triggers taking over.
    op.execute('LOCK TABLE instances IN SHARE ROW EXCLUSIVE MODE')
    op.execute("""
        UPDATE organizations o SET live_instances = c.n
        FROM (SELECT organization_id, count(*) AS n FROM instances
              WHERE deleted_at IS NULL GROUP BY organization_id) c
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
    op.execute('DROP TRIGGER instances_live_count_update ON instances')
    op.execute('DROP TRIGGER instances_live_count_delete ON instances')
    op.execute('DROP TRIGGER instances_live_count_insert ON instances')
    op.execute('DROP FUNCTION instances_live_count_update()')
    op.execute('DROP FUNCTION instances_live_count_rows()')
    op.drop_column('organizations', 'live_instances')
