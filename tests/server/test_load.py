"""Load: 500 concurrent clients against a uvicorn server on loopback with one simulated 24 GB GPU."""

from __future__ import annotations

import random
import ssl
from collections import Counter
from typing import Any

import anyio
import httpx
import msgspec
import pytest
import uvicorn

from vramgate.messages import LeaseReleased, Message, RequestAdmitted, RequestEnded
from vramgate.server import ServerSettings

from ._helpers import SMALL, app_for, sim_config

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CLIENTS = int(__import__("os").environ.get("LOAD_CLIENTS", "500"))
QUEUE_LIMIT = 400
FINISHED_LIMIT = 1000
EVENTS_LIMIT = 16


#: About 5.5 GiB with sequential offload: four run at a time on the 24 GB card.
TINY: dict[str, Any] = {
    **SMALL,
    "width": 320,
    "height": 320,
    "frames": 5,
    "steps": 4,
    "options": {"t5_cpu": True, "offload_model": True, "sequential_offload": True},
    # Bounded: a request that waits longer leaves the queue as timed_out (a terminal state like any other).
    "max_wait_s": 3.0,
}


class LedgerCheck:
    """Follows every reservation the gate grants and returns; counts over-commits and terminal events."""

    def __init__(self, budget_mb: int) -> None:
        self.budget_mb = budget_mb
        self.reserved = 0
        self.peak = 0
        self.over_commits = 0
        self.ends: Counter[str] = Counter()

    def __call__(self, message: Message) -> None:
        if isinstance(message, RequestAdmitted):
            self.reserved += message.reservation_mb
            self.peak = max(self.peak, self.reserved)
            if self.reserved > self.budget_mb:
                self.over_commits += 1
        elif isinstance(message, LeaseReleased):
            self.reserved -= message.reservation_mb
        elif isinstance(message, RequestEnded):
            self.ends[message.request_id] += 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio
async def test_500_concurrent_clients(anyio_backend: str) -> None:
    settings = ServerSettings(
        runner="simulated", time_scale=1e-6, min_run_s=0.001, finished_limit=FINISHED_LIMIT, events_limit=EVENTS_LIMIT
    )
    # No CUDA context on the simulated card: a plan made for the budget (capacity - margin) then always fits an
    # empty device (with the default 500 MiB context, a plan between the two would wait forever at the head).
    config = sim_config(queue_limit=QUEUE_LIMIT)
    config = msgspec.structs.replace(
        config,
        devices=msgspec.structs.replace(config.devices, context_overhead=0),
        monitor=msgspec.structs.replace(config.monitor, interval_s=0.01),
    )
    app = app_for(config, settings=settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_keep_alive=120)
    )
    results: dict[int, tuple[str, str]] = {}
    refused = Counter[int]()
    most_live = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while True:
                if server.started:
                    break
                await anyio.sleep(0.01)
        service = app.state.service
        gate = service.gate
        device = gate.device_configs[0]
        check = LedgerCheck(device.capacity_mb - device.margin_mb)
        gate.add_listener(check)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        tls = ssl.create_default_context()  # unused on http://, but httpx builds one per client unless given

        async def client(number: int) -> None:
            # One client, one connection (a shared pool of 500 is quadratic in httpcore).
            async with httpx.AsyncClient(base_url=base, timeout=60, verify=tls) as http:
                await one_client(number, http)

        async def one_client(number: int, http: httpx.AsyncClient) -> None:
            body = TINY
            while True:
                response = await http.post("/v1/generations", json=body)
                if response.status_code == 202:
                    break
                assert response.status_code == 429
                assert int(response.headers["Retry-After"]) >= 1
                refused[number] += 1
                # Come back when told (whole seconds, at least 1), spread over a second.
                await anyio.sleep(int(response.headers["Retry-After"]) + random.random())
            rid = response.json()["request_id"]
            state = ""
            async with http.stream("GET", f"/v1/generations/{rid}/events") as stream:
                name = ""
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: ") and name == "RequestEnded":
                        state = msgspec.json.decode(line.removeprefix("data: "))["state"]
            results[number] = (rid, state)

        async def watch() -> None:
            nonlocal most_live
            while True:
                most_live = max(most_live, len(service.live))
                for row in gate.statistics().devices:
                    ledger = row.ledger
                    assert ledger.reserved_mb + ledger.others_mb + ledger.margin_mb <= ledger.capacity_mb
                await anyio.sleep(0.01)

        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as clients:
                    watcher = anyio.CancelScope()

                    async def watched() -> None:
                        with watcher:
                            await watch()

                    clients.start_soon(watched)
                    async with anyio.create_task_group() as inner:
                        for number in range(CLIENTS):
                            inner.start_soon(client, number)
                    watcher.cancel()
            health = (await http.get("/healthz")).json()
        stats = gate.statistics()
        finished = len(service.finished)
        events_held = max(len(r.events) for r in service.finished.values())
        server.should_exit = True

    assert len(results) == CLIENTS
    states = Counter(state for _, state in results.values())
    assert set(states) <= {"completed", "timed_out"}
    assert states["completed"] > 0
    ids = [rid for rid, _ in results.values()]
    assert len(set(ids)) == CLIENTS
    assert all(check.ends[rid] == 1 for rid in ids)  # one terminal state each
    assert check.over_commits == 0
    assert check.reserved == 0
    assert 0 < check.peak <= check.budget_mb
    assert stats.ooms == 0
    assert stats.completed == states["completed"]
    assert stats.timed_out == states["timed_out"]
    assert sum(refused.values()) > 0  # the queue did fill, and clients were told to come back
    # Bounded: nothing left in flight, finished requests capped, each request's events capped.
    assert stats.tickets == 0
    assert health["tracked"] == 0
    assert finished == min(CLIENTS, FINISHED_LIMIT)
    assert events_held <= EVENTS_LIMIT
    assert most_live <= QUEUE_LIMIT + 10  # waiting + running (four at most on the card)
