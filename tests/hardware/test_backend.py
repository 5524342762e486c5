"""The device backends against real parts: simulated GPUs, and real torch on the CPU."""

from __future__ import annotations

import pytest

from vramgate.cleanup import cleanup_memory, reserved_unused_mb
from vramgate.hardware import SimulatedGpu, SimulatedOutOfMemory
from vramgate.hardware.backend import (
    NO_TORCH_PIN,
    Backend,
    NullBackend,
    SimulatedBackend,
    TorchBackend,
    is_oom,
    select_backend,
)
from vramgate.messages import ObservedPeak


def _gpus() -> list[SimulatedGpu]:
    return [SimulatedGpu("RTX4090-24GB", index=1, context_overhead_mb=0), SimulatedGpu("24GB", index=2)]


def test_a_simulated_pin_takes_the_block_and_gives_back_what_the_run_did_not_use() -> None:
    gpu, _ = gpus = _gpus()
    backend: Backend = SimulatedBackend(gpus)
    assert backend.pin(1, "l1", 10_000) == ""
    assert gpu.pins() == {"l1": 10_000}
    assert gpu.free_mb == gpu.total_mb - 10_000
    backend.reset_peak(1, "l1")
    gpu.allocate("l1", 6_000)
    assert backend.peak(1, "l1", pinned=True) == ObservedPeak(
        torch_peak_allocated_mb=6_000, torch_peak_reserved_mb=6_000
    )
    assert backend.unpin(1, "l1") == 4_000  # the unused part of the pin is free at once
    assert backend.unpin(1, "l1") == 0
    gpu.free("l1")
    assert gpu.free_mb == gpu.total_mb


def test_a_simulated_pin_that_does_not_fit_pins_nothing_and_says_why() -> None:
    gpu, lost = gpus = _gpus()
    backend = SimulatedBackend(gpus)
    gpu.add_outside("other-process", gpu.total_mb - 1_000)
    why = backend.pin(1, "l1", 2_000)
    assert "out of memory" in why
    assert "2000 MiB" in why
    assert gpu.pins() == {}
    lost.lose()
    assert "lost" in backend.pin(2, "l1", 1_000)


def test_a_simulated_run_that_allocated_nothing_observed_nothing() -> None:
    backend = SimulatedBackend(_gpus())
    backend.reset_peak(1, "l1")
    assert backend.peak(1, "l1") == ObservedPeak()


def test_a_simulated_device_has_no_cache_and_other_devices_go_to_the_real_backend() -> None:
    backend = SimulatedBackend(_gpus(), NullBackend("torch is not installed"))
    assert backend.kind(1) == backend.kind(2) == "simulated"
    assert backend.kind(0) == "none"
    assert backend.cache(1).unavailable == ("simulated GPU 1 has no cache: what a run frees is free",)
    assert backend.cache(None).unavailable == ("torch is not installed: no CUDA cache to empty",)
    assert backend.pin(0, "l1", 1_000) == NO_TORCH_PIN
    assert backend.peak(0, "l1") == ObservedPeak()
    report = cleanup_memory(device=1, backend=backend)
    assert report.unavailable == ("simulated GPU 1 has no cache: what a run frees is free",)
    assert report.actions[0].startswith("gc.collect x1")
    assert report.torch_reserved_before_mb is None
    assert reserved_unused_mb(backend, 1) is None


def test_out_of_memory_is_told_apart_with_real_torch() -> None:
    torch = pytest.importorskip("torch")
    typed = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    text = RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 23.65 GiB total capacity)")
    other = RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    real = TorchBackend()
    assert real.is_oom(typed)
    assert real.is_oom(text)
    assert not real.is_oom(other)
    assert not real.is_oom(ValueError("CUDA out of memory"))  # not an error torch raises for it
    # A real torch allocation that cannot be satisfied on the CPU is not a GPU's out-of-memory error.
    with pytest.raises(RuntimeError) as raised:
        torch.empty((-1,))
    assert not real.is_oom(raised.value)
    simulated = SimulatedBackend(_gpus(), real)
    gpu = simulated.devices[1]
    with pytest.raises(SimulatedOutOfMemory) as oom:
        gpu.allocate("l1", gpu.total_mb + 1)
    assert simulated.is_oom(oom.value)
    assert not real.is_oom(oom.value)  # torch's backend knows nothing of simulated GPUs
    assert simulated.is_oom(typed)
    assert simulated.is_oom(text)
    assert not simulated.is_oom(other)
    assert all(is_oom(error) for error in (typed, text, oom.value))
    assert not is_oom(other)


def test_without_torch_only_the_text_tells_an_out_of_memory_error() -> None:
    null = NullBackend()
    assert null.is_oom(RuntimeError("CUDA error: out of memory"))
    assert null.is_oom(MemoryError("out of memory"))
    assert not null.is_oom(RuntimeError("device-side assert triggered"))
    assert null.pin(0, "l1", 1_024) == NO_TORCH_PIN
    assert null.cache(0).unused_mb is None


def test_torch_on_the_cpu_pins_and_measures_nothing_and_says_why() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    backend = TorchBackend()
    assert backend.kind(0) == "torch"
    assert backend.pin(0, "l1", 1_024) == NO_TORCH_PIN
    backend.reset_peak(0, "l1")
    assert backend.peak(0, "l1") == ObservedPeak()
    assert backend.cache(None).unavailable == ("CUDA is not available: no CUDA cache to empty",)
    assert backend.empty_cache([0], aggressive=True) == ()


def test_the_backend_is_chosen_from_the_devices_and_the_config() -> None:
    gpus = _gpus()
    chosen = select_backend(gpus)
    assert isinstance(chosen, SimulatedBackend)
    assert isinstance(chosen.real, TorchBackend)  # torch is installed here
    assert chosen.kind(1) == "simulated"
    assert chosen.kind(0) == "torch"
    only = select_backend(gpus, real_gpus=False)
    assert isinstance(only, SimulatedBackend)
    assert only.kind(0) == "none"
    assert only.cache(None).unavailable == ("no real GPU is managed: no CUDA cache to empty",)
    assert isinstance(select_backend((), real_gpus=False), NullBackend)
    assert isinstance(select_backend(()), TorchBackend)
