"""What another web page (or another name for this machine) cannot make the server do."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from vramgate.config import ServerConfig

from ._helpers import SMALL, app_for, serving, sim_config

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data"],
)
async def test_a_post_that_is_not_json_is_415_and_queues_nothing(content_type: str | None) -> None:
    async with serving(app_for()) as client:
        headers = {"content-type": content_type} if content_type is not None else {}
        response = await client.post("/v1/generations", content=json.dumps(SMALL).encode(), headers=headers)
        assert response.status_code == 415
        body = response.json()
        assert body["error"] == "unsupported_media_type"
        assert "application/json" in body["detail"]
        health = (await client.get("/healthz")).json()
        assert health["tracked"] == 0
        assert health["queue_length"] == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
async def test_json_posts_are_accepted(content_type: str) -> None:
    async with serving(app_for()) as client:
        response = await client.post(
            "/v1/generations", content=json.dumps(SMALL).encode(), headers={"content-type": content_type}
        )
        assert response.status_code == 202


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost", "LOCALHOST:8000", "[::1]", "[::1]:8000"])
async def test_loopback_hosts_are_trusted_by_default(host: str) -> None:
    async with serving(app_for()) as client:
        response = await client.get("/healthz", headers={"host": host})
        assert response.status_code == 200


@pytest.mark.parametrize(
    "host", ["attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", "localhost:x", "", "[::2]"]
)
async def test_other_hosts_are_421_on_every_route(host: str) -> None:
    async with serving(app_for()) as client:
        for method, path in (("GET", "/healthz"), ("GET", "/v1/devices"), ("POST", "/v1/generations")):
            response = await client.request(method, path, json=SMALL, headers={"host": host})
            assert response.status_code == 421, (method, path, host)
            body: dict[str, Any] = response.json()
            assert body["error"] == "untrusted_host"
        assert (await client.get("/healthz")).json()["tracked"] == 0


async def test_configured_hosts_are_trusted() -> None:
    config = msgspec.structs.replace(sim_config(), server=ServerConfig(allowed_hosts=("gpu-box.lan",)))
    async with serving(app_for(config)) as client:
        assert (await client.get("/healthz", headers={"host": "gpu-box.lan:8000"})).status_code == 200
        assert (await client.get("/healthz", headers={"host": "localhost"})).status_code == 421


async def test_a_request_without_host_is_refused() -> None:
    app = app_for()
    async with serving(app):
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.0", "method": "GET", "scheme": "http",
            "path": "/healthz", "raw_path": b"/healthz", "query_string": b"", "headers": [], "root_path": "",
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        await app(scope, receive, send)
        assert sent[0]["status"] == 421


def test_allowed_hosts_must_be_names() -> None:
    with pytest.raises(ValueError, match=r"server\.allowed_hosts"):
        ServerConfig(allowed_hosts=("a b",))
    with pytest.raises(ValueError, match=r"server\.allowed_hosts"):
        ServerConfig(allowed_hosts=("host:80",))
