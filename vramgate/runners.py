"""Workloads that run inside a lease: a simulated generation, and a torch workload that really allocates.

* :class:`SimulatedRun` - on a simulated GPU: allocates the run's true peak (the plan's estimate times a
  per-request factor, so that estimates are judged against a truth they do not know), reports step progress
  over time compressed by ``time_scale``, frees its memory and reports its peak;
* :class:`TorchWorkload` - on a real CUDA device: allocates the admitted amount (less a share for what the
  generation would not touch) with torch, holds it for the compressed run time, and frees it.

Both last the time an estimator without learned corrections gives the plan (``truth``: the gate's catalogs and
calibration), compressed by ``time_scale``: a stand-in run's time is what it is, whatever the gate has learned.
Lasting the plan's corrected time instead would teach the gate its own corrections back, and any delay in running
it (a busy event loop) would grow them run after run.

Both are async callables taking a :class:`~vramgate.Lease`, for :meth:`vramgate.gate.Gate.run` or an
``async with gate.admit(...)`` block.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING

import anyio
import msgspec

from vramgate.clock import Clock
from vramgate.errors import VramgateError

if TYPE_CHECKING:
    from vramgate._ticket import Lease
    from vramgate.messages import Plan
    from vramgate.policy.estimate import Estimator

_KEY = msgspec.msgpack.Encoder(order="deterministic")

_MIB = 1 << 20


def truth_factor(request_id: str, *, low: float = 0.85, high: float = 0.99) -> float:
    """A deterministic factor in ``[low, high]`` for a request: its true peak over the estimate."""
    digest = hashlib.sha256(request_id.encode()).digest()
    return low + (high - low) * int.from_bytes(digest[:4], "big") / 0xFFFFFFFF


class RunTruth:
    """How long a stand-in run lasts before compression: the time an estimator with a gate's catalogs and
    calibration and nothing learned gives its plan (remembered for the last ``size`` plans: a server sees the same
    sizes again and again); the plan's own estimate for a model the catalogs do not know."""

    def __init__(self, estimator: Estimator, *, size: int = 1024) -> None:
        from vramgate.policy.estimate import Estimator

        self.estimator = Estimator(estimator.models, estimator.gpus, estimator.constants)
        self.size = size
        self._seconds: dict[bytes, float] = {}

    def seconds(self, plan: Plan) -> float:
        gpu = plan.requirement.gpu or plan.gpu
        key = _KEY.encode((plan.params, gpu))
        seconds = self._seconds.get(key)
        if seconds is None:
            seconds = plan.requirement.estimated_time_seconds
            with contextlib.suppress(VramgateError):  # a model the catalogs do not know
                seconds = self.estimator.estimate(plan.params, gpu).estimated_time_seconds
            if len(self._seconds) >= self.size:
                self._seconds.clear()
            self._seconds[key] = seconds
        return seconds


def stand_in_seconds(lease: Lease, truth: RunTruth | None, time_scale: float, min_seconds: float) -> float:
    """How long a stand-in run of ``lease`` lasts: ``truth``'s time for its plan (the plan's own estimate when
    there is none), times ``time_scale``, at least ``min_seconds``."""
    seconds = truth.seconds(lease.plan) if truth is not None else lease.plan.requirement.estimated_time_seconds
    return max(min_seconds, seconds * time_scale)


class SimulatedRun:
    """Run a lease on its simulated GPU: allocate, make progress step by step, free.

    ``time_scale`` compresses the plan's estimated seconds (0.01: a 1,000 s run takes 10 s); the run takes at
    least ``min_seconds``. ``clock`` paces the steps (the gate's clock, virtual in tests). The run allocates
    under the lease's id, so on a pinned lease it draws from the pinned block first, and its peak (what the gate
    reports as observed) is its own allocation, not the pin. ``truth``: see :func:`stand_in_seconds` (``None``:
    the plan's own estimate, as a test that pins it wants).
    """

    def __init__(
        self, clock: Clock, *, time_scale: float = 0.01, min_seconds: float = 0.0, truth: RunTruth | None = None
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.clock = clock
        self.time_scale = time_scale
        self.min_seconds = min_seconds
        self.truth = truth

    def seconds(self, lease: Lease) -> float:
        return stand_in_seconds(lease, self.truth, self.time_scale, self.min_seconds)

    async def __call__(self, lease: Lease) -> int:
        """Run; returns the MiB the run held at its peak."""
        device = lease.simulated
        if device is None:
            raise RuntimeError(f"device {lease.device} is not simulated; use TorchWorkload on a real GPU")
        peak = int(lease.plan.requirement.vram_mb * truth_factor(lease.request_id))
        steps = lease.params.steps
        per_step = self.seconds(lease) / steps
        device.reset_peak(lease.lease_id)
        device.allocate(lease.lease_id, peak)
        try:
            for step in range(1, steps + 1):
                await self.clock.sleep(per_step)
                lease.progress_nowait(step, steps)
        finally:
            device.free(lease.lease_id)
        return peak


class TorchWorkload:
    """Hold the admitted memory on a real CUDA device with torch for the compressed run time.

    ``fill`` is the share of the reservation actually allocated (a real run peaks below its reservation).
    """

    def __init__(
        self, *, time_scale: float = 0.01, fill: float = 0.9, min_seconds: float = 0.5, truth: RunTruth | None = None
    ) -> None:
        self.time_scale = time_scale
        self.fill = fill
        self.min_seconds = min_seconds
        self.truth = truth

    async def __call__(self, lease: Lease) -> int:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("TorchWorkload needs CUDA")
        mb = int(lease.reservation_mb * self.fill)
        device = torch.device("cuda", lease.device)
        torch.cuda.reset_peak_memory_stats(device)
        block = torch.empty(mb * _MIB, dtype=torch.uint8, device=device)
        block.fill_(1)
        steps = lease.params.steps
        seconds = stand_in_seconds(lease, self.truth, self.time_scale, self.min_seconds)
        try:
            for step in range(1, steps + 1):
                await anyio.sleep(seconds / steps)
                lease.progress_nowait(step, steps)
            torch.cuda.synchronize(device)
            peak_reserved = int(torch.cuda.max_memory_reserved(device)) // _MIB
            peak_allocated = int(torch.cuda.max_memory_allocated(device)) // _MIB
            if lease.pinned_mb:  # the pinned segment is reserved whatever the run used: report allocations only
                lease.report(torch_peak_allocated_mb=peak_allocated)
            else:
                lease.report(peak_vram_mb=peak_reserved, torch_peak_allocated_mb=peak_allocated)
        finally:
            del block
            torch.cuda.empty_cache()
        return mb
