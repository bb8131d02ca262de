"""Open Connectors' *hub* field names for Keap dates, mapped to the fields Keap returns.

Configurations written for Open Connectors address the connector's hub
(``/hubs/crm/appointments``) and name dates the way the hub normalizes them:
``modification_date`` / ``creation_date`` in ``yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`` — the only
default configuration Open Connectors documents for ``infusionsoftrest``. Pollinator reads
Keap's own REST API, whose records carry other names per resource (contacts say
``last_updated``, transactions only ``transaction_date``, appointments no date at all) in
Keap's format (``2022-09-29T00:32:12.000+0000``). Taken literally, such a configuration
skips every record as unreadable. So for a hub URL, a hub date name is read as the Keap
field that holds that date (in Keap's format), or — where Keap has none — the date is
dropped and the resource polls as a date-less one (new ids are CREATED events).

Only hub URLs are mapped: a configuration written against Keap's own paths means Keap's
own field names, and a hub configuration that already names Keap's fields is left alone.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["KEAP_DATE_FORMAT", "hub_date_field", "hub_resource"]

KEAP_DATE_FORMAT: Final = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"

_MODIFIED, _CREATED = "modification_date", "creation_date"
_CONTACT_LIKE: Final[dict[str, str | None]] = {_MODIFIED: "last_updated", _CREATED: "date_created"}
_ORDER_LIKE: Final[dict[str, str | None]] = {
    _MODIFIED: "modification_date",
    _CREATED: "creation_date",
}
# resource (the first path segment after the hub) -> hub date name -> Keap field (None: none)
_HUB_DATES: Final[dict[str, dict[str, str | None]]] = {
    "contacts": _CONTACT_LIKE,
    "opportunities": _CONTACT_LIKE,
    "notes": _CONTACT_LIKE,
    "files": _CONTACT_LIKE,
    "orders": _ORDER_LIKE,
    "tasks": _ORDER_LIKE,
    "transactions": {_MODIFIED: None, _CREATED: "transaction_date"},
    "appointments": {_MODIFIED: None, _CREATED: None},
    "companies": {_MODIFIED: None, _CREATED: None},
    "products": {_MODIFIED: None, _CREATED: None},
}
_HUB_URL_RE = re.compile(r"\A/?hubs/[A-Za-z0-9_-]+/([A-Za-z][A-Za-z0-9_-]*)")


def hub_resource(url: str) -> str | None:
    """The Keap resource a hub URL addresses (``/hubs/crm/contacts?…`` → ``contacts``)."""
    match = _HUB_URL_RE.match(url.strip())
    return match.group(1).lower() if match else None


def hub_date_field(resource: str, field: str) -> tuple[bool, str | None]:
    """``(mapped, keap_field)`` for a date field named in a hub configuration.

    ``mapped`` is false when ``field`` is not a hub name of ``resource`` (use it as given);
    otherwise ``keap_field`` is the Keap field to read, or ``None`` when Keap has no such date.
    """
    names = _HUB_DATES.get(resource)
    if names is None or field not in names:
        return False, None
    return True, names[field]
