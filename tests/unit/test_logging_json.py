"""``POLLINATOR_LOG_FORMAT=json``: one object per line, with the ids where they apply."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from app.logging import bind_log_context, log_context, setup_logging


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_lines_carry_ids_and_never_secrets(
    restore_root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("pollinator.test")
    with log_context(instance_id=42, organization_id=7):
        log.info("fetching %s", "https://h/x?apiSecret=S3CRET&page=2")
        with log_context(resource="contacts"):
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("poll failed")
    log.warning("outside")
    first, second, third = _lines(capsys.readouterr().err)
    assert first["level"] == "INFO"
    assert first["logger"] == "pollinator.test"
    assert first["instance_id"] == 42
    assert first["organization_id"] == 7
    assert "S3CRET" not in json.dumps(first)
    assert "resource" not in first
    assert str(first["time"]).endswith("+00:00")
    assert second["resource"] == "contacts"
    assert "ValueError: boom" in str(second["exception"])
    assert "instance_id" not in third


def test_each_task_keeps_its_own_ids(
    restore_root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("pollinator.test")

    async def poll(resource: str) -> None:
        bind_log_context(resource=resource)
        await asyncio.sleep(0)
        log.info("polled")

    async def main() -> None:
        with log_context(instance_id=1):
            await asyncio.gather(poll("contacts"), poll("orders"))
            log.info("done")

    asyncio.run(main())
    lines = _lines(capsys.readouterr().err)
    assert sorted(str(x.get("resource")) for x in lines[:2]) == ["contacts", "orders"]
    assert lines[2] == {**lines[2], "instance_id": 1}
    assert "resource" not in lines[2]


def test_text_is_the_default(
    restore_root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO")
    logging.getLogger("pollinator.test").info("plain")
    err = capsys.readouterr().err
    assert "INFO pollinator.test: plain" in err


async def test_api_log_lines_carry_the_request_id(
    restore_root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from app.api.errors import error_middleware

    setup_logging("INFO", "json")

    async def handler(_: web.Request) -> web.Response:
        logging.getLogger("pollinator.test").info("handling")
        return web.json_response({})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/x", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/x", headers={"X-Request-Id": "req-42"})
        assert resp.headers["X-Request-Id"] == "req-42"
    lines = [x for x in _lines(capsys.readouterr().err) if x["message"] == "handling"]
    assert lines[0]["request_id"] == "req-42"
