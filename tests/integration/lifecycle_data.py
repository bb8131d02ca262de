"""Rows for the data-lifecycle tests: organizations, instances and log rows of a chosen age.

Rows are written with SQL (not through a poll) so that each test can place deliveries
at exact ages and statuses; the shapes are the ones the outbox and the delivery
worker write.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from app.domain.pollconfig import default_poller_configuration, stored_resources
from app.models import utcnow
from app.security import SecretBox, hash_secret, new_secret
from tests.conftest import SECRET_KEY


@dataclass(frozen=True)
class Org:
    id: int
    user_secret: str
    org_secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"User {self.user_secret}, Organization {self.org_secret}"}


async def make_org(conn: asyncpg.Connection, name: str) -> Org:
    user_secret, org_secret = new_secret(), new_secret()
    org_id = await conn.fetchval(
        "INSERT INTO organizations (name, secret_hash) VALUES ($1, $2) RETURNING id",
        name,
        hash_secret(org_secret),
    )
    await conn.execute(
        "INSERT INTO users (organization_id, name, secret_hash) VALUES ($1, $2, $3)",
        org_id,
        f"{name} admin",
        hash_secret(user_secret),
    )
    return Org(org_id, user_secret, org_secret)


async def make_instance(
    conn: asyncpg.Connection,
    org_id: int,
    *,
    name: str = "lifecycle test",
    callback_url: str = "https://93.184.215.14/events",
    marker: str = "",
    resources: tuple[str, ...] = ("contacts",),
) -> int:
    """An instance in the current shape (as ``app.services.instances`` stores one)."""
    box = SecretBox(SECRET_KEY)
    instance_id = await conn.fetchval(
        """INSERT INTO instances (organization_id, name, token_hash, tags, configuration,
             client_id, callback_url, refresh_interval_minutes, poller, secrets, secret_keys,
             tokens, events_enabled, disabled, valid)
           VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, 'client', $6, 15, $9::jsonb, $7,
             '{event.notification.signature.key,oauth.user.token}', $8, true, false, true)
           RETURNING id""",
        org_id,
        name,
        hash_secret(new_secret()),
        json.dumps([f"tag-{marker}"] if marker else []),
        json.dumps({"note": marker}),
        callback_url,
        box.seal({"event.notification.signature.key": "k"}),
        box.seal({"access_token": f"AT-{marker}"}),
        json.dumps(stored_resources(default_poller_configuration())),
    )
    await _poll_states(conn, instance_id, resources)
    return int(instance_id)


async def make_instance_before_0004(
    conn: asyncpg.Connection,
    org_id: int,
    *,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
    refresh_interval_s: float = 900.0,
    resources: tuple[str, ...] = ("contacts",),
) -> int:
    """An instance as revisions 0001-0003 stored one: the Open Connectors body is the
    configuration, one blob holds the configuration's secrets and the provider's tokens."""
    box = SecretBox(SECRET_KEY)
    config = configuration or {"event.notification.callback.url": "https://93.184.215.14/events"}
    blob = {"access_token": "AT", "event.notification.signature.key": "k"}
    instance_id = await conn.fetchval(
        """INSERT INTO instances (organization_id, name, element_key, token_hash, tags,
             configuration, secrets, events_enabled, disabled, valid, refresh_interval_s)
           VALUES ($1, 'before 0004', 'infusionsoftrest', $2, '[]'::jsonb, $3::jsonb, $4,
             true, false, true, $5) RETURNING id""",
        org_id,
        hash_secret(new_secret()),
        json.dumps(config),
        box.seal(blob if secrets is None else secrets),
        refresh_interval_s,
    )
    await _poll_states(conn, instance_id, resources)
    return int(instance_id)


async def _poll_states(
    conn: asyncpg.Connection, instance_id: int, resources: tuple[str, ...]
) -> None:
    for resource in resources:
        await conn.execute(
            """INSERT INTO poll_states (instance_id, resource, watermark_at, watermark_ids)
               VALUES ($1, $2, now(), '[]'::jsonb)""",
            instance_id,
            resource,
        )


@dataclass(frozen=True)
class Seeded:
    delivery_id: uuid.UUID
    event_ids: list[uuid.UUID]
    created_at: datetime


async def seed_delivery(
    conn: asyncpg.Connection,
    instance_id: int,
    org_id: int,
    *,
    age: timedelta,
    status: str = "delivered",
    events: int = 2,
    attempts: int = 1,
    marker: str = "m",
    next_attempt_at: datetime | None = None,
) -> Seeded:
    """One poll's worth of log rows: ``events`` events, their delivery and its attempts."""
    created = utcnow() - age
    delivery_id = uuid.uuid4()
    event_ids = [uuid.uuid4() for _ in range(events)]
    body = json.dumps(
        {
            "message": {
                "eventId": str(delivery_id),
                "instanceId": instance_id,
                "organizationId": org_id,
                "events": [{"eventId": str(e), "objectType": "contacts"} for e in event_ids],
                "raw": {
                    "contacts": [{"id": i, "email": f"{marker}@example.com"} for i in range(events)]
                },
            }
        }
    ).encode()
    await conn.execute(
        """INSERT INTO deliveries (id, instance_id, status, body, event_count, next_attempt_at,
             created_at, delivered_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        delivery_id,
        instance_id,
        status,
        body,
        events,
        next_attempt_at if status == "pending" else None,
        created,
        created if status == "delivered" else None,
    )
    for n, event_id in enumerate(event_ids):
        await conn.execute(
            """INSERT INTO events (id, instance_id, object_type, object_id, event_type,
                 event_date, poll_date, delivery_id, record, created_at)
               VALUES ($1, $2, 'contacts', $3, 'UPDATED', $4, $4, $5, $6::jsonb, $4)""",
            event_id,
            instance_id,
            str(n),
            created,
            delivery_id,
            json.dumps({"id": n, "email": f"{marker}@example.com"}),
        )
    for attempt in range(1, attempts + 1):
        await conn.execute(
            """INSERT INTO delivery_attempts (delivery_id, attempt, at, status_code, duration_ms,
                 error, error_detail, response_body)
               VALUES ($1, $2, $3, 500, 12, 'http', NULL, $4)""",
            delivery_id,
            attempt,
            created,
            f"receiver said {marker}",
        )
    return Seeded(delivery_id, event_ids, created)
