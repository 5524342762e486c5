"""The example server in-process: httpx against the ASGI app, a real gate on a simulated 24 GB GPU."""

from __future__ import annotations

import re
from typing import Any

import pytest

from vramgate.server import ServerSettings

from ._helpers import FAST, SMALL, HeldRun, app_for, parse_sse, serving, sim_config, wait_state

pytestmark = pytest.mark.anyio


async def test_submit_then_follow_events_to_completion() -> None:
    async with serving(app_for()) as client:
        response = await client.post("/v1/generations", json={**SMALL, "request_id": "mine"})
        assert response.status_code == 202
        accepted = response.json()
        rid = accepted["request_id"]
        assert rid != "mine"
        assert re.fullmatch(r"g[0-9a-f]{16}", rid)
        assert accepted["state"] in ("queued", "running")
        assert accepted["status_url"] == f"/v1/generations/{rid}"
        events = await client.get(accepted["events_url"])
        assert events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        names = [name for name, _ in parse_sse(events.text)]
        assert names[0] == "RequestAccepted"
        assert names[-1] == "RequestEnded"
        for name in ("PlanOptimized", "RequestAdmitted", "RunProgress", "RunFinished", "LeaseReleased"):
            assert name in names
        data = {name: body for name, body in parse_sse(events.text)}
        assert data["RequestEnded"]["state"] == "completed"
        assert all(body["request_id"] == rid for name, body in parse_sse(events.text) if "request_id" in body)
        status = (await client.get(f"/v1/generations/{rid}")).json()
        assert status["state"] == "completed"
        assert status["outcome"] == "ok"
        assert status["device"] == 0
        assert status["plan"]["gpu"] == "RTX4090-24GB"
        assert status["plan"]["steps"] == SMALL["steps"]
        assert status["reservation_mb"] == status["plan"]["vram_mb"] > 0
        # 480p ti2v-5B does not fit 24 GB as given: the plan says what it changed.
        assert [s["parameter"] for s in status["plan"]["suggestions"]] == ["free_text_encoder"]
        assert status["progress"] == {"step": SMALL["steps"], "total_steps": SMALL["steps"]}
        assert status["eta_s"] is None


async def test_running_request_reports_progress_and_eta() -> None:
    runner = HeldRun()
    async with serving(app_for(runner=runner)) as client:
        rid = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        status = await wait_state(client, rid, {"running"})
        assert status["device"] == 0
        assert status["eta_s"] is not None
        assert status["eta_s"] > 0
        assert status["position"] is None
        runner.release.set()
        assert (await wait_state(client, rid, {"completed"}))["outcome"] == "ok"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({**SMALL, "width": -1}, "$.width"),
        ({**SMALL, "width": "wide"}, "$.width"),
        ({k: v for k, v in SMALL.items() if k != "model"}, "$"),
        ({**SMALL, "colour": "red"}, "$"),
        ({**SMALL, "lora": [{"name": ""}]}, "$.lora[0].name"),
        ({**SMALL, "model": "no-such-model"}, "$.model"),
        ({**SMALL, "request_id": "../../etc/passwd"}, "$.request_id"),
    ],
)
async def test_bad_input_is_422_naming_the_field(body: dict[str, Any], path: str) -> None:
    async with serving(app_for()) as client:
        response = await client.post("/v1/generations", json=body)
        assert response.status_code == 422
        error = response.json()
        assert error["path"] == path
        assert error["detail"]
        assert (await client.get("/healthz")).json()["tracked"] == 0


async def test_malformed_and_oversized_bodies() -> None:
    settings = ServerSettings(runner="simulated", time_scale=1e-4, min_run_s=0.02, max_body_bytes=512)
    async with serving(app_for(settings=settings)) as client:
        broken = await client.post(
            "/v1/generations", content=b'{"model": "ti2v-5B", "width":', headers={"content-type": "application/json"}
        )
        assert broken.status_code == 422
        assert broken.json()["path"] == "$"
        big = await client.post("/v1/generations", json={**SMALL, "prompt": "x" * 1000})
        assert big.status_code == 413
        assert big.json()["error"] == "too_large"


async def test_a_body_without_length_is_cut_at_the_limit() -> None:
    from vramgate.server._submit import BodyTooLarge, ClientGone, read_body

    sent: list[int] = []

    async def receive() -> dict[str, Any]:
        sent.append(100)
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}  # an endless chunked body

    with pytest.raises(BodyTooLarge):
        await read_body(receive, 512)
    assert sum(sent) == 600  # read no further than the first chunk past the limit

    chunks = iter([b'{"a":', b" 1}", b""])

    async def finite() -> dict[str, Any]:
        chunk = next(chunks)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunk)}

    assert await read_body(finite, 512) == b'{"a": 1}'

    async def leaves() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    with pytest.raises(ClientGone):
        await read_body(leaves, 512)
    with pytest.raises(BodyTooLarge):  # a declared length over the limit: refused before reading
        await read_body(leaves, 512, "513")


