"""The OpenAPI 3.1 document of the HTTP API (served at ``/api/openapi.json``).

It is the single source of the API's shapes: request bodies are validated
against its schemas (:func:`validator`), tests check every response against
it (schemathesis) and docs/api.md against its paths.
"""

from __future__ import annotations

import functools
from typing import Any

from jsonschema import Draft202012Validator

from .._core.frames import MAX_TYPE_LEN

MAX_REQUEST_TIMEOUT = 300.0
"""Longest a ``POST .../requests`` may wait for its reply, in seconds."""
DEFAULT_REQUEST_TIMEOUT = 10.0
"""What a ``POST .../requests`` waits without ``timeout``."""
MAX_PAGE = 1000
"""Most rows one ``GET /api/components`` returns."""

_ID = {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9._:@-]{0,127}$"}
_TOPIC = {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9._:/@-]{0,255}$"}
_SUBSCRIPTION = {
    "type": "string",
    "pattern": r"^(\$presence|\$stats|[A-Za-z0-9_][A-Za-z0-9._:/@-]{0,255})$",
}
_TYPE = {"type": "string", "minLength": 1, "maxLength": MAX_TYPE_LEN}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "An error (RFC 9457, application/problem+json).",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "code": {"type": "string", "description": "The component's error code (502)."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "node", "active_connections", "sessions", "store_healthy"],
        "properties": {
            "status": {"const": "ok"},
            "node": {"type": "string"},
            "active_connections": {"type": "integer"},
            "sessions": {"type": "integer"},
            "store_healthy": {"type": "boolean"},
        },
    },
    "Ready": {
        "type": "object",
        "required": ["ready", "node"],
        "properties": {"ready": {"const": True}, "node": {"type": "string"}},
    },
    "Stats": {
        "type": "object",
        "description": "get_stats(): every statistic of docs/metrics.md.",
        "required": ["node_id", "active_connections", "sessions", "messages_processed"],
        "additionalProperties": True,
    },
    "Cluster": {
        "type": "object",
        "required": ["nodes", "totals"],
        "properties": {
            "nodes": {
                "type": "object",
                "additionalProperties": {"$ref": "#/components/schemas/Stats"},
            },
            "totals": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "Component": {
        "type": "object",
        "required": ["id", "connected", "anonymous", "local", "node", "topics", "epoch"],
        "properties": {
            "id": {"type": "string"},
            "connected": {"type": "boolean"},
            "anonymous": {"type": "boolean"},
            "local": {"type": "boolean", "description": "An in-process component."},
            "node": {"type": "string"},
            "owner": {"type": ["string", "null"]},
            "topics": {"type": "array", "items": {"type": "string"}},
            "epoch": {"type": "integer"},
            "connected_since": {"type": ["number", "null"], "description": "Unix time."},
            "disconnected_since": {"type": ["number", "null"], "description": "Unix time."},
            "pending_out": {"type": "integer", "description": "Messages not yet acknowledged."},
            "pending_in": {"type": "integer", "description": "Its messages waiting for room."},
            "rtt_ms": {"type": ["number", "null"]},
        },
    },
    "ComponentPage": {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Component"}},
            "next": {
                "type": ["string", "null"],
                "description": "Pass as `after` for the next page (null: the last page).",
            },
        },
    },
    "TopicList": {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["topic", "subscribers"],
                    "properties": {
                        "topic": {"type": "string"},
                        "subscribers": {"type": "integer"},
                    },
                },
            },
            "next": {
                "type": ["string", "null"],
                "description": "Pass as `after` for the next page (null: the last page).",
            },
        },
    },
    "MessageIn": {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {"type": _TYPE, "data": {"description": "Any JSON value."}},
    },
    "RequestIn": {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {
            "type": _TYPE,
            "data": {"description": "Any JSON value."},
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_REQUEST_TIMEOUT,
                "default": DEFAULT_REQUEST_TIMEOUT,
            },
        },
    },
    "Sent": {
        "type": "object",
        "required": ["seq"],
        "properties": {
            "seq": {
                "type": "integer",
                "description": "In the target's session (0: held by another node of a cluster).",
            }
        },
    },
    "Published": {
        "type": "object",
        "required": ["subscribers"],
        "properties": {"subscribers": {"type": "integer"}},
    },
    "Reply": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"description": "The reply's data."}},
    },
    "Disconnected": {
        "type": "object",
        "required": ["id", "disconnected", "forgotten"],
        "properties": {
            "id": {"type": "string"},
            "disconnected": {"type": "boolean", "description": "A link was closed."},
            "forgotten": {"type": "boolean", "description": "The session was ended."},
        },
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


_DENIED = {
    "401": _problem("No or a bad bearer token (authentication configured)."),
    "403": _problem("Not an admin identity, or not from loopback (no authentication)."),
}
_BAD = {"400": _problem("Invalid input (the detail says what).")}
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": _ID}
_BODY_ERRORS = {
    **_BAD,
    "408": _problem("The body did not arrive in time (10 s)."),
    "413": _problem("Body larger than the hub's max_message_size."),
    "415": _problem("Not application/json."),
    "503": _problem("64 request bodies are arriving already: retry (Retry-After: 1)."),
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_DENIED}, **extra}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


