from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from app.domain.dateformats import DateFormatError
from app.domain.pollconfig import (
    DEFAULT_DATE_FORMAT,
    DEFAULT_POLLER_CONFIGURATION,
    ConfigError,
    default_poller_configuration,
    parse_poller_configuration,
)
from tests.support.domain_helpers import template_variables
from tests.support.spec_example import SPEC_CONTACTS_POLLER

KEY = "event.poller.configuration"

SPEC_EXAMPLE: dict[str, Any] = {"contacts": SPEC_CONTACTS_POLLER}


def with_contacts(**changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(SPEC_EXAMPLE)
    config["contacts"].update(changes)
    return config


def with_dates(**changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(SPEC_EXAMPLE)
    config["contacts"]["datesConfiguration"].update(changes)
    return config


# --- accepted forms -------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["object", "json string", "json bytes"])
def test_spec_example_in_object_and_string_forms(form: str) -> None:
    value: object = SPEC_EXAMPLE
    if form == "json string":
        value = json.dumps(SPEC_EXAMPLE)
    elif form == "json bytes":
        value = json.dumps(SPEC_EXAMPLE).encode()
    contacts = parse_poller_configuration(value)["contacts"]
    assert contacts.name == "contacts"
    assert contacts.id_field == "id"
    assert template_variables(contacts.url) == ("gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'",)
    assert contacts.updated is not None
    assert contacts.updated.path == "last_updated"
    assert contacts.updated.timezone is None
    assert contacts.created is not None
    assert contacts.created.timezone is UTC
    assert contacts.created.timezone_name == "GMT"
    assert contacts.filter_by_updated_date is True
    assert contacts.filter_by_current_date is False
    assert contacts.created_check_tolerance == 0
    assert contacts.page_size is None
    assert contacts.poll_delay == 0
    assert contacts.raw == SPEC_EXAMPLE["contacts"]


def test_open_connectors_hub_config_with_all_optional_keys() -> None:
    config = {
        "contacts": {
            "url": "/hubs/crm/contacts?where=lastUpdated>'${gmtDate:yyyy-MM-dd'T'HH:mm:ss'Z'}'",
            "idField": "id",
            "filterByUpdatedDate": "false",
            "filterByCurrentDate": "TRUE",
            "datesConfiguration": {
                "updatedDateField": "_info.lastUpdated",
                "updatedDateFormat": "yyyy-MM-dd'T'HH:mm:ss'Z'",
                "updatedDateTimezone": "GMT",
            },
            "createdCheckTolerance": "60",
            "pageSize": "20",
            "pollDelay": 60.5,
        }
    }
    contacts = parse_poller_configuration(config)["contacts"]
    assert contacts.url.url == "/contacts?since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss'Z'}"
    assert contacts.filter_by_updated_date is False
    assert contacts.filter_by_current_date is True
    assert contacts.created_check_tolerance == 60
    assert contacts.page_size == 20
    assert contacts.poll_delay == 60.5
    assert contacts.created is None


def test_date_settings_at_resource_level_are_tolerated() -> None:
    config = with_contacts(updatedDateTimezone="America/Los_Angeles")
    del config["contacts"]["datesConfiguration"]["updatedDateField"]
    config["contacts"]["updatedDateField"] = "modified"
    contacts = parse_poller_configuration(config)["contacts"]
    assert contacts.updated is not None
    assert contacts.updated.path == "modified"
    assert contacts.updated.timezone == ZoneInfo("America/Los_Angeles")


def test_legacy_spellings() -> None:
    config = with_contacts(filterByUpdateDate=False)
    config["contacts"]["datesConfiguration"]["updatedDateTimeZone"] = "EST"
    contacts = parse_poller_configuration(config)["contacts"]
    assert contacts.filter_by_updated_date is False
    assert contacts.updated is not None
    assert contacts.updated.timezone_name == "EST"


def test_missing_format_defaults_to_keaps() -> None:
    config = with_dates(updatedDateFormat=None)
    del config["contacts"]["datesConfiguration"]["createdDateFormat"]
    contacts = parse_poller_configuration(config)["contacts"]
    assert contacts.updated is not None
    assert contacts.created is not None
    assert contacts.updated.format_pattern == DEFAULT_DATE_FORMAT
    assert contacts.created.format_pattern == DEFAULT_DATE_FORMAT


def test_resource_without_dates() -> None:
    resource = parse_poller_configuration({"notes": {"url": "/notes", "idField": "id"}})["notes"]
    assert resource.updated is None
    assert resource.created is None
    assert template_variables(resource.url) == ()


def test_unknown_keys_are_ignored() -> None:
    assert parse_poller_configuration(with_contacts(somethingElse={"x": 1}))["contacts"]


def test_raw_is_a_copy() -> None:
    config = copy.deepcopy(SPEC_EXAMPLE)
    contacts = parse_poller_configuration(config)["contacts"]
    config["contacts"]["idField"] = "changed"
    assert contacts.raw["idField"] == "id"


# --- DateField.read -----------------------------------------------------------------------


def test_date_field_reads_records() -> None:
    contacts = parse_poller_configuration(SPEC_EXAMPLE)["contacts"]
    assert contacts.updated is not None
    record = {"id": 1, "last_updated": "2022-09-29T00:32:12.000+0000"}
    expected = datetime(2022, 9, 29, 0, 32, 12, tzinfo=UTC)
    assert contacts.updated.read(record, ZoneInfo("Asia/Tokyo")) == expected
    assert contacts.updated.read({"id": 1}, UTC) is None
    assert contacts.updated.read({"id": 1, "last_updated": ""}, UTC) is None
    with pytest.raises(DateFormatError):
        contacts.updated.read({"last_updated": "yesterday"}, UTC)


def test_date_field_zone_precedence() -> None:
    config = with_dates(
        updatedDateFormat="yyyy-MM-dd HH:mm",
        updatedDateTimezone="-08:00",
        createdDateFormat="yyyy-MM-dd HH:mm",
        createdDateTimezone=None,
    )
    contacts = parse_poller_configuration(config)["contacts"]
    assert contacts.updated is not None
    assert contacts.created is not None
    record = {"last_updated": "2024-01-01 00:00", "date_created": "2024-01-01 00:00"}
    midnight = datetime(2024, 1, 1, tzinfo=UTC)
    tokyo = ZoneInfo("Asia/Tokyo")
    # The configured zone beats the instance zone; without one the instance zone applies.
    assert contacts.updated.read(record, tokyo) == midnight + timedelta(hours=8)
    assert contacts.created.read(record, tokyo) == midnight - timedelta(hours=9)


# --- errors name the key ------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 42, [], "not json", "[1, 2]", '"a string"', "", b"\xff"])
def test_configuration_itself_must_be_an_object(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_poller_configuration(value)
    assert info.value.field == KEY
    assert str(info.value).startswith(KEY)


@pytest.mark.parametrize("value", [{}, "{}"])
def test_empty_configuration_configures_nothing(value: object) -> None:
    assert parse_poller_configuration(value) == {}


def test_too_many_resources() -> None:
    config = {f"r{i}": {"url": f"/r{i}", "idField": "id"} for i in range(51)}
    with pytest.raises(ConfigError, match="at most 50") as info:
        parse_poller_configuration(config)
    assert info.value.field == KEY


@pytest.mark.parametrize("name", ["", "1contacts", "con tacts", "../x", "a" * 101, "x?y=1"])
def test_resource_names(name: str) -> None:
    with pytest.raises(ConfigError, match="resource name") as info:
        parse_poller_configuration({name: {"url": "/x", "idField": "id"}})
    assert info.value.field == f"{KEY}.{name}"


def test_resource_names_may_be_paths() -> None:
    config = {"contacts/tags": {"url": "/contacts/tags", "idField": "id"}}
    assert list(parse_poller_configuration(config)) == ["contacts/tags"]


C = f"{KEY}.contacts"
D = f"{C}.datesConfiguration"


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"contacts": "/contacts"}, C, "must be an object"),
        ({"contacts": {"idField": "id"}}, f"{C}.url", "required"),
        (with_contacts(url=""), f"{C}.url", "required"),
        (with_contacts(url=5), f"{C}.url", "required"),
        (with_contacts(url="/x?since=${lastPoll}"), f"{C}.url", r"\$\{lastPoll\}"),
        (with_contacts(url="https://evil.example/x"), f"{C}.url", "relative"),
        (with_contacts(url="/x?s=${gmtDate:yyyy-QQ}"), f"{C}.url", "'Q'"),
        ({"contacts": {"url": "/contacts"}}, f"{C}.idField", "required"),
        (with_contacts(idField="a..b"), f"{C}.idField", "invalid field path"),
        (with_contacts(idField=["id"]), f"{C}.idField", "required"),
        (with_contacts(datesConfiguration="yes"), D, "must be an object"),
        (with_dates(updatedDateFormat="yyyy-MM-dd'T'HH:mm:ssQ"), f"{D}.updatedDateFormat", "'Q'"),
        (with_dates(createdDateFormat="'unterminated"), f"{D}.createdDateFormat", "quote"),
        (with_dates(updatedDateFormat=5), f"{D}.updatedDateFormat", "string"),
        (with_dates(updatedDateTimezone="Mars/Base"), f"{D}.updatedDateTimezone", "Mars/Base"),
        (with_dates(createdDateTimezone="+99:00"), f"{D}.createdDateTimezone", r"\+99:00"),
        (with_dates(updatedDateField="a..b"), f"{D}.updatedDateField", "invalid field path"),
        (with_dates(createdDateField=7), f"{D}.createdDateField", "string"),
        (with_contacts(updatedDateTimezone="Nowhere"), f"{C}.updatedDateTimezone", "Nowhere"),
        (with_contacts(filterByUpdatedDate="yes"), f"{C}.filterByUpdatedDate", "true or false"),
        (with_contacts(filterByUpdatedDate=1), f"{C}.filterByUpdatedDate", "true or false"),
        (with_contacts(filterByCurrentDate="no"), f"{C}.filterByCurrentDate", "true or false"),
        (with_contacts(pageSize=0), f"{C}.pageSize", "1 to 1000"),
        (with_contacts(pageSize=1001), f"{C}.pageSize", "1 to 1000"),
        (with_contacts(pageSize=2.5), f"{C}.pageSize", "1 to 1000"),
        (with_contacts(pageSize="ten"), f"{C}.pageSize", "1 to 1000"),
        (with_contacts(pageSize=True), f"{C}.pageSize", "1 to 1000"),
        (with_contacts(pollDelay=-1), f"{C}.pollDelay", "zero or more"),
        (with_contacts(pollDelay="soon"), f"{C}.pollDelay", "zero or more"),
        (with_contacts(pollDelay=10**9), f"{C}.pollDelay", "at most"),
        (with_contacts(createdCheckTolerance="abc"), f"{C}.createdCheckTolerance", "seconds"),
        (with_contacts(createdCheckTolerance=False), f"{C}.createdCheckTolerance", "seconds"),
        (with_contacts(createdCheckTolerance="nan"), f"{C}.createdCheckTolerance", "seconds"),
    ],
)
def test_errors_name_the_field(config: object, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_poller_configuration(config)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- defaults -------------------------------------------------------------------------------


def test_defaults_parse_and_cover_keaps_resources() -> None:
    defaults = default_poller_configuration()
    assert set(defaults) == {
        "contacts",
        "opportunities",
        "orders",
        "tasks",
        "appointments",
        "transactions",
        "files",
    }
    assert json.loads(json.dumps(DEFAULT_POLLER_CONFIGURATION)) == DEFAULT_POLLER_CONFIGURATION
    assert parse_poller_configuration(json.dumps(DEFAULT_POLLER_CONFIGURATION)) == defaults


def test_default_contacts_use_millisecond_updates() -> None:
    contacts = default_poller_configuration()["contacts"]
    bound = datetime(2024, 6, 3, 22, 17, 59, 39000, tzinfo=UTC)
    assert contacts.url.render(bound, UTC) == "/contacts?since=2024-06-03T22:17:59.039Z&order=id"
    record = {
        "id": 1,
        "date_created": "2024-11-07T20:35:13.000+0000",
        "last_updated": "2024-11-07T20:35:13.000+0000",
        "last_updated_utc_millis": 1731011713217,
    }
    assert contacts.updated is not None
    assert contacts.created is not None
    updated = contacts.updated.read(record, UTC)
    created = contacts.created.read(record, UTC)
    assert updated == datetime(2024, 11, 7, 20, 35, 13, 217000, tzinfo=UTC)
    assert created is not None
    assert updated is not None
    assert abs((updated - created).total_seconds()) <= contacts.created_check_tolerance


@pytest.mark.parametrize(
    ("name", "created", "updated", "filters_by_date"),
    [
        ("orders", "creation_date", "modification_date", True),
        ("tasks", "creation_date", "modification_date", True),
        ("opportunities", "date_created", "last_updated", False),
        ("files", "date_created", "last_updated", False),
        ("transactions", "transaction_date", None, True),
        ("appointments", None, None, False),
    ],
)
def test_default_resources(
    name: str, created: str | None, updated: str | None, filters_by_date: bool
) -> None:
    resource = default_poller_configuration()[name]
    assert resource.id_field == "id"
    assert (resource.created.path if resource.created else None) == created
    assert (resource.updated.path if resource.updated else None) == updated
    assert bool(template_variables(resource.url)) is filters_by_date
    if filters_by_date and name != "transactions":
        assert resource.url.url.endswith("&order=id")
    assert resource.filter_by_updated_date is (name != "transactions")
