"""The one middleware that turns every failure into SPEC's JSON error body.

What a caller may be told is an :class:`app.errors.PollinatorError` (raised by services
and handlers alike); this module renders it, aiohttp's own HTTP errors and the domain's
:class:`~app.domain.jsonsafety.UnsafeJson`, and hides everything else behind a 500.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from app.domain.jsonsafety import UnsafeJson
from app.domain.limits import MAX_BODY_BYTES
from app.errors import PollinatorError
from app.logging import bind_log_context

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Headers an aiohttp HTTP error carries that the client needs (405's list of methods).
_KEPT_HEADERS = ("Allow",)


def error_response(
    request_id: str, message: str, status: int, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.json_response(
        {"requestId": request_id, "message": message}, status=status, headers=headers
    )
    response.headers["X-Request-Id"] = request_id
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"requestId", "message"}``; never a stack trace."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    if not request_id.isascii() or not request_id.isprintable() or len(request_id) > 200:
        request_id = uuid.uuid4().hex  # echoed in a header: only a sane value
    bind_log_context(request_id=request_id)  # aiohttp runs each request in its own task
    try:
        response = await handler(request)
    except PollinatorError as exc:
        return error_response(request_id, exc.message, exc.status, exc.headers)
    except UnsafeJson as exc:
        return error_response(request_id, exc.message, 400)
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            request_id, f"body: request body larger than {MAX_BODY_BYTES // 1024} KB", 413
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {h: exc.headers[h] for h in _KEPT_HEADERS if h in exc.headers}
        return error_response(request_id, exc.reason or "error", exc.status, kept)
    except Exception:
        log.exception(
            "unhandled error in %s %s (request %s)", request.method, request.path, request_id
        )
        return error_response(request_id, "internal error", 500)
    response.headers["X-Request-Id"] = request_id
    return response
