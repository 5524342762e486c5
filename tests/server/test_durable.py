"""What the server keeps: restarts on the same store, idempotent retries, a client's list, graceful shutdown.

In-process, on real SQLite files; ``test_restarts.py`` does the same to real uvicorn processes with signals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from vramgate.messages import GenerationRequest, Message, RequestAdmitted
from vramgate.server import ServerSettings, open_service
from vramgate.server._records import Record
from vramgate.server.service import GenerationService
from vramgate.server.store import MemoryStore, StoredRequest, fingerprint, open_store

from ._helpers import FAST, SMALL, app_for, parse_sse, serving, sim_config, wait_state
from .test_app import HeldRun

pytestmark = pytest.mark.anyio


def settings_for(store: Path, **extra: Any) -> ServerSettings:
    return ServerSettings(runner="simulated", time_scale=1e-4, min_run_s=0.02, store_path=str(store), **extra)


async def test_a_restart_queues_again_what_was_queued_and_ends_what_was_running(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    # What a server killed with one request running and four queued leaves behind.
    async with open_store(path) as store:
        for number, state in enumerate(["running", "queued", "queued", "queued", "queued"]):
            request = msgspec.convert({**SMALL, "request_id": f"g{number}", "priority": number}, GenerationRequest)
            row = StoredRequest(
                request_id=request.request_id, request=request, client="alice", fingerprint=fingerprint(request)
            )
            await store.put(row)
            if state == "running":
                assert await store.set_state(row.request_id, "running")
    admitted: list[str] = []

    def listen(message: Message) -> None:
        if isinstance(message, RequestAdmitted):
            admitted.append(message.request_id)

    hook = lambda gate: gate.add_listener(listen)  # noqa: E731
    async with open_service(sim_config(), settings=settings_for(path), gate_hook=hook) as service:
        interrupted = await service.find("g0")
        assert interrupted is not None
        assert (service.status(interrupted).state, service.status(interrupted).reason) == ("failed", "interrupted")
        for rid in ("g1", "g2", "g3", "g4"):
            record = await service.find(rid)
            assert isinstance(record, Record)
            assert (await record.wait_ended()).outcome == "ok"
        listed = await service.requests_of("alice")
        assert [(r.request_id, r.state) for r in listed] == [(f"g{n}", "completed") for n in (4, 3, 2, 1)] + [
            ("g0", "failed")
        ]
    # g1 was queued first and took the empty card; the others waited and ran by their priorities (kept).
    assert admitted == ["g1", "g4", "g3", "g2"]
    async with open_store(path) as store:
        assert await store.unfinished() == []


async def test_an_idempotent_retry_returns_the_same_request(tmp_path: Path) -> None:
    runner = HeldRun()
    async with serving(app_for(settings=settings_for(tmp_path / "store.sqlite"), runner=runner)) as client:
        alice = {"X-Client-Id": "alice", "Idempotency-Key": "order-1"}
        first = await client.post("/v1/generations", json=SMALL, headers=alice)
        assert first.status_code == 202
        rid = first.json()["request_id"]
        retry = await client.post("/v1/generations", json={"steps": SMALL["steps"], **SMALL}, headers=alice)
        assert retry.status_code == 200
        assert retry.json()["request_id"] == rid
        other = await client.post("/v1/generations", json={**SMALL, "steps": 20}, headers=alice)
        assert other.status_code == 422
        assert other.json()["error"] == "idempotency_key_reused"
        assert rid in other.json()["detail"]
        bob = await client.post("/v1/generations", json=SMALL, headers={**alice, "X-Client-Id": "bob"})
        assert bob.status_code == 202
        assert bob.json()["request_id"] != rid
        keyless = await client.post("/v1/generations", json=SMALL, headers={"Idempotency-Key": "order-1"})
        assert keyless.json()["request_id"] not in (rid, bob.json()["request_id"])
        plain = await client.post("/v1/generations", json=SMALL, headers={"X-Client-Id": "alice"})
        assert plain.status_code == 202

        listed = (await client.get("/v1/generations", params={"client": "alice"})).json()
        assert [r["request_id"] for r in listed["requests"]] == [plain.json()["request_id"], rid]
        assert (await client.get("/v1/generations", params={"client": "alice", "limit": 1})).json()["requests"][0][
            "request_id"
        ] == plain.json()["request_id"]
        for params in ({}, {"client": "../x"}, {"client": "alice", "limit": 0}, {"client": "alice", "limit": "ten"}):
            bad = await client.get("/v1/generations", params=params)
            assert bad.status_code == 422, params
            assert bad.json()["error"] == "invalid_parameter"
        for headers in ({"Idempotency-Key": "with space"}, {"Idempotency-Key": ""}, {"X-Client-Id": "a/b"}):
            refused = await client.post("/v1/generations", json=SMALL, headers=headers)
            assert refused.status_code == 422, headers
            assert refused.json()["error"] == "invalid_header"
        runner.release.set()
        await wait_state(client, rid, {"completed"})
        done = await client.post("/v1/generations", json=SMALL, headers=alice)  # after its end: still the same
        assert done.status_code == 200
        assert done.json()["request_id"] == rid
        assert done.json()["state"] == "completed"

    # The key outlives the server.
    async with serving(app_for(settings=settings_for(tmp_path / "store.sqlite"))) as client:
        again = await client.post("/v1/generations", json=SMALL, headers=alice)
        assert again.status_code == 200
        assert again.json()["request_id"] == rid
        assert (await client.get(f"/v1/generations/{rid}")).json()["state"] == "completed"


async def test_a_graceful_shutdown_keeps_the_queued_and_ends_streams(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    runner = HeldRun()
    app = app_for(settings=settings_for(path), runner=runner)
    streams: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    async with serving(app) as client:
        running = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        await wait_state(client, running, {"running"})
        queued = [(await client.post("/v1/generations", json=SMALL)).json()["request_id"] for _ in range(3)]
        for rid in queued:
            await wait_state(client, rid, {"queued"})

        async def follow(rid: str) -> None:
            streams[rid] = parse_sse((await client.get(f"/v1/generations/{rid}/events")).text)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for rid in (running, queued[0]):
                    tg.start_soon(follow, rid)
                await anyio.sleep(0.1)
                app.state.service.begin_shutdown()  # what SIGTERM does under `vramgate serve`
        late = await client.post("/v1/generations", json=SMALL)
        assert late.status_code == 503
        assert (await client.get("/healthz")).json()["status"] == "closing"

    name, ended = streams[running][-1]
    assert (name, ended["state"], ended["reason"]) == ("RequestEnded", "cancelled", "shutdown")
    name, kept = streams[queued[0]][-1]
    assert (name, kept["state"], kept["reason"]) == ("ServerShutdown", "queued", "shutdown")
    async with open_store(path) as store:
        row = await store.get(running)
        assert row is not None
        assert (row.state, row.view().reason) == ("cancelled", "shutdown")
        assert [r.request_id for r in await store.unfinished()] == queued
        assert all(r.state == "queued" for r in await store.unfinished())

    async with serving(app_for(settings=settings_for(path))) as client:
        for rid in queued:
            assert (await wait_state(client, rid, {"completed"}))["outcome"] == "ok"
        assert (await client.get(f"/v1/generations/{running}")).json()["state"] == "cancelled"


# ---------------------------------------------------------------- a POST cancelled while its row is written

BODY = msgspec.json.encode(SMALL)


class _WriteStuck(MemoryStore):
    """A store whose writes never finish: before the row is kept (``keep_first=False``) or after."""

    def __init__(self, *, keep_first: bool) -> None:
        super().__init__()
        self.keep_first = keep_first
        self.writing = anyio.Event()

    async def put(self, row: StoredRequest) -> StoredRequest:
        if self.keep_first:
            await super().put(row)
        self.writing.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def _cancel_while_writing(service: GenerationService, writing: anyio.Event) -> Record:
    """Submit a request, cancel the caller while its row is written; the gate's record of it."""
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.submit, BODY)
            await writing.wait()
            (record,) = service.live.values()
            scope.cancel()
    return record


