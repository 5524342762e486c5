"""The HTTP-free half of the example server: a gate, the runs it admits, and a bounded memory of requests.

:func:`open_service` opens a gate and a task group; :meth:`GenerationService.submit` decodes a request body,
gives the request the server's own id (a client's ``request_id`` is ignored), queues it without waiting
(:class:`~vramgate.errors.QueueFull` when the queue is full) and runs it in the task group once admitted: ``async
with gate.hold(lease): await runner(lease)``. Requests are remembered while they live and, after their end, in
an LRU of the last ``finished_limit``, so that a client can still read how its request ended.
"""

from __future__ import annotations

import collections
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from vramgate.actors import Recorder
from vramgate.clock import Clock
from vramgate.config import GateConfig
from vramgate.errors import BadRequest, VramgateError
from vramgate.gate import Gate, open_gate
from vramgate.hardware import DeviceSet
from vramgate.messages import Message, RequestEnded
from vramgate.server._records import Record, status
from vramgate.server.runners import Runner, RunnerKind, make_runner, timed_config
from vramgate.server.schema import DevicesBody, GenerationStatus, Health, SampleView

log = logging.getLogger("vramgate.server")

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the server behaves (the gate's own settings are its :class:`~vramgate.config.GateConfig`)."""

    #: Largest request body accepted (bytes); a larger one is answered 413.
    max_body_bytes: int = 64 * 1024
    #: Finished requests remembered for GET (least recently used dropped first).
    finished_limit: int = 2048
    #: Events kept per request (a run's progress counts once).
    events_limit: int = 64
    #: How long a POST waits for the request's queue position before answering without it (seconds).
    position_timeout_s: float = 1.0
    runner: RunnerKind = "auto"
    #: Simulated and torch runs last their plan's estimated time times this (at least ``min_run_s``).
    time_scale: float = 0.01
    min_run_s: float = 0.5
    #: A local diffusers pipeline directory, for ``runner = "diffusers"``.
    pipeline: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "finished_limit", "events_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.time_scale <= 0 or self.min_run_s < 0 or self.position_timeout_s < 0:
            raise ValueError("time_scale must be positive; min_run_s and position_timeout_s not negative")


class GenerationService:
    """A gate, the runs it admits and what the server remembers of each request. Use :func:`open_service`."""

    def __init__(self, gate: Gate, runner: Runner, settings: ServerSettings, task_group: anyio.abc.TaskGroup):
        self.gate = gate
        self.runner = runner
        self.settings = settings
        self._tg = task_group
        self.live: dict[str, Record] = {}
        self.finished: collections.OrderedDict[str, Record] = collections.OrderedDict()
        self.closing = False
        gate.add_listener(self._on_event)

    # ------------------------------------------------------------------ requests

    def new_id(self) -> str:
        """A fresh, unguessable request id."""
        while True:
            rid = f"g{secrets.token_hex(8)}"
            if rid not in self.live and rid not in self.finished:
                return rid

    def accept(self, body: bytes) -> Record:
        """Decode ``body`` and queue it without waiting; start its run task. Raises the typed reason."""
        if self.closing:
            raise BadRequest("the server is shutting down")
        request = self.gate.decode_request(body)
        self.gate.estimator.resolve(request)  # unknown model, unsupported task: InvalidParameter naming the field
        request = msgspec.structs.replace(request, request_id=self.new_id())
        ticket = self.gate.submit_nowait(request)
        record = Record(ticket, events_limit=self.settings.events_limit)
        self.live[record.request_id] = record
        self._tg.start_soon(self._drive, record)
        return record

    async def submit(self, body: bytes) -> Record:
        """:meth:`accept`, then wait (at most ``position_timeout_s``) until the request left preflight."""
        record = self.accept(body)
        with anyio.move_on_after(self.settings.position_timeout_s):
            while record.ticket is not None and record.ticket.state == "preflight":
                await record.wait_changed()
        return record

    def lookup(self, request_id: str) -> Record | None:
        """The record of a request by the server's id; anything that is not an id finds nothing."""
        if not _ID.match(request_id):
            return None
        record = self.live.get(request_id)
        if record is None:
            record = self.finished.get(request_id)
            if record is not None:
                self.finished.move_to_end(request_id)
        return record

    def status(self, record: Record) -> GenerationStatus:
        return status(record)

    async def cancel(self, record: Record) -> bool:
        """Cancel a request: a waiting one leaves the queue, a running one is stopped. False if it had ended."""
        ticket = record.ticket
        if record.done or ticket is None:
            return False
        if ticket.state == "admitted":
            if record.scope is not None:
                record.scope.cancel()
            return True
        await ticket.cancel("cancelled by the client")
        return True

    # ------------------------------------------------------------------ devices and health

    def devices(self) -> DevicesBody:
        stats = self.gate.statistics()
        return DevicesBody(
            devices=stats.devices,
            sample=SampleView.of(self.gate.latest_sample),
            queue_length=stats.queue_length,
            running=stats.running,
        )

    def health(self) -> Health:
        gate = self.gate
        return Health(
            status="closing" if self.closing else "ok",
            devices=len(gate.device_configs),
            queue_length=gate.queue_length,
            queue_limit=gate.config.admission.queue_limit,
            running=sum(1 for r in self.live.values() if r.ticket is not None and r.ticket.state == "admitted"),
            tracked=len(self.live),
            finished=len(self.finished),
        )

    # ------------------------------------------------------------------ internals

    def _on_event(self, message: Message) -> None:
        rid = getattr(message, "request_id", None)
        if not isinstance(rid, str):
            return
        record = self.live.get(rid)
        if record is None:
            return
        record.push(message)
        if record.done:
            self._retire(record)

    def _retire(self, record: Record) -> None:
        self.live.pop(record.request_id, None)
        self.finished[record.request_id] = record
        self.finished.move_to_end(record.request_id)
        while len(self.finished) > self.settings.finished_limit:
            self.finished.popitem(last=False)

    async def _drive(self, record: Record) -> None:
        ticket = record.ticket
        assert ticket is not None
        try:
            with anyio.CancelScope() as scope:
                record.scope = scope
                try:
                    lease = await ticket.wait_admitted()
                except VramgateError:
                    lease = None  # it ended without a run; its events say why
                if lease is not None and not (lease.released or ticket.abandoned):
                    try:
                        async with self.gate.hold(lease):
                            await self.runner(lease)
                    except Exception as error:  # the gate reported the outcome; keep the reason for the client
                        record.error = f"{type(error).__name__}: {error}"[:500]
                        log.warning("request %s failed: %s", record.request_id, record.error)
            with anyio.move_on_after(60):
                await ticket.wait_ended()
        finally:
            if not record.done and ticket.ended is not None:
                record.finish(ticket.ended)
            if record.done:
                self._retire(record)


@asynccontextmanager
async def open_service(
    config: GateConfig | None = None,
    *,
    settings: ServerSettings | None = None,
    runner: Runner | None = None,
    clock: Clock | None = None,
    devices: DeviceSet | None = None,
    recorder: Recorder | None = None,
    gate_hook: Callable[[Gate], Any] | None = None,
) -> AsyncIterator[GenerationService]:
    """Open a gate and a task group for the runs; on exit stop the runs (their leases are released), then the gate."""
    settings = settings if settings is not None else ServerSettings()
    if runner is None:  # the server's own runner: the gate learns how long its runs take
        config = timed_config(
            config if config is not None else GateConfig(),
            settings.runner,
            time_scale=settings.time_scale,
            min_seconds=settings.min_run_s,
        )
    async with open_gate(config, clock=clock, devices=devices, recorder=recorder) as gate:
        if gate_hook is not None:
            gate_hook(gate)
        chosen = runner
        if chosen is None:
            chosen = make_runner(
                settings.runner,
                gate,
                time_scale=settings.time_scale,
                min_seconds=settings.min_run_s,
                pipeline=settings.pipeline,
            )
        async with anyio.create_task_group() as tg:
            service = GenerationService(gate, chosen, settings, tg)
            try:
                yield service
            finally:
                service.closing = True
                tg.cancel_scope.cancel()


def ended_event(record: Record) -> RequestEnded | None:
    """The terminal event of a finished request, when still held."""
    for _, event in reversed(record.events):
        if isinstance(event, RequestEnded):
            return event
    return None