async def test_full_queue_is_429_with_retry_after() -> None:
    runner = HeldRun()
    async with serving(app_for(sim_config(queue_limit=2), runner=runner)) as client:
        first = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        await wait_state(client, first, {"running"})
        waiting = [(await client.post("/v1/generations", json=SMALL)).json()["request_id"] for _ in range(2)]
        for rid in waiting:
            assert (await wait_state(client, rid, {"queued"}))["position"] >= 1
        full = await client.post("/v1/generations", json=SMALL)
        assert full.status_code == 429
        assert int(full.headers["retry-after"]) >= 1
        assert full.json()["error"] == "queue_full"
        assert full.json()["retry_after_s"] > 0
        runner.release.set()
        for rid in [first, *waiting]:
            assert (await wait_state(client, rid, {"completed"}))["outcome"] == "ok"
        assert (await client.post("/v1/generations", json=SMALL)).status_code == 202


async def test_cancel_queued_and_running_requests() -> None:
    runner = HeldRun()
    async with serving(app_for(runner=runner)) as client:
        running = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        await wait_state(client, running, {"running"})
        queued = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        await wait_state(client, queued, {"queued"})

        response = await client.delete(f"/v1/generations/{queued}")
        assert response.status_code == 202
        status = await wait_state(client, queued, {"cancelled"})
        assert status["device"] is None
        assert status["outcome"] is None
        names = [name for name, _ in parse_sse((await client.get(f"/v1/generations/{queued}/events")).text)]
        assert "RequestAdmitted" not in names
        assert names[-1] == "RequestEnded"

        assert (await client.delete(f"/v1/generations/{running}")).status_code == 202
        status = await wait_state(client, running, {"cancelled"})
        assert status["outcome"] == "cancelled"
        assert runner.started == [running]

        again = await client.delete(f"/v1/generations/{running}")
        assert again.status_code == 409
        assert again.json()["state"] == "cancelled"
        devices = (await client.get("/v1/devices")).json()
        assert devices["devices"][0]["ledger"]["reserved_mb"] == 0


async def test_unknown_and_hostile_ids_are_404() -> None:
    async with serving(app_for()) as client:
        for rid in ("g0000000000000000", "..", "%2e%2e%2fetc", "a" * 300, "x;rm -rf"):
            for method, suffix in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
                response = await client.request(method, f"/v1/generations/{rid}{suffix}")
                assert response.status_code == 404, (method, rid)


async def test_finished_requests_are_held_up_to_the_limit_and_older_ones_answer_from_the_store() -> None:
    settings = ServerSettings(runner="simulated", time_scale=1e-4, min_run_s=0.01, finished_limit=2)
    async with serving(app_for(settings=settings)) as client:
        ids = []
        finals = []
        for _ in range(3):
            rid = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
            finals.append(await wait_state(client, rid, {"completed"}))
            ids.append(rid)
        oldest = await client.get(f"/v1/generations/{ids[0]}")  # no longer in memory: the store's final status
        assert oldest.status_code == 200
        assert oldest.json() == finals[0]
        assert oldest.json()["plan"]["steps"] == SMALL["steps"]
        events = parse_sse((await client.get(f"/v1/generations/{ids[0]}/events")).text)
        assert events == [
            ("RequestEnded", {"type": "RequestEnded", "request_id": ids[0], "state": "completed", "reason": ""})
        ]
        again = await client.delete(f"/v1/generations/{ids[0]}")
        assert again.status_code == 409
        assert again.json()["state"] == "completed"
        for rid in ids[1:]:
            assert (await client.get(f"/v1/generations/{rid}")).json()["state"] == "completed"
        health = (await client.get("/healthz")).json()
        assert health["finished"] == 2
        assert health["tracked"] == 0


async def test_request_that_fits_nowhere_is_rejected_with_what_it_needs() -> None:
    async with serving(app_for(settings=FAST)) as client:
        huge = {"model": "t2v-A14B", "width": 1280, "height": 720, "frames": 81, "max_level": "none"}
        rid = (await client.post("/v1/generations", json=huge)).json()["request_id"]
        status = await wait_state(client, rid, {"rejected"})
        assert status["reject_code"] == "does_not_fit"
        assert status["needed_mb"] > 24 * 1024
        assert status["reason"]


async def test_devices_and_health() -> None:
    async with serving(app_for(sim_config(("RTX4090-24GB", "H100-80GB")))) as client:
        devices = (await client.get("/v1/devices")).json()
        assert [d["ledger"]["gpu"] for d in devices["devices"]] == ["RTX4090-24GB", "H100-80GB"]
        assert all(d["simulated"] for d in devices["devices"])
        assert [d["name"] for d in devices["sample"]["devices"]] == ["RTX4090-24GB", "H100-80GB"]
        assert devices["devices"][0]["ledger"]["capacity_mb"] == devices["sample"]["devices"][0]["total_mb"]
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert health.json()["devices"] == 2
