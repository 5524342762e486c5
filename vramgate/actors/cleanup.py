"""The cleanup actor: frees memory after every run, and proactively when a device stays short of memory.

An edge actor (it has effects): :func:`vramgate.cleanup.cleanup_memory` runs in a worker thread, so gc and
``torch.cuda.empty_cache()`` never block the event loop; the caches are the ``backend``'s
(:mod:`vramgate.hardware.backend`). Its :class:`~vramgate.messages.CleanupReport` goes to the
actor named ``reports_to`` (the gate's router), where it is counted and recorded.

Post-run cleanups are coalesced: at most one every ``min_interval_s`` seconds of the system's clock; runs that end
within that interval share the next one (a full gc pass holds the interpreter, so a busy server must not pay for
one per run).

Proactive cleanup: when a device's free memory stays below ``below_fraction`` of its capacity for ``after_s``
seconds (judged on the monitor's samples) while torch holds at least ``min_unused_mb`` reserved but unused on
it, the cache is emptied without waiting for a run to end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import anyio
import msgspec

from vramgate.actors.actor import Actor
from vramgate.actors.envelope import Envelope
from vramgate.cleanup import cleanup_memory, reserved_unused_mb
from vramgate.hardware.backend import Backend, TorchBackend
from vramgate.messages import CleanupReport, Message, ResourceSample, RunFinished
from vramgate.messages.lifecycle import CleanupRequest, DeferredCleanup

#: Reports how much memory torch holds reserved but unused on a device (``None`` without torch/CUDA).
UnusedProbe = Callable[[int], "int | None"]


class CleanupActor(Actor[Message]):
    """Runs cleanups after runs (``RunFinished``), on request (``CleanupRequest``) and proactively (samples)."""

    def __init__(
        self,
        *,
        reports_to: str,
        after_run: bool = True,
        aggressive: bool = False,
        below_fraction: float = 0.05,
        after_s: float = 10.0,
        min_unused_mb: int = 512,
        unused_probe: UnusedProbe | None = None,
        cuda_ordinal: Callable[[int], int | None] = lambda index: index,
        min_interval_s: float = 1.0,
        backend: Backend | None = None,
    ) -> None:
        self.backend: Backend = backend if backend is not None else TorchBackend()
        self.reports_to = reports_to
        self.after_run = after_run
        self.aggressive = aggressive
        self.below_fraction = below_fraction
        self.after_s = after_s
        self.min_unused_mb = min_unused_mb
        self.unused_probe: UnusedProbe = unused_probe or (lambda device: reserved_unused_mb(self.backend, device))
        self.cuda_ordinal = cuda_ordinal
        self.min_interval_s = min_interval_s
        self._low_since: dict[int, float] = {}
        self._last_post_run: float | None = None
        self._deferred: list[str] = []
        self.cleanups = 0
        self.freed_mb = 0

    async def receive(self, message: Message, envelope: Envelope) -> None:
        if isinstance(message, RunFinished):
            if self.after_run:
                await self._post_run(message.request_id, envelope)
        elif isinstance(message, DeferredCleanup):
            pending, self._deferred = self._deferred, []
            if pending:
                self._last_post_run = self.context.clock.now()
                await self._run(None, pending[-1], "post_run", self.aggressive, envelope)
        elif isinstance(message, CleanupRequest):
            await self._run(message.device, None, "manual", message.aggressive, envelope)
        elif isinstance(message, ResourceSample):
            await self._proactive(message, envelope)

    async def _post_run(self, request_id: str, envelope: Envelope) -> None:
        now = self.context.clock.now()
        last = self._last_post_run
        if last is None or now - last >= self.min_interval_s:
            self._last_post_run = now
            await self._run(None, request_id, "post_run", self.aggressive, envelope)
            return
        if not self._deferred:
            self.context.send_later(last + self.min_interval_s - now, DeferredCleanup())
        self._deferred.append(request_id)

    async def _run(
        self,
        device: int | None,
        request_id: str | None,
        trigger: Literal["post_run", "proactive", "manual"],
        aggressive: bool,
        envelope: Envelope,
    ) -> None:
        ordinal = self.cuda_ordinal(device) if device is not None else None

        def work() -> CleanupReport:
            return cleanup_memory(
                aggressive, device=ordinal, request_id=request_id, trigger=trigger, backend=self.backend
            )

        report = await anyio.to_thread.run_sync(work)
        if device is not None and report.device != device:
            report = msgspec.structs.replace(report, device=device)
        self.cleanups += 1
        self.freed_mb += report.freed_mb
        if trigger == "manual" and envelope.correlation_id is not None:
            await self.context.reply(envelope, report)
        else:
            await self.context.send(self.reports_to, report)

    async def _proactive(self, sample: ResourceSample, envelope: Envelope) -> None:
        for device in sample.devices:
            if device.simulated or device.lost or device.total_mb <= 0:
                self._low_since.pop(device.index, None)
                continue
            if device.free_mb >= device.total_mb * self.below_fraction:
                self._low_since.pop(device.index, None)
                continue
            since = self._low_since.setdefault(device.index, sample.at)
            if sample.at - since < self.after_s:
                continue
            ordinal = self.cuda_ordinal(device.index)
            unused = self.unused_probe(ordinal) if ordinal is not None else None
            if unused is None or unused < self.min_unused_mb:
                continue
            self._low_since[device.index] = sample.at
            await self._run(device.index, None, "proactive", self.aggressive, envelope)
