"""instance in the engine's shape: engine columns, stored poller, secrets split from tokens

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00

Until 0003 the engine read the Open Connectors body (``configuration ->> 'oauth.api.key'``,
the callback URL, the poller configuration parsed again by every worker), kept the
interval twice (minutes in the body, seconds in a column) and one encrypted blob held
both the configuration's secrets and the provider's tokens. This revision moves every
existing row over:

* ``client_id``, ``callback_url``, ``timezone`` and ``refresh_interval_minutes`` come out
  of ``configuration`` (which keeps the rest of the body, for the API to show back);
  ``refresh_interval_s`` becomes a column PostgreSQL generates from the minutes;
* ``poller`` holds the parsed poller configuration (``app.domain.pollconfig``); a stored
  configuration the parser now refuses quarantines its instance (a PATCH lifts it), as a
  poll of it would have;
* the blob is split: ``secrets`` keeps the configuration's secrets, ``tokens`` the
  provider's, and ``secret_keys`` names what the API shows as ``********``;
* a 410 from the callback used to switch the tenant's ``events_enabled`` off (the body
  still said enabled); such an instance keeps the tenant's switch and gets ``disabled``,
  which is what a 410 sets from now on;
* the dead columns go: ``instances.element_key`` (always ``infusionsoftrest``) and
  ``poll_states.enabled_at`` (never read).

Splitting the blob means decrypting it, so the upgrade needs ``POLLINATOR_SECRET_KEY``:
``pollinator migrate`` and ``pollinator up`` pass it (``app.migrate.upgrade``), a bare
``alembic upgrade`` reads it from the environment. A database with no stored secrets
(a new one) needs no key. The downgrade merges everything back the same way.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from app.domain.pollconfig import (
    ConfigError,
    default_poller_configuration,
    parse_poller_configuration,
    stored_resources,
)
from app.security import SecretBox

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The body's keys as 0001-0003 stored them (frozen here: this revision reads old rows).
CLIENT_ID = 'oauth.api.key'
CALLBACK = 'event.notification.callback.url'
INTERVAL = 'event.poller.refresh_interval'
ENABLED = 'event.notification.enabled'
TIMEZONE = 'event.poller.timezone'
POLLER = 'event.poller.configuration'
TOKEN_KEYS = ('access_token', 'refresh_token', 'expires_at')
SHOWN_TOKEN_KEYS = {'access_token': 'oauth.user.token', 'refresh_token': 'oauth.user.refresh_token'}
BATCH = 500
INTERVAL_S = 'refresh_interval_minutes * 60'


def _box() -> SecretBox | None:
    key = context.config.attributes.get('secret_key')
    if not key:
        from app.settings import get_settings

        key = get_settings().secret_key
    return SecretBox(key) if key else None


def _require_box(box: SecretBox | None) -> SecretBox:
    if box is None:
        raise RuntimeError(
            'revision 0004 splits the stored instance secrets and needs the key that '
            'encrypted them: run `pollinator migrate` with POLLINATOR_SECRET_KEY set'
        )
    return box


def _rows(conn: sa.Connection, columns: str) -> Iterator[sa.Row[Any]]:
    """Every instance, in id order, a batch at a time (no long-held result set)."""
    after = 0
    while True:
        batch = conn.execute(
            sa.text(f'SELECT id, {columns} FROM instances WHERE id > :after ORDER BY id LIMIT :n'),
            {'after': after, 'n': BATCH},
        ).fetchall()
        if not batch:
            return
        yield from batch
        after = batch[-1][0]


def _minutes(config: dict[str, Any], seconds: float) -> float:
    value = config.get(INTERVAL)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return seconds / 60.0


def _poller(config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The stored poller and, when the parser refuses the old value, why."""
    raw = config.get(POLLER)
    try:
        resources = (
            default_poller_configuration() if raw is None or raw == '' else parse_poller_configuration(raw)
        )
    except ConfigError as exc:
        return {}, f'the stored poller configuration is invalid ({exc}); polling is paused until the instance is updated'
    return stored_resources(resources), None


def _split(box: SecretBox | None, sealed: bytes | None) -> tuple[bytes | None, list[str], bytes | None]:
    """(configuration secrets, the keys the API redacts, tokens) of one old blob."""
    if not sealed:
        return None, [], None
    document = _require_box(box).open(sealed)
    tokens = {k: v for k, v in document.items() if k in TOKEN_KEYS}
    secrets = {k: v for k, v in document.items() if k not in TOKEN_KEYS}
    shown = sorted(secrets) + [name for key, name in SHOWN_TOKEN_KEYS.items() if tokens.get(key)]
    return (
        box.seal(secrets) if box is not None and secrets else None,
        shown,
        box.seal(tokens) if box is not None and tokens else None,
    )


