"""The errors a caller is told about: one base class, one subclass per HTTP status.

Services raise these; the API's one error middleware (:mod:`app.api.errors`) renders
each as ``{"requestId", "message"}`` with its class's ``status`` (SPEC §3). Nothing
here knows about HTTP frameworks, so a service never imports aiohttp to refuse input.

The ``message`` is shown to the caller as it is, so it must be safe to show and, for
bad input, name the field to fix (``"configuration.x: must be ..."``). ``field``
carries that name separately when the raiser knows it.
"""

from __future__ import annotations

from typing import ClassVar, Protocol


class PollinatorError(Exception):
    """An error whose ``message`` is safe to show; ``status`` is its HTTP status."""

    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        detail = self.default_message if message is None else message
        self.field = field
        self.message = detail if field is None else f"{field}: {detail}"
        self.headers: dict[str, str] = {}
        super().__init__(self.message)


class NamedFieldError(Protocol):
    """A domain error naming its field (``FieldError``, ``UnsafeJson``): ``"field: detail"``."""

    field: str
    message: str


class BadInput(PollinatorError):
    """400: the request cannot be used as it is; the message names the field."""

    status = 400
    default_message = "bad request"

    @classmethod
    def naming(cls, error: NamedFieldError) -> BadInput:
        """The same message as a domain error's, with its field kept apart."""
        return cls(error.message.removeprefix(f"{error.field}: "), field=error.field)


class Unauthorized(PollinatorError):
    status = 401
    default_message = "missing or invalid Authorization header"


class NotFound(PollinatorError):
    status = 404
    default_message = "not found"


class Conflict(PollinatorError):
    """409: the request is valid but the current state refuses it (a limit, a poll running)."""

    status = 409
    default_message = "conflict"


class TooManyRequests(PollinatorError):
    """429 with ``Retry-After`` (whole seconds, as RFC 9110 allows)."""

    status = 429
    default_message = "too many requests"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after_s)


class BadGateway(PollinatorError):
    """502: a provider the request depends on could not be reached."""

    status = 502
    default_message = "provider unavailable"
