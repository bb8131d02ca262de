"""One error type for the API and the middleware that turns errors into JSON."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AppError(Exception):
    """An error whose message is safe to show; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotFound(AppError):
    def __init__(self, message: str = "not found") -> None:
        super().__init__(message, 404)


class Unauthorized(AppError):
    def __init__(self, message: str = "missing or invalid Authorization header") -> None:
        super().__init__(message, 401)


def error_response(request_id: str, message: str, status: int) -> web.Response:
    return web.json_response({"requestId": request_id, "message": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"requestId", "message"}``; never a stack trace."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    try:
        response = await handler(request)
    except AppError as exc:
        return error_response(request_id, exc.message, exc.status)
    except web.HTTPRequestEntityTooLarge:
        return error_response(request_id, "body: request body larger than 256 KB", 413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request_id, exc.reason or "error", exc.status)
    except Exception:
        log.exception(
            "unhandled error in %s %s (request %s)", request.method, request.path, request_id
        )
        return error_response(request_id, "internal error", 500)
    response.headers["X-Request-Id"] = request_id
    return response