def upgrade() -> None:
    op.add_column('instances', sa.Column('client_id', sa.Text(), nullable=True))
    op.add_column('instances', sa.Column('callback_url', sa.Text(), nullable=True))
    op.add_column('instances', sa.Column('timezone', sa.Text(), nullable=True))
    op.add_column('instances', sa.Column('refresh_interval_minutes', sa.Float(), nullable=True))
    op.add_column('instances', sa.Column('poller', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('instances', sa.Column('secret_keys', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False))
    op.add_column('instances', sa.Column('tokens', sa.LargeBinary(), nullable=True))
    conn = op.get_bind()
    box = _box()
    update = sa.text("""
        UPDATE instances SET client_id = :client_id, callback_url = :callback_url,
               timezone = :timezone, refresh_interval_minutes = :minutes,
               poller = CAST(:poller AS jsonb), configuration = CAST(:configuration AS jsonb),
               secrets = :secrets, secret_keys = :secret_keys, tokens = :tokens,
               events_enabled = :enabled, disabled = disabled OR :gone,
               quarantined_at = CASE WHEN CAST(:reason AS text) IS NULL THEN quarantined_at
                                     ELSE coalesce(quarantined_at, now()) END,
               quarantine_reason = coalesce(quarantine_reason, CAST(:reason AS text))
        WHERE id = :id
    """)
    for row in _rows(conn, 'configuration, secrets, refresh_interval_s, events_enabled, deleted_at IS NOT NULL'):
        config: dict[str, Any] = dict(row[1])
        # Switched off while the body says on, and not deleted: a 410 did that.
        gone = not row[4] and config.get(ENABLED) is True and not row[5]
        callback = config.get(CALLBACK)
        zone = config.get(TIMEZONE)
        poller, reason = _poller(config)
        secrets, secret_keys, tokens = _split(box, row[2])
        rest = {k: v for k, v in config.items() if k not in (CLIENT_ID, CALLBACK, INTERVAL, ENABLED, TIMEZONE)}
        conn.execute(update, {
            'id': row[0],
            'client_id': str(config.get(CLIENT_ID) or ''),
            'callback_url': callback.strip() if isinstance(callback, str) and callback.strip() else None,
            'timezone': zone if isinstance(zone, str) and zone else None,
            'minutes': _minutes(config, float(row[3])),
            'poller': json.dumps(poller),
            'configuration': json.dumps(rest),
            'secrets': secrets,
            'secret_keys': secret_keys,
            'tokens': tokens,
            'reason': reason,
            'enabled': row[4] or gone,
            'gone': gone,
        })
    for column in ('client_id', 'refresh_interval_minutes', 'poller'):
        op.alter_column('instances', column, nullable=False)
    op.drop_column('instances', 'refresh_interval_s')
    op.add_column('instances', sa.Column('refresh_interval_s', sa.Float(), sa.Computed(INTERVAL_S, persisted=True), nullable=False))
    op.drop_column('instances', 'element_key')
    op.drop_column('poll_states', 'enabled_at')


def downgrade() -> None:
    op.add_column('poll_states', sa.Column('enabled_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False))
    op.add_column('instances', sa.Column('element_key', sa.String(length=64), server_default='infusionsoftrest', nullable=False))
    op.alter_column('instances', 'element_key', server_default=None)
    op.drop_column('instances', 'refresh_interval_s')
    op.add_column('instances', sa.Column('refresh_interval_s', sa.Float(), nullable=True))
    op.execute(f'UPDATE instances SET refresh_interval_s = {INTERVAL_S}')
    op.alter_column('instances', 'refresh_interval_s', nullable=False)
    conn = op.get_bind()
    box = _box()
    update = sa.text(
        'UPDATE instances SET configuration = CAST(:configuration AS jsonb), secrets = :secrets WHERE id = :id'
    )
    columns = 'configuration, client_id, callback_url, timezone, refresh_interval_minutes, events_enabled, secrets, tokens'
    for row in _rows(conn, columns):
        # The tenant's switch goes back into the body; a 410 goes back to switching it off.
        config: dict[str, Any] = {**dict(row[1]), CLIENT_ID: row[2], INTERVAL: row[5], ENABLED: row[6]}
        if row[3] is not None:
            config[CALLBACK] = row[3]
        if row[4] is not None:
            config[TIMEZONE] = row[4]
        merged: dict[str, Any] = {}
        for sealed in (row[7], row[8]):
            if sealed:
                merged.update(_require_box(box).open(sealed))
        conn.execute(update, {
            'id': row[0],
            'configuration': json.dumps(config),
            'secrets': box.seal(merged) if box is not None and merged else None,
        })
    op.execute('UPDATE instances SET events_enabled = false, disabled = false WHERE disabled')
    for column in ('tokens', 'secret_keys', 'poller', 'refresh_interval_minutes', 'timezone', 'callback_url', 'client_id'):
        op.drop_column('instances', column)
