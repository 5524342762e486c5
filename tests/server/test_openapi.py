"""The server's OpenAPI document: the request body and every answer, generated from the msgspec types."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from vramgate.demo import demo_requests
from vramgate.messages import GenerationRequest, LoraSpec, RunOptions
from vramgate.messages.codec import encode_json
from vramgate.server.openapi import request_table

from ._helpers import SMALL, HeldRun, app_for, serving, sim_config, wait_state

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parents[2] / "README.md"
#: Keywords that carry no constraint; any other keyword the checker does not know fails the test.
ANNOTATIONS = {"title", "description", "default", "examples", "example"}


class SchemaError(Exception):
    pass


def check(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str = "$") -> None:
    """A small JSON Schema checker for the keywords msgspec emits; raises :class:`SchemaError` naming the path."""
    unknown = set(schema) - ANNOTATIONS - set(KEYWORDS)
    if unknown:
        raise AssertionError(f"the checker does not know {sorted(unknown)} at {path}")
    for keyword in schema.keys() & set(KEYWORDS):
        KEYWORDS[keyword](value, schema, schemas, path)


def _ref(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str) -> None:
    check(value, schemas[schema["$ref"].removeprefix("#/components/schemas/")], schemas, path)


def _any_of(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str) -> None:
    errors: list[SchemaError] = []
    for option in schema["anyOf"]:
        try:
            check(value, option, schemas, path)
        except SchemaError as error:
            errors.append(error)
        else:
            return
    raise max(errors, key=lambda error: len(str(error).split(":", 1)[0]))  # the deepest failure names the field


TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str) -> None:
    kind = schema["type"]
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, TYPES[kind])
    if not ok:
        raise SchemaError(f"{path}: expected {kind}, got {value!r}")


def _properties(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str) -> None:
    if not isinstance(value, dict):
        return
    for name, sub in schema["properties"].items():
        if name in value:
            check(value[name], sub, schemas, f"{path}.{name}")
    extra = set(value) - set(schema["properties"])
    if extra and schema.get("additionalProperties", True) is False:
        raise SchemaError(f"{path}: unknown fields {sorted(extra)}")


def _required(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str) -> None:
    missing = [name for name in schema["required"] if isinstance(value, dict) and name not in value]
    if missing:
        raise SchemaError(f"{path}: missing {missing}")


def _enum(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str) -> None:
    if value not in schema["enum"]:
        raise SchemaError(f"{path}: {value!r} is not one of {schema['enum']}")


def _items(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str) -> None:
    for index, item in enumerate(value if isinstance(value, list) else ()):
        check(item, schema["items"], schemas, f"{path}[{index}]")


def _limit(test: Any, what: str) -> Any:
    def apply(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str) -> None:
        bound = schema[what]
        if isinstance(value, (int, float, str, list)) and not isinstance(value, bool) and not test(value, bound):
            raise SchemaError(f"{path}: {value!r} breaks {what} {bound}")

    return apply


def _num(test: Any) -> Any:
    return lambda v, b: isinstance(v, (str, list)) or test(v, b)


def _len(test: Any) -> Any:
    return lambda v, b: not isinstance(v, (str, list)) or test(len(v), b)


KEYWORDS: dict[str, Any] = {
    "$ref": _ref,
    "anyOf": _any_of,
    "type": _type,
    "properties": _properties,
    "required": _required,
    "additionalProperties": lambda *_: None,  # applied with "properties"
    "items": _items,
    "enum": _enum,
    "minimum": _limit(_num(lambda v, b: v >= b), "minimum"),
    "maximum": _limit(_num(lambda v, b: v <= b), "maximum"),
    "exclusiveMinimum": _limit(_num(lambda v, b: v > b), "exclusiveMinimum"),
    "minLength": _limit(_len(lambda n, b: n >= b), "minLength"),
    "maxLength": _limit(_len(lambda n, b: n <= b), "maxLength"),
    "pattern": _limit(lambda v, b: not isinstance(v, str) or re.search(b, v) is not None, "pattern"),
}


async def fetch_document() -> dict[str, Any]:
    async with serving(app_for()) as client:
        response = await client.get("/openapi.json")
        assert response.status_code == 200
        document: dict[str, Any] = response.json()
        return document


def struct_fields(struct: type[msgspec.Struct]) -> list[str]:
    return [field.encode_name for field in msgspec.structs.fields(struct)]


async def test_every_request_field_is_published_with_its_type_and_bounds() -> None:
    document = await fetch_document()
    schemas = document["components"]["schemas"]
    body = document["paths"]["/v1/generations"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/GenerationRequest"}
    for struct in (GenerationRequest, LoraSpec, RunOptions):
        schema = schemas[struct.__name__]
        assert schema["additionalProperties"] is False
        assert set(schema["properties"]) == {"type", *struct_fields(struct)}
        for name in struct_fields(struct):
            assert schema["properties"][name]["description"], f"{struct.__name__}.{name} has no meaning"
        assert "type" not in schema["required"]  # the tag may be left out
    request = schemas["GenerationRequest"]
    assert request["required"] == ["model", "width", "height"]
    props = request["properties"]
    assert props["width"] == {**props["width"], "type": "integer", "exclusiveMinimum": 0, "maximum": 16384}
    assert props["model"]["minLength"] == 1
    assert props["model"]["maxLength"] == 128
    assert props["max_level"]["enum"] == sorted(["none", "basic", "aggressive", "maximum"])
    assert props["max_level"]["default"] == "basic"
    assert {"type": "integer", "minimum": 1, "maximum": 10001} in props["frames"]["anyOf"]
    assert props["lora"]["items"] == {"$ref": "#/components/schemas/LoraSpec"}
    assert {"$ref": "#/components/schemas/RunOptions"} in props["options"]["anyOf"]
    assert schemas["LoraSpec"]["properties"]["rank"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 4096}
    assert schemas["RunOptions"]["properties"]["dit_dtype"]["anyOf"][0]["enum"] == ["bf16", "fp16", "fp32", "fp8"]
    assert "not both" in request["description"]


async def test_every_answer_is_listed_with_its_body() -> None:
    document = await fetch_document()
    paths = document["paths"]

    def ref(path: str, method: str, status: str) -> str:
        content = paths[path][method]["responses"][status]["content"]["application/json"]
        name: str = content["schema"]["$ref"].rsplit("/", 1)[-1]
        return name

    post = "/v1/generations"
    one = "/v1/generations/{request_id}"
    assert ref(post, "post", "202") == "Accepted"
    for status in ("413", "422", "429", "503"):
        assert ref(post, "post", status) == "ErrorBody"
    assert paths[post]["post"]["responses"]["422"]["content"]["application/json"]["example"]["path"] == "$.width"
    assert paths[post]["post"]["responses"]["429"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert ref(one, "get", "200") == "GenerationStatus"
    assert ref(one, "get", "404") == "ErrorBody"
    assert ref(one, "delete", "202") == ref(one, "delete", "409") == "GenerationStatus"
    assert ref(one, "delete", "404") == "ErrorBody"
    assert "text/event-stream" in paths[one + "/events"]["get"]["responses"]["200"]["content"]
    assert ref("/v1/devices", "get", "200") == "DevicesBody"
    assert ref("/healthz", "get", "503") == "Health"
    schemas = document["components"]["schemas"]
    assert "path" in schemas["ErrorBody"]["properties"]
    assert "retry_after_s" in schemas["ErrorBody"]["properties"]
    assert set(schemas["GenerationStatus"]["properties"]) >= {"state", "position", "plan", "progress", "eta_s"}
    assert "HTTPValidationError" not in schemas  # FastAPI's own 422 never happens here
    assert "422" not in paths[one]["get"]["responses"]


async def test_real_bodies_and_answers_match_the_published_schemas() -> None:
    async with serving(app_for()) as client:
        document = (await client.get("/openapi.json")).json()
        schemas = document["components"]["schemas"]
        request_schema = {"$ref": "#/components/schemas/GenerationRequest"}
        bodies = [msgspec.json.decode(encode_json(r)) for r in demo_requests()]
        bodies += [{k: v for k, v in body.items() if k != "type"} for body in bodies]  # as clients send them
        bodies.append({**SMALL, "lora": [{"name": "style", "rank": 64}], "options": {"t5_cpu": True}, "priority": 3})
        for body in bodies:
            check(body, request_schema, schemas)

        response = await client.post("/v1/generations", json=SMALL)
        assert response.status_code == 202
        check(response.json(), {"$ref": "#/components/schemas/Accepted"}, schemas)
        status = await client.get(response.json()["status_url"])
        check(status.json(), {"$ref": "#/components/schemas/GenerationStatus"}, schemas)
        check((await client.get("/v1/devices")).json(), {"$ref": "#/components/schemas/DevicesBody"}, schemas)
        check((await client.get("/healthz")).json(), {"$ref": "#/components/schemas/Health"}, schemas)

        # What the schema refuses, the server refuses with a 422 naming the same field.
        bad = [
            ({**SMALL, "width": 0}, "$.width"),
            ({**SMALL, "width": "832"}, "$.width"),
            ({**SMALL, "max_level": "extreme"}, "$.max_level"),
            ({**SMALL, "colour": "red"}, "$"),
            ({**SMALL, "lora": [{"name": ""}]}, "$.lora[0].name"),
            ({**SMALL, "options": {"ulysses": 0}}, "$.options.ulysses"),
            ({"width": 832, "height": 480}, "$"),
        ]
        for body, path in bad:
            with pytest.raises(SchemaError) as refused:
                check(body, request_schema, schemas)
            assert str(refused.value).startswith(path)
            answer = await client.post("/v1/generations", json=body)
            assert answer.status_code == 422, body
            check(answer.json(), {"$ref": "#/components/schemas/ErrorBody"}, schemas)
            assert answer.json()["path"] == path


def conforms(document: dict[str, Any], path: str, method: str, response: httpx.Response) -> None:
    """``response`` is an answer the document lists for the operation, with the body and headers it says."""
    listed = document["paths"][path][method]["responses"]
    assert str(response.status_code) in listed, f"{method} {path} answered {response.status_code}: not documented"
    spec = listed[str(response.status_code)]
    for header in spec.get("headers", {}):
        assert header.lower() in response.headers
    schema = spec["content"]["application/json"]["schema"]
    check(response.json(), schema, document["components"]["schemas"])


async def test_every_answer_the_server_gives_is_documented() -> None:
    runner = HeldRun()
    async with serving(app_for(sim_config(queue_limit=1), runner=runner)) as client:
        document = (await client.get("/openapi.json")).json()
        post, one = "/v1/generations", "/v1/generations/{request_id}"
        huge = {"model": "t2v-A14B", "width": 1280, "height": 720, "frames": 81, "max_level": "none"}
        rejected = await client.post(post, json=huge)
        assert rejected.status_code == 422
        conforms(document, post, "post", rejected)
        running = await client.post(post, json=SMALL)
        conforms(document, post, "post", running)
        await wait_state(client, running.json()["request_id"], {"running"})
        queued = await client.post(post, json=SMALL)
        conforms(document, post, "post", queued)
        rid = queued.json()["request_id"]
        await wait_state(client, rid, {"queued"})
        full = await client.post(post, json=SMALL)
        assert full.status_code == 429
        conforms(document, post, "post", full)
        too_large = await client.post(post, content=b" " * 70_000, headers={"content-type": "application/json"})
        assert too_large.status_code == 413
        conforms(document, post, "post", too_large)
        conforms(document, one, "get", await client.get(f"/v1/generations/{rid}"))
        conforms(document, one, "get", await client.get("/v1/generations/gnope"))
        conforms(document, one + "/events", "get", await client.get("/v1/generations/gnope/events"))
        cancelled = await client.delete(f"/v1/generations/{rid}")
        assert cancelled.status_code == 202
        conforms(document, one, "delete", cancelled)
        await wait_state(client, rid, {"cancelled"})
        again = await client.delete(f"/v1/generations/{rid}")
        assert again.status_code == 409
        conforms(document, one, "delete", again)
        conforms(document, one, "delete", await client.delete("/v1/generations/gnope"))
        conforms(document, "/v1/devices", "get", await client.get("/v1/devices"))
        conforms(document, "/healthz", "get", await client.get("/healthz"))
        runner.release.set()


def test_readme_request_table_is_the_generated_one() -> None:
    text = README.read_text()
    section = text.split("\n## The request\n", 1)[1].split("\n## ", 1)[0]
    assert request_table() in section, "README's request table differs; paste vramgate.server.openapi.request_table()"
    rows = re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)
    expected = struct_fields(GenerationRequest)
    expected += [f"lora[].{name}" for name in struct_fields(LoraSpec)]
    expected += [f"options.{name}" for name in struct_fields(RunOptions)]
    assert rows == expected


def test_each_request_field_carries_its_meaning_in_the_struct() -> None:
    for struct in (GenerationRequest, LoraSpec, RunOptions):
        # msgspec's own schema, with nothing added by the server: the meaning is the field's annotation.
        _, schemas = msgspec.json.schema_components((struct,))
        props = schemas[struct.__name__]["properties"]
        for name in struct_fields(struct):
            assert props[name].get("description"), f"{struct.__name__}.{name} has no msgspec.Meta(description=...)"
    # Descriptions add no constraint: a body decodes as it did, bad values are refused as they were.
    body = b'{"model": "ti2v-5B", "width": 832, "height": 480, "frames": 33, "lora": [{"name": "x", "rank": 8}]}'
    request = msgspec.json.decode(body, type=GenerationRequest)
    assert (request.width, request.frames, request.lora) == (832, 33, (LoraSpec(name="x", rank=8),))
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int` >= 1 - at `\$.lora\[0\].rank`"):
        msgspec.json.decode(body.replace(b'"rank": 8', b'"rank": 0'), type=GenerationRequest)
    assert GenerationRequest.__struct_config__.frozen
    assert GenerationRequest.__struct_config__.tag == "GenerationRequest"
