"""The server's runs: a task per admitted run, none per waiting request; every end is stored, with or without a run."""

from __future__ import annotations

import anyio
import pytest

from vramgate.server import ServerSettings

from ._helpers import SMALL, HeldRun, app_for, serving, wait_state

pytestmark = pytest.mark.anyio

HUGE = {"model": "t2v-A14B", "width": 1280, "height": 720, "frames": 81, "max_level": "none"}


async def test_waiting_requests_hold_no_task_and_ends_without_a_run_are_stored() -> None:
    settings = ServerSettings(runner="simulated", time_scale=1e-4, min_run_s=0.01, finished_limit=1)
    runner = HeldRun()
    async with serving(app_for(settings=settings, runner=runner)) as client:
        first = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        await wait_state(client, first, {"running"})
        tasks = len(anyio.get_running_tasks())
        queued = [(await client.post("/v1/generations", json=SMALL)).json()["request_id"] for _ in range(20)]
        for rid in queued:
            assert (await wait_state(client, rid, {"queued"}))["position"] >= 1
        assert len(anyio.get_running_tasks()) <= tasks + 1  # twenty requests wait; none holds a task
        for rid in queued[:3]:
            assert (await client.delete(f"/v1/generations/{rid}")).status_code == 202
            await wait_state(client, rid, {"cancelled"})
        rejected = await client.post("/v1/generations", json=HUGE)
        assert rejected.status_code == 422
        runner.release.set()
        for rid in [first, *queued[3:]]:
            assert (await wait_state(client, rid, {"completed"}))["outcome"] == "ok"
        assert runner.started == [first, *queued[3:]]
        assert (await client.get("/healthz")).json()["finished"] == 1  # the others answer from the store
        for rid in queued[:3]:
            assert (await client.get(f"/v1/generations/{rid}")).json()["state"] == "cancelled"
        stored = (await client.get(f"/v1/generations/{rejected.json()['request_id']}")).json()
        assert stored["state"] == "rejected"
        assert stored["reason"] == rejected.json()["detail"]
