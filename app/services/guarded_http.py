"""Callback hosts as the HTTP client sees them, and a client that cannot reach private networks.

Three layers, each enough on its own for the case it is named after:

1. **The host, normalized once.** :func:`connect_host` gives the host aiohttp will
   connect to, derived by yarl exactly as aiohttp derives it (``URL(url).raw_host``,
   after IDNA/UTS-46 mapping), so ``127。0。0。1``, ``１２７．０．０．１``, ``①②⑦.0.0.①``
   and every other spelling that *maps* to an address are judged as that address. The
   create/PATCH check (:func:`check_callback_host`) and the delivery check
   (:func:`check_url`) both use it; a host that does not normalize to an address or
   a DNS name is refused. The address rules themselves are pure, in
   :mod:`app.domain.ssrf` (stdlib only, hence not the normalization, which needs yarl).
2. **DNS answers filtered** (:class:`GuardedResolver`): names are resolved through a
   resolver that drops private answers, with aiohttp's DNS cache off, so the answer
   that was checked is the one connected to (a rebinding answer is checked too).
3. **The connected peer** (:class:`GuardedConnector`): after the TCP connection is
   made and before any byte of the request is written, the socket's peer address is
   checked. aiohttp connects to anything it reads as an IP literal without asking
   the resolver; this layer catches whatever spelling, resolver or connection path
   (happy eyeballs, the connection to a proxy) layers 1 and 2 did not foresee.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import is_ip_address
from aiohttp.resolver import DefaultResolver
from yarl import URL

from app import USER_AGENT
from app.domain.ssrf import (
    is_dns_name,
    is_forbidden_address,
    is_forbidden_hostname,
    parse_ip_literal,
)

DNS_TIMEOUT_S = 3.0

# Layer 3 overrides this aiohttp hook; fail loudly rather than lose the check silently
# should an aiohttp upgrade rename it.
if "_wrap_create_connection" not in vars(aiohttp.TCPConnector):  # pragma: no cover
    raise ImportError("aiohttp.TCPConnector._wrap_create_connection is gone; see guarded_http")


class BlockedAddress(aiohttp.ClientConnectionError):
    """The callback host is, resolves to, or connected to a loopback/private/reserved address."""


class UnusableHost(BlockedAddress):
    """The callback URL's host is neither an address nor a DNS name, so it cannot be judged."""


def connect_host(url: str) -> str:
    """The host aiohttp connects to for ``url``, or :class:`UnusableHost`.

    aiohttp builds ``yarl.URL(url)`` and connects to its ``raw_host`` (IDNA-encoded,
    with UTS-46 mapping of non-ASCII input), collapsing repeated trailing dots to one.
    """
    try:
        host = URL(url).raw_host
    except ValueError as exc:  # includes UnicodeError from IDNA
        raise UnusableHost(f"callback URL {url!r} has no valid host: {exc}") from exc
    if not host:
        raise UnusableHost(f"callback URL {url!r} has no host")
    if host.endswith(".."):
        host = host.rstrip(".") + "."
    _require_usable(host)
    return host


def _require_usable(host: str) -> None:
    if parse_ip_literal(host) is not None:
        return
    # aiohttp connects straight to anything it takes for an IP literal; one we cannot
    # read as an address is refused rather than guessed at.
    if is_ip_address(host) or not is_dns_name(host):
        raise UnusableHost(f"callback host {host!r} is neither an IP address nor a DNS name")


def check_host(host: str) -> None:
    """Refuse a connect host (as :func:`connect_host` or aiohttp derives it) that is local."""
    _require_usable(host)
    if is_forbidden_hostname(host):
        raise BlockedAddress(f"callback host {host!r} is a local name")
    address = parse_ip_literal(host)
    if address is not None and is_forbidden_address(address):
        raise BlockedAddress(f"callback host {host!r} is a private or loopback address")


def check_url(url: str) -> None:
    """Refuse a callback URL whose host, as the client will read it, is local (delivery time)."""
    check_host(connect_host(url))


def check_peer(peername: object) -> None:
    """Refuse a connection whose peer (``transport.get_extra_info("peername")``) is private."""
    host = peername[0] if isinstance(peername, tuple) and peername else None
    address = parse_ip_literal(host) if isinstance(host, str) else None
    if address is None:
        raise BlockedAddress(f"connected peer {peername!r} is not an IP address")
    if is_forbidden_address(address):
        raise BlockedAddress(f"connection reached {host}, a private or loopback address")


async def check_callback_host(
    url: str, allow_private: bool, resolver: AbstractResolver | None = None
) -> None:
    """Create/PATCH-time check of a callback URL's host; raises :class:`BlockedAddress`.

    A host that does not normalize is refused whatever the setting. With the guard on,
    a local host or one whose DNS answers include a private address is refused. A name
    that does not resolve (yet) is accepted: DNS may not be published, and layers 2
    and 3 check every connection anyway.
    """
    host = connect_host(url)
    if allow_private:
        return
    check_host(host)
    if parse_ip_literal(host) is not None:
        return
    inner = resolver or DefaultResolver()
    try:
        answers = await asyncio.wait_for(inner.resolve(host, 0, socket.AF_UNSPEC), DNS_TIMEOUT_S)
    except (OSError, TimeoutError):
        return
    finally:
        if resolver is None:
            await inner.close()
    for answer in answers:
        address = parse_ip_literal(answer["host"])
        if address is not None and is_forbidden_address(address):
            raise BlockedAddress(
                f"callback host {host!r} resolves to a private or loopback address "
                f"({answer['host']})"
            )


class GuardedResolver(AbstractResolver):
    """Checks the host, resolves with ``inner``, then drops forbidden answers (all → error)."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        check_host(host)
        results = await self._inner.resolve(host, port, family)
        allowed = []
        for result in results:
            address = parse_ip_literal(result["host"])
            if address is not None and not is_forbidden_address(address):
                allowed.append(result)
        if not allowed:
            raise BlockedAddress(f"callback host {host!r} resolves only to private addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A connector that checks the peer of every connection it opens before it is used.

    Every new TCP connection (direct, each happy-eyeballs winner, the one to a proxy)
    passes through ``_wrap_create_connection``; the request is written only after it
    returns, so a forbidden peer is closed before it sees a byte of the request (for
    https it has seen the TLS ClientHello, which carries no request data). The
    resolver given is owned: closed with the connector.
    """

    def __init__(self, *, resolver: AbstractResolver, **kwargs: Any) -> None:
        super().__init__(resolver=resolver, **kwargs)
        self._owned_resolver = resolver

    async def _wrap_create_connection(
        self, *args: Any, **kwargs: Any
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        transport, protocol = await super()._wrap_create_connection(*args, **kwargs)
        try:
            check_peer(transport.get_extra_info("peername"))
        except BlockedAddress:
            transport.abort()
            raise
        return transport, protocol

    async def close(self, **kwargs: Any) -> None:
        await super().close(**kwargs)
        await self._owned_resolver.close()


def callback_session(
    allow_private: bool, *, resolver: AbstractResolver | None = None, **kwargs: Any
) -> aiohttp.ClientSession:
    """The session deliveries are POSTed with; ``resolver`` replaces DNS (tests inject one)."""
    connector: aiohttp.TCPConnector
    if allow_private:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, resolver=resolver)
    else:
        connector = GuardedConnector(
            limit=0,
            limit_per_host=0,
            resolver=GuardedResolver(resolver),
            use_dns_cache=False,
        )
    headers = {"User-Agent": USER_AGENT, **kwargs.pop("headers", {})}
    return aiohttp.ClientSession(connector=connector, headers=headers, **kwargs)
