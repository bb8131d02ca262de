"""Authentication as structure, not as a call each handler must remember.

``Authorization: User <secret>, Organization <secret>[, Element <token>]`` is checked
by :func:`auth_middleware` for every route under ``/elements/api-v2`` *before* the
handler runs, so no parameter, path id or body of an unauthenticated request is ever
looked at: any doubt is a 401, whatever else is wrong with the request. A route added
under the base path is authenticated without anyone having to remember it.
"""

from __future__ import annotations

import re

from aiohttp import web

from app.api.context import CTX
from app.api.errors import Handler
from app.api.ratelimit import check_rate
from app.errors import Unauthorized
from app.services.orgs import Principal, authenticate

BASE = "/elements/api-v2"
#: The web console's own data routes (:mod:`app.api.ui`): authenticated like the API.
CONSOLE_API = "/ui/api"
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)

_PART = re.compile(r"^\s*(User|Organization|Element)\s+(\S+)\s*$", re.IGNORECASE)
# Secrets are URL-safe base64 (app.security.new_secret). Anything else - in particular
# bytes that are not UTF-8, which aiohttp hands over as lone surrogates and which
# would fail when hashed - cannot be a credential.
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]*$")


def parse_authorization(header: str | None) -> tuple[str, str, str | None]:
    """Split the Open Connectors header into (user secret, organization secret, element token)."""
    if not header or not _PRINTABLE_ASCII.match(header):
        raise Unauthorized()
    found: dict[str, str] = {}
    for part in header.split(","):
        match = _PART.match(part)
        if not match:
            raise Unauthorized()
        kind = match.group(1).lower()
        if kind in found:
            raise Unauthorized()
        found[kind] = match.group(2)
    if "user" not in found or "organization" not in found:
        raise Unauthorized("Authorization must carry User and Organization secrets")
    return found["user"], found["organization"], found.get("element")


def principal_of(request: web.Request) -> Principal:
    """The caller, authenticated by :func:`auth_middleware` before the handler ran."""
    return request[PRINCIPAL]


def _needs_auth(request: web.Request) -> bool:
    # Unknown paths and wrong methods (404/405) carry nothing to authenticate; every
    # route that exists under the base path (or the console's data prefix) does.
    if request.match_info.http_exception is not None:
        return False
    return any(request.path == p or request.path.startswith(p + "/") for p in (BASE, CONSOLE_API))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 unless the credentials are right; then the organization's request budget."""
    if not _needs_auth(request):
        return await handler(request)
    user, org, element = parse_authorization(request.headers.get("Authorization"))
    ctx = request.app[CTX]
    async with ctx.sessions() as session:
        principal = await authenticate(session, user, org, element)
    if principal is None:
        raise Unauthorized("invalid User, Organization or Element credentials")
    request[PRINCIPAL] = principal
    await check_rate(ctx.redis, principal.organization_id, ctx.settings)
    return await handler(request)
