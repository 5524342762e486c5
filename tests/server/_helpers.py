"""Shared pieces of the server tests: a gate config on simulated GPUs and an in-process client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import msgspec
import uvicorn

from vramgate._ticket import Lease
from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig, MonitorConfig
from vramgate.server import ServerSettings, create_app

#: ti2v-5B at 480p reserves about 14.5 GiB: one at a time on a 24 GB card.
SMALL: dict[str, Any] = {"model": "ti2v-5B", "width": 832, "height": 480, "frames": 33, "steps": 10}
FAST = ServerSettings(runner="simulated", time_scale=1e-4, min_run_s=0.02)


def sim_config(
    gpus: tuple[str, ...] = ("RTX4090-24GB",), *, queue_limit: int = 1000, log_path: str | None = None
) -> GateConfig:
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=False, simulate=gpus),
        monitor=MonitorConfig(interval_s=0.02),
        admission=AdmissionSettings(queue_limit=queue_limit, ram_budget="256GiB"),
        log_path=log_path,
    )


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan around an httpx client that calls it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            yield client


def app_for(config: GateConfig | None = None, settings: ServerSettings = FAST, **kwargs: Any) -> Any:
    return create_app(config if config is not None else sim_config(), settings=settings, **kwargs)


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, decoded data)`` for each server-sent event in ``text``."""
    events: list[tuple[str, dict[str, Any]]] = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields["event"], msgspec.json.decode(fields["data"])))
    return events


async def wait_state(client: httpx.AsyncClient, request_id: str, states: set[str], limit_s: float = 10.0) -> Any:
    """Poll a request's status until its state is one of ``states``."""
    with anyio.fail_after(limit_s):
        while True:
            body = (await client.get(f"/v1/generations/{request_id}")).json()
            if body["state"] in states:
                return body
            await anyio.sleep(0.01)


@asynccontextmanager
async def running(config_of: Any, app: Any = None) -> AsyncIterator[tuple[Any, int]]:
    """A real uvicorn serving ``app`` (default :func:`app_for`) on a free loopback port (asyncio only);
    ``config_of(app)`` builds its ``uvicorn.Config``."""
    app = app if app is not None else app_for()
    server = uvicorn.Server(config_of(app))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while True:
                if server.started:
                    break
                await anyio.sleep(0.01)
        port: int = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield app, port
        finally:
            server.should_exit = True


class HeldRun:
    """A runner that holds its lease until released (a run that lasts as long as the test needs)."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.started: list[str] = []

    async def __call__(self, lease: Lease) -> int:
        self.started.append(lease.request_id)
        await self.release.wait()
        return 0
