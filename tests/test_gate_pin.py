"""Pinned reservations through the gate: granted leases take their memory at once, and give it back on release."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from vramgate.clock import ManualClock, MonotonicClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig, RunConfig
from vramgate.gate import Gate, Lease, open_gate
from vramgate.hardware import SimulatedGpu, SimulatedOutOfMemory, detect
from vramgate.hardware.backend import TorchBackend
from vramgate.messages import GenerationRequest, Message, RunFinished
from vramgate.runners import SimulatedRun

pytestmark = pytest.mark.anyio

REQUEST = GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=20)


@asynccontextmanager
async def _gate(pin: bool | str = "auto") -> AsyncIterator[tuple[Gate, SimulatedGpu, list[Message]]]:
    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget="256GiB"),
        cleanup=CleanupConfig(after_run=False),
        run=RunConfig(pin_reservation=pin),  # type: ignore[arg-type]
    )
    clock = ManualClock()
    devices = detect(("RTX4090-24GB",), nvml=False, torch=False, clock=clock)
    async with open_gate(config, clock=clock, devices=devices) as gate:
        events: list[Message] = []
        gate.add_listener(events.append)
        yield gate, devices.simulated[0], events


def _finished(events: list[Message]) -> RunFinished:
    found = [event for event in events if isinstance(event, RunFinished)]
    assert len(found) == 1
    return found[0]


async def test_an_outside_consumer_cannot_take_a_pinned_leases_memory() -> None:
    async with _gate() as (gate, device, events):
        runner = SimulatedRun(MonotonicClock(), time_scale=1e-6)
        async with gate.admit(REQUEST) as lease:
            reservation = lease.reservation_mb
            assert lease.pinned_mb == reservation > 0
            assert device.pins() == {lease.lease_id: reservation}
            assert device.allocated_mb == 0
            # Another process arrives before the run has allocated anything: it gets only what is left.
            left = device.free_mb
            with pytest.raises(SimulatedOutOfMemory):
                device.add_outside("other-process", left + 1)
            device.add_outside("other-process", left)
            assert device.free_mb == 0
            peak = await runner(lease)  # allocates its true peak inside the pinned block
            assert 0 < peak <= reservation
        assert device.pins() == {}
        assert device.reserved_mb == 0
        assert device.free_mb == reservation  # what the pin held is free again; the other process stays
        finished = _finished(events)
        assert finished.outcome == "ok"
        # The observed peak is the run's own use, not the pin.
        assert finished.observed.torch_peak_allocated_mb == finished.observed.torch_peak_reserved_mb == peak
        await gate.wait_idle()
        assert gate.statistics().completed == 1
        assert gate.statistics().ooms == 0


async def test_without_a_pin_the_outside_consumer_takes_the_memory_and_the_run_runs_out() -> None:
    async with _gate(pin=False) as (gate, device, events):
        runner = SimulatedRun(MonotonicClock(), time_scale=1e-6)

        async def run_beside_a_newcomer() -> None:
            async with gate.admit(REQUEST) as lease:
                assert lease.pinned_mb == 0
                assert device.pins() == {}
                device.add_outside("other-process", device.free_mb - 1000)
                await runner(lease)

        with pytest.raises(SimulatedOutOfMemory):
            await run_beside_a_newcomer()
        assert _finished(events).outcome == "oom"
        await gate.wait_idle()
        assert gate.statistics().ooms == 1


async def test_every_exit_path_unpins() -> None:
    async with _gate(pin=True) as (gate, device, _):
        leases: list[Lease] = []

        async def fail() -> None:
            async with gate.admit(REQUEST) as lease:
                leases.append(lease)
                assert device.pins() == {lease.lease_id: lease.reservation_mb}
                raise RuntimeError("the run failed")

        with pytest.raises(RuntimeError):
            await fail()
        assert device.pins() == {}
        assert leases[0].pinned_mb == 0
        with anyio.CancelScope() as scope:
            async with gate.admit(REQUEST) as lease:
                assert lease.pinned_mb > 0
                scope.cancel()
                await anyio.sleep(1)
        assert device.pins() == {}
        assert lease.pinned_mb == 0
        await gate.wait_idle()
        assert gate.statistics().devices[0].ledger.reserved_mb == 0


async def test_pinning_by_hand_is_all_or_nothing_and_idempotent() -> None:
    async with _gate(pin=False) as (gate, device, _), gate.admit(REQUEST) as lease:
        reservation = lease.reservation_mb
        device.add_outside("other-process", device.free_mb - reservation + 1)
        assert lease.pin() == 0  # one MiB short: nothing is pinned
        assert device.pins() == {}
        assert "out of memory" in lease.pin_error
        device.remove_outside("other-process")
        assert lease.pin() == reservation
        assert lease.pin() == reservation
        assert lease.pin_error == ""
        assert device.pins() == {lease.lease_id: reservation}
        assert lease.unpin() == reservation
        assert lease.unpin() == 0
        assert device.pins() == {}


def test_a_real_device_is_not_pinned_without_cuda() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "needs torch with CUDA" in TorchBackend().pin(0, "l1", 1024)
