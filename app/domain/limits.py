"""Every bound on what a tenant may set, in one table.

Pollinator is shared: one organization's configuration must never cost another
anything. Each number here bounds either work (parsing, polling, scheduling) or
arithmetic (dates must stay inside ``datetime``'s range whatever is configured),
so a value outside it is refused with a 400 naming the field, before anything is
stored and before an OAuth code is exchanged. The README's "Security" table and
``/openapi.json`` are rendered from these names; keep them the only source.
"""

from __future__ import annotations

from typing import Final

# -- the request --------------------------------------------------------------------------
#: Largest request body (SPEC §3: 413 beyond it).
MAX_BODY_BYTES: Final = 256 * 1024
#: Deepest nesting of JSON objects/arrays in a body; deeper → 400 (no RecursionError).
MAX_JSON_DEPTH: Final = 32
#: Instance ids are PostgreSQL ``bigint``; a larger id cannot exist → 404.
MAX_INSTANCE_ID: Final = 2**63 - 1
#: A number written as a string (``"15"``, ``"1e3"``): no bound here needs more characters,
#: and ``int()``/``float()`` of a long digit string is slow or refused.
MAX_NUMBER_TEXT_LENGTH: Final = 32

# -- the instance ---------------------------------------------------------------------------
#: Characters in an instance name.
MAX_NAME_LENGTH: Final = 200
#: Tags on one instance.
MAX_TAGS: Final = 50
#: Characters in one tag.
MAX_TAG_LENGTH: Final = 200
#: Callback and OAuth callback URLs (characters).
MAX_URL_LENGTH: Final = 2048
#: One year. Longer intervals are surely unit mistakes, and the next slot of any
#: instance must stay far inside ``datetime``'s range (year 9999).
MAX_REFRESH_MINUTES: Final = 525_600.0

# -- the poller configuration ----------------------------------------------------------------
#: Resources polled by one instance.
MAX_RESOURCES: Final = 50
#: Keap's largest ``limit``: a resource's ``pageSize`` and the adapter's page size.
#: (Not :data:`MAX_API_PAGE_SIZE`, the bound of Pollinator's own list endpoints.)
MAX_PAGE_SIZE: Final = 1000
#: A week: larger is surely a unit mistake, and it keeps the lower bound far from
#: ``datetime``'s range limits.
MAX_POLL_DELAY_SECONDS: Final = 7 * 24 * 3600
#: A day: created/updated dates further apart than that are not "the same moment".
MAX_CREATED_CHECK_TOLERANCE_SECONDS: Final = 24 * 3600
#: A resource's relative URL (template included).
MAX_RESOURCE_URL_LENGTH: Final = 2048
#: ``${...}`` variables in one resource URL.
MAX_TEMPLATE_VARIABLES: Final = 8
#: A ``SimpleDateFormat`` pattern.
MAX_DATE_FORMAT_LENGTH: Final = 100
#: Zone fields (``X``, ``Z``, ``z``) in one pattern: the only fields matched with
#: backtracking, so their number must stay a small constant. Real patterns have one.
MAX_DATE_FORMAT_ZONE_FIELDS: Final = 2
#: A dotted record path such as ``updatedDateField``.
MAX_FIELD_PATH_LENGTH: Final = 200
#: A time zone name or offset. The longest IANA name has 32 characters; the bound also
#: caps the zone candidates tried in ``${dateTimeZone:ZONE:FMT}``.
MAX_TIMEZONE_NAME_LENGTH: Final = 64

# -- per organization (defaults of operator settings) ----------------------------------------
DEFAULT_MAX_INSTANCES_PER_ORG: Final = 10_000
DEFAULT_API_REQUESTS_PER_SECOND_PER_ORG: Final = 50.0

# -- the API's own paging -------------------------------------------------------------------
#: Largest ``pageSize`` of the list endpoints (instances, events, deliveries).
MAX_API_PAGE_SIZE: Final = 500
#: Largest ``page``: keeps ``OFFSET`` arithmetic far from PostgreSQL's bigint range.
MAX_API_PAGE: Final = 1_000_000
