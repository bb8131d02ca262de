"""The OpenAPI 3 description served at ``/openapi.json``.

Written by hand (small, stable) rather than generated, so that it documents the
Open Connectors shapes exactly as clients send them. Every bound is rendered from
:mod:`app.domain.limits` - the numbers the code enforces - so the document cannot
drift from them; ``make fuzz`` (schemathesis) checks that the API keeps every
promise made here.
"""

from __future__ import annotations

from typing import Any

from app.domain import limits as L

BASE = "/elements/api-v2"

_ERROR = {"$ref": "#/components/schemas/Error"}
_INSTANCE = {"$ref": "#/components/schemas/Instance"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds until the organization's next request is accepted",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_ALLOW = {"Allow": {"description": "the methods this path accepts", "schema": {"type": "string"}}}
_ERRORS = {
    "400": "invalid input; the message starts with the offending field",
    "401": "missing or invalid credentials (checked before anything else)",
    "404": "no such instance (or delivery) in the caller's organization",
    "405": "method not allowed on this path",
    "409": "conflict with the instance's or the organization's state",
    "413": f"request body larger than {L.MAX_BODY_BYTES} bytes",
    "429": "the organization is over its API request rate",
    "502": "the provider could not be reached to exchange the OAuth code",
}


def _error(code: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERRORS[code],
        "content": {"application/json": {"schema": _ERROR}},
    }
    if code == "429":
        response["headers"] = _RETRY_AFTER
    if code == "405":
        response["headers"] = _ALLOW
    return response


def _op(
    summary: str,
    ok: dict[str, Any] | None = None,
    *,
    auth: bool = True,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    status: str = "200",
    errors: tuple[str, ...] = ("400", "404"),
    body_required: bool = True,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        status: {
            "description": "OK",
            "content": {"application/json": {"schema": ok or {"type": "object"}}},
        }
    }
    codes = ("401", "405", "429", *errors) if auth else ("405",)
    if body is not None:
        codes = (*codes, "400", "413")
    for code in sorted(set(codes)):
        responses[code] = _error(code)
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if not auth:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
    if params:
        op["parameters"] = params
    return op


def _q(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _text(max_length: int, min_length: int = 0) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length}
    if min_length:
        schema["minLength"] = min_length
    return schema


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": L.MAX_INSTANCE_ID},
}
_NOT_BLANK = {"type": "string", "pattern": "\\S"}
_STATUS = {"type": "string", "enum": ["pending", "delivered", "failed", "cancelled"]}
_PAGING = [
    _q("page", {"type": "integer", "minimum": 1, "maximum": L.MAX_API_PAGE}),
    _q("pageSize", {"type": "integer", "minimum": 1, "maximum": L.MAX_API_PAGE_SIZE}),
]


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional setting: ``null`` means "the default" (and, on PATCH, "remove it")."""
    return {**schema, "nullable": True}


def _number(minimum: float, maximum: float | None = None, about: str = "") -> dict[str, Any]:
    """A number, or a numeric string as Open Connectors examples send them."""
    number: dict[str, Any] = {"type": "number", "minimum": minimum}
    if maximum is not None:
        number["maximum"] = maximum
    described = {"description": about} if about else {}
    return _optional({**described, "anyOf": [number, {"type": "string"}]})


# true/false, or the strings "true"/"false" as Open Connectors examples send them.
_FLAG = _optional({"anyOf": [{"type": "boolean"}, {"type": "string"}]})
_DATE_FIELDS = {
    f"{kind}{name}": _optional(_text(bound))
    for kind in ("updated", "created")
    for name, bound in (
        ("DateField", L.MAX_FIELD_PATH_LENGTH),
        ("DateFormat", L.MAX_DATE_FORMAT_LENGTH),
        ("DateTimezone", L.MAX_TIMEZONE_NAME_LENGTH),
    )
}
_RESOURCE = {
    "type": "object",
    "description": "How to poll one resource (Open Connectors polling configuration); "
    f"at most {L.MAX_TEMPLATE_VARIABLES} ${{...}} variables in url",
    "required": ["url", "idField"],
    "properties": {
        "url": _text(L.MAX_RESOURCE_URL_LENGTH, 1),
        "idField": _text(L.MAX_FIELD_PATH_LENGTH, 1),
        "datesConfiguration": _optional({"type": "object", "properties": _DATE_FIELDS}),
        "pageSize": _number(1, L.MAX_PAGE_SIZE, "a whole number"),
        "pollDelay": _number(0, L.MAX_POLL_DELAY_SECONDS, "seconds"),
        "createdCheckTolerance": _number(0, L.MAX_CREATED_CHECK_TOLERANCE_SECONDS, "seconds"),
        "filterByUpdatedDate": _FLAG,
        "filterByCurrentDate": _FLAG,
    },
}


def _configuration(min_refresh_minutes: float, create: bool) -> dict[str, Any]:
    required: dict[str, dict[str, Any]] = {
        "oauth.api.key": {"type": "string", "minLength": 1},
        "oauth.api.secret": {"type": "string", "minLength": 1},
        "oauth.callback.url": _text(L.MAX_URL_LENGTH, 1),
        "event.notification.enabled": {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
    }
    optional: dict[str, dict[str, Any]] = {
        "event.vendor.type": {"type": "string", "description": "'polling' when events are on"},
        "event.notification.callback.url": {
            "type": "string",
            "maxLength": L.MAX_URL_LENGTH,
            "description": "http(s) URL events are POSTed to; required when events are "
            "enabled (empty means none otherwise)",
        },
        "event.notification.signature.key": {"type": "string"},
        "event.poller.refresh_interval": _number(
            min_refresh_minutes, L.MAX_REFRESH_MINUTES, "minutes"
        ),
        "event.poller.timezone": _optional(
            {
                **_text(L.MAX_TIMEZONE_NAME_LENGTH, 1),
                "description": "the instance's time zone (IANA, GMT/UTC or an offset; default"
                " UTC): ${date:...} renders in it and date values without a zone are read in it",
            }
        ),
        "event.poller.configuration": {
            "description": "resources to poll, as an object or a JSON string of one",
            "nullable": True,
            "oneOf": [
                {
                    "type": "object",
                    "maxProperties": L.MAX_RESOURCES,
                    "additionalProperties": _RESOURCE,
                },
                {"type": "string"},
            ],
        },
    }
    if not create:  # PATCH: null removes a key (and the merged result is validated)
        required = {k: _optional(v) for k, v in required.items()}
    properties = {**required, **{k: _optional(v) for k, v in optional.items()}}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if create:
        schema["required"] = ["oauth.api.key", "oauth.api.secret", "oauth.callback.url"]
    return schema


def _instance_body(min_refresh_minutes: float, create: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "providerData": {
            "type": "object",
            "description": "the OAuth authorization grant code; on PATCH it re-authorizes "
            "the instance and is required to change oauth.api.key or oauth.api.secret",
            "required": ["code"],
            "properties": {"code": {"type": "string", "minLength": 1}},
        },
        "name": _optional(_text(L.MAX_NAME_LENGTH, 1)),
        "tags": {
            "description": "strings or {name} objects (SPEC §8: one string is one tag)",
            "nullable": True,
            "oneOf": [
                _text(L.MAX_TAG_LENGTH, 1),
                {
                    "type": "array",
                    "maxItems": L.MAX_TAGS,
                    "items": {
                        "oneOf": [
                            _text(L.MAX_TAG_LENGTH, 1),
                            {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": _text(L.MAX_TAG_LENGTH, 1)},
                            },
                        ]
                    },
                },
            ],
        },
        "configuration": _configuration(min_refresh_minutes, create),
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if create:
        properties["element"] = {
            "type": "object",
            "required": ["key"],
            "properties": {"key": {"type": "string", "enum": ["infusionsoftrest"]}},
        }
        schema["required"] = ["element", "providerData", "configuration"]
    return schema


def build_openapi(min_refresh_minutes: float = 1.0) -> dict[str, Any]:
    """The whole document; the refresh interval's minimum is the operator's setting."""
    inst = BASE + "/instances/{id}"
    paths: dict[str, Any] = {
        BASE + "/elements/{key}/oauth/url": {
            "get": _op(
                "OAuth consent URL for the provider",
                {
                    "type": "object",
                    "properties": {"element": {"type": "string"}, "oauthUrl": {"type": "string"}},
                },
                params=[
                    {
                        "name": "key",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["infusionsoftrest"]},
                    },
                    _q("apiKey", _NOT_BLANK, True),
                    _q("apiSecret", {"type": "string"}),
                    _q("callbackUrl", _NOT_BLANK, True),
                    _q("state", {"type": "string"}),
                ],
                errors=("400", "404"),
            )
        },
        BASE + "/instances": {
            "post": _op(
                "Create an instance (exchanges the OAuth code)",
                _INSTANCE,
                body={"$ref": "#/components/schemas/InstanceCreate"},
                errors=("400", "409", "502"),
            ),
            "get": _op(
                "List the organization's instances",
                {"type": "array", "items": _INSTANCE},
                params=_PAGING,
                errors=("400",),
            ),
        },
        BASE + "/instance": {
            "get": _op(
                "The instance of the Element token in Authorization (Open Connectors)",
                _INSTANCE,
                errors=("400", "404"),
            )
        },
        inst: {
            "get": _op("Get one instance", _INSTANCE, params=[_ID], errors=("404",)),
            "patch": _op(
                "Update name, tags or configuration keys (providerData.code re-authorizes)",
                _INSTANCE,
                params=[_ID],
                body={"$ref": "#/components/schemas/InstancePatch"},
                errors=("400", "404", "502"),
            ),
            "delete": _op("Delete an instance", params=[_ID], errors=("404",)),
        },
        inst + "/polling": {
            "get": _op(
                "Per-resource polling state",
                {"type": "array", "items": {"$ref": "#/components/schemas/PollingState"}},
                params=[_ID],
                errors=("404",),
            )
        },
        inst + "/polling/run": {
            "post": _op("Poll now", params=[_ID], status="202", errors=("404", "409"))
        },
        inst + "/polling/test": {
            "post": _op(
                "Test poll: run a poller configuration once against the provider and return"
                " the events it would emit; stores and sends nothing",
                {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "stored": {"type": "boolean"},
                        "resources": {"type": "array", "items": {"type": "object"}},
                    },
                },
                params=[_ID],
                body={
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "configuration": {
                            "description": "a poller configuration (object or JSON string);"
                            " default: the instance's",
                            "nullable": True,
                        },
                        "since": {
                            "type": "string",
                            "format": "date-time",
                            "nullable": True,
                            "description": "read from here (1970 .. now); default: each"
                            " resource's watermark",
                        },
                    },
                },
                errors=("400", "404", "502"),
                body_required=False,
            )
        },
        inst + "/events": {
            "get": _op(
                "The event log, newest first, with delivery status",
                {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                params=[
                    _ID,
                    _q("objectType", {"type": "string"}),
                    _q(
                        "eventType",
                        {"type": "string", "enum": ["CREATED", "UPDATED", "created", "updated"]},
                    ),
                    _q("since", {"type": "string", "format": "date-time"}),
                    *_PAGING,
                ],
            )
        },
        inst + "/deliveries": {
            "get": _op(
                "Deliveries with every attempt",
                {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}},
                params=[_ID, _q("status", _STATUS), *_PAGING],
            )
        },
        inst + "/deliveries/retry": {
            "post": _op(
                "Redeliver every delivery of a status (e.g. failed)",
                {"type": "object", "properties": {"count": {"type": "integer"}}},
                params=[_ID, _q("status", _STATUS, True)],
                status="202",
            )
        },
        inst + "/deliveries/{deliveryId}/retry": {
            "post": _op(
                "Deliver again now, whatever its status",
                params=[
                    _ID,
                    {
                        "name": "deliveryId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    },
                ],
                status="202",
                errors=("404",),
            )
        },
        # The organization-wide event log (app/api/console_routes.py).
        BASE + "/events": {
            "get": _op(
                "Every event of the organization's instances, newest first",
                {
                    "type": "array",
                    "items": {
                        "allOf": [
                            {"$ref": "#/components/schemas/Event"},
                            {"type": "object", "properties": {"instanceId": {"type": "integer"}}},
                        ]
                    },
                },
                params=[
                    _q("instanceId", {"type": "integer", "minimum": 1}),
                    _q("objectType", {"type": "string"}),
                    _q("eventType", {"type": "string", "enum": ["CREATED", "UPDATED"]}),
                    _q("since", {"type": "string", "format": "date-time"}),
                    *_PAGING,
                ],
            )
        },
        "/healthz": {"get": _op("Liveness", auth=False)},
        "/readyz": {"get": _op("Readiness: PostgreSQL, Redis and the broker answer", auth=False)},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {"200": {"description": "text format", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": {"get": _op("This document", auth=False)},
    }
    paths.update(_lifecycle_paths(inst))
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Pollinator API",
            "version": "0.1.0",
            "description": "Open Connectors-compatible polling events for Infusionsoft.",
        },
        "servers": [{"url": "/"}],
        "security": [{"OpenConnectors": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "OpenConnectors": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "User <userSecret>, Organization <organizationSecret>"
                    "[, Element <instanceToken>]",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["requestId", "message"],
                    "properties": {"requestId": {"type": "string"}, "message": {"type": "string"}},
                },
                "InstanceCreate": _instance_body(min_refresh_minutes, create=True),
                "InstancePatch": _instance_body(min_refresh_minutes, create=False),
                "PollingState": {
                    "type": "object",
                    "properties": {
                        "resource": {"type": "string"},
                        "watermark": {"type": "string", "format": "date-time"},
                        "lastPolledAt": {"type": "string", "nullable": True},
                        "lastSuccessAt": {"type": "string", "nullable": True},
                        "nextPollAt": {"type": "string", "nullable": True},
                        "consecutiveFailures": {"type": "integer"},
                        "lastError": {"type": "string", "nullable": True},
                    },
                },
                "Event": {
                    "type": "object",
                    "properties": {
                        "eventId": {"type": "string"},
                        "elementKey": {"type": "string"},
                        "eventType": {"type": "string"},
                        "objectType": {"type": "string"},
                        "objectId": {"type": "string"},
                        "date": {"type": "string"},
                        "deliveryId": {"type": "string", "nullable": True},
                        "deliveryStatus": {"type": "string", "nullable": True},
                        "raw": {"type": "object", "description": "the provider's record"},
                    },
                },
                "Delivery": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "status": _STATUS,
                        "eventCount": {"type": "integer"},
                        "nextAttemptAt": {"type": "string", "nullable": True},
                        "body": {"type": "object", "description": "the JSON sent"},
                        "attempts": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "attempt": {"type": "integer"},
                                    "at": {"type": "string"},
                                    "statusCode": {"type": "integer", "nullable": True},
                                    "durationMs": {"type": "integer"},
                                    "error": {"type": "string", "nullable": True},
                                    "responseBody": {"type": "string", "nullable": True},
                                },
                            },
                        },
                    },
                },
                "Instance": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "name": {"type": "string"},
                        "token": {"type": "string"},
                        "element": {"type": "object"},
                        "tags": {"type": "array", "items": {"type": "object"}},
                        "valid": {"type": "boolean"},
                        "disabled": {"type": "boolean"},
                        "eventsEnabled": {"type": "boolean"},
                        "configuration": {"type": "object", "additionalProperties": True},
                        "createdDate": {"type": "string", "format": "date-time"},
                        "updatedDate": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    }


def _lifecycle_paths(inst: str) -> dict[str, Any]:
    """Replay, rewind and erasure (SPEC §8, app/api/lifecycle_routes.py)."""
    instant = {"type": "string", "format": "date-time"}
    job = {
        "type": "object",
        "properties": {
            "jobId": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": ["queued", "running", "done"]},
            "selected": {"type": "integer"},
            "sent": {"type": "integer"},
        },
    }
    return {
        inst + "/deliveries/replay": {
            "post": _op(
                "Send again the deliveries created in [since, until) (all, or only failed),"
                " as a background job; each selected delivery is sent once",
                {"type": "object", "properties": {"jobId": {"type": "string"}}},
                params=[_ID],
                body={
                    "type": "object",
                    "required": ["since", "until"],
                    "properties": {
                        "since": instant,
                        "until": instant,
                        "status": {"type": "string", "enum": ["all", "failed"]},
                    },
                },
                status="202",
            )
        },
        inst + "/deliveries/replay/{jobId}": {
            "get": _op(
                "A replay job's progress",
                job,
                params=[
                    _ID,
                    {
                        "name": "jobId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    },
                ],
            )
        },
        inst + "/polling/rewind": {
            "post": _op(
                "Move a resource's watermark back (not before the payload retention);"
                " changes after it are read and emitted again with their event ids",
                params=[_ID],
                body={
                    "type": "object",
                    "required": ["resource", "since"],
                    "properties": {"resource": {"type": "string"}, "since": instant},
                },
                status="202",
            )
        },
        BASE + "/organizations/me": {
            "delete": _op(
                "Erase the calling organization and all of its data; its credentials stop"
                " working at once, the rows are deleted in the background",
                status="202",
            )
        },
    }
