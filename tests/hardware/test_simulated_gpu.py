from __future__ import annotations

import pytest

from vramgate.clock import ManualClock
from vramgate.errors import CapacityError, InvalidParameter, SystemFault, UnknownGPU
from vramgate.hardware import (
    SimulatedDeviceLost,
    SimulatedGpu,
    SimulatedOutOfMemory,
    SimulatedProbe,
)
from vramgate.messages import DeviceSample, decode_json, encode_json
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG


def test_capacity_comes_from_the_catalog_or_a_size() -> None:
    h100 = SimulatedGpu("H100-80GB", context_overhead_mb=0)
    assert h100.total_mb == DEFAULT_GPU_CATALOG.get("H100-80GB").memory_mib == 81559
    assert h100.free_mb == 81559
    assert SimulatedGpu("NVIDIA H100 80GB HBM3").name == "H100-80GB"
    assert SimulatedGpu("24GB", context_overhead_mb=0).total_mb == 24 * 1024
    with pytest.raises(UnknownGPU):
        SimulatedGpu("not-a-gpu")


def test_context_overhead_is_used_memory() -> None:
    gpu = SimulatedGpu("24GB", context_overhead_mb=500)
    assert gpu.used_mb == 500
    assert gpu.free_mb == 24576 - 500
    with pytest.raises(InvalidParameter):
        SimulatedGpu("1GB", context_overhead_mb=2000)


def test_allocate_and_free_by_owner() -> None:
    gpu = SimulatedGpu("24GB", context_overhead_mb=0)
    gpu.allocate("run-1", 1000)
    gpu.allocate("run-2", 3000)
    gpu.allocate("run-1", 500)
    assert gpu.allocations() == {"run-1": 1500, "run-2": 3000}
    assert gpu.used_mb == 4500
    assert gpu.free(owner="run-1", mb=500) == 500
    assert gpu.allocations()["run-1"] == 1000
    assert gpu.free("run-2") == 3000
    assert gpu.allocations() == {"run-1": 1000}
    assert gpu.free_mb == 24576 - 1000
    assert gpu.free("nobody") == 0
    with pytest.raises(InvalidParameter):
        gpu.free("run-1", 1001)
    with pytest.raises(InvalidParameter):
        gpu.free("nobody", 5)
    with pytest.raises(InvalidParameter):
        gpu.allocate("run-1", -1)


def test_oom_at_the_exact_boundary() -> None:
    gpu = SimulatedGpu("24GB", context_overhead_mb=512)
    gpu.add_outside("other", 1000)
    free = gpu.free_mb
    assert free == 24576 - 512 - 1000
    with pytest.raises(SimulatedOutOfMemory) as caught:
        gpu.allocate("run", free + 1)
    assert caught.value.requested_mb == free + 1
    assert caught.value.free_mb == free
    assert isinstance(caught.value, CapacityError)
    assert gpu.allocations() == {}  # a failed allocation takes nothing
    gpu.allocate("run", free)  # exactly the capacity succeeds
    assert gpu.free_mb == 0
    with pytest.raises(SimulatedOutOfMemory):
        gpu.allocate("run", 1)
    gpu.allocate("run", 0)


def test_outside_consumers_come_and_go() -> None:
    clock = ManualClock()
    gpu = SimulatedGpu("24GB", clock=clock, context_overhead_mb=0)
    gpu.add_outside("notebook", 4000)
    gpu.add_outside("burst", 2000, until=10.0)
    assert gpu.outside() == {"notebook": 4000, "burst": 2000}
    assert gpu.used_mb == 6000
    clock.advance(9.999)
    assert gpu.used_mb == 6000
    clock.advance(0.001)
    assert gpu.outside() == {"notebook": 4000}
    assert gpu.used_mb == 4000
    gpu.add_outside("notebook", 1000)  # replaces
    assert gpu.outside_mb == 1000
    assert gpu.remove_outside("notebook") == 1000
    assert gpu.remove_outside("notebook") == 0
    assert gpu.used_mb == 0
    with pytest.raises(SimulatedOutOfMemory):
        gpu.add_outside("huge", 24577)
    with pytest.raises(InvalidParameter):
        SimulatedGpu("24GB").add_outside("x", 1, until=5.0)  # no clock to expire it by


