"""Answering at once (``position_timeout_s = 0``): the POST is answered once the request is kept in the store,
without waiting for the gate; what the gate decides after shows at the status URL and on the events."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from vramgate.server import ServerSettings

from ._helpers import SMALL, app_for, serving, sim_config, wait_state
from .test_rejected import PLAIN_A14B, box_24gib

pytestmark = pytest.mark.anyio


def at_once(store: Path | None = None) -> ServerSettings:
    return ServerSettings(
        runner="simulated",
        time_scale=1e-4,
        min_run_s=0.02,
        position_timeout_s=0.0,
        store_path=str(store) if store is not None else None,
    )


async def test_a_rejection_decided_after_the_answer_shows_at_the_status_url() -> None:
    async with serving(app_for(box_24gib(), settings=at_once())) as client:
        response = await client.post("/v1/generations", json=PLAIN_A14B)
        if response.status_code == 202:  # answered before the gate decided: kept, and rejected after
            assert response.json()["state"] == "preflight"
            status = await wait_state(client, response.json()["request_id"], {"rejected"})
            assert "host RAM" in status["reason"]
        else:  # the gate had rejected it by the time it was kept
            assert response.status_code == 422
            assert response.json()["error"] == "does_not_fit"
        fine = await client.post("/v1/generations", json=SMALL)
        assert fine.status_code == 202
        status = await wait_state(client, fine.json()["request_id"], {"completed", "rejected", "failed"})
        assert status["state"] == "completed"


async def test_a_shutdown_right_after_the_answer_keeps_the_request_for_the_next_start(tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    ids = []
    for _ in range(3):
        async with serving(app_for(sim_config(), settings=at_once(store))) as client:
            response = await client.post("/v1/generations", json=SMALL)
            assert response.status_code == 202
            ids.append(response.json()["request_id"])
            # The server stops now, while the gate still plans it.
    async with serving(app_for(sim_config(), settings=at_once(store))) as client:
        with anyio.fail_after(20):
            for rid in ids:
                status = await wait_state(client, rid, {"completed", "rejected", "failed", "cancelled"})
                # Queued when it stopped: it runs after the restart. Running: it was stopped, as a shutdown does.
                assert (status["state"], status["reason"]) in (("completed", ""), ("cancelled", "shutdown")), status


async def test_the_server_stops_cleanly_while_the_gate_plans_what_it_answered() -> None:
    for _ in range(5):
        async with serving(app_for(sim_config(), settings=at_once())) as client:
            response = await client.post("/v1/generations", json=SMALL)
            assert response.status_code == 202
            assert response.json()["state"] in ("preflight", "queued", "running")  # as far as the gate got


async def test_the_gate_admits_while_a_client_keeps_posting() -> None:
    """A client that posts in a loop (in process, so nothing else makes it wait) does not hold the gate up: a
    POST answered at once still lets the gate's pipeline run, and the device gets work during the burst."""
    app = app_for(sim_config(("H100-80GB",)), at_once())
    async with serving(app) as client:
        service = app.state.service
        for _ in range(60):
            assert (await client.post("/v1/generations", json=SMALL)).status_code == 202
        states = [record.ticket.state for record in service.live.values() if record.ticket is not None]
        placed = sum(state != "preflight" for state in states)
        assert placed >= len(states) // 2, states  # a pipeline that keeps up leaves only the latest in preflight
