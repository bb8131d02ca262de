"""Instance body validation: the bounds a hostile tenant probed (Tenant-proof findings)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.domain.instanceconfig import (
    FieldError,
    parse_name,
    parse_refresh_minutes,
    parse_tags,
    validate_create,
    validate_patch,
)
from app.domain.limits import (
    MAX_NAME_LENGTH,
    MAX_REFRESH_MINUTES,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_URL_LENGTH,
)

INTERVAL = "configuration.event.poller.refresh_interval"
CALLBACK = "configuration.event.notification.callback.url"
OAUTH_CALLBACK = "configuration.oauth.callback.url"
POLLER = "configuration.event.poller.configuration"


def body(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "oauth.api.key": "client-123",
        "oauth.api.secret": "client-secret",
        "oauth.callback.url": "https://app.example.com/oauth/callback",
        "event.notification.enabled": True,
        "event.notification.callback.url": "https://hooks.example.com/events",
        "event.poller.refresh_interval": 15,
        "event.poller.configuration": {"contacts": {"url": "/contacts", "idField": "id"}},
    }
    config.update(overrides)
    return {
        "element": {"key": "infusionsoftrest"},
        "providerData": {"code": "c"},
        "configuration": config,
    }


def create(**overrides: Any) -> Any:
    spec, _code = validate_create(body(**overrides), min_refresh_minutes=1)
    return spec


def refused(field: str, **overrides: Any) -> FieldError:
    with pytest.raises(FieldError) as info:
        create(**overrides)
    assert info.value.field == field
    return info.value


def test_a_valid_body_passes() -> None:
    spec = create()
    assert spec.refresh_interval_s == 15 * 60
    assert spec.callback_url == "https://hooks.example.com/events"


# --- finding 1: refresh interval --------------------------------------------------------------


@pytest.mark.parametrize(
    "minutes",
    [
        4_193_436_587,  # the probe's value: its next slot was beyond datetime's range
        1e10,
        MAX_REFRESH_MINUTES + 1,
        "4193436587",
        10**400,  # float() raised OverflowError: a 500
    ],
)
def test_a_refresh_interval_beyond_the_bound_is_a_400_naming_the_key(minutes: object) -> None:
    refused(INTERVAL, **{"event.poller.refresh_interval": minutes})


@pytest.mark.parametrize("minutes", ["nan", "inf", "-inf", "1e999", "1" * 10_000, True, [15]])
def test_a_refresh_interval_that_is_not_a_finite_number_is_refused(minutes: object) -> None:
    refused(INTERVAL, **{"event.poller.refresh_interval": minutes})


def test_the_largest_refresh_interval_is_accepted() -> None:
    assert parse_refresh_minutes(MAX_REFRESH_MINUTES, 1) == MAX_REFRESH_MINUTES
    assert parse_refresh_minutes(str(MAX_REFRESH_MINUTES), 1) == MAX_REFRESH_MINUTES


def test_a_patch_cannot_set_a_huge_refresh_interval() -> None:
    spec = create()
    with pytest.raises(FieldError) as info:
        validate_patch(
            spec.name,
            spec.tags,
            spec.public,
            spec.secrets,
            {"configuration": {"event.poller.refresh_interval": 4_193_436_587}},
            min_refresh_minutes=1,
        )
    assert info.value.field == INTERVAL


# --- finding 10: callback URLs that could never be delivered to ------------------------------


BROKEN_URLS = [
    "https://hooks.exa mple.com/events",  # a space in the host
    "https://hooks.example.com/events\r\nX-Injected: 1",  # urlsplit silently drops CR/LF
    "https://hooks.example.com/ev\nents",
    "https://hooks.example.com/ev\tents",
    "https://hooks.example.com/ev ents",
    "https://hooks.example.com/\x00",
    "https://hooks.example.com/\x7f",
    "https://hooks.example.com/a\x85b",  # a C1 control (NEL)
    "https://hooks\u2028example.com/",  # a Unicode line separator
    "https://hooks<example>.com/",
    "https://hooks.example.com:80:80/",
    "https://" + "a" * MAX_URL_LENGTH + ".example.com/",
]


@pytest.mark.parametrize("url", BROKEN_URLS)
def test_a_broken_callback_url_is_a_400_naming_the_key(url: str) -> None:
    refused(CALLBACK, **{"event.notification.callback.url": url})


@pytest.mark.parametrize("url", BROKEN_URLS)
def test_a_broken_oauth_callback_url_is_a_400_naming_the_key(url: str) -> None:
    refused(OAUTH_CALLBACK, **{"oauth.callback.url": url})


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/events?a=1&b=%20x",
        "https://xn--bcher-kva.example/events",
        "https://bücher.example/events",
        "https://my_host.example.com:8443/events",
        "https://[2606:4700::1]/events",
        "  https://hooks.example.com/events  ",  # surrounding blanks are stripped, as before
    ],
)
def test_ordinary_callback_urls_still_pass(url: str) -> None:
    assert create(**{"event.notification.callback.url": url}).callback_url == url.strip()


def test_the_oauth_callback_may_be_a_private_address() -> None:
    # It is where the browser is sent back to (a local UI during development), not a target
    # of ours: only its syntax is checked.
    spec = create(**{"oauth.callback.url": "http://127.0.0.1:8080/ui/oauth/callback"})
    assert spec.oauth_callback_url == "http://127.0.0.1:8080/ui/oauth/callback"


def test_a_callback_url_at_the_length_bound_is_accepted() -> None:
    prefix = "https://hooks.example.com/"
    url = prefix + "a" * (MAX_URL_LENGTH - len(prefix))
    assert create(**{"event.notification.callback.url": url}).callback_url == url


# --- finding 4: the poller configuration as a JSON string ------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"contacts": {"url": "/contacts\\u0000", "idField": "id"}}', f"{POLLER}.contacts.url"),
        ('{"contacts": {"url": "/contacts", "idField": "\\ud800"}}', f"{POLLER}.contacts.idField"),
    ],
)
def test_nul_or_lone_surrogate_inside_the_string_form_is_a_400_naming_the_key(
    text: str, field: str
) -> None:
    error = refused(field, **{"event.poller.configuration": text})
    assert "NUL" in error.message or "surrogate" in error.message


def test_a_deeply_nested_string_form_is_a_400_not_a_recursion_error() -> None:
    text = '{"contacts": ' + "[" * 100_000 + "]" * 100_000 + "}"
    refused(POLLER, **{"event.poller.configuration": text})


def test_the_string_form_is_stored_as_the_object_it_encodes() -> None:
    config = {"contacts": {"url": "/contacts", "idField": "id"}}
    spec = create(**{"event.poller.configuration": json.dumps(config)})
    assert spec.public["event.poller.configuration"] == config


# --- SPEC §8: tags ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("crm", ["crm"]),  # one string is one tag...
        ("crm, sales", ["crm, sales"]),  # ...even with a comma in it
        (["crm", "sales"], ["crm", "sales"]),
        ([{"name": "crm"}, {"name": " sales "}], ["crm", "sales"]),
        (["crm", {"name": "sales"}], ["crm", "sales"]),
        ([], []),
        (None, []),
    ],
)
def test_tags_forms(tags: object, expected: list[str]) -> None:
    assert parse_tags(tags) == expected


@pytest.mark.parametrize(
    "tags",
    [
        "",
        "   ",
        ["ok", ""],
        [{"name": 5}],
        [{"label": "crm"}],
        [["crm"]],
        {"name": "crm"},
        5,
        ["t"] * (MAX_TAGS + 1),
        ["x" * (MAX_TAG_LENGTH + 1)],
        "x" * (MAX_TAG_LENGTH + 1),
    ],
)
def test_bad_tags_are_refused_naming_tags(tags: object) -> None:
    with pytest.raises(FieldError) as info:
        parse_tags(tags)
    assert info.value.field == "tags"


def test_tag_and_name_bounds_are_inclusive() -> None:
    assert parse_tags(["x" * MAX_TAG_LENGTH] * MAX_TAGS) == ["x" * MAX_TAG_LENGTH] * MAX_TAGS
    assert parse_name("n" * MAX_NAME_LENGTH) == "n" * MAX_NAME_LENGTH
    with pytest.raises(FieldError):
        parse_name("n" * (MAX_NAME_LENGTH + 1))


def test_a_single_string_tag_on_create() -> None:
    spec, _ = validate_create({**body(), "tags": "crm"}, min_refresh_minutes=1)
    assert spec.tags == ["crm"]


# --- the instance time zone (event.poller.timezone) ----------------------------------------


@pytest.mark.parametrize("zone", ["America/New_York", "GMT", "-08:00", " Europe/Paris "])
def test_an_instance_time_zone_is_kept(zone: str) -> None:
    spec = create(**{"event.poller.timezone": zone})
    assert spec.public["event.poller.timezone"] == zone.strip()


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "   ", 5, "x" * 65])
def test_a_bad_instance_time_zone_is_refused_naming_the_key(zone: object) -> None:
    refused("configuration.event.poller.timezone", **{"event.poller.timezone": zone})
