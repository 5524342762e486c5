"""Freeing memory after a run: gc, the torch CUDA cache, and an aggressive mode.

This is an edge of the system (it has effects); the cleanup actor runs it in a worker thread. torch is used only
when this process has already imported it (a server that runs generations has), or when asked to import it: a
process that never touched torch has no CUDA cache to empty, and importing torch costs seconds.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

from vramgate.messages import CleanupReport

_MIB = 1 << 20

#: A callable that measures a device's used memory in MiB (from the monitor's probe), or ``None``.
UsedProbe = Callable[[int], "int | None"]


def _torch(import_torch: bool) -> Any | None:
    module = sys.modules.get("torch")
    if module is None and import_torch:
        try:
            import torch as module
        except ImportError:
            return None
    return module


def _cuda_figures(torch: Any, device: int) -> tuple[int, int]:
    return (
        int(torch.cuda.memory_reserved(device)) // _MIB,
        int(torch.cuda.memory_allocated(device)) // _MIB,
    )


def cleanup_memory(
    aggressive: bool = False,
    *,
    device: int | None = None,
    request_id: str | None = None,
    trigger: Literal["post_run", "proactive", "manual"] = "manual",
    used_probe: UsedProbe | None = None,
    import_torch: bool = False,
) -> CleanupReport:
    """Run gc and empty the torch CUDA cache; report what was freed and what could not be done.

    ``aggressive`` adds several gc passes (for reference cycles that hold tensors), ``torch.cuda.ipc_collect()``
    and resetting the peak statistics. ``device`` is the CUDA ordinal (all devices when ``None``).
    ``used_probe(device)`` measures device-wide used memory before and after (NVML through the monitor's probe).
    """
    started = time.perf_counter()
    actions: list[str] = []
    unavailable: list[str] = []
    used_before = used_probe(device) if used_probe is not None and device is not None else None

    torch = _torch(import_torch)
    cuda = torch is not None and bool(torch.cuda.is_available())
    devices: list[int] = []
    if torch is None:
        unavailable.append("torch is not loaded: no CUDA cache to empty")
    elif not cuda:
        unavailable.append("CUDA is not available: no CUDA cache to empty")
    else:
        count = int(torch.cuda.device_count())
        devices = [device] if device is not None and device < count else list(range(count))
        if device is not None and device >= count:
            unavailable.append(f"CUDA device {device} is not visible to torch ({count} visible)")

    before = [_cuda_figures(torch, d) for d in devices] if devices else []

    collected = 0
    passes = 3 if aggressive else 1
    for _ in range(passes):
        collected += gc.collect()
    actions.append(f"gc.collect x{passes} ({collected} objects)")

    if devices and torch is not None:
        for d in devices:
            with torch.cuda.device(d):
                torch.cuda.empty_cache()
                if aggressive:
                    torch.cuda.ipc_collect()
                    torch.cuda.reset_peak_memory_stats(d)
        actions.append("torch.cuda.empty_cache()")
        if aggressive:
            actions.extend(["torch.cuda.ipc_collect()", "torch.cuda.reset_peak_memory_stats()"])

    after = [_cuda_figures(torch, d) for d in devices] if devices else []
    used_after = used_probe(device) if used_probe is not None and device is not None else None

    reserved_before = sum(r for r, _ in before) if before else None
    reserved_after = sum(r for r, _ in after) if after else None
    freed = 0
    if reserved_before is not None and reserved_after is not None:
        freed = max(0, reserved_before - reserved_after)
    if used_before is not None and used_after is not None:
        freed = max(freed, used_before - used_after)
    return CleanupReport(
        device=device,
        request_id=request_id,
        aggressive=aggressive,
        trigger=trigger,
        gc_collected=collected,
        torch_reserved_before_mb=reserved_before,
        torch_reserved_after_mb=reserved_after,
        torch_allocated_before_mb=sum(a for _, a in before) if before else None,
        torch_allocated_after_mb=sum(a for _, a in after) if after else None,
        device_used_before_mb=used_before,
        device_used_after_mb=used_after,
        freed_mb=freed,
        actions=tuple(actions),
        unavailable=tuple(unavailable),
        seconds=round(time.perf_counter() - started, 6),
    )


def torch_reserved_unused_mb(device: int) -> int | None:
    """Memory torch's caching allocator holds but does not use on ``device`` (``None`` without torch/CUDA)."""
    torch = _torch(False)
    if torch is None or not torch.cuda.is_available() or device >= torch.cuda.device_count():
        return None
    reserved, allocated = _cuda_figures(torch, device)
    return max(0, reserved - allocated)
