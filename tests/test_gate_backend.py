"""A backend passed to ``open_gate`` is the one the gate pins, measures, cleans and judges errors with."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig, RunConfig
from vramgate.gate import open_gate
from vramgate.hardware import SimulatedOutOfMemory, detect
from vramgate.hardware.backend import CacheFigures, DeviceKind, SimulatedBackend
from vramgate.messages import GenerationRequest, ObservedPeak, RunFinished

pytestmark = pytest.mark.anyio

REQUEST = GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=20)


class Recording:
    """The simulated backend, recording every call made to it."""

    def __init__(self, inner: SimulatedBackend) -> None:
        self.inner = inner
        self.calls: list[tuple[str, object]] = []

    def kind(self, device: int) -> DeviceKind:
        self.calls.append(("kind", device))
        return self.inner.kind(device)

    def pin(self, device: int, owner: str, mb: int) -> str:
        self.calls.append(("pin", device))
        return self.inner.pin(device, owner, mb)

    def unpin(self, device: int, owner: str) -> int:
        self.calls.append(("unpin", device))
        return self.inner.unpin(device, owner)

    def reset_peak(self, device: int, owner: str) -> None:
        self.calls.append(("reset_peak", device))
        self.inner.reset_peak(device, owner)

    def peak(self, device: int, owner: str, *, pinned: bool = False) -> ObservedPeak:
        self.calls.append(("peak", device))
        return self.inner.peak(device, owner, pinned=pinned)

    def cache(self, device: int | None) -> CacheFigures:
        self.calls.append(("cache", device))
        return self.inner.cache(device)

    def empty_cache(self, devices: Sequence[int], *, aggressive: bool) -> tuple[str, ...]:
        self.calls.append(("empty_cache", tuple(devices)))
        return self.inner.empty_cache(devices, aggressive=aggressive)

    def is_oom(self, error: BaseException) -> bool:
        self.calls.append(("is_oom", type(error).__name__))
        return self.inner.is_oom(error)

    def named(self, name: str) -> list[object]:
        return [arg for called, arg in self.calls if called == name]


def _config() -> GateConfig:
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget="256GiB"),
        cleanup=CleanupConfig(after_run=False),
        run=RunConfig(pin_reservation="auto"),
    )


async def test_the_gate_pins_measures_cleans_and_judges_errors_through_the_backend_it_was_given() -> None:
    clock = ManualClock()
    devices = detect(("RTX4090-24GB",), nvml=False, torch=False, clock=clock)
    (gpu,) = devices.simulated
    backend = Recording(SimulatedBackend(devices.simulated))
    finished: list[RunFinished] = []
    async with open_gate(_config(), clock=clock, devices=devices, backend=backend) as gate:
        assert gate.backend is backend
        gate.add_listener(lambda m: finished.append(m) if isinstance(m, RunFinished) else None)
        async with gate.admit(REQUEST) as lease:
            assert backend.named("kind") == [gpu.index]  # "auto" pins where the backend simulates the device
            assert backend.named("pin") == [gpu.index]
            assert backend.named("reset_peak") == [gpu.index]
            assert lease.pinned_mb == lease.reservation_mb == gpu.pins()[lease.lease_id]
            gpu.allocate(lease.lease_id, lease.reservation_mb // 2)
            gpu.free(lease.lease_id)
        await gate.wait_idle()
        assert backend.named("unpin") == [gpu.index]
        assert backend.named("peak") == [gpu.index]
        assert finished[-1].observed.torch_peak_allocated_mb == lease.reservation_mb // 2
        assert gpu.pins() == {}

        with pytest.raises(SimulatedOutOfMemory):
            async with gate.admit(REQUEST) as lease:
                gpu.allocate(lease.lease_id, gpu.total_mb)
        await gate.wait_idle()
        assert backend.named("is_oom") == ["SimulatedOutOfMemory"]
        assert finished[-1].outcome == "oom"

        report = await gate.cleanup_memory(device=gpu.index)
        assert backend.named("cache") == [gpu.index]
        assert report.unavailable == (f"simulated GPU {gpu.index} has no cache: what a run frees is free",)


async def test_without_a_backend_the_gate_picks_the_simulated_one_for_simulated_devices() -> None:
    clock = ManualClock()
    devices = detect(("RTX4090-24GB",), nvml=False, torch=False, clock=clock)
    async with open_gate(_config(), clock=clock, devices=devices) as gate:
        backend = gate.backend
        assert isinstance(backend, SimulatedBackend)
        assert backend.devices == {gpu.index: gpu for gpu in devices.simulated}
        assert backend.kind(devices.simulated[0].index) == "simulated"
        async with gate.admit(REQUEST) as lease:
            assert lease.pinned_mb == lease.reservation_mb
