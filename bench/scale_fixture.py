"""A populated instance table for the scale benchmarks (bench_beat.py, bench_api_scale.py).

``fill(conn, n)`` writes ``n`` instances straight into PostgreSQL with one
``INSERT … SELECT generate_series`` (a million rows load in seconds), spread the way a
production table is:

- organizations: every 10th instance belongs to one large organization (10 % of the
  rows: 100k of 1M), the rest are spread over ``n / 100`` others; ids interleave, as
  instances of many tenants are created over time;
- refresh intervals 1 min (10 %), 5 min (20 %), 15 min (50 %) and 60 min (20 %); each
  ``next_poll_at`` at a random phase of its interval after ``Filled.epoch`` (a head start
  of :data:`HEAD_START` from the fill, so a slow fill leaves no backlog: a simulated
  clock starting at the epoch sees some instances due every second);
- 2 % quarantined (their ``next_poll_at`` stuck in the past, as beat leaves them),
  4 % disabled, 4 % with events off (no ``next_poll_at``), 1 % deleted (tombstones);
- with ``poll_states``: two resources per instance with events on, 1 % of them failing.

The first organization's user and organization secrets are :data:`BIG_SECRETS`, the
second's :data:`SMALL_SECRETS`, so an API client can sign in as either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from app.security import hash_secret

HEAD_START = timedelta(minutes=15)
BIG_SECRETS = ("bench-big-user", "bench-big-org")
SMALL_SECRETS = ("bench-small-user", "bench-small-org")

# A realistic stored configuration (the non-secret keys of SPEC §3's create body).
_CONFIGURATION = """{
  "oauth.callback.url": "https://app.example.com/oauth/callback",
  "event.notification.enabled": true,
  "event.vendor.type": "polling",
  "event.notification.callback.url": "https://hooks.example.com/events",
  "event.poller.refresh_interval": 15,
  "event.poller.configuration": {
    "contacts": {"url": "/contacts?since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}&order=id",
                 "idField": "id",
                 "datesConfiguration": {"updatedDateField": "last_updated",
                                        "updatedDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSZ"}},
    "orders": {"url": "/orders?since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}",
               "idField": "id",
               "datesConfiguration": {"updatedDateField": "modification_date",
                                      "updatedDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSZ"}}
  }
}"""

# h: a per-row pseudo-random bucket 0..99 uncorrelated with the organization (g % 10).
_POLLER = """{
  "contacts": {"url": "/contacts?since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}&order=id",
               "idField": "id",
               "datesConfiguration": {"updatedDateField": "last_updated",
                                      "updatedDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSZ"}},
  "orders": {"url": "/orders?since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}",
             "idField": "id",
             "datesConfiguration": {"updatedDateField": "modification_date",
                                    "updatedDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSZ"}}
}"""

# h: a per-row pseudo-random bucket 0..99 uncorrelated with the organization (g % 10).
_INSTANCES = """
    INSERT INTO instances (organization_id, name, token_hash, tags, configuration, client_id,
                           callback_url, refresh_interval_minutes, poller,
                           events_enabled, disabled, valid, next_poll_at,
                           quarantined_at, quarantine_reason, deleted_at, created_at, updated_at)
    SELECT CASE WHEN g %% 10 = 0 THEN %(big)s
                ELSE %(small)s + (g * 7919) %% %(others)s END,
           'bench ' || g, md5('bench-token-' || g), '["bench"]'::jsonb,
           %(configuration)s::jsonb, 'client-' || (g %% 50), 'https://hooks.example.com/events',
           iv / 60.0, %(poller)s::jsonb,
           NOT h BETWEEN 6 AND 9, h BETWEEN 2 AND 5, true,
           CASE WHEN h < 2 THEN now() - interval '3 days'
                WHEN h BETWEEN 6 AND 9 THEN NULL
                ELSE %(epoch)s + make_interval(secs => random() * iv) END,
           CASE WHEN h < 2 THEN now() - interval '3 days' END,
           CASE WHEN h < 2 THEN 'bench: next poll time cannot be computed' END,
           CASE WHEN h = 10 THEN now() - interval '1 day' END,
           now() - interval '30 days', now() - interval '30 days'
    FROM (SELECT g, abs(hashint8extended(g, 1) %% 100) AS h,
                 (ARRAY[60, 300, 300, 900, 900, 900, 900, 900, 3600, 3600])
                   [1 + abs(hashint8extended(g, 2) %% 10)] AS iv
          FROM generate_series(1::bigint, %(n)s) AS g) AS s
"""
_POLL_STATES = """
    INSERT INTO poll_states (instance_id, resource, watermark_at, watermark_ids,
                             last_polled_at, last_success_at, consecutive_failures, last_error)
    SELECT i.id, r.resource, now() - interval '1 minute', '[]'::jsonb,
           now() - interval '1 minute',
           CASE WHEN i.id % 100 = 7 THEN now() - interval '1 hour' ELSE now() - interval '1 minute'
           END,
           CASE WHEN i.id % 100 = 7 THEN 3 ELSE 0 END,
           CASE WHEN i.id % 100 = 7 THEN 'http_5xx: provider answered 503' END
    FROM instances i CROSS JOIN (VALUES ('contacts'), ('orders')) AS r(resource)
    WHERE i.events_enabled AND i.deleted_at IS NULL
"""


@dataclass(frozen=True)
class Filled:
    """What :func:`fill` made: the two signed-in organizations and their row counts."""

    epoch: datetime
    big_org: int
    small_org: int
    big_rows: int
    small_rows: int
    organizations: int


def fill(conn: Any, n: int, *, poll_states: bool = False) -> Filled:
    """Fill an empty, migrated database through ``conn`` (psycopg, autocommit); see above."""
    organizations = max(10, n // 100)
    epoch = conn.execute("SELECT now() + %s", (HEAD_START,)).fetchone()[0]
    first = conn.execute(
        """
        INSERT INTO organizations (name, secret_hash)
        SELECT 'bench org ' || g, md5('bench-org-' || g) FROM generate_series(1, %s) AS g
        RETURNING id
        """,
        (organizations,),
    ).fetchall()
    ids = sorted(int(r[0]) for r in first)
    big, small = ids[0], ids[1]
    for org, (user_secret, org_secret) in ((big, BIG_SECRETS), (small, SMALL_SECRETS)):
        conn.execute(
            "UPDATE organizations SET secret_hash = %s WHERE id = %s",
            (hash_secret(org_secret), org),
        )
        conn.execute(
            "INSERT INTO users (organization_id, name, secret_hash) VALUES (%s, 'bench', %s)",
            (org, hash_secret(user_secret)),
        )
    conn.execute(
        _INSTANCES,
        {
            "big": big,
            "small": small,
            "others": organizations - 1,
            "configuration": _CONFIGURATION,
            "poller": _POLLER,
            "n": n,
            "epoch": epoch,
        },
    )
    if poll_states:
        conn.execute(_POLL_STATES)
    conn.execute("VACUUM ANALYZE")
    counts = conn.execute(
        """
        SELECT count(*) FILTER (WHERE organization_id = %s),
               count(*) FILTER (WHERE organization_id = %s)
        FROM instances WHERE deleted_at IS NULL
        """,
        (big, small),
    ).fetchone()
    return Filled(epoch, big, small, int(counts[0]), int(counts[1]), organizations)
