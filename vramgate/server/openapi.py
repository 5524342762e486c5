"""The example server's OpenAPI document, built from the msgspec types it decodes and encodes.

FastAPI cannot see the bodies (the routes read and write raw bytes through msgspec), so :func:`install_openapi`
replaces the app's ``openapi()`` with FastAPI's own document (plus the POST, which FastAPI does not serve) and the
JSON schemas that msgspec generates from
:class:`~vramgate.messages.GenerationRequest` and the response structs in :mod:`vramgate.server.schema`. The
meaning of each request field is its ``msgspec.Meta(description=...)`` in :mod:`vramgate.messages.requests`;
:func:`request_table` renders the README's table from the same schema.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import msgspec

from vramgate.messages import GenerationRequest, LoraSpec, RunOptions
from vramgate.server.schema import Accepted, DevicesBody, ErrorBody, GenerationList, GenerationStatus, Health

if TYPE_CHECKING:
    from fastapi import FastAPI

Schema = dict[str, Any]

REF = "#/components/schemas/{name}"
#: The structs a client sends: their ``type`` tag may be left out.
REQUEST_TYPES: tuple[type[msgspec.Struct], ...] = (GenerationRequest, LoraSpec, RunOptions)
RESPONSE_TYPES: tuple[type[msgspec.Struct], ...] = (
    Accepted,
    ErrorBody,
    GenerationStatus,
    GenerationList,
    DevicesBody,
    Health,
)

_NOTE = (
    "Give either `frames` or `duration_s`, not both; `fps` needs `duration_s`. Unknown fields are errors. "
    'The `type` tag may be left out (if given, it is the struct\'s name, e.g. `"GenerationRequest"`).'
)


def components() -> dict[str, Schema]:
    """JSON schemas of every request and response body, by name, each request field with its meaning."""
    _, schemas = msgspec.json.schema_components((*REQUEST_TYPES, *RESPONSE_TYPES), ref_template=REF)
    for struct in REQUEST_TYPES:
        schema = schemas[struct.__name__]
        schema["required"] = [name for name in schema.get("required", []) if name != "type"]
    request = schemas[GenerationRequest.__name__]
    request["description"] = f"{request.get('description', '')}\n\n{_NOTE}".strip()
    return schemas


def _ref(struct: type[msgspec.Struct]) -> Schema:
    return {"$ref": REF.format(name=struct.__name__)}


def _body(struct: type[msgspec.Struct], description: str, **extra: Any) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": _ref(struct)}}, **extra}


def _error(description: str, example: Schema, **extra: Any) -> Schema:
    body = _body(ErrorBody, description, **extra)
    body["content"]["application/json"]["example"] = example
    return body


_NOT_FOUND = _error("no such request (or it ended long ago)", {"error": "not_found", "detail": "no such request"})
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer", "minimum": 1}}
}

#: What each route takes and answers, by path and method.
OPERATIONS: dict[tuple[str, str], Schema] = {
    ("/v1/generations", "post"): {
        "summary": "Submit a generation",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _ref(GenerationRequest),
                    "example": {"model": "ti2v-5B", "width": 832, "height": 480, "frames": 33, "steps": 10},
                }
            },
        },
        "responses": {
            "200": _body(Accepted, "a retry with the same `Idempotency-Key` and body: the request it made before"),
            "202": _body(
                Accepted,
                "accepted and kept: the server's id for the request and its state (`queued` with the position it "
                "was queued at, or `running`). The server waits up to `position_timeout_s` (1 s) for the gate to "
                "queue, admit or reject it; a server that answers at once (`position_timeout_s = 0`) answers when "
                "the request is kept, usually in state `preflight`: a rejection the gate decides after that shows "
                "at `status_url` (`state: rejected`, its reason) and as `RequestRejected` on `events_url`",
            ),
            "413": _error("the body is larger than the server accepts", {"error": "too_large", "detail": "..."}),
            "422": _error(
                "not a valid request (`path` names the field); or the gate rejected it before the answer, "
                "`error` its code (`does_not_fit`: it fits no GPU or host here, `needed_mb` VRAM per GPU, "
                "`needed_ram_mb` host RAM, `smallest_gpu`); a rejected request keeps its `request_id`, which "
                "answers at `/v1/generations/{request_id}` with the same reason",
                {"error": "invalid_request", "detail": "Expected `int`, got `str`", "path": "$.width"},
            ),
            "429": _error(
                "the queue is full: try again after `Retry-After` seconds (`retry_after_s` unrounded)",
                {"error": "queue_full", "detail": "...", "retry_after_s": 12.5},
                headers=_RETRY_AFTER,
            ),
            "503": _error(
                "the gate is closing (`unavailable`), or rejected the request for that reason (`shutting_down`, "
                "`device_lost`, with its `request_id`)",
                {"error": "unavailable", "detail": "..."},
            ),
        },
    },
    ("/v1/generations", "get"): {
        "summary": "A client's requests",
        "responses": {
            "200": _body(GenerationList, "the latest requests sent with `X-Client-Id: client`, newest first"),
            "422": _error(
                "a bad `client` or `limit`: `path` names it",
                {"error": "invalid_parameter", "detail": "limit must be ...", "path": "limit"},
            ),
        },
    },
    ("/v1/generations/{request_id}", "get"): {
        "summary": "A generation's status",
        "responses": {
            "200": _body(GenerationStatus, "state, device, reservation, plan, progress, ETA, outcome or reason"),
            "404": _NOT_FOUND,
        },
    },
    ("/v1/generations/{request_id}", "delete"): {
        "summary": "Cancel a generation",
        "responses": {
            "202": _body(GenerationStatus, "cancelled (a queued request left the queue; a running one is stopped)"),
            "409": _body(GenerationStatus, "it had already ended: its final status"),
            "404": _NOT_FOUND,
        },
    },
    ("/v1/generations/{request_id}/events", "get"): {
        "summary": "A generation's lifecycle events",
        "responses": {
            "200": {
                "description": "server-sent events, `event:` the message type and `data:` the message as JSON, "
                "until `RequestEnded`",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "404": _NOT_FOUND,
        },
    },
    ("/v1/devices", "get"): {
        "summary": "Devices and their ledgers",
        "responses": {"200": _body(DevicesBody, "each device's admission ledger and the latest sample")},
    },
    ("/healthz", "get"): {
        "summary": "Liveness",
        "responses": {"200": _body(Health, "serving"), "503": _body(Health, "closing")},
    },
}


#: The routes the server answers without FastAPI, and their operation ids.
PLAIN_ROUTES: dict[tuple[str, str], str] = {("/v1/generations", "post"): "create_generation_v1_generations_post"}


def describe(document: Schema) -> Schema:
    """``document`` (FastAPI's OpenAPI document of the app) with every body and answer this module knows."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components())
    paths = document.setdefault("paths", {})
    for (path, method), spec in OPERATIONS.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            if (path, method) not in PLAIN_ROUTES:
                continue
            # Served in plain ASGI (vramgate.server._submit): FastAPI does not list it.
            operation = paths.setdefault(path, {})[method] = {"operationId": PLAIN_ROUTES[path, method]}
        spec = copy.deepcopy(spec)
        operation["summary"] = spec["summary"]
        if "requestBody" in spec:
            operation["requestBody"] = spec["requestBody"]
        # The routes take raw bodies and string ids: FastAPI's own validation answer never happens.
        operation["responses"] = spec["responses"]
    if f'"{REF.format(name="HTTPValidationError")}"' not in json.dumps(document.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return document


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``, ``/docs``) describe the bodies and answers."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(default())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _number(value: float) -> str:
    return "2**40" if value == 1 << 40 else str(value)


def _bounds(schema: Schema) -> str:
    low = f"[{_number(schema['minimum'])}" if "minimum" in schema else ""
    low = f"({_number(schema['exclusiveMinimum'])}" if "exclusiveMinimum" in schema else low
    high = f"{_number(schema['maximum'])}]" if "maximum" in schema else ""
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {low[1:]}"
    return f" <= {high[:-1]}" if high else ""


def type_text(schema: Schema) -> str:
    """A short human form of a field's JSON schema: ``integer in (0, 16384]``, ``list of LoraSpec``, ..."""
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s != {"type": "null"}]
        nullable = len(options) < len(schema["anyOf"])
        text = " or ".join(type_text(s) for s in options)
        return f"{text} or null" if nullable else text
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {type_text(schema['items'])}"
    if kind == "string":
        low, high = schema.get("minLength"), schema.get("maxLength")
        text = "string"
        if low is not None or high is not None:
            text += f" of {low}-{high} chars" if low is not None and high is not None else f" of <= {high} chars"
        return f"{text} matching `{schema['pattern']}`" if "pattern" in schema else text
    return f"{kind}{_bounds(schema)}"


def request_rows() -> list[tuple[str, str, str, str]]:
    """``(name, type, default, meaning)`` for every field a request body may have, nested ones as ``lora[].x``."""
    schemas = components()
    rows: list[tuple[str, str, str, str]] = []
    for struct, prefix in ((GenerationRequest, ""), (LoraSpec, "lora[]."), (RunOptions, "options.")):
        schema = schemas[struct.__name__]
        required = set(schema.get("required", ()))
        for field in msgspec.structs.fields(struct):
            prop = schema["properties"][field.encode_name]
            default = "required" if field.name in required else f"`{json.dumps(prop['default'])}`"
            rows.append((prefix + field.name, type_text(prop), default, prop["description"]))
    return rows


def request_table() -> str:
    """The README's table of request fields, in Markdown."""
    lines = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{name}` | {kind} | {default} | {meaning} |" for name, kind, default, meaning in request_rows()]
    return "\n".join(lines)
