"""Logging setup shared by every process, and what keeps secrets out of the logs.

Secrets are never passed to loggers on purpose, but some reach them by accident:
a request line carrying ``?apiSecret=`` (every Open Connectors client sends one to
``/oauth/url``), a URL with ``user:password@``, a database error whose text quotes
the row (``DETAIL: Key (x)=(…) already exists``) or the statement's parameters.
Three pieces close those paths:

- :func:`mask_url` — one pure function that masks secret-like query parameters and
  userinfo in a URL or in any text containing URLs;
- :class:`MaskingAccessLogger` — the API's access log, which masks the request line
  and the Referer with it;
- :class:`RedactingFilter` — installed on every root handler by :func:`setup_logging`,
  so every record of every logger (ours, aiohttp's, Celery's) has URLs masked and
  database errors reduced to their class and SQLSTATE, tracebacks included.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import unquote_plus

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

MASK = "********"

# Normalized parameter names (lower case, letters and digits only) that are secrets
# whole, and fragments that make any name secret-like: ``client_secret``,
# ``oauth.api.secret``, ``X-Api-Key``, ``refresh_token``, ``id_token``, ``password``...
_SECRET_NAMES = frozenset({"code", "state", "sig", "pwd", "pass", "otp", "nonce"})
_SECRET_FRAGMENTS = (
    "secret",
    "token",
    "passw",
    "key",
    "auth",
    "credential",
    "signature",
    "session",
    "cookie",
    "jwt",
)

# ``?name=value`` / ``&name=value`` / ``#name=value`` (OAuth implicit grants put tokens in
# the fragment). Values end where a URL or a quoted URL in a message would.
_PARAM = re.compile(r"(?P<lead>[?&;#])(?P<name>[^=&;#?\s'\"<>]+)=(?P<value>[^&;#\s'\"<>]*)")
# ``scheme://userinfo@``: the password, and often the user name, is a credential.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/?#@\s'\"<>]+)@")


@lru_cache(maxsize=1024)  # a handful of names recur in every line; bounded for tenant names
def is_sensitive_name(name: str) -> bool:
    """Whether a query parameter of this name may carry a secret (case and ``_-.`` ignored)."""
    normalized = "".join(ch for ch in unquote_plus(name).lower() if ch.isalnum())
    return normalized in _SECRET_NAMES or any(f in normalized for f in _SECRET_FRAGMENTS)


def _mask_param(match: re.Match[str]) -> str:
    if not match["value"] or not is_sensitive_name(match["name"]):
        return match[0]
    return f"{match['lead']}{match['name']}={MASK}"


def mask_url(text: str) -> str:
    """``text`` with secret-like query/fragment values and every URL userinfo masked.

    Works on a bare URL, a request path with its query (``/oauth/url?apiSecret=…``) or
    any text that contains URLs; text without them is returned unchanged. Pure and
    total: malformed input is masked as far as it can be read, never raises.
    """
    if "=" in text:
        text = _PARAM.sub(_mask_param, text)
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return text


# -- database errors -------------------------------------------------------------------

_DB_MODULES = ("asyncpg", "psycopg", "psycopg2")
# SQLAlchemy errors that quote a statement's parameters or wrap a driver's message.
_DB_CLASSES = frozenset({"sqlalchemy.exc.StatementError", "sqlalchemy.exc.EmulatedDBAPIException"})


def is_database_error(exc: BaseException) -> bool:
    """A driver or SQLAlchemy statement error: its text may quote row values or parameters."""
    for cls in type(exc).__mro__:
        if cls.__module__.split(".", 1)[0] in _DB_MODULES:
            return True
        if f"{cls.__module__}.{cls.__qualname__}" in _DB_CLASSES:
            return True
    return False


def _db_attribute(exc: BaseException, name: str) -> str | None:
    """``name`` from the error, the driver error it wraps, or psycopg's diagnostics."""
    seen: list[object] = [exc, getattr(exc, "orig", None), exc.__cause__]
    seen.append(getattr(seen[1], "__cause__", None))
    for candidate in seen:
        if candidate is None:
            continue
        for holder in (candidate, getattr(candidate, "diag", None)):
            value = getattr(holder, name, None)
            if isinstance(value, str) and value:
                return value
    return None


