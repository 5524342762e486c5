"""The effects a gate has on its devices, behind one small protocol.

A :class:`Backend` pins a lease's reservation on a device and gives it back, resets and reads the peak a run
reached, reads and empties a caching allocator's cache, and tells an out-of-memory error apart from other errors.
:func:`~vramgate.gate.open_gate` takes one as ``backend=`` (as httpcore takes ``network_backend=``), or picks one
with :func:`select_backend` from its devices and configuration:

* :class:`SimulatedBackend` over the :class:`~vramgate.hardware.SimulatedGpu` devices: a pin is a block taken on
  the device at once, the peak is what the lease's id allocated, and there is no cache (what a run frees goes back
  to the device); every other device is handed to the backend it is given for real devices;
* :class:`TorchBackend` for real CUDA devices: a pin is a segment of torch's caching allocator, peaks and cache
  figures are the allocator's. torch is used only when the process has imported it (or, with ``import_torch``,
  when it can be imported), and ``torch.cuda`` only when CUDA is available; otherwise it does what
  :class:`NullBackend` does and says why;
* :class:`NullBackend` for a box where nothing can be pinned or measured (no torch): pins are refused with the
  reason, peaks are unknown, there is no cache to empty, and out-of-memory errors are told by their text.

Backends are called on the gate's event-loop thread (pins, peaks) or in a worker thread (cleanup); they keep no
state of their own beyond the devices they are given.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from vramgate.hardware.simulated import SimulatedDeviceLost, SimulatedGpu, SimulatedOutOfMemory
from vramgate.messages import ObservedPeak

_MIB = 1 << 20

#: How a backend handles a device: a simulated GPU, a CUDA device through torch, or nothing at all.
DeviceKind = Literal["simulated", "torch", "none"]

#: Why a real device cannot be pinned without torch and CUDA.
NO_TORCH_PIN = "pinning a real device needs torch with CUDA in this process"


@dataclass(frozen=True, slots=True)
class CacheFigures:
    """What a caching allocator holds on ``devices`` (the ones a cleanup covers), in MiB summed over them, or
    ``None`` when no device could be measured; ``unavailable`` says what could not be measured or emptied."""

    devices: tuple[int, ...] = ()
    reserved_mb: int | None = None
    allocated_mb: int | None = None
    unavailable: tuple[str, ...] = ()

    @property
    def unused_mb(self) -> int | None:
        """Reserved but not allocated (what emptying the cache would give back), ``None`` when unknown."""
        if self.reserved_mb is None or self.allocated_mb is None:
            return None
        return max(0, self.reserved_mb - self.allocated_mb)


class Backend(Protocol):
    """The effects on devices (see the module documentation). ``device`` is the gate's device index."""

    def kind(self, device: int) -> DeviceKind:
        """How this backend handles ``device``."""
        ...

    def pin(self, device: int, owner: str, mb: int) -> str:
        """Take ``mb`` MiB on ``device`` for ``owner`` now; ``""`` when pinned, else why not (nothing pinned)."""
        ...

    def unpin(self, device: int, owner: str) -> int:
        """Give ``owner``'s pin on ``device`` back; the MiB this frees on the device now (0 without a pin)."""
        ...

    def reset_peak(self, device: int, owner: str) -> None:
        """Start a new peak window for ``owner`` on ``device``."""
        ...

    def peak(self, device: int, owner: str, *, pinned: bool = False) -> ObservedPeak:
        """What ``owner`` reached on ``device`` since the window started (``pinned``: a pin is held, so reserved
        figures tell nothing); empty when nothing was observed."""
        ...

    def cache(self, device: int | None) -> CacheFigures:
        """The cache figures of ``device`` (of every device when ``None``)."""
        ...

    def empty_cache(self, devices: Sequence[int], *, aggressive: bool) -> tuple[str, ...]:
        """Empty the cache of ``devices`` (as :meth:`cache` named them); the actions taken."""
        ...

    def is_oom(self, error: BaseException) -> bool:
        """Whether ``error`` is an out-of-memory error of a device this backend handles."""
        ...


def is_oom_text(error: BaseException) -> bool:
    """An out-of-memory error told by its text: a ``RuntimeError`` or ``MemoryError`` saying "out of memory"."""
    return isinstance(error, (RuntimeError, MemoryError)) and "out of memory" in str(error).lower()


