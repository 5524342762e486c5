"""Peak memory of a run as torch's CUDA caching allocator sees it, and out-of-memory recognition."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramgate.hardware.backend import is_torch_oom
from vramgate.messages import ObservedPeak

if TYPE_CHECKING:
    import torch

_MIB = 1 << 20


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
    return is_torch_oom(exc)
