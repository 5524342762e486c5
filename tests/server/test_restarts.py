"""Real ``vramgate serve`` processes killed with SIGKILL or stopped with SIGTERM, and restarted on the same store:
every accepted request still answers, and each ends in exactly one terminal state."""

from __future__ import annotations

import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from vramgate.server.schema import TERMINAL

from ._helpers import SMALL, parse_sse, wait_state
from ._serve import Serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
CLIENTS = 12


@asynccontextmanager
async def serving(tmp_path: Path, **options: Any) -> AsyncIterator[Serve]:
    serve = Serve(tmp_path, store=tmp_path / "store.sqlite", **options)
    try:
        yield serve
    finally:
        serve.close()


async def start(serve: Serve) -> httpx.AsyncClient:
    url = await anyio.to_thread.run_sync(serve.start)
    return httpx.AsyncClient(base_url=url, timeout=30)


async def follow(http: httpx.AsyncClient, rid: str) -> tuple[str, dict[str, Any]]:
    """The last event of a request's stream (which must end cleanly: a dropped connection raises)."""
    last: tuple[str, dict[str, Any]] = ("", {})
    async with http.stream("GET", f"/v1/generations/{rid}/events") as stream:
        name = ""
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                last = (name, msgspec.json.decode(line.removeprefix("data: ")))
    return last


async def test_kill_9_then_restart_answers_every_id(tmp_path: Path) -> None:
    async with serving(tmp_path) as serve:
        alice = {"X-Client-Id": "alice"}
        async with await start(serve) as client:
            ids = []
            for number in range(4):
                headers = {**alice, "Idempotency-Key": f"k{number}"}
                response = await client.post("/v1/generations", json=SMALL, headers=headers)
                assert response.status_code == 202
                ids.append(response.json()["request_id"])
            await wait_state(client, ids[0], {"running"})
            assert [(await client.get(f"/v1/generations/{rid}")).json()["state"] for rid in ids[1:]] == ["queued"] * 3
        serve.signal(signal.SIGKILL)
        assert await anyio.to_thread.run_sync(serve.wait, 10) == -signal.SIGKILL

        async with await start(serve) as client:
            interrupted = (await client.get(f"/v1/generations/{ids[0]}")).json()
            assert (interrupted["state"], interrupted["reason"]) == ("failed", "interrupted")
            events = parse_sse((await client.get(f"/v1/generations/{ids[0]}/events")).text)
            assert [(name, body["state"], body["reason"]) for name, body in events] == [
                ("RequestEnded", "failed", "interrupted")
            ]
            retry = await client.post("/v1/generations", json=SMALL, headers={**alice, "Idempotency-Key": "k2"})
            assert retry.status_code == 200
            assert retry.json()["request_id"] == ids[2]
            for rid in ids[1:]:
                assert (await wait_state(client, rid, {"completed"}, limit_s=30))["outcome"] == "ok"
            listed = (await client.get("/v1/generations", params={"client": "alice"})).json()["requests"]
            assert [r["request_id"] for r in listed] == ids[::-1]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("trial", range(3))
