"""A request the gate rejects up front is answered with an error status and the typed reason, never 202."""

from __future__ import annotations

from typing import Any

import pytest

from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig, MonitorConfig

from ._helpers import FAST, SMALL, app_for, parse_sse, serving

pytestmark = pytest.mark.anyio

#: A plain Wan2.2 request that needs about 28 GiB of host RAM (its offloaded weights) on a 24 GiB card.
PLAIN_A14B: dict[str, Any] = {"model": "t2v-A14B", "width": 832, "height": 480}


def box_24gib(ram_budget: str = "24GiB") -> GateConfig:
    """A 24 GiB GPU on a host whose runs may use ``ram_budget`` of RAM in total (a 24 GiB box by default)."""
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=False, simulate=("RTX4090-24GB",)),
        monitor=MonitorConfig(interval_s=0.02),
        admission=AdmissionSettings(ram_budget=ram_budget),
    )


async def test_a_request_short_of_host_ram_is_422_naming_host_ram() -> None:
    async with serving(app_for(box_24gib())) as client:
        response = await client.post("/v1/generations", json=PLAIN_A14B)
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] == "does_not_fit"
        assert "host RAM" in body["detail"]
        assert body["needed_ram_mb"] > 24 * 1024  # what is short, as a number
        assert body["needed_mb"] <= 24 * 1024  # its VRAM would fit the card
        assert body["smallest_gpu"] == "RTX4090-24GB"
        rid = body["request_id"]
        # Kept like any request it answered: the id still answers, with the same reason, to its end.
        status = (await client.get(f"/v1/generations/{rid}")).json()
        assert status["state"] == "rejected"
        assert status["reason"] == body["detail"]
        names = [name for name, _ in parse_sse((await client.get(f"/v1/generations/{rid}/events")).text)]
        assert names[-2:] == ["RequestRejected", "RequestEnded"]


async def test_the_same_request_with_the_host_ram_it_needs_is_accepted() -> None:
    async with serving(app_for(box_24gib("64GiB"))) as client:
        response = await client.post("/v1/generations", json=PLAIN_A14B)
        assert response.status_code == 202, response.text
        assert response.json()["state"] in ("queued", "running")


async def test_a_request_too_large_for_any_gpu_is_422_with_the_vram_it_needs() -> None:
    async with serving(app_for()) as client:
        huge = {"model": "t2v-A14B", "width": 1280, "height": 720, "frames": 81, "max_level": "none"}
        response = await client.post("/v1/generations", json=huge)
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "does_not_fit"
        assert body["needed_mb"] > 24 * 1024
        assert "GiB" in body["detail"]
        assert response.headers.get("retry-after") is None  # retrying the same request does not help


async def test_a_request_that_fits_is_still_202_with_its_position() -> None:
    async with serving(app_for(settings=FAST)) as client:
        response = await client.post("/v1/generations", json=SMALL)
        assert response.status_code == 202
        assert response.json()["state"] in ("queued", "running")
