"""An aiohttp client that refuses to connect to private addresses (SSRF guard at delivery time).

The check happens inside the connector's resolver, so the address that was
checked is the address that is connected to: a DNS answer that changes between
a check and the connection (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from app.domain.ssrf import is_forbidden_address, is_forbidden_hostname, parse_ip_literal


class BlockedAddress(aiohttp.ClientConnectionError):
    """The callback host is (or resolves to) a loopback/private/reserved address."""


def check_literal_host(host: str) -> None:
    """Hosts that are addresses in any spelling, or names that always mean this machine."""
    if is_forbidden_hostname(host):
        raise BlockedAddress(f"callback host {host!r} is a local name")
    address = parse_ip_literal(host)
    if address is not None and is_forbidden_address(address):
        raise BlockedAddress(f"callback host {host!r} is a private or loopback address")


class GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then drops forbidden addresses (all → error)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        check_literal_host(host)
        results = await self._inner.resolve(host, port, family)
        allowed = []
        for result in results:
            address = parse_ip_literal(result["host"])
            if address is None or not is_forbidden_address(address):
                allowed.append(result)
        if not allowed:
            raise BlockedAddress(f"callback host {host!r} resolves only to private addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def callback_session(allow_private: bool, **kwargs: Any) -> aiohttp.ClientSession:
    """The session deliveries are POSTed with."""
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=0,
        resolver=None if allow_private else GuardedResolver(),
        ttl_dns_cache=None if allow_private else 0,
        use_dns_cache=allow_private,
    )
    return aiohttp.ClientSession(connector=connector, **kwargs)
