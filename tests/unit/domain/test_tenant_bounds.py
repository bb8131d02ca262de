"""Bounds on the poller configuration a hostile tenant probed (Tenant-proof findings 2, 4, 8, 9).

Each bound is tested at its value (accepted) and just past it (refused, naming the key), so a
change of a constant in ``app.domain.limits`` cannot silently drift from the code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.domain.dateformats import DateFormatError, compile_format
from app.domain.fieldpath import compile_path
from app.domain.limits import (
    MAX_CREATED_CHECK_TOLERANCE_SECONDS,
    MAX_DATE_FORMAT_LENGTH,
    MAX_DATE_FORMAT_ZONE_FIELDS,
    MAX_FIELD_PATH_LENGTH,
    MAX_NUMBER_TEXT_LENGTH,
    MAX_RESOURCE_URL_LENGTH,
    MAX_TEMPLATE_VARIABLES,
    MAX_TIMEZONE_NAME_LENGTH,
)
from app.domain.pollconfig import ConfigError, parse_poller_configuration
from app.domain.templates import TemplateError, compile_template, normalize_resource_url
from app.domain.timezones import UnknownTimeZoneError, resolve_timezone
from tests.support.domain_helpers import template_variables

C = "event.poller.configuration.contacts"
D = f"{C}.datesConfiguration"
EPOCH = "${epoch}"


def contacts(**settings: Any) -> dict[str, Any]:
    return {"contacts": {"url": "/contacts", "idField": "id", **settings}}


def refused(config: object, field: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_poller_configuration(config)
    assert info.value.field == field
    return info.value


# --- finding 8: createdCheckTolerance and non-finite numbers ---------------------------------


@pytest.mark.parametrize(
    "tolerance",
    [1e308, MAX_CREATED_CHECK_TOLERANCE_SECONDS + 1, "1e308", 10**400, "inf", "Infinity"],
)
def test_a_huge_created_check_tolerance_is_refused(tolerance: object) -> None:
    refused(contacts(createdCheckTolerance=tolerance), f"{C}.createdCheckTolerance")


def test_the_largest_created_check_tolerance_is_accepted() -> None:
    config = contacts(createdCheckTolerance=MAX_CREATED_CHECK_TOLERANCE_SECONDS)
    resource = parse_poller_configuration(config)["contacts"]
    assert resource.created_check_tolerance == MAX_CREATED_CHECK_TOLERANCE_SECONDS


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pollDelay", 10**400),  # float() raised OverflowError: a 500
        ("pollDelay", float("nan")),
        ("pollDelay", float("inf")),
        ("createdCheckTolerance", float("nan")),
        ("pageSize", float("inf")),
        ("pageSize", float("nan")),
        ("pageSize", "²"),  # str.isdigit() but int() refuses it: a 500
        ("pageSize", "9" * 5000),  # beyond int()'s digit limit: a 500
        ("pageSize", 10**400),
    ],
)
def test_numbers_that_are_not_finite_are_refused_naming_the_key(key: str, value: object) -> None:
    refused(contacts(**{key: value}), f"{C}.{key}")


# --- finding 2: sizes of templates, formats, paths, zones ------------------------------------


def test_resource_url_length_is_bounded() -> None:
    url = "/contacts?q=" + "a" * (MAX_RESOURCE_URL_LENGTH - len("/contacts?q="))
    assert compile_template(url).url == url
    error = refused(contacts(url=url + "a"), f"{C}.url")
    assert str(MAX_RESOURCE_URL_LENGTH) in error.detail


def test_template_variables_are_bounded() -> None:
    allowed = "/contacts?" + "&".join(f"v{i}={EPOCH}" for i in range(MAX_TEMPLATE_VARIABLES))
    assert len(template_variables(compile_template(allowed))) == MAX_TEMPLATE_VARIABLES
    error = refused(contacts(url=allowed + f"&x={EPOCH}"), f"{C}.url")
    assert "template variables" in error.detail


def test_date_format_length_is_bounded() -> None:
    pattern = "yyyy" + "-" * (MAX_DATE_FORMAT_LENGTH - 4)
    assert compile_format(pattern).pattern == pattern
    with pytest.raises(DateFormatError, match="at most"):
        compile_format(pattern + "-")
    error = refused(
        contacts(datesConfiguration={"updatedDateFormat": pattern + "-"}), f"{D}.updatedDateFormat"
    )
    assert str(MAX_DATE_FORMAT_LENGTH) in error.detail


def test_date_format_length_is_bounded_inside_templates() -> None:
    with pytest.raises(TemplateError, match="at most"):
        compile_template("/c?since=${gmtDate:yyyy" + "-" * MAX_DATE_FORMAT_LENGTH + "}")


def test_field_path_length_is_bounded() -> None:
    path = "a." * (MAX_FIELD_PATH_LENGTH // 2 - 1) + "id"
    assert len(path) == MAX_FIELD_PATH_LENGTH
    assert compile_path(path)({}) is None
    error = refused(contacts(idField=path + "x"), f"{C}.idField")
    assert str(MAX_FIELD_PATH_LENGTH) in error.detail


def test_time_zone_names_are_bounded() -> None:
    # Blanks around a name are ignored, so without the bound this would resolve (to UTC).
    with pytest.raises(UnknownTimeZoneError):
        resolve_timezone("UTC" + " " * MAX_TIMEZONE_NAME_LENGTH)
    assert resolve_timezone("UTC" + " " * (MAX_TIMEZONE_NAME_LENGTH - 3)) is UTC


def test_a_date_time_zone_variable_with_a_long_run_of_colons_is_refused() -> None:
    with pytest.raises(TemplateError, match="dateTimeZone"):
        compile_template("/c?x=${dateTimeZone:" + ":" * 1000 + "}")


def test_date_time_zone_still_takes_the_longest_zone_prefix() -> None:
    template = compile_template("/c?x=${dateTimeZone:-08:00:HH:mm}")
    assert template_variables(template) == ("dateTimeZone:-08:00:HH:mm",)


def test_zone_fields_in_a_date_format_are_bounded() -> None:
    assert compile_format("yyyy " + "-".join("Z" * MAX_DATE_FORMAT_ZONE_FIELDS)).pattern
    with pytest.raises(DateFormatError, match="zone fields"):
        compile_format("yyyy " + "-".join("z" * (MAX_DATE_FORMAT_ZONE_FIELDS + 1)))


def test_numbers_written_as_strings_are_bounded() -> None:
    longest = "15".zfill(MAX_NUMBER_TEXT_LENGTH)
    assert parse_poller_configuration(contacts(pageSize=longest))["contacts"].page_size == 15
    refused(contacts(pageSize="0" + longest), f"{C}.pageSize")


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        ("EEE, dd MMM yyyy HH:mm:ss zzz", "Tue, 02 Jan 2024 03:04:05 GMT"),
        ("yyyy-MM-dd z-HH", "2024-01-02 UTC-03"),  # the zone gives back "-03" to the hour
        ("yyyy-MM-dd'T'HH:mm:ssX", "2024-01-02T03:04:05+01"),
        ("MMMM d yyyy", "March 2 2024"),
        ("MMM d yyyy", "Mar 2 2024"),
    ],
)
def test_fields_read_once_still_parse_ordinary_values(pattern: str, value: str) -> None:
    assert compile_format(pattern).parse(value, UTC).year == 2024


# --- finding 9: resource paths that escape their resource ------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/contacts/%2e%2e/oauth",
        "/contacts/%2E%2E/oauth",
        "/contacts/.%2E/oauth",
        "/contacts/%2e./oauth",
        "/contacts/%252e%252e/oauth",  # encoded twice
        "/contacts/%25252e%25252e/oauth",  # and three times
        "/contacts/./oauth",
        "/contacts/%2e/oauth",
        "/contacts%2f..%2foauth",  # encoded slashes
        "/contacts%2F123",
        "/contacts%252f123",
        "/contacts\\..\\oauth",  # backslashes
        "/contacts\\oauth",
        "/contacts%5c..%5coauth",
        "/contacts%5C",
        "/contacts/\x00",
        "/contacts/%00",
        "/contacts/%0d%0aHost:%20evil",
        "/contacts\r\nHost: evil",
        "/contacts?since=1\r\nHost: evil",
        "/contacts?since=%0d%0a",
        "/contacts?q=%5c",
        "/contacts/%ff",  # not UTF-8 once decoded
        "/contacts/%25%32%65%25%32%65/x",  # "%2e%2e" with every character encoded
        "/contacts/%252525252e%252525252e/x",  # five times: refused without decoding further
    ],
)
def test_paths_that_a_server_could_resolve_elsewhere_are_refused(url: str) -> None:
    with pytest.raises(TemplateError):
        normalize_resource_url(url)
    refused(contacts(url=url), f"{C}.url")


@pytest.mark.parametrize(
    "url",
    [
        "/contacts/..x/y",  # not a dot segment
        "/contacts/x../y",
        "/contacts/a.b",
        "/contacts/%41",  # an encoded letter is harmless
        "/contacts?path=../x",  # a query value is a value, not a path
        "/contacts?email=a%40b.c",
    ],
)
def test_ordinary_paths_still_pass(url: str) -> None:
    assert normalize_resource_url(url) == url


# --- finding 4: the string form of the configuration -------------------------------------------


def test_nul_inside_the_string_form_names_the_key() -> None:
    error = refused('{"contacts": {"url": "/c\\u0000", "idField": "id"}}', f"{C}.url")
    assert "NUL" in error.detail


def test_invalid_utf8_in_the_bytes_form_names_the_configuration() -> None:
    refused(b'{"contacts": "\xff"}', "event.poller.configuration")


@pytest.mark.parametrize(
    ("pattern", "rendered"),
    [
        ("yyyy'abc'", "2024abc"),
        ("yyyy''", "2024'"),
        ("yyyy''''", "2024''"),
        ("yyyy'it''s'", "2024it's"),
        ("yyyy'abc'''", "2024abc'"),
        ("'''x'''yyyy", "'x'2024"),
        ("yyyy-'T'-é", "2024-T-é"),  # a non-ASCII letter is literal text
    ],
)
def test_the_one_pass_tokenizer_reads_quotes_as_simple_date_format_does(
    pattern: str, rendered: str
) -> None:
    date_format = compile_format(pattern)
    instant = datetime(2024, 1, 2, tzinfo=UTC)
    assert date_format.format(instant, UTC) == rendered
    assert date_format.parse(rendered, UTC) == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("pattern", ["yyyy'abc", "'yyyy", "yyyy'''", "yyyy'" + "''" * 40])
def test_an_unterminated_quote_is_refused(pattern: str) -> None:
    with pytest.raises(DateFormatError, match="unterminated quote"):
        compile_format(pattern)
