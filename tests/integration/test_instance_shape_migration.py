"""Revision 0004 carries instances stored by the 0003 code over to the engine's shape.

The rows are written as the 0003 service wrote them: the body validated by the (unchanged)
domain validator, ``configuration = spec.public``, one blob sealing the configuration's
secrets together with the provider's tokens, and the interval in seconds beside the
minutes. After the upgrade every field is where the new code reads it, the API shows the
same configuration as before, and a downgrade gives the 0003 rows back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from alembic import command
from app.api.views import instance_view
from app.db import create_engine, session_factory
from app.domain.instanceconfig import InstanceSpec, validate_create
from app.domain.pollconfig import resources_from_stored, stored_resources
from app.embedded import drop_database, scratch_database
from app.migrate import alembic_config, check, upgrade
from app.models import Instance
from app.providers.oauth import TokenSet
from app.security import SecretBox, hash_secret, new_secret
from app.settings import get_settings
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.conftest import create_body

BOX = SecretBox(SECRET_KEY)
ENGINE_KEYS = {
    "oauth.api.key",
    "event.notification.callback.url",
    "event.poller.refresh_interval",
    "event.notification.enabled",
    "event.poller.timezone",
}


@pytest.fixture
def database_0003(service_urls: ServiceUrls) -> Iterator[str]:
    url, name = scratch_database(service_urls.database_url, "pollinator_mig4")
    try:
        command.upgrade(alembic_config(url), "0003")
        yield url
    finally:
        drop_database(service_urls.database_url, name)


@dataclass
class Stored:
    """One instance as the 0003 code stored it."""

    id: int
    spec: InstanceSpec
    tokens: dict[str, Any]


def _store_0003(conn: psycopg.Connection[Any], org_id: int, body: dict[str, Any]) -> Stored:
    """What 0003's ``create_instance`` wrote for ``body`` (minus the OAuth round trip)."""
    spec, _ = validate_create(body, min_refresh_minutes=0.01)
    tokens = TokenSet(
        "AT-" + spec.name, None if "no refresh" in spec.name else "RT-" + spec.name, None
    ).to_secrets()
    row = conn.execute(
        """INSERT INTO instances (organization_id, name, element_key, token_hash, tags,
             configuration, secrets, events_enabled, disabled, valid, refresh_interval_s,
             next_poll_at)
           VALUES (%s, %s, 'infusionsoftrest', %s, %s, %s, %s, %s, false, true, %s, now())
           RETURNING id""",
        (
            org_id,
            spec.name,
            hash_secret(new_secret()),
            json.dumps(spec.tags),
            json.dumps(spec.public),
            BOX.seal({**spec.secrets, **tokens}),
            spec.events_enabled,
            spec.refresh_interval_s,
        ),
    ).fetchone()
    assert row is not None
    for resource in spec.resources:
        conn.execute(
            "INSERT INTO poll_states (instance_id, resource, watermark_at, enabled_at)"
            " VALUES (%s, %s, '2026-11-30T10:00:00Z', now())",
            (row[0], resource),
        )
    return Stored(int(row[0]), spec, tokens)


def _bodies() -> list[dict[str, Any]]:
    full = create_body(**{"event.poller.timezone": "Europe/Paris"})
    full["name"] = "full"
    # The poller configuration as a JSON string, an interval that does not survive a
    # round trip through seconds (0.03 * 60 / 60 != 0.03), events off without a callback,
    # no signature key, and a provider that gave no refresh token.
    terse = create_body(
        **{
            "event.notification.enabled": False,
            "event.notification.callback.url": None,
            "event.notification.signature.key": None,
            "event.poller.refresh_interval": "0.03",
        }
    )
    terse["configuration"]["event.poller.configuration"] = json.dumps(
        terse["configuration"]["event.poller.configuration"]
    )
    terse["name"] = "terse, no refresh token"
    # No poller configuration (the Keap defaults, written out by the validator) and a
    # hub URL mapped to Keap's fields.
    defaults = create_body(**{"event.poller.configuration": None})
    defaults["name"] = "defaults"
    hub = create_body(
        **{
            "event.poller.configuration": {
                "contacts": {
                    "url": "/hubs/crm/contacts?where=lastModifiedDate>'${gmtDate:yyyy-MM-dd}'",
                    "idField": "id",
                    "datesConfiguration": {
                        "updatedDateField": "lastModifiedDate",
                        "createdDateField": "createdDate",
                    },
                }
            }
        }
    )
    hub["name"] = "hub"
    return [full, terse, defaults, hub]