@pytest.mark.parametrize("keep_first", [True, False], ids=["kept", "not kept"])
async def test_a_post_cancelled_while_its_row_is_written_runs_exactly_when_the_store_kept_it(keep_first: bool) -> None:
    store = _WriteStuck(keep_first=keep_first)
    async with open_service(sim_config(), settings=FAST, store=store) as service:
        record = await _cancel_while_writing(service, store.writing)
        with anyio.fail_after(10):
            final = await record.wait_ended()
        kept = await store.get(record.request_id)
        if keep_first:
            assert (final.state, final.outcome) == ("completed", "ok")  # the client went away; the kept row runs
            assert kept is not None
        else:
            assert final.state == "cancelled"  # kept nowhere: it must not run
            assert "could not keep" in final.reason
            assert kept is None


async def test_posts_cancelled_while_their_batch_commits_are_kept_and_run(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    async with open_service(sim_config(), settings=settings_for(path)) as service:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                for _ in range(3):  # one batch: the first writes it, the other two wait for its commit
                    tg.start_soon(service.submit, BODY)
                while len(service.live) < 3:  # each took its place in the gate and queued its row
                    await anyio.lowlevel.checkpoint()
                records = list(service.live.values())
                scope.cancel()
        with anyio.fail_after(10):
            finals = [await record.wait_ended() for record in records]
        assert [final.outcome for final in finals] == ["ok"] * 3
    async with open_store(path) as store:
        assert len(await store.list_client("")) == 3
        assert await store.unfinished() == []
