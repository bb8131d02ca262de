"""The per-organization instance counters (migration 0005) and the reads that use them."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from app.db import libpq_url
from app.models import DUE_PREDICATE
from app.store import operator
from tests.conftest import ServiceUrls
from tests.integration.conftest import create_body, new_org_headers

pytestmark = pytest.mark.integration

BASE = "/elements/api-v2"

_INSERT = """
    INSERT INTO instances (organization_id, name, token_hash, configuration, client_id, poller,
                           events_enabled, disabled, valid, refresh_interval_minutes, deleted_at)
    SELECT %s, 'n', md5(random()::text || g), '{}', 'c', '{}', g %% 2 = 1, false,
           true, 1, CASE WHEN g > %s THEN now() END
    FROM generate_series(1, %s) AS g
    RETURNING id
"""
_QUARANTINED = "quarantined_at IS NOT NULL AND deleted_at IS NULL"
_COUNTS = f"""
    SELECT o.live_instances, o.pollable_instances, o.quarantined_instances,
           (SELECT count(*) FROM instances WHERE organization_id = o.id AND deleted_at IS NULL),
           (SELECT count(*) FROM instances WHERE organization_id = o.id AND {DUE_PREDICATE}),
           (SELECT count(*) FROM instances WHERE organization_id = o.id AND {_QUARANTINED})
    FROM organizations o WHERE o.id = %s
"""


def _counts(conn: psycopg.Connection[Any], org: int) -> tuple[int, int, int]:
    """(live, pollable, quarantined) of the organization; asserts its counters agree."""
    row = conn.execute(_COUNTS, (org,)).fetchone()
    assert row is not None
    assert row[:3] == row[3:], "counters (live, pollable, quarantined) != counted"
    return int(row[0]), int(row[1]), int(row[2])


async def test_counters_follow_every_write(service_urls: ServiceUrls) -> None:
    a = int((await new_org_headers(service_urls.database_url, "a"))["X-Org-Id"])
    b = int((await new_org_headers(service_urls.database_url, "b"))["X-Org-Id"])
    with psycopg.connect(libpq_url(service_urls.database_url), autocommit=True) as conn:
        # 4 live (events on for 1 and 3) and 2 tombstones in one statement
        ids = [r[0] for r in conn.execute(_INSERT, (a, 4, 6)).fetchall()]
        conn.execute(_INSERT, (b, 1, 1))
        assert (_counts(conn, a), _counts(conn, b)) == ((4, 2, 0), (1, 1, 0))
        steps: list[tuple[str, tuple[Any, ...], tuple[int, int, int]]] = [
            ("UPDATE instances SET deleted_at = now() WHERE id = %s", (ids[0],), (3, 1, 0)),
            ("UPDATE instances SET deleted_at = now() WHERE id = %s", (ids[0],), (3, 1, 0)),
            ("UPDATE instances SET deleted_at = NULL WHERE id = %s", (ids[0],), (4, 2, 0)),
            ("UPDATE instances SET quarantined_at = now() WHERE id = %s", (ids[2],), (4, 1, 1)),
            ("UPDATE instances SET deleted_at = now() WHERE id = %s", (ids[2],), (3, 1, 0)),
            ("UPDATE instances SET deleted_at = NULL WHERE id = %s", (ids[2],), (4, 1, 1)),
            ("UPDATE instances SET quarantined_at = NULL WHERE id = %s", (ids[2],), (4, 2, 0)),
            ("UPDATE instances SET disabled = true WHERE id = %s", (ids[0],), (4, 1, 0)),
            ("UPDATE instances SET events_enabled = true WHERE id = %s", (ids[1],), (4, 2, 0)),
            ("UPDATE instances SET organization_id = %s WHERE id = %s", (b, ids[1]), (3, 1, 0)),
            ("UPDATE instances SET quarantined_at = now() WHERE id = %s", (ids[2],), (3, 0, 1)),
            ("DELETE FROM instances WHERE id = %s", (ids[2],), (2, 0, 0)),  # a live row
            ("DELETE FROM instances WHERE id = %s", (ids[5],), (2, 0, 0)),  # a tombstone
            # what beat does on every tick changes no count
            ("UPDATE instances SET next_poll_at = now() WHERE id = %s", (ids[3],), (2, 0, 0)),
        ]
        for sql, args, want in steps:
            conn.execute(sql, args)
            assert _counts(conn, a) == want, sql
            _counts(conn, b)
        assert _counts(conn, b) == (2, 2, 0)
        backlog = operator.backlog(conn)
        everywhere = conn.execute(f"SELECT count(*) FROM instances WHERE {DUE_PREDICATE}")
        assert backlog.pollable_instances == everywhere.fetchone()[0]  # type: ignore[index]


async def test_list_total_and_deep_pages_after_deletes(
    api: TestClient[Any, Any], service_urls: ServiceUrls
) -> None:
    headers = await new_org_headers(service_urls.database_url, "pages")
    ids = []
    for _ in range(6):
        resp = await api.post(f"{BASE}/instances", json=create_body(), headers=headers)
        assert resp.status == 200, await resp.text()
        ids.append((await resp.json())["id"])
    for gone in (ids[1], ids[4]):
        assert (await api.delete(f"{BASE}/instances/{gone}", headers=headers)).status == 200
    live = [i for i in ids if i not in (ids[1], ids[4])]
    seen = []
    for page in (1, 2, 3):
        resp = await api.get(f"{BASE}/instances?page={page}&pageSize=2", headers=headers)
        assert resp.headers["Elements-Total-Count"] == "4"
        seen.append([i["id"] for i in await resp.json()])
    assert seen == [live[:2], live[2:], []]