def _row(conn: psycopg.Connection[Any], instance_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM instances WHERE id = %s", (instance_id,)).fetchone()
    assert row is not None
    return row


async def _load(url: str, instance_id: int) -> Instance:
    engine = create_engine(url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            instance = await session.get(Instance, instance_id)
    finally:
        await engine.dispose()
    assert instance is not None
    return instance


async def test_upgrade_carries_every_field_and_downgrade_gives_the_rows_back(
    database_0003: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(database_0003, autocommit=True) as conn:
        org = conn.execute(
            "INSERT INTO organizations (name, secret_hash) VALUES ('m', 'h') RETURNING id"
        ).fetchone()
        assert org is not None
        stored = [_store_0003(conn, org[0], body) for body in _bodies()]
        # A tombstone: deleted, secrets forgotten, configuration kept.
        tombstone = _store_0003(conn, org[0], create_body())
        conn.execute(
            "UPDATE instances SET deleted_at = now(), secrets = NULL, events_enabled = false"
            " WHERE id = %s",
            (tombstone.id,),
        )
        # The callback answered 410 Gone: 0003 switched the tenant's events off.
        gone = _store_0003(conn, org[0], create_body())
        conn.execute("UPDATE instances SET events_enabled = false WHERE id = %s", (gone.id,))
        # Stored before a bound existed: the parser now refuses it.
        poison = _store_0003(conn, org[0], create_body())
        conn.execute(
            "UPDATE instances SET configuration = jsonb_set(configuration,"
            " '{event.poller.configuration,contacts,pageSize}', '5000') WHERE id = %s",
            (poison.id,),
        )
        before = {s.id: _row(conn, s.id) for s in [*stored, tombstone, gone, poison]}

    monkeypatch.delenv("POLLINATOR_SECRET_KEY", raising=False)
    get_settings.cache_clear()
    with pytest.raises(RuntimeError, match="POLLINATOR_SECRET_KEY"):
        upgrade(database_0003)  # rows hold secrets: no key, no upgrade (and nothing changed)
    get_settings.cache_clear()
    upgrade(database_0003, SECRET_KEY)
    check(database_0003)  # the upgraded schema is exactly the models'

    with psycopg.connect(database_0003) as conn:
        for s in stored:
            row = _row(conn, s.id)
            public = s.spec.public
            assert "element_key" not in row
            assert row["client_id"] == public["oauth.api.key"]
            assert row["callback_url"] == s.spec.callback_url
            assert row["timezone"] == public.get("event.poller.timezone")
            assert row["refresh_interval_minutes"] == public["event.poller.refresh_interval"]
            assert row["refresh_interval_s"] == s.spec.refresh_interval_s  # what beat used
            assert row["configuration"] == {k: v for k, v in public.items() if k not in ENGINE_KEYS}
            assert row["poller"] == stored_resources(s.spec.resources)
            assert resources_from_stored(row["poller"]) == s.spec.resources
            assert BOX.open(row["secrets"]) == s.spec.secrets
            assert BOX.open(row["tokens"]) == s.tokens
            assert row["events_enabled"] == s.spec.events_enabled
            assert row["quarantined_at"] is None
            assert row["next_poll_at"] == before[s.id]["next_poll_at"]
            states = conn.execute(
                "SELECT resource, watermark_at FROM poll_states WHERE instance_id = %s",
                (s.id,),
            ).fetchall()
            assert dict(states) == dict.fromkeys(
                s.spec.resources, datetime(2026, 11, 30, 10, tzinfo=UTC)
            )
            # The API shows what the 0003 code showed, without opening either blob.
            # (0003's view: the body as stored, every secret and token key as ********)
            shown = {**public, **dict.fromkeys(s.spec.secrets, "********")}
            shown["oauth.user.token"] = "********"
            if s.tokens["refresh_token"]:
                shown["oauth.user.refresh_token"] = "********"
            view = instance_view(await _load(database_0003, s.id))
            assert view["configuration"] == shown
            assert view["eventsEnabled"] == s.spec.events_enabled
            assert view["disabled"] is False
        deleted = _row(conn, tombstone.id)
        assert (deleted["secrets"], deleted["tokens"], deleted["secret_keys"]) == (None, None, [])
        assert deleted["client_id"] == "client-123"
        assert (deleted["events_enabled"], deleted["disabled"]) == (False, False)
        # The 410 is now the system's flag; the tenant's switch is theirs again.
        assert (_row(conn, gone.id)["events_enabled"], _row(conn, gone.id)["disabled"]) == (
            True,
            True,
        )
        view = instance_view(await _load(database_0003, gone.id))
        assert (view["eventsEnabled"], view["disabled"]) == (False, True)
        assert view["configuration"]["event.notification.enabled"] is True
        bad = _row(conn, poison.id)
        assert bad["poller"] == {}
        assert bad["quarantined_at"] is not None
        assert "event.poller.configuration.contacts.pageSize" in bad["quarantine_reason"]
        assert BOX.open(bad["tokens"]) == poison.tokens
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'poll_states'"
            )
        }
        assert "enabled_at" not in columns

    command.downgrade(alembic_config(database_0003, SECRET_KEY), "0003")
    with psycopg.connect(database_0003) as conn:
        for s in [*stored, tombstone, gone]:
            row = _row(conn, s.id)
            old = before[s.id]
            if s is tombstone:  # what a tombstone's body said about events is not kept
                old["configuration"]["event.notification.enabled"] = False
            for column in (
                "element_key",
                "configuration",
                "refresh_interval_s",
                "name",
                "events_enabled",
                "disabled",
            ):
                assert row[column] == old[column], column
            if old["secrets"] is None:
                assert row["secrets"] is None
            else:
                assert BOX.open(row["secrets"]) == BOX.open(old["secrets"])
