"""``Retry-After`` on a full queue says when this server expects room: its runs' time, not the plans' estimate."""

from __future__ import annotations

import math

import anyio
import pytest

from vramgate.policy.timing import TimeCorrections
from vramgate.server import ServerSettings

from ._helpers import SMALL, app_for, serving, sim_config, wait_state

pytestmark = pytest.mark.anyio

#: The serve command's defaults: runs last 1 % of their estimate, at least half a second.
SCALED = ServerSettings(runner="simulated", time_scale=0.01, min_run_s=0.5)


async def test_retry_after_follows_the_compressed_runs() -> None:
    async with serving(app_for(sim_config(queue_limit=1), settings=SCALED)) as client:
        running = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        status = await wait_state(client, running, {"running"})
        estimate = status["plan"]["estimated_time_seconds"]
        run_s = max(SCALED.min_run_s, estimate * SCALED.time_scale)
        assert estimate > 10 * run_s  # the plan's estimate is far longer than this server's run
        waiting = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        assert (await wait_state(client, waiting, {"queued"}))["position"] == 1
        full = await client.post("/v1/generations", json=SMALL)
        assert full.status_code == 429
        retry_after_s = full.json()["retry_after_s"]
        # Room comes when the running request ends and the waiting one starts: within this server's run time.
        assert 0 < retry_after_s <= run_s
        assert full.headers["retry-after"] == str(max(1, math.ceil(retry_after_s)))
        await anyio.sleep(retry_after_s)
        with anyio.fail_after(5):  # then the queue has room soon (a busy machine is slower than the estimate)
            while True:
                if (await client.post("/v1/generations", json=SMALL)).status_code == 202:
                    break
                await anyio.sleep(0.01)


async def test_a_runner_of_its_own_keeps_the_plans_estimate() -> None:
    # The server cannot know how long a runner it did not build takes: the estimate stands, at the top of its
    # interval (nothing learned yet: the prior's).
    class Held:
        def __init__(self) -> None:
            self.release = anyio.Event()

        async def __call__(self, lease: object) -> int:
            await self.release.wait()
            return 0

    held = Held()
    async with serving(app_for(sim_config(queue_limit=1), settings=SCALED, runner=held)) as client:
        running = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        estimate = (await wait_state(client, running, {"running"}))["plan"]["estimated_time_seconds"]
        await client.post("/v1/generations", json=SMALL)
        full = await client.post("/v1/generations", json=SMALL)
        assert full.status_code == 429
        high = TimeCorrections().interval(SMALL["model"], "RTX4090-24GB", estimate)[2]
        assert estimate < full.json()["retry_after_s"] <= high
        held.release.set()
