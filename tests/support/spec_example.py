"""SPEC.md §3's example poller configuration for ``contacts``, verbatim: one copy for every
test that builds the documented example (the client's create body, the parser, fixtures)."""

from __future__ import annotations

from typing import Any

SPEC_CONTACTS_POLLER: dict[str, Any] = {
    "url": "/contacts?since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}&order=id",
    "idField": "id",
    "datesConfiguration": {
        "updatedDateField": "last_updated",
        "updatedDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
        "createdDateField": "date_created",
        "createdDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
        "createdDateTimezone": "GMT",
    },
}
