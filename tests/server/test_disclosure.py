"""What a client sees is what is its to know: short reasons, devices without other processes or paths."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import anyio
import msgspec
import pytest

from vramgate._ticket import Lease
from vramgate.hardware import detect
from vramgate.hardware.probe import ProbeReading
from vramgate.messages import DeviceSample, ProcessMemory
from vramgate.server.service import open_service

from ._helpers import FAST, SMALL, HeldRun, app_for, parse_sse, serving, sim_config, wait_state

pytestmark = pytest.mark.anyio

#: Nothing a client should see: reprs, memory addresses, file paths, task names.
LEAK = re.compile(r"0x[0-9a-f]{6,}|<[A-Za-z]|/\w+/|\\\\|Task|scope [0-9a-f]{6,}|\.py\b")


class FailingRun:
    async def __call__(self, lease: Lease) -> int:
        raise RuntimeError(f"cannot open {os.getcwd()}/weights/model.safetensors (handle {id(self):#x})")


def texts(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [str(body.get(key, "")) for _, body in events for key in ("reason", "error")]


async def test_cancelling_a_running_request_gives_a_short_fixed_reason() -> None:
    runner = HeldRun()
    async with serving(app_for(runner=runner)) as client:
        rid = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        await wait_state(client, rid, {"running"})
        assert (await client.delete(f"/v1/generations/{rid}")).status_code == 202
        status = await wait_state(client, rid, {"cancelled"})
        assert status["reason"] == "the run was cancelled"
        events = parse_sse((await client.get(f"/v1/generations/{rid}/events")).text)
        ended = [body for name, body in events if name == "RequestEnded"]
        assert ended[0]["reason"] == "the run was cancelled"
        finished = [body for name, body in events if name == "RunFinished"]
        assert finished[0]["outcome"] == "cancelled"
        assert finished[0]["error"] == "the run was cancelled"
        for text in texts(events):
            assert not LEAK.search(text), text


async def test_a_failed_run_names_the_error_type_but_not_its_message() -> None:
    async with serving(app_for(runner=FailingRun())) as client:
        rid = (await client.post("/v1/generations", json=SMALL)).json()["request_id"]
        status = await wait_state(client, rid, {"failed"})
        assert status["reason"] == "the run failed (RuntimeError)"
        events = parse_sse((await client.get(f"/v1/generations/{rid}/events")).text)
        assert texts(events)
        for text in texts(events):
            assert "safetensors" not in text
            assert os.getcwd() not in text
            assert not LEAK.search(text), text


async def test_a_request_that_never_ran_keeps_its_reason() -> None:
    async with serving(app_for()) as client:
        huge = {"model": "t2v-A14B", "width": 1280, "height": 720, "frames": 81, "max_level": "none"}
        rid = (await client.post("/v1/generations", json=huge)).json()["request_id"]
        status = await wait_state(client, rid, {"rejected"})
        assert "GiB" in status["reason"]  # the optimizer's sentence: what the request would need


class SharedGpu:
    """An NVML-like probe of a GPU that other users' processes share (the probe reports their PIDs and names)."""

    name = "nvml"
    blocking = False

    def sample(self) -> ProbeReading:
        others = (ProcessMemory(pid=424242, used_mb=2048, name="/home/alice/secret-project/train.py"),)
        device = DeviceSample(
            index=0, name="NVIDIA H100 80GB HBM3", uuid="GPU-0f0f0f0f-1111-2222-3333-444444444444", backend="nvml",
            total_mb=81559, free_mb=79000, used_mb=2559, processes=others,
        )  # fmt: skip
        return ProbeReading(probe="nvml", devices=(device,), warnings=("nvml: read /proc/424242/cmdline",))

    def close(self) -> None:
        pass


def keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys(v)}
    return set()


async def test_devices_show_names_capacities_and_ledgers_only() -> None:
    found = detect((), nvml=False, torch=False, disk_path=os.getcwd())
    devices = dataclasses.replace(found, probes=(SharedGpu(), *found.probes), gpu_backend="nvml")
    async with serving(app_for(sim_config(()), devices=devices)) as client:
        response = await client.get("/v1/devices")
        assert response.status_code == 200
        body = response.json()
        device = body["sample"]["devices"][0]
        assert device["name"] == "NVIDIA H100 80GB HBM3"
        assert device["total_mb"] == 81559
        assert device["used_mb"] == 2559
        assert body["devices"][0]["ledger"]["capacity_mb"] == 81559
        assert body["sample"]["host"]["ram_total_mb"] > 0
        assert not keys(body) & {"processes", "pid", "uuid", "disk_path", "warnings", "mapping"}
        for secret in ("424242", "alice", "train.py", os.getcwd(), "/proc"):
            assert secret not in response.text


def test_a_runner_error_kept_by_the_server_reads_as_its_phrase() -> None:
    # The server keeps the runner's exception (``Record.error``) for the moments before the gate reports the run,
    # and for a run whose report never came (the gate closing): it reads as the same phrase.
    from vramgate.server._public import error_reason

    assert error_reason("RuntimeError: cannot open /srv/models/x.safetensors at 0x7f3a2b1c") == (
        "the run failed (RuntimeError)"
    )
    assert error_reason("no type here: /etc/passwd") == "the run failed"
    assert error_reason("") == "the run failed"


async def test_a_cancel_right_after_admission_stops_the_run() -> None:
    """A DELETE that comes before the run's task has started still stops it (the run never holds the GPU)."""
    runner = HeldRun()
    async with serving(app_for(runner=runner)) as client:
        for _ in range(10):
            accepted = (await client.post("/v1/generations", json=SMALL)).json()
            assert accepted["state"] == "running"
            assert (await client.delete(f"/v1/generations/{accepted['request_id']}")).status_code == 202
            status = await wait_state(client, accepted["request_id"], {"cancelled", "completed"})
            assert status["state"] == "cancelled"


async def test_a_request_cancelled_as_it_is_admitted_ends_cancelled_without_running() -> None:
    runner = HeldRun()
    async with open_service(sim_config(), settings=FAST, runner=runner) as service:
        for _ in range(20):  # the cancellation lands anywhere between admission and the run's start
            rid = (await service.submit(msgspec.json.encode(SMALL))).request_id
            record = service.lookup(rid)
            assert record is not None
            with anyio.fail_after(10):
                while record.ticket is not None and record.ticket.state != "admitted":
                    await record.wait_changed()
            assert await service.cancel(record)
            with anyio.fail_after(10):
                final = await record.wait_ended()
            assert final.state == "cancelled"
            assert final.reason == "the run was cancelled"
        assert service.gate.statistics().running == 0  # no lease was left behind
