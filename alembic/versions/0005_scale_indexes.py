"""scale: per-organization live-instance counter, indexes for the list and operator reads

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:15:00

Measured at 1M instances (bench/bench_api_scale.py, bench/results/scheduler-1m.md):

- ``organizations.live_instances`` (not deleted), ``pollable_instances`` (beat's due
  predicate) and ``quarantined_instances``, kept by triggers on ``instances``:
  statement-level for INSERT and DELETE, row-level for an UPDATE that changes one of the
  predicates or moves ``organization_id``. Beat's reschedule sets only ``next_poll_at``,
  so it fires none. ``GET /instances`` answers ``Elements-Total-Count`` from the first
  (counting 100k rows of one organization took 1.2 s once beat had rewritten 5 % of the
  table: every reschedule clears its page's all-visible bit, so an index-only count reads
  the heap anyway); ``pollinator status`` and ``/metrics`` sum the others over the
  organizations (counting 890k pollable rows took 2.8 s, 20k quarantined ones 0.9 s).
- ``ix_instances_org_live`` (organization_id, id) of live instances: a page of one
  organization in id order, and its OFFSET walked in the index alone.
- ``ix_poll_states_failing`` (most failures first): ``pollinator status`` reads its top
  50 failing resources from the index, ``/metrics`` only the failing ones, instead of
  scanning every poll state.

Built with CREATE INDEX (not CONCURRENTLY: Alembic runs in a transaction); at 1M
instances each takes seconds.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (column, predicate over an instance row); the trigger functions are generated from these.
_COUNTERS = (
    ('live_instances', 'deleted_at IS NULL'),
    ('pollable_instances', 'events_enabled AND NOT disabled AND deleted_at IS NULL AND quarantined_at IS NULL'),
    ('quarantined_instances', 'quarantined_at IS NOT NULL AND deleted_at IS NULL'),
)


def _on(row: str, predicate: str) -> str:
    """``predicate`` with every column qualified by ``row`` (its terms are ANDed columns)."""
    return ' AND '.join(
        f'NOT {row}.{term[4:]}' if term.startswith('NOT ') else f'{row}.{term}'
        for term in predicate.split(' AND ')
    )


def _adjust(sign: str, rows: str) -> str:
    """Add (or subtract) a transition table's rows to their organizations' counters."""
    sets = ', '.join(f'{c} = o.{c} {sign} n.{c}' for c, _ in _COUNTERS)
    counts = ', '.join(f"count(*) FILTER (WHERE {_on('r', p)}) AS {c}" for c, p in _COUNTERS)
    return (
        f'UPDATE organizations o SET {sets} FROM (SELECT r.organization_id, {counts}'
        f' FROM {rows} r GROUP BY r.organization_id) n WHERE o.id = n.organization_id;'
    )


def _move(sign: str, row: str) -> str:
    sets = ', '.join(f"{c} = {c} {sign} ({_on(row, p)})::integer" for c, p in _COUNTERS)
    return f'UPDATE organizations SET {sets} WHERE id = {row}.organization_id;'


_CHANGED = ' OR '.join(
    ['OLD.organization_id IS DISTINCT FROM NEW.organization_id']
    + [f"({_on('OLD', p)}) IS DISTINCT FROM ({_on('NEW', p)})" for _, p in _COUNTERS]
)
_TRIGGERS = f"""
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
    {_move('-', 'OLD')}
    {_move('+', 'NEW')}
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
    ON instances FOR EACH ROW WHEN ({_CHANGED})
    EXECUTE FUNCTION instances_counts_update();
"""
_FAILING = sa.text('consecutive_failures DESC')


def upgrade() -> None:
    for column, _ in _COUNTERS:
        op.add_column('organizations', sa.Column(column, sa.BigInteger(), server_default='0', nullable=False))
    # Lock out instance writes between the backfill and the triggers taking over.
    op.execute('LOCK TABLE instances IN SHARE ROW EXCLUSIVE MODE')
    sets = ', '.join(f'{c} = n.{c}' for c, _ in _COUNTERS)
    counts = ', '.join(f'count(*) FILTER (WHERE {p}) AS {c}' for c, p in _COUNTERS)
    op.execute(
        f'UPDATE organizations o SET {sets} FROM (SELECT organization_id, {counts}'
        ' FROM instances GROUP BY organization_id) n WHERE o.id = n.organization_id'
    )
    op.execute(_TRIGGERS)
    op.create_index('ix_instances_org_live', 'instances', ['organization_id', 'id'], unique=False, postgresql_where=sa.text('deleted_at IS NULL'))
    op.create_index('ix_poll_states_failing', 'poll_states', [_FAILING, 'instance_id', 'resource'], unique=False, postgresql_where=sa.text('consecutive_failures > 0'))


def downgrade() -> None:
    op.drop_index('ix_poll_states_failing', table_name='poll_states', postgresql_where=sa.text('consecutive_failures > 0'))
    op.drop_index('ix_instances_org_live', table_name='instances', postgresql_where=sa.text('deleted_at IS NULL'))
    for trigger in ('update', 'delete', 'insert'):
        op.execute(f'DROP TRIGGER instances_counts_{trigger} ON instances')
    op.execute('DROP FUNCTION instances_counts_update()')
    op.execute('DROP FUNCTION instances_counts_rows()')
    for column, _ in reversed(_COUNTERS):
        op.drop_column('organizations', column)