async def test_sigterm_under_load_ends_streams_and_every_request_once(
    tmp_path: Path, trial: int, anyio_backend: str
) -> None:
    async with serving(tmp_path, queue_limit=40, min_run_s=0.6) as serve:
        accepted: list[str] = []
        seen: dict[str, tuple[str, dict[str, Any]]] = {}
        posted = anyio.Event()

        async with await start(serve) as http:

            async def client(number: int) -> None:
                async with httpx.AsyncClient(base_url=str(http.base_url), timeout=30) as own:
                    response = await own.post("/v1/generations", json=SMALL)
                    assert response.status_code == 202, response.text
                    rid = response.json()["request_id"]
                    accepted.append(rid)
                    if len(accepted) == CLIENTS:
                        posted.set()
                    seen[rid] = await follow(own, rid)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for number in range(CLIENTS):
                        tg.start_soon(client, number)
                    await posted.wait()
                    await anyio.sleep(0.4 + 0.2 * trial)  # a few ended, one running, the rest queued
                    serve.signal(signal.SIGTERM)
                    signalled = anyio.current_time()
                    status = await anyio.to_thread.run_sync(serve.wait, 30)
                    stopped_s = anyio.current_time() - signalled
        assert status in (0, -signal.SIGTERM), serve.output()
        # Prompt: the queue alone holds several seconds of runs, and open streams do not hold the server up.
        assert stopped_s < 4.0, (stopped_s, serve.output())
        assert "Application shutdown complete" in serve.output()
        assert sorted(seen) == sorted(accepted)  # every stream ended with its last event, none was cut
        names = {name for name, _ in seen.values()}
        assert names <= {"RequestEnded", "ServerShutdown"}
        assert "ServerShutdown" in names  # the queued ones were kept for the next start

        async with await start(serve) as http:
            for rid in accepted:
                final = await wait_state(http, rid, TERMINAL, limit_s=60)
                name, last = seen[rid]
                if name == "RequestEnded":  # it had ended: the same one terminal state after the restart
                    assert final["state"] == last["state"], (rid, final, last)
                    if last["state"] == "cancelled":
                        assert final["reason"] == "shutdown"
                else:  # kept queued: it ran after the restart
                    assert final["state"] == "completed", (rid, final)
            health = (await http.get("/healthz")).json()
            assert health["tracked"] == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_fault_campaign_kill_9_under_load(tmp_path: Path, anyio_backend: str) -> None:
    """Clients keep posting with idempotency keys and retry what they lost; the server is killed with SIGKILL at
    random moments and restarted. Every key names one request, every id answers, and no terminal state changes."""
    rounds, per_round = 4, 10
    chooser = random.Random(7)
    ids: dict[str, str] = {}  # idempotency key -> request id
    terminal: dict[str, str] = {}  # request id -> the terminal state first seen
    lost: set[str] = set()  # keys whose answer never came (the server died): retried
    async with serving(tmp_path, queue_limit=100, min_run_s=0.3) as serve:
        for round_number in range(rounds + 1):
            async with await start(serve) as http:

                async def post(key: str) -> None:
                    headers = {"X-Client-Id": "campaign", "Idempotency-Key": key}
                    try:
                        response = await http.post("/v1/generations", json=SMALL, headers=headers)
                    except httpx.TransportError:
                        lost.add(key)
                        return
                    assert response.status_code in (200, 202), response.text
                    rid = response.json()["request_id"]
                    assert ids.setdefault(key, rid) == rid, key  # a retry never makes a second request
                    lost.discard(key)

                for key in sorted(lost):
                    await post(key)
                assert not lost
                for rid in list(ids.values()):
                    state = (await http.get(f"/v1/generations/{rid}")).json()["state"]
                    if state in TERMINAL:
                        assert terminal.setdefault(rid, state) == state, rid
                if round_number == rounds:  # the last start: nothing is killed any more, everything ends
                    for rid in ids.values():
                        final = await wait_state(http, rid, TERMINAL, limit_s=120)
                        assert terminal.setdefault(rid, final["state"]) == final["state"], rid
                        if final["state"] == "failed":
                            assert final["reason"] == "interrupted"
                    break

                async def load(round_number: int = round_number) -> None:
                    for number in range(per_round):
                        await post(f"r{round_number}-{number}")
                        await anyio.sleep(chooser.random() * 0.1)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(load)
                    await anyio.sleep(0.3 + chooser.random() * 0.8)
                    serve.signal(signal.SIGKILL)
                    await anyio.to_thread.run_sync(serve.wait, 10)

    assert len(ids) >= rounds  # the load got through before each kill
    assert len(set(ids.values())) == len(ids)
    assert set(terminal.values()) <= {"completed", "failed"}
