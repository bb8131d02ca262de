"""``pollinator status``, ``instances list|show`` and ``events tail`` as an operator runs them.

The commands run as real subprocesses against the test database and Redis, after
real polls (one failing, one succeeding) have written the state they report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

from app import liveness
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.test_polling import Harness, contacts_config, harness  # noqa: F401


def pollinator(service_urls: ServiceUrls, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "POLLINATOR_DATABASE_URL": service_urls.database_url,
        "POLLINATOR_REDIS_URL": service_urls.redis_url,
        "POLLINATOR_SECRET_KEY": SECRET_KEY,
    }
    env.pop("POLLINATOR_BROKER_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_status_names_the_failing_instance_and_the_live_roles(
    harness: Harness,  # noqa: F811
    service_urls: ServiceUrls,
) -> None:
    healthy = await harness.create_instance(contacts_config())
    await harness.write("contacts", given_name="Ada")
    await asyncio.sleep(0.01)
    await harness.poll()
    failing = await harness.create_instance(contacts_config())
    await harness.fault("error500", seconds=60)
    await harness.poll()

    metrics = await (await harness.api.get("/metrics")).text()
    failing_lines = [
        x for x in metrics.splitlines() if x.startswith("pollinator_instances_failing")
    ]
    assert any('error_class="http_5xx"' in x and float(x.split()[-1]) >= 1 for x in failing_lines)
    assert "pollinator_breakers_open 0" in metrics

    done = await asyncio.to_thread(pollinator, service_urls, "status", "--json")
    assert done.returncode == 0, done.stderr
    state: dict[str, Any] = json.loads(done.stdout)
    assert any(m.endswith(f":{os.getpid()} :8080") for m in state["roles"]["api"])  # harness API
    assert state["roles"]["beat"] == []
    by_instance = {f["instance_id"]: f for f in state["failing"]}
    assert failing in by_instance
    assert healthy not in by_instance
    assert by_instance[failing]["resource"] == "contacts"
    assert by_instance[failing]["error_class"] != "unknown"
    assert set(state["queues"]) == {"poll", "delivery"}
    assert state["schedule"]["pollableInstances"] >= 2

    text = await asyncio.to_thread(pollinator, service_urls, "status")
    assert text.returncode == 0, text.stderr
    assert f"instance {failing}" in text.stdout
    assert "DOWN beat" in text.stdout

    listed = await asyncio.to_thread(pollinator, service_urls, "instances", "list", "--json")
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert rows[failing]["failing_resources"] == 1
    assert rows[healthy]["failing_resources"] == 0

    shown = await asyncio.to_thread(pollinator, service_urls, "instances", "show", str(failing))
    detail = json.loads(shown.stdout)
    assert detail["resources"][0]["consecutive_failures"] == 1
    assert "secret" not in shown.stdout.lower()

    missing = await asyncio.to_thread(pollinator, service_urls, "instances", "show", "999999999")
    assert missing.returncode == 1

    tail = await asyncio.to_thread(
        pollinator, service_urls, "events", "tail", str(healthy), "--no-follow"
    )
    assert tail.returncode == 0, tail.stderr
    assert "CREATED" in tail.stdout
    assert "contacts/" in tail.stdout


async def test_status_exits_2_when_the_state_cannot_be_read(service_urls: ServiceUrls) -> None:
    broken = dataclasses.replace(service_urls, database_url="postgresql://nobody@127.0.0.1:1/none")
    done = await asyncio.to_thread(pollinator, broken, "status")
    assert done.returncode == 2
    assert "cannot read the state" in done.stderr


async def test_liveness_forgets_a_process_that_stopped_announcing(
    service_urls: ServiceUrls,
) -> None:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(service_urls.redis_url)
    try:
        liveness.announce_sync(client, "worker-poll", "gone:1")
        client.zadd("pollinator:alive:worker-poll", {"gone:1": 1.0})  # expired long ago
        liveness.announce_sync(client, "worker-poll", "here:2")
        assert liveness.alive(client)["worker-poll"] == ["here:2"]
        assert client.zscore("pollinator:alive:worker-poll", "gone:1") is None  # pruned
    finally:
        client.delete("pollinator:alive:worker-poll")
        client.close()


async def test_a_quarantined_instance_is_neither_pollable_nor_overdue(
    harness: Harness,  # noqa: F811
) -> None:
    """Status counts what beat schedules: a quarantined row would read as overdue forever."""
    import psycopg

    from app.db import libpq_url
    from app.store import operator

    instance_id = await harness.create_instance(contacts_config())
    with psycopg.connect(libpq_url(harness.database_url)) as conn:
        before = operator.backlog(conn)
        conn.execute(
            "UPDATE instances SET quarantined_at = now(), next_poll_at = now() - interval '1 hour'"
            " WHERE id = %s",
            (instance_id,),
        )
        after = operator.backlog(conn)
    assert after.pollable_instances == before.pollable_instances - 1
    assert after.overdue_instances == before.overdue_instances