PATHS: dict[str, Any] = {
    "/health": {
        "get": {
            "summary": "Liveness: the process serves.",
            "security": [],
            "responses": {"200": _json("Health", "Alive.")},
        }
    },
    "/api/openapi.json": {
        "get": {
            "summary": "This document.",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
    "/ready": {
        "get": {
            "summary": "Readiness: running, store writable, not draining.",
            "security": [],
            "responses": {
                "200": _json("Ready", "Accepting links."),
                "503": _problem("Not ready (the detail says why)."),
            },
        }
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics (text exposition format).",
            {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {}}}}},
        )
    },
    "/api/stats": {"get": _op("get_stats(): every statistic.", {"200": _json("Stats", "Stats.")})},
    "/api/cluster": {
        "get": _op(
            "Every live node's statistics, and their totals (a cluster only).",
            {"200": _json("Cluster", "The nodes."), "404": _problem("This hub is alone.")},
        )
    },
    "/api/components": {
        "get": _op(
            "Sessions, by component id, one page.",
            {"200": _json("ComponentPage", "A page."), **_BAD},
            parameters=[
                {"name": "topic", "in": "query", "schema": _SUBSCRIPTION},
                {"name": "connected", "in": "query", "schema": {"type": "boolean"}},
                {"name": "after", "in": "query", "schema": _ID},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                },
            ],
        )
    },
    "/api/components/{id}": {
        "parameters": [_ID_PARAM],
        "get": _op(
            "One session.",
            {
                "200": _json("Component", "The session."),
                "404": _problem("No such session."),
                **_BAD,
            },
        ),
        "delete": _op(
            "Close its link (it may resume); `forget=true` also ends its session.",
            {"200": _json("Disconnected", "Done."), "404": _problem("No such session."), **_BAD},
            parameters=[{"name": "forget", "in": "query", "schema": {"type": "boolean"}}],
        ),
    },
    "/api/components/{id}/messages": {
        "parameters": [_ID_PARAM],
        "post": _op(
            "Send a message from `$hub` (delivered exactly once, now or on resume).",
            {
                "202": _json("Sent", "In the component's session."),
                "404": _problem("No such session."),
                **_BODY_ERRORS,
                "503": _problem(
                    "Its inbox on another node of a cluster is full (`limit`); or 64 request "
                    "bodies are arriving already (Retry-After: 1)."
                ),
            },
            requestBody=_body("MessageIn"),
        ),
    },
    "/api/components/{id}/requests": {
        "parameters": [_ID_PARAM],
        "post": _op(
            "Send a request from `$hub` and wait for the reply.",
            {
                "200": _json("Reply", "The reply."),
                "404": _problem("No such session."),
                "502": _problem("The component answered with an error (`code`)."),
                "504": _problem("No reply within `timeout`."),
                **_BODY_ERRORS,
            },
            requestBody=_body("RequestIn"),
        ),
    },
    "/api/topics": {
        "get": _op(
            "Topics with subscribers, by name, one page.",
            {"200": _json("TopicList", "A page."), **_BAD},
            parameters=[
                {"name": "after", "in": "query", "schema": _SUBSCRIPTION},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                },
            ],
        ),
    },
    "/api/topics/{topic}/messages": {
        "parameters": [{"name": "topic", "in": "path", "required": True, "schema": _TOPIC}],
        "post": _op(
            "Publish from `$hub` to a topic's subscribers.",
            {"202": _json("Published", "In every subscriber's session."), **_BODY_ERRORS},
            requestBody=_body("MessageIn"),
        ),
    },
}


def document(version: str) -> dict[str, Any]:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "genesis_trio hub API",
            "version": version,
            "description": "Publish from any backend, see who is connected, scrape metrics "
            "(docs/api.md). Errors are RFC 9457 problem documents.",
        },
        "paths": PATHS,
        "security": [{"bearer": []}, {}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An admin identity's token, when the hub authenticates; "
                    "without authentication, no token (loopback clients only).",
                }
            },
        },
    }


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """A JSON Schema validator for the request body schema ``name``."""
    return Draft202012Validator(SCHEMAS[name])
