"""``Authorization: User <secret>, Organization <secret>[, Element <token>]``."""

from __future__ import annotations

import re

from app.api.errors import Unauthorized

_PART = re.compile(r"^\s*(User|Organization|Element)\s+(\S+)\s*$", re.IGNORECASE)


def parse_authorization(header: str | None) -> tuple[str, str, str | None]:
    """Split the Open Connectors header into (user secret, organization secret, element token)."""
    if not header:
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
