from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from app.domain.templates import TemplateError, compile_template, normalize_resource_url
from tests.support.domain_helpers import template_variables

LA = ZoneInfo("America/Los_Angeles")
BOUND = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
ISO_Z = "yyyy-MM-dd'T'HH:mm:ss'Z'"


def render(url: str, tz: ZoneInfo | None = None) -> str:
    return compile_template(url).render(BOUND, tz or UTC)


# --- normalization ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/hubs/crm/contacts", "/contacts"),
        ("/hubs/ecommerce/orders?limit=5", "/orders?limit=5"),
        ("hubs/crm/contacts", "/contacts"),
        ("/hubs/marketing/contacts", "/contacts"),
        ("/hubs/crm", "/"),
        ("contacts", "/contacts"),
        ("  /contacts  ", "/contacts"),
        ("/contacts/hubs/crm", "/contacts/hubs/crm"),
        ("/hubsx/crm/contacts", "/hubsx/crm/contacts"),
    ],
)
def test_hub_prefix_and_leading_slash(url: str, expected: str) -> None:
    assert normalize_resource_url(url) == expected


TEMPLATE = "${gmtDate:" + ISO_Z + "}"


@pytest.mark.parametrize(
    "where",
    [
        f"where=since='{TEMPLATE}'",
        f"where=since={TEMPLATE}",
        f"where=lastUpdated>'{TEMPLATE}'",
        f"where=lastUpdated>='{TEMPLATE}'",
        f"where=lastUpdated >= '{TEMPLATE}'",
        f"where=lastUpdated+%3E+%27{TEMPLATE}%27",
        f'where=lastUpdated>"{TEMPLATE}"',
        f"where=LASTUPDATED>'{TEMPLATE}'",
        "where=lastUpdated%3E%3D%27%24%7BgmtDate%3Ayyyy-MM-dd%27T%27HH%3Amm%3Ass%27Z%27%7D%27",
        "where=since%3D%27%24%7BgmtDate%3Ayyyy-MM-dd%27T%27HH%3Amm%3Ass%27Z%27%7D%27",
    ],
)
def test_ceql_where_becomes_since(where: str) -> None:
    url = f"/hubs/crm/contacts?order=id&{where}&limit=10"
    assert normalize_resource_url(url) == f"/contacts?order=id&since={TEMPLATE}&limit=10"


def test_literal_since_values_are_encoded() -> None:
    url = "/contacts?where=lastUpdated>'2024-01-01T00:00:00+01:00'"
    assert normalize_resource_url(url) == "/contacts?since=2024-01-01T00:00:00%2B01:00"


@pytest.mark.parametrize(
    "url",
    [
        "/contacts?where=lastUpdated>'x' and status='active'",
        "/contacts?where=lastUpdated='x'",
        "/contacts?where=name='x'",
        "/contacts?where=lastUpdated<'x'",
    ],
)
def test_other_where_clauses_are_left_alone(url: str) -> None:
    assert normalize_resource_url(url) == url


def test_normalization_is_idempotent() -> None:
    once = normalize_resource_url(f"/hubs/crm/contacts?where=lastUpdated>'{TEMPLATE}'")
    assert normalize_resource_url(once) == once


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("https://evil.example/contacts", "relative"),
        ("//evil.example/contacts", "relative"),
        ("/contacts/../oauth", r"'\.\.'"),
    ],
)
def test_unusable_urls(url: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        normalize_resource_url(url)


# --- variables ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("gmtDate:" + ISO_Z, "2024-01-02T03:04:05Z"),
        ("gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'", "2024-01-02T03:04:05.678Z"),
        ("gmtDate:yyyy-MM-dd HH:mm:ss", "2024-01-02 03:04:05"),
        ("date:yyyy-MM-dd'T'HH:mm:ssXXX", "2024-01-01T19:04:05-08:00"),
        ("dateTimeZone:PST:yyyy-MM-dd'T'HH:mm:ss", "2024-01-01T19:04:05"),
        ("dateTimeZone:-8:00:yyyy-MM-dd'T'HH:mm:ss", "2024-01-01T19:04:05"),
        ("dateTimeZone:-08:00:HH:mm", "19:04"),
        ("dateTimeZone:GMT-08:00:HH:mm", "19:04"),
        ("dateTimeZone:Asia/Kolkata:yyyy-MM-dd'T'HH:mm:ssZ", "2024-01-02T08:34:05+0530"),
        ("dateTimeZone:UTC:milliseconds", "1704164645678"),
        ("epoch", "1704164645678"),
        ("epoch:ms", "1704164645678"),
        ("epoch:s", "1704164645"),
        ("epoch:us", "1704164645678901"),
    ],
)
def test_each_variable_kind(variable: str, value: str) -> None:
    rendered = render("/contacts?since=${" + variable + "}&order=id", LA)
    assert parse_qs(urlsplit(rendered).query) == {"since": [value], "order": ["id"]}
    template = compile_template("/contacts?since=${" + variable + "}")
    assert template_variables(template) == (variable,)


