"""The callback sink over real HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from app.sink import Behaviour, create_sink_app

Serve = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


async def test_records_headers_and_raw_body(serve: Serve, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "calls.jsonl"
    client = await serve(create_sink_app(out=out))
    raw = b'{"message": {"events": []}}  '
    resp = await client.post(
        "/events?x=1", data=raw, headers={"webhook-id": "d1", "Content-Type": "application/json"}
    )
    assert resp.status == 200
    resp = await client.put("/bin", data=b"\xff\x00\xfe")
    assert resp.status == 200
    recorded = await (await client.get("/_sink/requests")).json()
    assert len(recorded) == 2  # admin calls are not recorded
    first, second = recorded
    assert first["method"] == "POST"
    assert first["path"] == "/events"
    assert first["query"] == "x=1"
    assert first["headers"]["webhook-id"] == "d1"
    assert first["body"] == raw.decode()  # exact bytes, not re-serialised
    assert first["received_at"].endswith("Z")
    assert second["body"] is None
    assert base64.b64decode(second["body_base64"]) == b"\xff\x00\xfe"
    lines = out.read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2]
    after = await (await client.get("/_sink/requests", params={"after": "1"})).json()
    assert [r["seq"] for r in after] == [2]


async def test_status_for_next_n_requests(serve: Serve) -> None:
    client = await serve(create_sink_app())
    resp = await client.post("/_sink/behaviour", json={"status": 503, "count": 2, "retryAfter": 7})
    assert resp.status == 200
    statuses = [(await client.post("/cb", json={})) for _ in range(4)]
    assert [r.status for r in statuses] == [503, 503, 200, 200]
    assert statuses[0].headers["Retry-After"] == "7"
    recorded = await (await client.get("/_sink/requests")).json()
    assert [r["status"] for r in recorded] == [503, 503, 200, 200]


async def test_status_for_a_fraction_and_reset(serve: Serve) -> None:
    client = await serve(create_sink_app(seed=1))
    await client.post("/_sink/behaviour", json={"status": 500, "fraction": 0.3})
    statuses = [(await client.post("/cb", data=b"x")).status for _ in range(200)]
    assert 30 <= statuses.count(500) <= 90
    assert set(statuses) == {200, 500}
    await client.post("/_sink/behaviour", json={"status": 200})
    assert (await client.post("/cb", data=b"x")).status == 200
    resp = await client.post("/_sink/behaviour", json={"status": 99})
    assert resp.status == 400


async def test_initial_behaviour_and_delay(serve: Serve) -> None:
    client = await serve(create_sink_app(behaviour=Behaviour(status=410, count=1)))
    assert (await client.post("/cb")).status == 410
    assert (await client.post("/cb")).status == 200
    await client.post("/_sink/behaviour", json={"status": 200, "delaySeconds": 0.2})
    behaviour = await (await client.get("/_sink/behaviour")).json()
    assert behaviour["delaySeconds"] == 0.2
    await client.post("/_sink/behaviour", json={"status": 200})
    await client.delete("/_sink/requests")
    assert await (await client.get("/_sink/requests")).json() == []
