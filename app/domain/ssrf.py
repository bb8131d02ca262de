"""Which callback hosts are off limits (SSRF guard), as pure functions.

These rules judge a host *as the HTTP client will use it*. Turning a URL string
into that host is not done here: the client (yarl, inside aiohttp) applies
IDNA/UTS-46 mapping, so ``127。0。0。1``, ``１２７．０．０．１`` or ``①②⑦.0.0.①``
become ``127.0.0.1`` only after parsing, and the one faithful way to know what it
will connect to is to ask that library. That needs yarl, which this package (stdlib
only) must not import, so :func:`app.services.guarded_http.connect_host` derives
the host and hands it to these functions. Judging any other spelling of the host
(``urlsplit().hostname``, say) is the bug these functions exist to avoid.

Given that host, loopback still comes in many spellings: ``0x7f000001``,
``2130706433``, ``0177.0.0.1``, ``127.1``, ``::ffff:127.0.0.1``. The resolver
(``getaddrinfo``) reads the numeric ones the way ``inet_aton`` does, so
:func:`parse_ip_literal` reads them that way too.
"""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# A DNS label as resolvers accept it: letters, digits, hyphen, and the underscore
# that real names (``_dmarc``, some cloud host names) carry.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII | re.IGNORECASE)
_MAX_NAME = 253


def _parse_ipv4_part(part: str) -> int:
    lower = part.lower()
    if lower.startswith("0x"):
        return int(lower[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)
    return int(part, 10)


def _parse_inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """Read ``a``, ``a.b``, ``a.b.c`` or ``a.b.c.d`` with decimal, octal or hex parts."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or any(p == "" for p in parts):
        return None
    try:
        numbers = [_parse_ipv4_part(p) for p in parts]
    except ValueError:
        return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(parts)):
        return None
    value = 0
    for n in head:
        value = value * 256 + n
    value = value * 256 ** (5 - len(parts)) + last
    return ipaddress.IPv4Address(value)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The IP address a host string denotes, or ``None`` for a DNS name."""
    text = host.strip().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:  # zone id (fe80::1%eth0, or %25eth0 as URLs spell it)
        text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if ":" in text:
        return None
    return _parse_inet_aton(text)


def is_forbidden_address(address: IPAddress) -> bool:
    """True for loopback, private, link-local, multicast, reserved and unspecified addresses.

    IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64) are judged by that
    address too, and deprecated site-local ``fec0::/10`` counts as private.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and is_forbidden_address(embedded):
            return True
        if address.is_site_local:
            return True
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return True
    return bool(
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def is_forbidden_hostname(host: str) -> bool:
    """Names that always mean this machine, whatever DNS says."""
    name = host.strip().rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def is_dns_name(host: str) -> bool:
    """An ASCII host name a resolver can look up (``a.example``, ``a.example.``).

    The HTTP client hands anything that is not an address literal to the resolver
    as is; a host with other characters (``%31%32%37.0.0.1``, spaces, non-ASCII that
    survived IDNA) cannot be judged, so the guard refuses it rather than guess.
    """
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > _MAX_NAME:
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))
