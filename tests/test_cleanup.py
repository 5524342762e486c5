from __future__ import annotations

import gc
import subprocess
import sys
import weakref

from vramgate.cleanup import cleanup_memory, torch_reserved_unused_mb
from vramgate.hardware.backend import CacheFigures, NullBackend


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _make_cycles(count: int) -> None:
    for _ in range(count):
        a, b = _Node(), _Node()
        a.other, b.other = b, a


def test_collects_reference_cycles_and_counts_them() -> None:
    gc.collect()
    gc.disable()  # keep the automatic collector from taking the cycles first
    try:
        _make_cycles(500)
        report = cleanup_memory()
    finally:
        gc.enable()
    assert report.gc_collected >= 1000
    assert report.actions[0].startswith("gc.collect x1")
    assert report.trigger == "manual"


def test_aggressive_runs_several_passes() -> None:
    report = cleanup_memory(aggressive=True)
    assert report.aggressive
    assert report.actions[0].startswith("gc.collect x3")


def test_with_torch_on_cpu_says_cuda_is_unavailable() -> None:
    import torch

    assert not torch.cuda.is_available()
    report = cleanup_memory(aggressive=True, device=0, import_torch=True)
    assert report.unavailable == ("CUDA is not available: no CUDA cache to empty",)
    assert report.torch_reserved_before_mb is None
    assert report.freed_mb == 0
    assert torch_reserved_unused_mb(0) is None


def test_used_probe_measures_before_and_after() -> None:
    readings = iter([5000, 4200])
    report = cleanup_memory(device=0, used_probe=lambda _device: next(readings))
    assert report.device_used_before_mb == 5000
    assert report.device_used_after_mb == 4200
    assert report.freed_mb == 800


def test_without_torch_loaded_nothing_imports_it() -> None:
    code = (
        "import sys; from vramgate.cleanup import cleanup_memory; r = cleanup_memory(); "
        "assert 'torch' not in sys.modules; print(r.unavailable[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "torch is not loaded: no CUDA cache to empty"


class _CudaCache(NullBackend):
    """A device whose caching allocator holds memory (CUDA, which this machine lacks): the figures alone."""

    def cache(self, device: int | None) -> CacheFigures:
        return CacheFigures(devices=(0,), reserved_mb=2048, allocated_mb=1024)


def _old_garbage() -> weakref.ref[_Node]:
    """A reference cycle that lived long enough to reach the oldest generation, then became garbage."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gc.collect()  # survivors move to the oldest generation
    return weakref.ref(a)


def test_after_a_run_without_a_device_cache_only_young_garbage_is_collected() -> None:
    gc.collect()
    gc.disable()
    try:
        old = _old_garbage()
        _make_cycles(500)
        report = cleanup_memory(device=0, trigger="post_run", backend=NullBackend())
        assert report.gc_collected >= 1000  # the young cycles
        assert old() is not None  # the old one waits for a full collection: none of it is on a device
        assert "young generations" in report.actions[0]
        full = cleanup_memory(device=0, trigger="manual", backend=NullBackend())
        assert old() is None
        assert full.gc_collected >= 2
    finally:
        gc.enable()


def test_after_a_run_with_a_device_cache_every_generation_is_collected() -> None:
    gc.collect()
    gc.disable()
    try:
        old = _old_garbage()
        report = cleanup_memory(device=0, trigger="post_run", backend=_CudaCache())
        assert old() is None  # a tensor held by such a cycle gives its device memory back now
        assert report.actions[0].startswith("gc.collect x1 (")
    finally:
        gc.enable()
