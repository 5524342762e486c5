"""The example server in-process on a simulated RTX 4090: a request that can never be admitted does not wedge
the queue, a queued request's status says what it waits for, and ``/healthz`` reports a queue that is not
moving."""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest

from vramgate._ticket import Lease
from vramgate.clock import ManualClock
from vramgate.hardware import detect
from vramgate.server.app import STALLED_AFTER_S

from ._helpers import app_for, serving, sim_config, wait_state

pytestmark = pytest.mark.anyio

NEVER_FITS: dict[str, Any] = {
    "model": "ti2v-5B",
    "width": 672,
    "height": 672,
    "frames": 125,
    "steps": 10,
    "max_level": "none",
    "options": {"t5_cpu": True},
}
SHORT: dict[str, Any] = {"model": "ti2v-5B", "width": 832, "height": 480, "frames": 17, "steps": 4}
FULL_CARD: dict[str, Any] = {"model": "ti2v-5B", "width": 1280, "height": 704, "frames": 121, "steps": 50}


async def test_a_request_that_can_never_be_admitted_does_not_wedge_the_next() -> None:
    async with serving(app_for()) as client:
        first = (await client.post("/v1/generations", json=NEVER_FITS)).json()["request_id"]
        ended = await wait_state(client, first, {"rejected", "completed", "failed"})
        assert ended["state"] == "rejected"
        assert ended["reject_code"] == "does_not_fit"
        assert ended["needed_mb"] > 24_564 - 1_229 - 512
        second = (await client.post("/v1/generations", json=SHORT)).json()["request_id"]
        done = await wait_state(client, second, {"completed", "rejected", "failed"})
        assert done["state"] == "completed"
        assert (await client.get("/healthz")).json()["status"] == "ok"


async def test_healthz_reports_a_queue_that_is_not_moving() -> None:
    clock = ManualClock()
    devices = detect(("RTX4090-24GB",), nvml=False, torch=False, clock=clock)
    config = sim_config()
    async with serving(app_for(config, clock=clock, devices=devices)) as client:
        devices.simulated[0].add_outside("other-process", 12_000)  # after the server started: it may leave
        with anyio.fail_after(5):
            while (await client.get("/v1/devices")).json()["devices"][0]["ledger"]["others_mb"] < 12_000:
                clock.advance(0.02)
                await anyio.sleep(0.001)
        rid = (await client.post("/v1/generations", json=FULL_CARD)).json()["request_id"]
        status = await wait_state(client, rid, {"queued"})
        assert "on gpu0: held by others" in status["reason"]
        assert status["eta_s"] is None  # others hold the memory: when they leave is unknown
        assert (await client.get("/healthz")).status_code == 200
        clock.advance(STALLED_AFTER_S + 1)
        await anyio.sleep(0.05)
        health = await client.get("/healthz")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "degraded"
        assert body["queue_stalled_s"] >= STALLED_AFTER_S
        assert "has not moved" in body["reason"]
        assert "held by others" in body["reason"]
        devices.simulated[0].remove_outside("other-process")
        with anyio.fail_after(5):
            while (await client.get(f"/v1/generations/{rid}")).json()["state"] == "queued":
                clock.advance(1.0)
                await anyio.sleep(0.001)
        assert (await client.get("/healthz")).json()["status"] == "ok"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
async def test_healthz_reports_a_message_log_that_cannot_be_written() -> None:
    async with serving(app_for(sim_config(log_path="/dev/full"))) as client:  # every write fails with ENOSPC
        rid = (await client.post("/v1/generations", json=SHORT)).json()["request_id"]
        assert (await wait_state(client, rid, {"completed", "rejected", "failed"}))["state"] == "completed"
        health = await client.get("/healthz")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "degraded"
        assert "message log" in body["reason"]
        assert "No space left on device" in body["reason"]
        assert body["queue_stalled_s"] is None
        again = (await client.post("/v1/generations", json=SHORT)).json()["request_id"]  # it keeps serving
        assert (await wait_state(client, again, {"completed", "rejected", "failed"}))["state"] == "completed"
        assert (await client.get("/healthz")).json()["status"] == "degraded"


class OneByOne:
    """Runs that each wait until the test lets that one end."""

    def __init__(self) -> None:
        self.ends: dict[str, anyio.Event] = {}

    async def __call__(self, lease: Lease) -> int:
        await self.ends.setdefault(lease.request_id, anyio.Event()).wait()
        return 0


async def test_a_queued_request_shows_where_it_is_now_as_the_queue_moves() -> None:
    runner = OneByOne()
    async with serving(app_for(runner=runner)) as client:  # one run at a time on the card
        ids = [(await client.post("/v1/generations", json=SHORT)).json()["request_id"] for _ in range(3)]
        await wait_state(client, ids[0], {"running"})
        assert (await client.get(f"/v1/generations/{ids[2]}")).json()["position"] == 2
        runner.ends.setdefault(ids[0], anyio.Event()).set()
        await wait_state(client, ids[1], {"running"})
        third = (await client.get(f"/v1/generations/{ids[2]}")).json()
        assert third["state"] == "queued"
        assert third["position"] == 1
        assert "behind" not in third["reason"]  # first in line: nothing ahead of it
        runner.ends.setdefault(ids[1], anyio.Event()).set()
        runner.ends.setdefault(ids[2], anyio.Event()).set()
        await wait_state(client, ids[2], {"completed"})
