"""Server-sent events carry ids, and a client that reconnects with ``Last-Event-ID`` resumes after that event."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn

from ._helpers import SMALL, HeldRun, app_for, running, serving, wait_state

pytestmark = pytest.mark.anyio


def sse(text: str) -> list[tuple[int, str, dict[str, Any]]]:
    """``(id, event name, data)`` of each event; every event must have an id."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((int(fields["id"]), fields["event"], msgspec.json.decode(fields["data"])))
    return events


async def test_a_finished_request_replays_from_the_given_id_to_the_end() -> None:
    async with serving(app_for()) as client:
        rid = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        await wait_state(client, rid, {"completed"})
        everything = sse((await client.get(f"/v1/generations/{rid}/events")).text)
        ids = [event_id for event_id, _, _ in everything]
        assert ids == sorted(set(ids))
        assert everything[-1][1] == "RequestEnded"
        again = sse((await client.get(f"/v1/generations/{rid}/events")).text)
        assert again == everything  # the same ids each time
        for cut in range(len(everything)):
            response = await client.get(f"/v1/generations/{rid}/events", headers={"last-event-id": str(ids[cut])})
            assert response.status_code == 200
            rest = sse(response.text) if response.text.strip() else []
            assert rest == everything[cut + 1 :]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # a real uvicorn: a stream the client drops half way
async def test_a_live_stream_resumes_without_repeating_events(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    runner = HeldRun()

    def plain(app: Any) -> uvicorn.Config:
        return uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")

    async with (
        running(plain, app_for(runner=runner)) as (_, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        rid = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        await wait_state(client, rid, {"running"})
        first: list[tuple[int, str]] = []
        async with client.stream("GET", f"/v1/generations/{rid}/events") as stream:
            event_id = 0
            async for line in stream.aiter_lines():
                if line.startswith("id: "):
                    event_id = int(line.removeprefix("id: "))
                elif line.startswith("event: "):
                    first.append((event_id, line.removeprefix("event: ")))
                    if first[-1][1] == "RequestAdmitted":
                        break  # the client drops the connection here, while the run goes on
        assert first[0] == (1, "RequestAccepted")
        last_id = first[-1][0]
        async with client.stream(
            "GET", f"/v1/generations/{rid}/events", headers={"last-event-id": str(last_id)}
        ) as stream:
            runner.release.set()  # the rest happens while the resumed stream is open
            resumed = sse((await stream.aread()).decode())
        assert all(event_id > last_id for event_id, _, _ in resumed)
        names = [name for _, name, _ in resumed]
        assert "RequestAccepted" not in names
        assert "RequestAdmitted" not in names
        assert names[-1] == "RequestEnded"
        assert resumed[-1][2]["state"] == "completed"
        whole = sse((await client.get(f"/v1/generations/{rid}/events")).text)
        assert [(i, n) for i, n, _ in whole] == first + [(i, n) for i, n, _ in resumed]
    assert "Traceback" not in caplog.text  # the stream the client dropped ended quietly


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "99999", "1" * 40])
async def test_a_bad_last_event_id_is_400_naming_it(value: str) -> None:
    async with serving(app_for()) as client:
        rid = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        await wait_state(client, rid, {"completed"})
        response = await client.get(f"/v1/generations/{rid}/events", headers={"last-event-id": value})
        assert response.status_code == 400
        body = response.json()
        assert body["error"] == "bad_last_event_id"
        assert "Last-Event-ID" in body["detail"]