def describe_database_error(exc: BaseException) -> str:
    """What a log may say about a database error: class, SQLSTATE, schema names — no values.

    A driver's message can quote the conflicting row (``DETAIL: Key (email)=(…)``) or a
    parameter it could not encode, and SQLAlchemy's adds the statement's parameters; the
    SQLSTATE and the constraint/table name say what went wrong without any of them.
    """
    parts = [f"SQLSTATE {_db_attribute(exc, 'sqlstate') or 'unknown'}"]
    for label, attribute in (("constraint", "constraint_name"), ("table", "table_name")):
        value = _db_attribute(exc, attribute)
        if value:
            parts.append(f"{label} {value}")
    return f"{type(exc).__name__} ({', '.join(parts)}; detail hidden)"


def _exception_line(exc: BaseException) -> str:
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    if is_database_error(exc):
        return f"{name}: {describe_database_error(exc)}"
    text = str(exc)
    return f"{name}: {text}" if text else name


def format_exception_safely(exc: BaseException) -> str:
    """Like ``traceback.format_exception``, with database errors described and URLs masked.

    Follows ``__cause__``/``__context__`` as Python does, so the driver error inside a
    SQLAlchemy one is redacted too. Sub-exceptions of an exception group are listed.
    """
    chain: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link: str | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, "direct cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, "context"
        else:
            current = None
    out: list[str] = []
    for error, next_link in reversed(chain):
        if error.__traceback__ is not None:
            out.append("Traceback (most recent call last):\n")
            out.extend(traceback.format_tb(error.__traceback__))
        out.append(_exception_line(error) + "\n")
        if isinstance(error, BaseExceptionGroup):
            for i, sub in enumerate(error.exceptions, 1):
                nested = format_exception_safely(sub).rstrip("\n").replace("\n", "\n  | ")
                out.append(f"  +-- {i} --\n  | {nested}\n")
        if next_link == "direct cause":
            out.append("\nThe above exception was the direct cause of the following exception:\n\n")
        elif next_link == "context":
            out.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    # Source lines of the frames are masked too: a literal URL may carry a credential.
    return mask_url("".join(out).rstrip("\n"))


class RedactingFilter(logging.Filter):
    """Masks URLs in every record and reduces database errors to class + SQLSTATE.

    Installed on handlers (not loggers) so it sees records propagated from every
    logger. It renders the record once (``msg`` becomes the final text) and sets
    ``exc_text``, which ``logging.Formatter`` prints instead of formatting
    ``exc_info`` itself.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            # Always re-rendered: a handler that ran earlier may have cached the raw text.
            record.exc_text = format_exception_safely(error)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: leave it to the handler
            return True
        if error is not None and is_database_error(error):
            # Celery's "Task ... raised unexpected: %(exc)s" passes the error's repr as text.
            for quoted in (repr(error), str(error)):  # the repr contains the str
                if quoted:
                    message = message.replace(quoted, describe_database_error(error))
        masked = mask_url(message)
        if record.args or masked != record.msg:
            record.msg, record.args = masked, None
        return True


def _redact_arg(value: object) -> object:
    if isinstance(value, BaseException) and is_database_error(value):
        return describe_database_error(value)
    return value


class MaskingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log line, with the request target and Referer passed through
    :func:`mask_url` (the query of ``/oauth/url`` carries the client secret)."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        version = request.version
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s" "%s"',
            request.remote or "-",
            request.method,
            mask_url(request.path_qs),
            version.major,
            version.minor,
            response.status,
            response.body_length,
            time,
            mask_url(request.headers.get("Referer", "-")),
            request.headers.get("User-Agent", "-"),
        )


#: The ids a record carries when they apply (``POLLINATOR_LOG_FORMAT=json`` prints them).
CONTEXT_FIELDS = ("request_id", "organization_id", "instance_id", "resource", "delivery_id")
_context: ContextVar[Mapping[str, object] | None] = ContextVar(
    "pollinator_log_context", default=None
)


@contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Attach ids (``instance_id=…``) to every record logged inside the block.

    A context variable, so concurrent polls on one event loop each keep their own.
    """
    current = _context.get() or {}
    token = _context.set({**current, **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**ids: object) -> None:
    """Like :func:`log_context` for the rest of the current task (its context is its own)."""
    current = _context.get() or {}
    _context.set({**current, **{k: v for k, v in ids.items() if v is not None}})


class ContextFilter(logging.Filter):
    """Copies the ids of :func:`log_context` onto each record (explicit ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ids, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, default=str, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """One line per record on stderr: text (role in the logger name) or JSON (``fmt``)."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        # Redaction first: the JSON formatter prints the message and traceback it leaves.
        handler.addFilter(RedactingFilter())
        handler.addFilter(ContextFilter())
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
