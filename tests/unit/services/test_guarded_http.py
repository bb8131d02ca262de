"""The SSRF guard: pure address rules, the one host normalization, and each check layer alone."""

from __future__ import annotations

import pytest

from app.domain.ssrf import (
    is_dns_name,
    is_forbidden_address,
    is_forbidden_hostname,
    parse_ip_literal,
)
from app.services.guarded_http import (
    BlockedAddress,
    GuardedResolver,
    UnusableHost,
    check_callback_host,
    check_peer,
    check_url,
    connect_host,
)
from tests.ssrf_cases import LOOPBACK_SPELLINGS, UNICODE_LOOPBACK, StubResolver


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
        "0",
        "[::1]",
        "::1",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:7f00:1]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
        "[::127.0.0.1]",  # IPv4-compatible
        "169.254.169.254",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "[fe80::1]",
        "fe80::1%25eth0",
        "[::1%lo]",
        "[fc00::1]",
        "[fec0::1]",  # deprecated site-local
        "240.0.0.1",
        "255.255.255.255",
        "[64:ff9b::7f00:1]",
        "[64:ff9b::127.0.0.1]",
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


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("example.com", True),
        ("example.com.", True),
        ("xn--bcher-kva.de", True),
        ("_dmarc.example.com", True),
        ("a" * 63 + ".com", True),
        ("a" * 64 + ".com", False),
        (".".join(["a" * 50] * 5), False),  # 254 characters
        ("a..b", False),
        ("-a.com", False),
        ("%31%32%37.0.0.1", False),
        ("exa mple.com", False),
        ("bücher.de", False),  # the HTTP client would have IDNA-encoded it
        ("", False),
    ],
)
def test_dns_names(host: str, valid: bool) -> None:
    assert is_dns_name(host) is valid


@pytest.mark.parametrize("spelling", UNICODE_LOOPBACK)
def test_unicode_spellings_normalize_to_what_the_client_connects_to(spelling: str) -> None:
    assert connect_host(f"http://{spelling}:8080/e") in {"127.0.0.1", "localhost"}


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_every_loopback_spelling_is_blocked(spelling: str) -> None:
    with pytest.raises(BlockedAddress):
        check_url(f"http://{spelling}:8080/e")


@pytest.mark.parametrize(
    "url",
    [
        "http://%31%32%37.0.0.1/e",  # percent-encoding: not decoded by the client, not a name
        "http://1.2.3.4.5/e",  # the client takes it for an IP literal
        "http://a..b/e",
        "http://exa mple.com/e",
        "http://x\u200b.example.com/e",  # zero-width space
        "http://127.0.0.1\\@example.com/e",
        "http:///e",
    ],
)
def test_hosts_that_do_not_normalize_are_refused(url: str) -> None:
    with pytest.raises(UnusableHost):
        check_url(url)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://example.com/e", "example.com"),
        ("https://Example.COM./e", "example.com."),
        ("https://b\u00fccher.de/e", "xn--bcher-kva.de"),
        ("https://93.184.215.14:8443/e", "93.184.215.14"),
        ("https://[2606:4700::1111]/e", "2606:4700::1111"),
    ],
)
def test_public_hosts_pass(url: str, host: str) -> None:
    assert connect_host(url) == host
    check_url(url)


@pytest.mark.parametrize(
    "peer",
    [
        ("127.0.0.1", 80),
        ("::1", 80, 0, 0),
        ("::ffff:127.0.0.1", 80, 0, 0),
        ("fe80::1%eth0", 80, 0, 2),
        ("10.0.0.7", 443),
        None,
        "/run/some.sock",
    ],
)
def test_peer_check_refuses_private_or_unknown_peers(peer: object) -> None:
    with pytest.raises(BlockedAddress):
        check_peer(peer)


def test_peer_check_passes_public_peers() -> None:
    check_peer(("93.184.215.14", 443))
    check_peer(("2606:4700::1111", 443, 0, 0))


async def test_resolver_drops_private_answers_and_refuses_when_none_remain() -> None:
    mixed = GuardedResolver(StubResolver(["10.0.0.1", "93.184.215.14", "::1"]))
    assert [r["host"] for r in await mixed.resolve("cb.example.com")] == ["93.184.215.14"]
    with pytest.raises(BlockedAddress):
        await GuardedResolver(StubResolver(["127.0.0.1", "::1"])).resolve("cb.example.com")


async def test_resolver_refuses_local_hosts_without_asking_dns() -> None:
    stub = StubResolver(["93.184.215.14"])
    for host in ("localhost", "0x7f.1", "%31%32%37.0.0.1"):
        with pytest.raises(BlockedAddress):
            await GuardedResolver(stub).resolve(host)
    assert stub.asked == []


@pytest.mark.parametrize(
    "url",
    [f"http://{s}:8080/e" for s in UNICODE_LOOPBACK]
    + ["http://%31%32%37.0.0.1/e", "http://LOCALHOST./e"],
)
async def test_create_time_check_refuses_spellings_even_when_dns_says_nxdomain(url: str) -> None:
    stub = StubResolver(None)
    with pytest.raises(BlockedAddress):
        await check_callback_host(url, allow_private=False, resolver=stub)


async def test_create_time_check_refuses_private_dns_answers() -> None:
    stub = StubResolver(["93.184.215.14", "192.168.0.10"])
    with pytest.raises(BlockedAddress, match="192.168.0.10"):
        await check_callback_host("https://cb.example.com/e", allow_private=False, resolver=stub)
    assert stub.asked == ["cb.example.com"]


async def test_create_time_check_accepts_public_or_unresolved_names() -> None:
    for answer in (["93.184.215.14"], None):
        stub = StubResolver(answer)
        await check_callback_host("https://b\u00fccher.de/e", allow_private=False, resolver=stub)
        assert stub.asked == ["xn--bcher-kva.de"]  # the name the client will look up


async def test_operator_allowing_private_callbacks_still_needs_a_usable_host() -> None:
    stub = StubResolver(["127.0.0.1"])
    await check_callback_host("http://127\u30020\u30020\u30021/e", allow_private=True)
    with pytest.raises(UnusableHost):
        await check_callback_host("http://%31%32%37.0.0.1/e", allow_private=True, resolver=stub)
    assert stub.asked == []
