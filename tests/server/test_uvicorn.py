"""The example server as a real process: ``vramgate serve`` under uvicorn on a loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from ._helpers import SMALL
from ._serve import Serve

pytestmark = pytest.mark.anyio

CONFIG = """
[devices]
use_real_gpus = false
[monitor]
interval_s = 0.05
[admission]
queue_limit = 1
ram_budget = "256GiB"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("serve")
    config = directory / "gate.toml"
    config.write_text(CONFIG)
    port = free_port()
    command = [
        sys.executable, "-m", "vramgate", "serve", "--port", str(port), "--config", str(config),
        "--simulate", "RTX4090-24GB", "--runner", "simulated", "--time-scale", "0.0001", "--min-run-s", "0.6",
        "--store", str(directory / "store.sqlite"),
        "--allow-host", "gpu-box.lan",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMGATE_")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=Path.cwd())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"vramgate serve did not start:\n{output}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def test_serve_submit_queue_full_cancel_and_events(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        before = (await client.get("/healthz")).json()["finished"]
        bad = await client.post("/v1/generations", json={**SMALL, "height": 0})
        assert bad.status_code == 422
        assert bad.json()["path"] == "$.height"

        first = await client.post("/v1/generations", json=SMALL)
        assert first.status_code == 202
        first_id = first.json()["request_id"]
        second = await client.post("/v1/generations", json=SMALL)  # waits: one 24 GB card holds one of these
        assert second.status_code == 202
        assert second.json()["state"] == "queued"
        assert second.json()["position"] == 1
        full = await client.post("/v1/generations", json=SMALL)  # the queue holds one
        assert full.status_code == 429
        assert int(full.headers["Retry-After"]) >= 1

        cancel = await client.delete(f"/v1/generations/{second.json()['request_id']}")
        assert cancel.status_code == 202

        names: list[str] = []
        ended: dict[str, object] = {}
        async with client.stream("GET", f"/v1/generations/{first_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    names.append(line.removeprefix("event: "))
                elif line.startswith("data: ") and names[-1] == "RequestEnded":
                    ended = msgspec.json.decode(line.removeprefix("data: "))
        assert names[0] == "RequestAccepted"
        assert "RunProgress" in names
        assert names[-1] == "RequestEnded"
        assert ended["state"] == "completed"

        cancelled = (await client.get(f"/v1/generations/{second.json()['request_id']}")).json()
        assert cancelled["state"] == "cancelled"
        health = (await client.get("/healthz")).json()
        assert health["tracked"] == 0
        assert health["finished"] == before + 2
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "vramgate_admissions_total" in metrics.text


async def test_serve_answers_only_trusted_hosts_and_json_posts(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        assert (await client.get("/healthz", headers={"host": "gpu-box.lan:8000"})).status_code == 200
        rebound = await client.get("/v1/devices", headers={"host": "attacker.example:8000"})
        assert rebound.status_code == 421
        assert rebound.json()["error"] == "untrusted_host"
        simple = await client.post(
            "/v1/generations", content=msgspec.json.encode(SMALL), headers={"content-type": "text/plain"}
        )
        assert simple.status_code == 415
        assert "application/json" in simple.json()["detail"]


@pytest.mark.parametrize("logged", [False, True], ids=["default", "access-log"])
def test_requests_are_logged_one_line_each_only_with_access_log(tmp_path: Path, logged: bool) -> None:
    server = Serve(tmp_path, store=tmp_path / "store.sqlite", min_run_s=0.0, options=("--access-log",) * logged)
    try:
        url = server.start()
        for _ in range(3):
            assert httpx.post(f"{url}/v1/generations", json=SMALL, timeout=10).status_code == 202
        server.signal(signal.SIGTERM)
        assert server.wait(30) in (0, -signal.SIGTERM), server.output()
        lines = [line for line in server.output().splitlines() if '"POST /v1/generations HTTP/1.1" 202' in line]
        assert len(lines) == (3 if logged else 0), server.output()
        assert "Uvicorn running on" in server.output()  # the server's own INFO lines are kept either way
    finally:
        server.close()
