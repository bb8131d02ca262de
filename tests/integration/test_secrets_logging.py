"""Secrets stay out of the logs of real processes: the access log and database errors."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text

from app.api.routes import CTX
from app.api.server import create_app
from app.embedded import free_port, wait_http
from app.logging import MASK, setup_logging
from app.settings import Settings
from tests.conftest import ROOT, SECRET_KEY, ServiceUrls
from tests.integration.conftest import new_org_headers

pytestmark = pytest.mark.integration

OAUTH_URL = "/elements/api-v2/elements/infusionsoftrest/oauth/url"
SECRET = "S3CRET-9f1c"


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


async def test_client_secret_in_the_query_never_reaches_the_api_log(
    service_urls: ServiceUrls, tmp_path: Path
) -> None:
    """``pollinator api`` as deployed: its access log masks ``apiSecret`` and ``state``."""
    headers = await new_org_headers(service_urls.database_url, "access-log")
    port = free_port()
    log_path = tmp_path / "api.log"
    env = {
        **os.environ,
        "POLLINATOR_DATABASE_URL": service_urls.database_url,
        "POLLINATOR_REDIS_URL": service_urls.redis_url,
        "POLLINATOR_SECRET_KEY": SECRET_KEY,
        "POLLINATOR_LOG_LEVEL": "INFO",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_http(f"{base}/healthz", 60), log_path.read_text()
        query = (
            f"apiKey=k&apiSecret={SECRET}&callbackUrl=https://app.example.com/cb&state=st-{SECRET}"
        )
        request = urllib.request.Request(
            f"{base}{OAUTH_URL}?{query}",
            headers={"Authorization": headers["Authorization"]},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        assert wait_for(lambda: OAUTH_URL in log_path.read_text()), log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
    logged = log_path.read_text()
    assert SECRET not in logged
    assert f"apiSecret={MASK}" in logged
    assert f"state={MASK}" in logged
    assert "callbackUrl=https://app.example.com/cb" in logged  # the rest stays readable


@pytest.fixture
def api_log() -> Iterator[io.StringIO]:
    """The process logging exactly as ``setup_logging`` installs it, into a buffer."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    setup_logging("INFO")
    stream = io.StringIO()
    for handler in root.handlers:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


async def test_database_error_values_never_reach_the_log(
    service_urls: ServiceUrls, api_log: io.StringIO
) -> None:
    """A unique violation (SQLAlchemy) and an unencodable parameter (raw asyncpg) reach the
    API's error boundary: the log names class and SQLSTATE, never the values."""

    async def duplicate_via_orm(request: web.Request) -> web.Response:
        async with request.app[CTX].engine.begin() as conn:
            await conn.execute(text("CREATE TEMP TABLE leak (v text PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO leak VALUES (:v)"), {"v": SECRET})
            await conn.execute(text("INSERT INTO leak VALUES (:v)"), {"v": SECRET})
        return web.Response()

    async def bad_parameter_via_asyncpg(request: web.Request) -> web.Response:
        async with request.app[CTX].engine.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            await raw.execute("SELECT $1::int", SECRET)
        return web.Response()

    settings = Settings(
        database_url=service_urls.database_url,
        redis_url=service_urls.redis_url,
        secret_key=SECRET_KEY,
    )
    app = create_app(settings)
    app.router.add_get("/boom/orm", duplicate_via_orm)
    app.router.add_get("/boom/asyncpg", bad_parameter_via_asyncpg)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        for path in ("/boom/orm", "/boom/asyncpg"):
            resp = await client.get(path)
            assert resp.status == 500
            assert SECRET not in await resp.text()
    finally:
        await client.close()
    logged = api_log.getvalue()
    assert logged.count("unhandled error in GET /boom/") == 2
    assert SECRET not in logged
    assert "UniqueViolationError (SQLSTATE 23505, constraint leak_pkey" in logged
    assert "detail hidden" in logged
