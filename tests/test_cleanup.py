from __future__ import annotations

import gc
import subprocess
import sys

from vramgate.cleanup import cleanup_memory, torch_reserved_unused_mb


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
