"""The error hierarchy (app/errors.py) as the one middleware renders it (SPEC §3)."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from app.api.errors import error_middleware
from app.domain.instanceconfig import FieldError
from app.domain.jsonsafety import UnsafeJson
from app.errors import (
    BadGateway,
    BadInput,
    Conflict,
    NotFound,
    PollinatorError,
    TooManyRequests,
    Unauthorized,
)


async def render(exc: BaseException) -> web.Response:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise exc

    request = make_mocked_request("GET", "/x", headers={"X-Request-Id": "req-1"})
    response = await error_middleware(request, handler)
    assert isinstance(response, web.Response)
    return response


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (BadInput("must be a string", field="name"), 400, "name: must be a string"),
        (BadInput("apiKey: is required"), 400, "apiKey: is required"),
        (Unauthorized(), 401, "missing or invalid Authorization header"),
        (NotFound("instance 7 not found"), 404, "instance 7 not found"),
        (Conflict("organization: at most 3 instances"), 409, "organization: at most 3 instances"),
        (BadGateway("providerData.code: timed out"), 502, "providerData.code: timed out"),
        (PollinatorError(), 500, "internal error"),
    ],
)
async def test_each_error_is_its_status_and_its_message(
    error: PollinatorError, status: int, message: str
) -> None:
    response = await render(error)
    assert response.status == status
    assert response.text is not None
    assert json.loads(response.text) == {"requestId": "req-1", "message": message}
    assert response.headers["X-Request-Id"] == "req-1"


async def test_too_many_requests_says_when_to_retry() -> None:
    response = await render(TooManyRequests("organization: over its rate", retry_after_s=3))
    assert response.status == 429
    assert response.headers["Retry-After"] == "3"


@pytest.mark.parametrize(
    "domain",
    [FieldError("configuration.a: b", "must be x: y"), UnsafeJson("tags[0]", "contains NUL")],
)
def test_a_domain_error_keeps_its_message_and_its_field(domain: FieldError | UnsafeJson) -> None:
    error = BadInput.naming(domain)
    assert error.message == domain.message
    assert error.field == domain.field
    assert error.status == 400


async def test_anything_else_is_a_500_without_its_text() -> None:
    response = await render(RuntimeError("password=hunter2"))
    assert response.status == 500
    assert response.text is not None
    assert "hunter2" not in response.text
