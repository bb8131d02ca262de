"""The poller configuration as stored for the engine: what the parser produced, reloadable
without the Open Connectors rules, and checked again when it is loaded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.domain.pollconfig import (
    DEFAULT_POLLER_CONFIGURATION,
    ConfigError,
    parse_poller_configuration,
    resources_from_stored,
    stored_resources,
)

HUB = {
    "contacts": {
        "url": "/hubs/crm/contacts?where=lastUpdated>'${gmtDate:yyyy-MM-dd}'",
        "idField": "id",
        "datesConfiguration": {
            "updatedDateField": "modification_date",
            "createdDateField": "creation_date",
            "createdDateTimeZone": "America/New_York",
        },
        "filterByUpdateDate": "false",
        "pageSize": "200",
        "pollDelay": "3",
        "createdCheckTolerance": 2,
    },
    "orders": {
        "url": "/orders?since=${date:yyyy-MM-dd'T'HH:mm:ss}",
        "idField": "id",
        "updatedDateField": "modification_date",
        "updatedDateFormat": "milliseconds",
        "filterByCurrentDate": True,
    },
}


@pytest.mark.parametrize("given", [DEFAULT_POLLER_CONFIGURATION, HUB, json.dumps(HUB)])
def test_the_stored_shape_loads_back_to_what_the_parser_produced(given: Any) -> None:
    parsed = parse_poller_configuration(given)
    stored = stored_resources(parsed)
    # Stored as JSONB: it must survive a JSON round trip.
    loaded = resources_from_stored(json.loads(json.dumps(stored)))
    assert loaded == parsed
    for name, cfg in parsed.items():
        assert loaded[name].url.variables == cfg.url.variables  # the compiled template
        assert loaded[name].url.has_date_filter == cfg.url.has_date_filter


def test_the_stored_shape_has_the_open_connectors_rules_applied() -> None:
    stored = stored_resources(parse_poller_configuration(HUB))
    contacts = stored["contacts"]
    assert contacts["url"] == "/contacts?since=${gmtDate:yyyy-MM-dd}"  # hub prefix, where
    assert contacts["updated"]["field"] == "last_updated"  # hub field mapped to Keap's
    assert contacts["created"]["field"] == "date_created"
    assert contacts["created"]["timezone"] == "America/New_York"  # alias spelling read
    assert contacts["filterByUpdatedDate"] is False  # typo spelling and string boolean read
    assert (contacts["pageSize"], contacts["pollDelay"]) == (200, 3.0)
    assert stored["orders"]["updated"] == {
        "field": "modification_date",
        "format": "milliseconds",
        "timezone": None,
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pageSize": 5000}, "event.poller.configuration.contacts.pageSize"),
        ({"url": "/contacts?since=${nope}"}, "event.poller.configuration.contacts.url"),
        ({"idField": None}, "event.poller.configuration.contacts.idField"),
        (
            {"updated": {"field": "d", "format": "qqq", "timezone": None}},
            "event.poller.configuration.contacts.updated.format",
        ),
    ],
)
def test_a_stored_value_the_api_would_refuse_fails_loading_naming_the_key(
    change: dict[str, Any], field: str
) -> None:
    stored = stored_resources(parse_poller_configuration(DEFAULT_POLLER_CONFIGURATION))
    stored["contacts"] = {**stored["contacts"], **change}
    with pytest.raises(ConfigError) as caught:
        resources_from_stored(stored)
    assert caught.value.field == field


def test_an_empty_stored_configuration_polls_nothing() -> None:
    assert resources_from_stored({}) == {}
    with pytest.raises(ConfigError):
        resources_from_stored([])
