"""The per-organization live-instance counter (migration 0005) and the list that reads it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from app.db import libpq_url
from tests.conftest import ServiceUrls
from tests.integration.conftest import create_body, new_org_headers

pytestmark = pytest.mark.integration

BASE = "/elements/api-v2"

_INSERT = """
    INSERT INTO instances (organization_id, name, element_key, token_hash, configuration,
                           events_enabled, disabled, valid, refresh_interval_s, deleted_at)
    SELECT %s, 'n', 'infusionsoftrest', md5(random()::text || g), '{}', true, false, true,
           60, CASE WHEN g > %s THEN now() END
    FROM generate_series(1, %s) AS g
    RETURNING id
"""


def _counted(conn: psycopg.Connection[Any], *orgs: int) -> list[tuple[int, int]]:
    """(counter, real count) per organization."""
    return [
        (
            conn.execute(
                "SELECT live_instances FROM organizations WHERE id = %s", (org,)
            ).fetchone()[0],  # type: ignore[index]
            conn.execute(
                "SELECT count(*) FROM instances WHERE organization_id = %s"
                " AND deleted_at IS NULL",
                (org,),
            ).fetchone()[0],  # type: ignore[index]
        )
        for org in orgs
    ]


async def test_counter_follows_every_write(service_urls: ServiceUrls) -> None:
    a = int((await new_org_headers(service_urls.database_url, "a"))["X-Org-Id"])
    b = int((await new_org_headers(service_urls.database_url, "b"))["X-Org-Id"])
    with psycopg.connect(libpq_url(service_urls.database_url), autocommit=True) as conn:
        # 4 live and 2 tombstones in one statement, 1 live in another organization
        ids = [r[0] for r in conn.execute(_INSERT, (a, 4, 6)).fetchall()]
        conn.execute(_INSERT, (b, 1, 1))
        assert _counted(conn, a, b) == [(4, 4), (1, 1)]
        steps = [
            ("UPDATE instances SET deleted_at = now() WHERE id = %s", ids[0]),  # soft delete
            ("UPDATE instances SET deleted_at = now() WHERE id = %s", ids[0]),  # again: no-op
            ("UPDATE instances SET deleted_at = NULL WHERE id = %s", ids[0]),  # undeleted
            ("UPDATE instances SET organization_id = %s WHERE id = %s", (b, ids[1])),
            ("DELETE FROM instances WHERE id = %s", ids[2]),  # a live row
            ("DELETE FROM instances WHERE id = %s", ids[5]),  # a tombstone
            # what beat does on every tick changes nothing
            ("UPDATE instances SET next_poll_at = now() WHERE id = %s", ids[3]),
        ]
        expected = [(3, 3), (3, 3), (4, 4), (3, 3), (2, 2), (2, 2), (2, 2)]
        for (sql, arg), want_a in zip(steps, expected, strict=True):
            conn.execute(sql, arg if isinstance(arg, tuple) else (arg,))
            got = _counted(conn, a, b)
            assert got[0] == want_a, sql
            assert got[1][0] == got[1][1], sql
        assert _counted(conn, b) == [(2, 2)]


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
