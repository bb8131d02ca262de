"""``event.poller.configuration``: parsing, validation and Keap defaults.

The value arrives in the Open Connectors shape, as a JSON object or a JSON-encoded string of
one (SPEC §3). Everything that can be checked without talking to the provider is checked
here, once, when an instance is created or patched, so that a typo surfaces as a 400 naming
the configuration key instead of as a poll that silently finds nothing.

Decisions where Open Connectors is silent:

* A date field without a format uses Keap's format, :data:`DEFAULT_DATE_FORMAT`.
* Date settings are read from ``datesConfiguration`` and, as one archived Open Connectors
  example does, also from the resource object itself; ``...DateTimeZone`` is accepted as a
  spelling of ``...DateTimezone`` (the legacy ``event.poller.urls`` header used it), and
  ``filterByUpdateDate`` (a typo in the archived docs) as ``filterByUpdatedDate``.
* Booleans may be ``"true"``/``"false"`` and numbers numeric strings, as Open Connectors
  examples send them. Unknown keys are ignored, so configurations carrying Open Connectors
  extras still load.
* An empty object is valid and configures no resources. Whether "absent" or "empty" means
  :data:`DEFAULT_POLLER_CONFIGURATION` is the caller's decision (SPEC §4: defaults apply
  when the key is absent), so this module does not guess.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from app.domain.dateformats import DateFormat, DateFormatError, compile_format
from app.domain.fieldpath import compile_path, get_path
from app.domain.hubfields import KEAP_DATE_FORMAT, hub_date_field, hub_resource
from app.domain.jsonsafety import UnsafeJson, loads_checked
from app.domain.limits import (
    MAX_CREATED_CHECK_TOLERANCE_SECONDS,
    MAX_NUMBER_TEXT_LENGTH,
    MAX_PAGE_SIZE,
    MAX_POLL_DELAY_SECONDS,
    MAX_RESOURCES,
)
from app.domain.templates import TemplateError, UrlTemplate, compile_template
from app.domain.timezones import UnknownTimeZoneError, resolve_timezone

__all__ = [
    "CONFIGURATION_KEY",
    "DEFAULT_DATE_FORMAT",
    "DEFAULT_POLLER_CONFIGURATION",
    "ConfigError",
    "DateField",
    "ResourceConfig",
    "default_poller_configuration",
    "load_configuration_object",
    "parse_poller_configuration",
    "resources_from_stored",
    "stored_resources",
]

CONFIGURATION_KEY = "event.poller.configuration"
DEFAULT_DATE_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"

_RESOURCE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-/]{0,99}")


class ConfigError(ValueError):
    """An invalid poller configuration; ``field`` is the full dotted configuration key."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


@dataclass(frozen=True)
class DateField:
    """Where a record keeps one of its dates and how that date is written."""

    path: str
    format: DateFormat
    timezone: tzinfo | None
    format_pattern: str
    timezone_name: str | None = None

    def read(self, record: Mapping[str, Any], default_tz: tzinfo) -> datetime | None:
        """The record's date as an aware UTC datetime, or ``None`` when the field is absent.

        ``default_tz`` (the instance zone) applies when neither the value nor this field's
        configuration carries a zone. Raises ``DateFormatError`` on a malformed value.
        """
        value = get_path(record, self.path)
        if value is None or value == "":  # an empty string carries no date
            return None
        return self.format.parse(value, default_tz if self.timezone is None else self.timezone)


@dataclass(frozen=True)
class ResourceConfig:
    """One polled resource, validated. ``raw`` is the resource's JSON as given (a copy)."""

    name: str
    url: UrlTemplate
    id_field: str
    updated: DateField | None
    created: DateField | None
    filter_by_updated_date: bool = True
    filter_by_current_date: bool = False
    created_check_tolerance: float = 0.0
    page_size: int | None = None
    poll_delay: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


# --- value readers: each names the full key it reads in its error ---------------------------


def _required_str(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "is required and must be a non-empty string")
    return value.strip()


