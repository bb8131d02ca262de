"""The OpenAPI 3 description served at ``/openapi.json``.

Written by hand (small, stable) rather than generated, so that it documents the
Open Connectors shapes exactly as clients send them.
"""

from __future__ import annotations

from typing import Any

BASE = "/elements/api-v2"

_ERROR = {"$ref": "#/components/schemas/Error"}
_INSTANCE = {"$ref": "#/components/schemas/Instance"}


def _op(
    summary: str,
    ok: dict[str, Any] | None = None,
    *,
    auth: bool = True,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    status: str = "200",
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            status: {
                "description": "OK",
                "content": {"application/json": {"schema": ok or {"type": "object"}}},
            },
            "400": {
                "description": "invalid input",
                "content": {"application/json": {"schema": _ERROR}},
            },
            "401": {
                "description": "not authenticated",
                "content": {"application/json": {"schema": _ERROR}},
            },
            "404": {
                "description": "not found",
                "content": {"application/json": {"schema": _ERROR}},
            },
        },
    }
    if not auth:
        op["security"] = []
        for code in ("400", "401", "404"):
            op["responses"].pop(code)
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
_STATUS = {"type": "string", "enum": ["pending", "delivered", "failed", "cancelled"]}
_PAGING = [
    _q("page", {"type": "integer", "minimum": 1}),
    _q("pageSize", {"type": "integer", "minimum": 1, "maximum": 500}),
]


def build_openapi() -> dict[str, Any]:
    """The whole document."""
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
                    _q("apiKey", {"type": "string"}, True),
                    _q("apiSecret", {"type": "string"}),
                    _q("callbackUrl", {"type": "string"}, True),
                    _q("state", {"type": "string"}),
                ],
            )
        },
        BASE + "/instances": {
            "post": _op(
                "Create an instance (exchanges the OAuth code)",
                _INSTANCE,
                body={"$ref": "#/components/schemas/InstanceCreate"},
            ),
            "get": _op(
                "List the organization's instances",
                {"type": "array", "items": _INSTANCE},
                params=_PAGING,
            ),
        },
        inst: {
            "get": _op("Get one instance", _INSTANCE, params=[_ID]),
            "patch": _op(
                "Update name, tags or configuration keys",
                _INSTANCE,
                params=[_ID],
                body={"type": "object"},
            ),
            "delete": _op("Delete an instance", params=[_ID]),
        },
        inst + "/polling": {
            "get": _op(
                "Per-resource polling state",
                {"type": "array", "items": {"$ref": "#/components/schemas/PollingState"}},
                params=[_ID],
            )
        },
        inst + "/polling/run": {"post": _op("Poll now", params=[_ID], status="202")},
        inst + "/events": {
            "get": _op(
                "The event log, newest first, with delivery status",
                {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                params=[
                    _ID,
                    _q("objectType", {"type": "string"}),
                    _q("eventType", {"type": "string", "enum": ["CREATED", "UPDATED"]}),
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
                "InstanceCreate": {
                    "type": "object",
                    "required": ["element", "providerData", "configuration"],
                    "properties": {
                        "element": {"type": "object", "properties": {"key": {"type": "string"}}},
                        "providerData": {
                            "type": "object",
                            "properties": {"code": {"type": "string"}},
                        },
                        "name": {"type": "string"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "configuration": {"type": "object", "additionalProperties": True},
                    },
                },
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
                    },
                },
                "Delivery": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "status": _STATUS,
                        "eventCount": {"type": "integer"},
                        "nextAttemptAt": {"type": "string", "nullable": True},
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
