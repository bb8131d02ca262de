"""The SSRF guard's address rules, pure."""

from __future__ import annotations

import pytest

from app.domain.ssrf import is_forbidden_address, is_forbidden_hostname, parse_ip_literal


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "0x7f000001",
        "0x7F.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "017700000001",
        "[::1]",
        "::1",
        "[::ffff:127.0.0.1]",
        "[0:0:0:0:0:ffff:7f00:1]",
        "169.254.169.254",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "[fe80::1]",
        "[fc00::1]",
        "240.0.0.1",
        "255.255.255.255",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "127.0.0.1.",
    ],
)
def test_forbidden_addresses_in_every_spelling(host: str) -> None:
    address = parse_ip_literal(host)
    assert address is not None, host
    assert is_forbidden_address(address), host


@pytest.mark.parametrize("host", ["93.184.215.14", "8.8.8.8", "[2606:4700::1111]", "1.1.1.1"])
def test_public_addresses_allowed(host: str) -> None:
    address = parse_ip_literal(host)
    assert address is not None
    assert not is_forbidden_address(address)


@pytest.mark.parametrize(
    "host", ["example.com", "app.example.com", "1.2.3.4.5", "999.1.1.1", "0x1g"]
)
def test_names_are_not_literals(host: str) -> None:
    assert parse_ip_literal(host) is None


def test_localhost_names() -> None:
    assert is_forbidden_hostname("localhost")
    assert is_forbidden_hostname("LOCALHOST.")
    assert is_forbidden_hostname("api.localhost")
    assert not is_forbidden_hostname("localhost.example.com")
