"""Freeing memory after a run: gc, the devices' caches (torch's CUDA cache), and an aggressive mode.

This is an edge of the system (it has effects); the cleanup actor runs it in a worker thread. The caches are
read and emptied through a :class:`~vramgate.hardware.backend.Backend`. torch's is used only when this process
has already imported torch (a server that runs generations has), or when asked to import it: a process that never
touched torch has no CUDA cache to empty, and importing torch costs seconds.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Literal

from vramgate.hardware.backend import Backend, TorchBackend
from vramgate.messages import CleanupReport

#: A callable that measures a device's used memory in MiB (from the monitor's probe), or ``None``.
UsedProbe = Callable[[int], "int | None"]


def cleanup_memory(
    aggressive: bool = False,
    *,
    device: int | None = None,
    request_id: str | None = None,
    trigger: Literal["post_run", "proactive", "manual"] = "manual",
    used_probe: UsedProbe | None = None,
    import_torch: bool = False,
    backend: Backend | None = None,
) -> CleanupReport:
    """Run gc and empty the devices' caches; report what was freed and what could not be done.

    The collection covers every generation, except after a run (``trigger="post_run"``, not ``aggressive``)
    on a device without a cache that Python objects hold (simulated, or no CUDA): then the young generations only.

    ``aggressive`` adds several gc passes (for reference cycles that hold tensors) and, on torch,
    ``torch.cuda.ipc_collect()`` and resetting the peak statistics. ``device`` is the device index (all devices
    when ``None``). ``backend`` empties the caches (by default :class:`~vramgate.hardware.backend.TorchBackend`,
    importing torch only with ``import_torch``). ``used_probe(device)`` measures device-wide used memory before
    and after (NVML through the monitor's probe).
    """
    started = time.perf_counter()
    backend = backend if backend is not None else TorchBackend(import_torch=import_torch)
    actions: list[str] = []
    used_before = used_probe(device) if used_probe is not None and device is not None else None
    before = backend.cache(device)

    collected = 0
    passes = 3 if aggressive else 1
    if aggressive or trigger != "post_run" or before.devices:
        for _ in range(passes):
            collected += gc.collect()
        actions.append(f"gc.collect x{passes} ({collected} objects)")
    else:
        # No caching allocator here holds device memory for Python objects (a simulated device frees what a run
        # frees; no CUDA): a full collection would give no device anything back, and walks the whole heap (every
        # waiting request's objects) holding the interpreter. The young generations hold what the run left.
        collected = gc.collect(1)
        actions.append(f"gc.collect x1 of the young generations ({collected} objects): no device cache here")

    after = before
    if before.devices:
        actions.extend(backend.empty_cache(before.devices, aggressive=aggressive))
        after = backend.cache(device)
    used_after = used_probe(device) if used_probe is not None and device is not None else None

    reserved_before = before.reserved_mb
    reserved_after = after.reserved_mb
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
        torch_allocated_before_mb=before.allocated_mb,
        torch_allocated_after_mb=after.allocated_mb,
        device_used_before_mb=used_before,
        device_used_after_mb=used_after,
        freed_mb=freed,
        actions=tuple(actions),
        unavailable=before.unavailable,
        seconds=round(time.perf_counter() - started, 6),
    )


def torch_reserved_unused_mb(device: int) -> int | None:
    """Memory torch's caching allocator holds but does not use on ``device`` (``None`` without torch/CUDA)."""
    return reserved_unused_mb(TorchBackend(), device)


def reserved_unused_mb(backend: Backend, device: int) -> int | None:
    """Memory ``backend``'s cache holds but does not use on ``device`` (``None`` when it cannot tell)."""
    figures = backend.cache(device)
    return figures.unused_mb if figures.devices == (device,) else None