def test_date_uses_the_instance_zone() -> None:
    url = "/x?d=${date:yyyy-MM-dd HH:mm}"
    assert render(url) == "/x?d=2024-01-02%2003:04"
    assert render(url, ZoneInfo("Asia/Tokyo")) == "/x?d=2024-01-02%2012:04"


def test_plus_in_an_offset_is_percent_encoded() -> None:
    rendered = render("/x?since=${date:yyyy-MM-dd'T'HH:mm:ssXXX}", ZoneInfo("Europe/Paris"))
    assert rendered == "/x?since=2024-01-02T04:04:05%2B01:00"
    assert parse_qs(urlsplit(rendered).query)["since"] == ["2024-01-02T04:04:05+01:00"]


def test_ceql_where_with_template_renders_keap_since() -> None:
    url = f"/hubs/crm/contacts?where=lastUpdated>'{TEMPLATE}'&pageSize=20"
    assert render(url) == "/contacts?since=2024-01-02T03:04:05Z&pageSize=20"


def test_unrewritten_where_keeps_its_quotes_and_encodes_the_value() -> None:
    rendered = render("/x?where=a='${gmtDate:yyyy-MM-dd HH:mm}' and b='c'")
    assert rendered == "/x?where=a='2024-01-02%2003:04' and b='c'"


def test_variable_in_the_path_encodes_slashes() -> None:
    assert render("/reports/${gmtDate:yyyy/MM/dd}/items") == "/reports/2024%2F01%2F02/items"


def test_url_without_variables() -> None:
    template = compile_template("/hubs/crm/opportunities")
    assert template.url == "/opportunities"
    assert template_variables(template) == ()
    assert template.render(BOUND, UTC) == "/opportunities"


def test_lower_bound_is_truncated_never_rounded_up() -> None:
    late = datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)
    template = compile_template("/x?a=${gmtDate:HH:mm:ss.SSS}&b=${epoch:s}&c=${epoch}")
    assert template.render(late, UTC) == "/x?a=03:04:05.999&b=1704164645&c=1704164645999"


def test_naive_lower_bound_is_utc() -> None:
    assert render("/x?a=${epoch:s}") == compile_template("/x?a=${epoch:s}").render(
        BOUND.replace(tzinfo=None), LA
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/x?since=${lastPollDate}", r"unknown URL template variable \$\{lastPollDate\}"),
        ("/x?since=${gmtDate}", r"unknown URL template variable \$\{gmtDate\}"),
        ("/x?since=${date}", r"unknown URL template variable \$\{date\}"),
        ("/x?since=${}", r"unknown URL template variable \$\{\}"),
        ("/x?since=${epoch:m}", r"\$\{epoch:m\}"),
        ("/x?since=${epoch:}", r"\$\{epoch:\}"),
        ("/x?since=${gmtDate:yyyy-QQ}", r"\$\{gmtDate:yyyy-QQ\}.*'Q'"),
        ("/x?since=${dateTimeZone:Mars/Base:yyyy}", r"\$\{dateTimeZone:Mars/Base:yyyy\}"),
        ("/x?since=${dateTimeZone:PST}", r"\$\{dateTimeZone:PST\}"),
        ("/x?since=${gmtDate:yyyy", "unterminated"),
    ],
)
def test_bad_variables_are_named(url: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        compile_template(url)
