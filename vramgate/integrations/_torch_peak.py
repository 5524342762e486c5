"""Peak memory of a run as torch's CUDA caching allocator sees it, and out-of-memory recognition."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramgate.messages import ObservedPeak

if TYPE_CHECKING:
    import torch

_MIB = 1 << 20

# Texts of the out-of-memory errors torch raises as plain RuntimeError (older CUDA paths, cuBLAS/cuDNN, MPS).
_OOM_TEXTS = ("cuda out of memory", "cuda error: out of memory", "mps backend out of memory", "hip out of memory")


def is_cuda(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA device that torch can measure here."""
    import torch

    return device.type == "cuda" and torch.cuda.is_available()


def reset_peak(device: torch.device) -> None:
    """Start a new peak window on ``device`` (a no-op where torch cannot measure the device)."""
    import torch

    if is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def observed_peak(device: str | torch.device) -> ObservedPeak:
    """The allocator's peaks on ``device`` since the last reset, in MiB.

    On a device torch cannot measure (the CPU, or CUDA without a driver) every field is ``None``: nothing is
    guessed. NVML's device-wide peak is the monitor's to report, so ``nvml_peak_used_mb`` stays ``None`` here.
    """
    import torch

    dev = torch.device(device)
    if not is_cuda(dev):
        return ObservedPeak()
    torch.cuda.synchronize(dev)
    allocated = int(torch.cuda.max_memory_allocated(dev))
    reserved = int(torch.cuda.max_memory_reserved(dev))
    return ObservedPeak(
        torch_peak_allocated_mb=-(-allocated // _MIB),
        torch_peak_reserved_mb=-(-reserved // _MIB),
    )


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error from torch (the typed one or a RuntimeError with its text)."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _OOM_TEXTS)