def is_torch_oom(error: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (when this process has imported torch), or an error told by its text."""
    torch = sys.modules.get("torch")
    if torch is not None:
        oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
        if oom_type is not None and isinstance(error, oom_type):
            return True
    return is_oom_text(error)


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is any backend's out-of-memory error: torch's, a CUDA ``RuntimeError``, or a simulated one."""
    return isinstance(error, SimulatedOutOfMemory) or is_torch_oom(error)


class NullBackend:
    """A backend that can pin and measure nothing (a box without torch): it says ``reason`` where it cannot act."""

    def __init__(self, reason: str = "torch is not installed") -> None:
        self.reason = reason

    def kind(self, device: int) -> DeviceKind:
        return "none"

    def pin(self, device: int, owner: str, mb: int) -> str:
        return NO_TORCH_PIN

    def unpin(self, device: int, owner: str) -> int:
        return 0

    def reset_peak(self, device: int, owner: str) -> None:
        return None

    def peak(self, device: int, owner: str, *, pinned: bool = False) -> ObservedPeak:
        return ObservedPeak()

    def cache(self, device: int | None) -> CacheFigures:
        return CacheFigures(unavailable=(f"{self.reason}: no CUDA cache to empty",))

    def empty_cache(self, devices: Sequence[int], *, aggressive: bool) -> tuple[str, ...]:
        return ()

    def is_oom(self, error: BaseException) -> bool:
        return is_oom_text(error)


class TorchBackend:
    """Real CUDA devices through torch's caching allocator (see the module documentation).

    The gate's device index is used as the CUDA ordinal. ``import_torch`` imports torch when the process has not.
    """

    def __init__(self, *, import_torch: bool = False) -> None:
        self.import_torch = import_torch

    def _torch(self) -> tuple[Any, str]:
        """torch with CUDA available, or ``None`` and why not."""
        module = sys.modules.get("torch")
        if module is None and self.import_torch:
            try:
                import torch as module
            except ImportError:
                return None, "torch is not installed"
        if module is None:
            return None, "torch is not loaded"
        if not module.cuda.is_available():
            return None, "CUDA is not available"
        return module, ""

    def _visible(self, device: int) -> Any:
        torch, _ = self._torch()
        return torch if torch is not None and 0 <= device < int(torch.cuda.device_count()) else None

    def kind(self, device: int) -> DeviceKind:
        return "torch"

    def pin(self, device: int, owner: str, mb: int) -> str:
        """Allocate ``mb`` MiB through the caching allocator and free it: the segment stays reserved for this
        process (the run's allocations reuse it) until a cleanup empties the cache."""
        torch, _ = self._torch()
        if torch is None:
            return NO_TORCH_PIN
        try:
            block = torch.empty(mb * _MIB, dtype=torch.uint8, device=torch.device("cuda", device))
        except Exception as exc:
            if not self.is_oom(exc):
                raise
            return f"device {device}: {mb} MiB does not fit now: {exc}"
        del block
        return ""

    def unpin(self, device: int, owner: str) -> int:
        return 0  # the segment stays in torch's cache, as any run's cached memory does, until a cleanup

    def reset_peak(self, device: int, owner: str) -> None:
        torch = self._visible(device)
        if torch is not None:
            torch.cuda.reset_peak_memory_stats(device)

    def peak(self, device: int, owner: str, *, pinned: bool = False) -> ObservedPeak:
        torch = self._visible(device)
        if torch is None:
            return ObservedPeak()
        allocated = int(torch.cuda.max_memory_allocated(device)) // _MIB
        if pinned:  # the pinned segment is reserved whatever the run used: only allocations tell
            return ObservedPeak(torch_peak_allocated_mb=allocated)
        reserved = int(torch.cuda.max_memory_reserved(device)) // _MIB
        return ObservedPeak(torch_peak_allocated_mb=allocated, torch_peak_reserved_mb=reserved)

    def cache(self, device: int | None) -> CacheFigures:
        """Every visible device when ``device`` is ``None`` or not visible to torch (its ordinal may differ from
        the gate's index: emptying every cache of this process is then the safe choice)."""
        torch, why = self._torch()
        if torch is None:
            return CacheFigures(unavailable=(f"{why}: no CUDA cache to empty",))
        count = int(torch.cuda.device_count())
        unavailable: tuple[str, ...] = ()
        if device is not None and device < count:
            devices: tuple[int, ...] = (device,)
        else:
            devices = tuple(range(count))
            if device is not None:
                unavailable = (f"CUDA device {device} is not visible to torch ({count} visible)",)
        if not devices:
            return CacheFigures(unavailable=unavailable)
        reserved = sum(int(torch.cuda.memory_reserved(d)) // _MIB for d in devices)
        allocated = sum(int(torch.cuda.memory_allocated(d)) // _MIB for d in devices)
        return CacheFigures(devices=devices, reserved_mb=reserved, allocated_mb=allocated, unavailable=unavailable)

    def empty_cache(self, devices: Sequence[int], *, aggressive: bool) -> tuple[str, ...]:
        torch, _ = self._torch()
        if torch is None or not devices:
            return ()
        for d in devices:
            with torch.cuda.device(d):
                torch.cuda.empty_cache()
                if aggressive:
                    torch.cuda.ipc_collect()
                    torch.cuda.reset_peak_memory_stats(d)
        if aggressive:
            return ("torch.cuda.empty_cache()", "torch.cuda.ipc_collect()", "torch.cuda.reset_peak_memory_stats()")
        return ("torch.cuda.empty_cache()",)

    def is_oom(self, error: BaseException) -> bool:
        return is_torch_oom(error)


class SimulatedBackend:
    """The simulated GPUs (by index), and ``real`` for every other device (see the module documentation)."""

    def __init__(self, devices: Sequence[SimulatedGpu], real: Backend | None = None) -> None:
        self.devices = {gpu.index: gpu for gpu in devices}
        self.real: Backend = real if real is not None else NullBackend("no real GPU is managed")

    def kind(self, device: int) -> DeviceKind:
        return "simulated" if device in self.devices else self.real.kind(device)

    def pin(self, device: int, owner: str, mb: int) -> str:
        gpu = self.devices.get(device)
        if gpu is None:
            return self.real.pin(device, owner, mb)
        try:
            gpu.pin(owner, mb)
        except (SimulatedOutOfMemory, SimulatedDeviceLost) as exc:
            return str(exc)
        return ""

    def unpin(self, device: int, owner: str) -> int:
        gpu = self.devices.get(device)
        return gpu.unpin(owner) if gpu is not None else self.real.unpin(device, owner)

    def reset_peak(self, device: int, owner: str) -> None:
        gpu = self.devices.get(device)
        if gpu is None:
            self.real.reset_peak(device, owner)
        else:
            gpu.reset_peak(owner)

    def peak(self, device: int, owner: str, *, pinned: bool = False) -> ObservedPeak:
        gpu = self.devices.get(device)
        if gpu is None:
            return self.real.peak(device, owner, pinned=pinned)
        peak = gpu.peak_mb(owner)  # allocations only: a pin is not a use
        if peak == 0:  # the run allocated nothing on the device: nothing was observed
            return ObservedPeak()
        return ObservedPeak(torch_peak_allocated_mb=peak, torch_peak_reserved_mb=peak)

    def cache(self, device: int | None) -> CacheFigures:
        if device is not None and device in self.devices:
            return CacheFigures(unavailable=(f"simulated GPU {device} has no cache: what a run frees is free",))
        return self.real.cache(device)

    def empty_cache(self, devices: Sequence[int], *, aggressive: bool) -> tuple[str, ...]:
        return self.real.empty_cache([d for d in devices if d not in self.devices], aggressive=aggressive)

    def is_oom(self, error: BaseException) -> bool:
        return isinstance(error, SimulatedOutOfMemory) or self.real.is_oom(error)


def select_backend(simulated: Sequence[SimulatedGpu], *, real_gpus: bool = True) -> Backend:
    """The backend for a gate over these simulated GPUs and, with ``real_gpus``, the machine's real ones:
    torch's where torch is installed (it is imported only by the process's own code), else one that says so."""
    real: Backend
    if not real_gpus:
        real = NullBackend("no real GPU is managed")
    elif "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        real = TorchBackend()
    else:
        real = NullBackend("torch is not installed")
    return SimulatedBackend(simulated, real) if simulated else real


__all__ = [
    "NO_TORCH_PIN",
    "Backend",
    "CacheFigures",
    "DeviceKind",
    "NullBackend",
    "SimulatedBackend",
    "TorchBackend",
    "is_oom",
    "is_oom_text",
    "is_torch_oom",
    "select_backend",
]