def _optional_str(key: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string")
    return value.strip() or None


def _bool(key: str, value: object, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(key, "must be true or false")


def _finite(value: object) -> float | None:
    """A JSON number or numeric string as a finite float; ``None`` for anything else.

    NaN and infinities (``NaN``, ``"inf"``, ``1e999``) and integers too large for a float
    are ``None``: every bound below compares against a finite number, and a non-finite
    one would pass ``<`` checks or overflow ``timedelta`` at poll time.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_NUMBER_TEXT_LENGTH:
            return None
        try:
            value = float(text)
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        return None
    return number if math.isfinite(number) else None


def _seconds(key: str, value: object, maximum: float) -> float:
    if value is None or value == "":
        return 0.0
    number = _finite(value)
    if number is None or number < 0:
        raise ConfigError(key, "must be a number of seconds, zero or more")
    if number > maximum:
        raise ConfigError(key, f"must be at most {maximum:g} seconds")
    return number


def _page_size(key: str, value: object) -> int | None:
    if value is None or value == "":
        return None
    number = _finite(value)
    size = int(number) if number is not None and number.is_integer() else None
    if size is None or not 1 <= size <= MAX_PAGE_SIZE:
        raise ConfigError(key, f"must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return size


def _field_path(key: str, value: object) -> str:
    path = _required_str(key, value)
    try:
        compile_path(path)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    return path


def _date_format(key: str, pattern: str) -> DateFormat:
    try:
        return compile_format(pattern)
    except DateFormatError as exc:
        raise ConfigError(key, str(exc)) from None


def _timezone(key: str, name: str | None) -> tzinfo | None:
    if name is None:
        return None
    try:
        return resolve_timezone(name)
    except UnknownTimeZoneError as exc:
        raise ConfigError(key, str(exc)) from None


def _url(key: str, value: object) -> UrlTemplate:
    url = _required_str(key, value)
    try:
        return compile_template(url)
    except TemplateError as exc:
        raise ConfigError(key, str(exc)) from None


# --- resources ----------------------------------------------------------------------------


def _date_setting(
    key: str, resource: Mapping[str, Any], dates: Mapping[str, Any], *names: str
) -> tuple[str, object]:
    """The first of ``names`` found, in ``datesConfiguration`` first, then on the resource."""
    for container, prefix in ((dates, f"{key}.datesConfiguration"), (resource, key)):
        for name in names:
            if name in container:
                return f"{prefix}.{name}", container[name]
    return f"{key}.datesConfiguration.{names[0]}", None


def _date_field(
    key: str, resource: Mapping[str, Any], dates: Mapping[str, Any], kind: str
) -> DateField | None:
    path_key, path = _date_setting(key, resource, dates, f"{kind}DateField")
    format_key, pattern = _date_setting(key, resource, dates, f"{kind}DateFormat")
    zone_key, zone = _date_setting(
        key, resource, dates, f"{kind}DateTimezone", f"{kind}DateTimeZone"
    )
    # Format and zone are validated even without a field: a typo there is still a typo.
    pattern_text = _optional_str(format_key, pattern) or DEFAULT_DATE_FORMAT
    date_format = _date_format(format_key, pattern_text)
    zone_name = _optional_str(zone_key, zone)
    zone_info = _timezone(zone_key, zone_name)
    if path is None or path == "":
        return None
    return DateField(_field_path(path_key, path), date_format, zone_info, pattern_text, zone_name)


def _from_hub(resource: str, field: DateField | None) -> DateField | None:
    """A date named the Open Connectors hub's way, read from the field Keap returns."""
    if field is None:
        return None
    mapped, keap_field = hub_date_field(resource, field.path)
    if not mapped:
        return field
    if keap_field is None:
        return None
    return DateField(
        keap_field,
        compile_format(KEAP_DATE_FORMAT),
        field.timezone,
        KEAP_DATE_FORMAT,
        field.timezone_name,
    )


def _resource_name(name: object) -> str:
    if not isinstance(name, str) or not _RESOURCE_NAME_RE.fullmatch(name):
        # A key of any length may arrive; the error names a recognisable prefix of it.
        shown = name[:200] + "..." if isinstance(name, str) and len(name) > 200 else name
        raise ConfigError(
            f"{CONFIGURATION_KEY}.{shown}",
            "a resource name must start with a letter and contain only letters, digits, "
            "'_', '-' and '/' (at most 100 characters)",
        )
    return name


def _parse_resource(name: str, resource: object) -> ResourceConfig:
    key = f"{CONFIGURATION_KEY}.{name}"
    if not isinstance(resource, dict):
        raise ConfigError(key, "must be an object with at least url and idField")
    dates = resource.get("datesConfiguration")
    if dates is None:
        dates = {}
    elif not isinstance(dates, dict):
        raise ConfigError(f"{key}.datesConfiguration", "must be an object")
    filter_key = "filterByUpdatedDate"
    if filter_key not in resource and "filterByUpdateDate" in resource:
        filter_key = "filterByUpdateDate"
    url = _url(f"{key}.url", resource.get("url"))
    hub = hub_resource(str(resource.get("url")))
    updated = _date_field(key, resource, dates, "updated")
    created = _date_field(key, resource, dates, "created")
    if hub is not None:
        updated, created = _from_hub(hub, updated), _from_hub(hub, created)
    return ResourceConfig(
        name=name,
        url=url,
        id_field=_field_path(f"{key}.idField", resource.get("idField")),
        updated=updated,
        created=created,
        filter_by_updated_date=_bool(f"{key}.{filter_key}", resource.get(filter_key), True),
        filter_by_current_date=_bool(
            f"{key}.filterByCurrentDate", resource.get("filterByCurrentDate"), False
        ),
        created_check_tolerance=_seconds(
            f"{key}.createdCheckTolerance",
            resource.get("createdCheckTolerance"),
            maximum=MAX_CREATED_CHECK_TOLERANCE_SECONDS,
        ),
        page_size=_page_size(f"{key}.pageSize", resource.get("pageSize")),
        poll_delay=_seconds(
            f"{key}.pollDelay", resource.get("pollDelay"), maximum=MAX_POLL_DELAY_SECONDS
        ),
        raw=copy.deepcopy(resource),
    )


def load_configuration_object(value: object) -> dict[str, Any]:
    """The configuration as an object: a JSON-encoded string is decoded, safely.

    The string form is decoded with :func:`~app.domain.jsonsafety.loads_checked`, so a NUL or
    a lone surrogate inside it (which the request-level check cannot see: it is an escape
    in a string there) is a :class:`ConfigError` naming the key, like any other mistake.
    The object form was part of the request body, which the API checks as a whole.
    """
    if isinstance(value, str | bytes):
        try:
            value = loads_checked(value, field=CONFIGURATION_KEY)
        except UnsafeJson as exc:
            raise ConfigError(exc.field, exc.message.removeprefix(f"{exc.field}: ")) from None
    if not isinstance(value, dict):
        raise ConfigError(
            CONFIGURATION_KEY, "must be a JSON object of resources, or a JSON string of one"
        )
    return value


def parse_poller_configuration(value: object) -> dict[str, ResourceConfig]:
    """Validate ``event.poller.configuration`` and compile it, resource by resource.

    Raises :class:`ConfigError` whose ``field`` is the full key of the first problem found,
    e.g. ``event.poller.configuration.contacts.datesConfiguration.updatedDateFormat``.
    """
    resources = load_configuration_object(value)
    if len(resources) > MAX_RESOURCES:
        raise ConfigError(CONFIGURATION_KEY, f"at most {MAX_RESOURCES} resources can be polled")
    return {
        _resource_name(name): _parse_resource(name, resource)
        for name, resource in resources.items()
    }


# --- Keap defaults ------------------------------------------------------------------------

# Keap filters with `since` at millisecond precision and writes it with a literal Z.
_SINCE = "since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}"


def _keap_dates(created: str | None, updated: str | None) -> dict[str, str]:
    dates: dict[str, str] = {}
    if updated is not None:
        dates |= {"updatedDateField": updated, "updatedDateFormat": DEFAULT_DATE_FORMAT}
    if created is not None:
        dates |= {"createdDateField": created, "createdDateFormat": DEFAULT_DATE_FORMAT}
    return dates


# Keap's raw field names (reference §2.3). `order=id` wherever Keap accepts it keeps offset
# pagination stable while records change. Contacts use `last_updated_utc_millis` because
# `last_updated` is rendered to the second and many records share it; `date_created` is
# second-precision, so a 1 s tolerance keeps a new contact's two dates "equal".
# Opportunities and files have no `since` filter: every page is read and filtered by date.
# Appointments carry no dates and their `since` filters on when they happen, not on changes,
# so they are read in full and reported CREATED when first seen. Transactions have only
# `transaction_date`: a created date, never an updated one.
DEFAULT_POLLER_CONFIGURATION: dict[str, dict[str, Any]] = {
    "contacts": {
        "url": f"/contacts?{_SINCE}&order=id",
        "idField": "id",
        "createdCheckTolerance": 1,
        "datesConfiguration": {
            "updatedDateField": "last_updated_utc_millis",
            "updatedDateFormat": "milliseconds",
            "createdDateField": "date_created",
            "createdDateFormat": DEFAULT_DATE_FORMAT,
        },
    },
    "opportunities": {
        "url": "/opportunities",
        "idField": "id",
        "datesConfiguration": _keap_dates("date_created", "last_updated"),
    },
    "orders": {
        "url": f"/orders?{_SINCE}&order=id",
        "idField": "id",
        "datesConfiguration": _keap_dates("creation_date", "modification_date"),
    },
    "tasks": {
        "url": f"/tasks?{_SINCE}&order=id",
        "idField": "id",
        "datesConfiguration": _keap_dates("creation_date", "modification_date"),
    },
    "appointments": {
        "url": "/appointments",
        "idField": "id",
    },
    "transactions": {
        "url": f"/transactions?{_SINCE}",
        "idField": "id",
        "filterByUpdatedDate": False,
        "datesConfiguration": _keap_dates("transaction_date", None),
    },
    "files": {
        "url": "/files",
        "idField": "id",
        "datesConfiguration": _keap_dates("date_created", "last_updated"),
    },
}


def default_poller_configuration() -> dict[str, ResourceConfig]:
    """The compiled Keap defaults, used when an instance has no poller configuration."""
    return parse_poller_configuration(DEFAULT_POLLER_CONFIGURATION)


# --- the stored (engine) shape ------------------------------------------------------------
#
# The API parses the tenant's configuration once (above) and stores what the parser
# produced, in a fixed shape with nothing left to interpret: the URL normalized, hub date
# fields already mapped to Keap's, every default written out. Workers load that shape with
# :func:`resources_from_stored`; the Open Connectors rules (string form, aliases, hub
# mapping, defaults) never run again. Loading still checks every value with the readers
# above, so a row written past validation (an older bound, manual SQL) fails the poll with
# a ConfigError naming the key instead of polling with a value the API would refuse.


def _stored_date(field: DateField | None) -> dict[str, Any] | None:
    if field is None:
        return None
    return {"field": field.path, "format": field.format_pattern, "timezone": field.timezone_name}


def stored_resources(resources: Mapping[str, ResourceConfig]) -> dict[str, dict[str, Any]]:
    """The parsed configuration as JSON for the ``instances.poller`` column."""
    return {
        name: {
            "url": cfg.url.url,
            "idField": cfg.id_field,
            "updated": _stored_date(cfg.updated),
            "created": _stored_date(cfg.created),
            "filterByUpdatedDate": cfg.filter_by_updated_date,
            "filterByCurrentDate": cfg.filter_by_current_date,
            "createdCheckTolerance": cfg.created_check_tolerance,
            "pageSize": cfg.page_size,
            "pollDelay": cfg.poll_delay,
        }
        for name, cfg in resources.items()
    }


def _loaded_date(key: str, value: object) -> DateField | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(key, "must be an object")
    pattern = _required_str(f"{key}.format", value.get("format"))
    zone_name = _optional_str(f"{key}.timezone", value.get("timezone"))
    return DateField(
        _field_path(f"{key}.field", value.get("field")),
        _date_format(f"{key}.format", pattern),
        _timezone(f"{key}.timezone", zone_name),
        pattern,
        zone_name,
    )


def _loaded_resource(name: str, value: object) -> ResourceConfig:
    key = f"{CONFIGURATION_KEY}.{name}"
    if not isinstance(value, dict):
        raise ConfigError(key, "must be an object")
    return ResourceConfig(
        name=name,
        url=_url(f"{key}.url", value.get("url")),
        id_field=_field_path(f"{key}.idField", value.get("idField")),
        updated=_loaded_date(f"{key}.updated", value.get("updated")),
        created=_loaded_date(f"{key}.created", value.get("created")),
        filter_by_updated_date=_bool(
            f"{key}.filterByUpdatedDate", value.get("filterByUpdatedDate"), True
        ),
        filter_by_current_date=_bool(
            f"{key}.filterByCurrentDate", value.get("filterByCurrentDate"), False
        ),
        created_check_tolerance=_seconds(
            f"{key}.createdCheckTolerance",
            value.get("createdCheckTolerance"),
            maximum=MAX_CREATED_CHECK_TOLERANCE_SECONDS,
        ),
        page_size=_page_size(f"{key}.pageSize", value.get("pageSize")),
        poll_delay=_seconds(
            f"{key}.pollDelay", value.get("pollDelay"), maximum=MAX_POLL_DELAY_SECONDS
        ),
    )


def resources_from_stored(value: object) -> dict[str, ResourceConfig]:
    """The resources of an ``instances.poller`` value (see :func:`stored_resources`)."""
    if not isinstance(value, dict):
        raise ConfigError(CONFIGURATION_KEY, "the stored configuration must be an object")
    return {_resource_name(name): _loaded_resource(name, r) for name, r in value.items()}
