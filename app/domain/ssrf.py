"""Which callback addresses are off limits (SSRF guard), as pure functions.

Hosts arrive in many spellings that all mean loopback: ``127.0.0.1``,
``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``127.1``, ``[::1]``,
``[::ffff:127.0.0.1]``. :func:`parse_ip_literal` reads them the way
``inet_aton`` and browsers do, so the check sees the address that a connection
would really reach.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


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
    if "%" in text:  # zone id (fe80::1%eth0)
        text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if ":" in text:
        return None
    return _parse_inet_aton(text)


def is_forbidden_address(address: IPAddress) -> bool:
    """True for loopback, private, link-local, multicast, reserved and unspecified addresses."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and is_forbidden_address(embedded):
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