def test_expired_outside_memory_can_be_allocated() -> None:
    clock = ManualClock()
    gpu = SimulatedGpu("10GB", clock=clock, context_overhead_mb=0)
    gpu.add_outside("other", 10240, until=5.0)
    with pytest.raises(SimulatedOutOfMemory):
        gpu.allocate("run", 1)
    clock.advance(5.0)
    gpu.allocate("run", 10240)


def test_peak_tracking_per_owner() -> None:
    gpu = SimulatedGpu("24GB", context_overhead_mb=0)
    gpu.allocate("run", 5000)
    gpu.allocate("run", 3000)
    gpu.free("run", 6000)
    assert gpu.peak_mb("run") == 8000
    gpu.reset_peak("run")
    assert gpu.peak_mb("run") == 2000
    gpu.allocate("run", 1000)
    assert gpu.peak_mb("run") == 3000
    assert gpu.peak_mb() == 8000
    gpu.reset_peak()
    assert gpu.peak_mb() == 3000
    assert gpu.peak_mb("never") == 0


def test_sample_reports_the_accounting() -> None:
    gpu = SimulatedGpu("A100-80GB", index=3, context_overhead_mb=400)
    gpu.allocate("run", 10000)
    gpu.add_outside("other", 2000)
    sample = gpu.sample()
    assert sample.backend == "simulated"
    assert sample.simulated
    assert (sample.index, sample.name, sample.total_mb) == (3, "A100-80GB", 81920)
    assert sample.used_mb == 12400
    assert sample.free_mb == 81920 - 12400
    assert sample.torch is not None
    assert sample.torch.allocated_mb == 10000
    assert sample.uuid.startswith("SIM-")
    # a sample is an ordinary message: it survives the JSON codec
    assert decode_json(encode_json(sample), DeviceSample) == sample


def test_lost_device() -> None:
    gpu = SimulatedGpu("24GB", context_overhead_mb=0)
    gpu.allocate("run", 100)
    gpu.lose()
    sample = gpu.sample()
    assert sample.lost
    assert sample.free_mb == 0
    with pytest.raises(SimulatedDeviceLost) as caught:
        gpu.allocate("run", 1)
    assert isinstance(caught.value, SystemFault)
    probe_reading = SimulatedProbe([gpu]).sample()
    assert any("lost" in warning for warning in probe_reading.warnings)
    gpu.recover()
    assert not gpu.sample().lost
    assert gpu.allocations() == {}


def _script(clock: ManualClock) -> list[DeviceSample]:
    gpu = SimulatedGpu("L40S-48GB", index=1, clock=clock)
    samples = []
    for step in range(50):
        gpu.allocate(f"run-{step % 3}", 100 * (step % 7))
        if step % 5 == 0:
            gpu.add_outside(f"other-{step}", 300, until=clock.now() + 2.5)
        if step % 4 == 3:
            gpu.free(f"run-{step % 3}")
        clock.advance(1.0)
        samples.append(gpu.sample())
    return samples


def test_deterministic_under_an_injected_clock() -> None:
    first = _script(ManualClock())
    second = _script(ManualClock())
    assert [encode_json(sample) for sample in first] == [encode_json(sample) for sample in second]
    assert len({sample.used_mb for sample in first}) > 5  # the script really moves memory


def test_probe_rejects_duplicate_indices() -> None:
    with pytest.raises(InvalidParameter):
        SimulatedProbe([SimulatedGpu("24GB", index=0), SimulatedGpu("12GB", index=0)])
    probe = SimulatedProbe([SimulatedGpu("24GB", index=0), SimulatedGpu("12GB", index=1)])
    assert [device.index for device in probe.sample().devices] == [0, 1]
    assert not probe.blocking
