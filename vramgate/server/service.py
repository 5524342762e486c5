"""The HTTP-free half of the example server: a gate, the runs it admits, and what it keeps of each request.

:func:`open_service` opens a request store, a gate and a task group; :meth:`GenerationService.submit` decodes a
request body, gives the request the server's own id (a client's ``request_id`` is ignored), queues it without
waiting (:class:`~vramgate.errors.QueueFull` when the queue is full), keeps it in the store before the client hears
its id, and runs it in the task group once admitted: ``async with gate.hold(lease): await runner(lease)`` (a task
per run, started by the admission itself; a waiting request holds no task).
Live requests and the last ``finished_limit`` finished ones are held in memory; every request ever accepted
answers from the store.

Restarts and shutdowns keep every accepted request (see :mod:`vramgate.server.store`):

* at start, what the store holds as queued is queued again, in the order it was accepted, with its priority;
  what was running when the server died ends ``failed`` with reason ``interrupted``;
* on a graceful shutdown (:meth:`GenerationService.drain`), queued requests stay queued in the store for the next
  start and their event streams end with a ``ServerShutdown`` event; running ones are stopped and end
  ``cancelled`` with reason ``shutdown``.

A client may send an idempotency key (scoped by its client id): a retry with the same key and the same request
gets the same request back; the same key with another request is :class:`IdempotencyConflict`.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec

from vramgate.actors import Recorder
from vramgate.clock import Clock
from vramgate.config import GateConfig
from vramgate.errors import ActorStopped, BadRequest, QueueFull, VramgateError
from vramgate.gate import CANCELLED_RUN, Gate, open_gate
from vramgate.hardware import DeviceSet
from vramgate.messages import GenerationRequest, Message, RequestAdmitted, RequestEnded, RequestRejected
from vramgate.server._records import Record, status
from vramgate.server._workers import Workers
from vramgate.server.runners import Runner, RunnerKind, make_runner, timed_config
from vramgate.server.schema import DevicesBody, GenerationStatus, Health, SampleView, Status
from vramgate.server.store import MEMORY, RequestStore, StoredRequest, fingerprint, open_store

if TYPE_CHECKING:
    from vramgate._ticket import Ticket

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
    #: The SQLite file that keeps accepted requests across restarts (``None``: in memory, lost on exit).
    store_path: str | None = None
    #: On a graceful shutdown, how long running requests get to end before the server stops anyway (seconds).
    shutdown_timeout_s: float = 10.0
    #: Once started, move everything then alive (imported modules, catalogs, the gate, models loaded at startup)
    #: into the garbage collector's permanent generation (``gc.freeze()``), so that a full collection, such as the
    #: post-run cleanup's, walks only what was made since; undone (``gc.unfreeze()``) when the server stops.
    freeze_heap: bool = True

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "finished_limit", "events_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.time_scale <= 0 or self.min_run_s < 0 or self.position_timeout_s < 0 or self.shutdown_timeout_s < 0:
            raise ValueError(
                "time_scale must be positive; min_run_s, position_timeout_s and shutdown_timeout_s not negative"
            )


class IdempotencyConflict(BadRequest):
    """An idempotency key came back with another request than the one it was first sent with."""

    def __init__(self, key: str, request_id: str) -> None:
        self.key = key
        self.request_id = request_id
        super().__init__(
            f"idempotency key {key!r} was used for request {request_id} with another body; "
            "send the same body to get that request, or a new key for a new request"
        )


class Submission(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`GenerationService.submit` did: the request, whether it was accepted before (a retry), and for
    a new one where it stood when the answer was made: its state, the position it was queued at, and the gate's
    rejection when the gate had already rejected it."""

    request_id: str
    replayed: bool
    state: Status = "preflight"
    position: int | None = None
    rejected: RequestRejected | None = None


class GenerationService:
    """A gate, the runs it admits and what the server keeps of each request. Use :func:`open_service`."""

    def __init__(
        self,
        gate: Gate,
        runner: Runner,
        settings: ServerSettings,
        task_group: anyio.abc.TaskGroup,
        store: RequestStore,
    ) -> None:
        self.gate = gate
        self.runner = runner
        self.settings = settings
        self.store = store
        system = gate.system
        #: The running loop's own checkpoint (anyio's looks the backend up on every call).
        self._checkpoint = system.primitives.checkpoint if system is not None else anyio.lowlevel.checkpoint
        self._tg = task_group
        self._runs = Workers(task_group)  # a run is handed to a waiting task rather than given a new one
        self.live: dict[str, Record] = {}
        self.finished: collections.OrderedDict[str, Record] = collections.OrderedDict()
        self.closing = False
        self._keyed = anyio.Lock()
        self._drained: anyio.Event | None = None
        self._shutdown = anyio.Event()
        #: the task group takes new tasks (runs start in it, from the gate's events)
        self._running = True
        gate.add_listener(self._on_event)
        task_group.start_soon(self._drain_on_request)

    # ------------------------------------------------------------------ requests

    def new_id(self) -> str:
        """A fresh, unguessable request id."""
        while True:
            rid = f"g{secrets.token_hex(8)}"
            if rid not in self.live and rid not in self.finished:
                return rid

    async def submit(self, body: bytes, *, client: str = "", key: str | None = None) -> Submission:
        """Decode ``body``, queue it without waiting and keep it in the store; then wait (at most
        ``position_timeout_s``; not at all when it is 0) until the gate queued, admitted or rejected it. Raises
        the typed reason; nothing is kept then. A request the gate rejected is kept too (its id answers, with the
        reason); the submission carries the rejection.

        With an idempotency ``key`` (scoped by ``client``), a request already accepted with that key is returned
        instead (``replayed``) when the body asks for the same; another body is :class:`IdempotencyConflict`.
        """
        if self.closing:
            raise ActorStopped("the server is shutting down")
        request = self.gate.decode_request(body)
        self.gate.estimator.resolve(request)  # unknown model, unsupported task: InvalidParameter naming the field
        if key is None:
            record = await self._accept(request, client, None, "")
        else:
            digest = fingerprint(request)
            async with self._keyed:
                held = await self.store.find_key(client, key)
                if held is not None:
                    if held.fingerprint != digest:
                        raise IdempotencyConflict(key, held.request_id)
                    return Submission(request_id=held.request_id, replayed=True)
                record = await self._accept(request, client, key, digest)
        if self.settings.position_timeout_s > 0 and record.in_preflight:
            with anyio.move_on_after(self.settings.position_timeout_s):
                await record.wait_placed()
        else:  # a checkpoint still: a caller that submits in a loop must not hold the gate's pipeline up
            await self._checkpoint()
        return standing_of(record)

    async def _accept(self, request: GenerationRequest, client: str, key: str | None, digest: str) -> Record:
        request = msgspec.structs.replace(request, request_id=self.new_id())
        record, ticket = self._track(request)
        row = StoredRequest(
            request_id=record.request_id, request=request, client=client, idempotency_key=key, fingerprint=digest
        )
        # Once the gate took the request, it is stored even if the client went away (its run starts when the gate
        # admits it: _on_event). No scope shields the write: a caller cancelled while it waits for the store keeps
        # the request if the store kept it (a store in memory answers at once, so nothing can come between).
        try:
            await self.store.put(row)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._settle(ticket)
            raise
        except BaseException:
            with anyio.CancelScope(shield=True):
                await ticket.cancel("the server could not keep the request")
            raise
        return record

    async def _settle(self, ticket: Ticket) -> None:
        """After a write the caller stopped waiting for: keep the request if the store holds it, else cancel it."""
        try:
            kept = await self.store.get(ticket.request_id) is not None
        except Exception:
            kept = False
        if not kept:
            await ticket.cancel("the server could not keep the request")

    def _track(self, request: GenerationRequest) -> tuple[Record, Ticket]:
        """Queue ``request`` (with its id) in the gate and hold its record."""
        ticket = self.gate.submit_nowait(request)
        record = Record(ticket, events_limit=self.settings.events_limit)
        self.live[record.request_id] = record
        return record, ticket

    def lookup(self, request_id: str) -> Record | None:
        """The record of a request held in memory (live, or among the last finished) by the server's id; anything
        that is not an id finds nothing."""
        if not _ID.match(request_id):
            return None
        record = self.live.get(request_id)
        if record is None:
            record = self.finished.get(request_id)
            if record is not None:
                self.finished.move_to_end(request_id)
        return record

    async def find(self, request_id: str) -> Record | StoredRequest | None:
        """A request by the server's id: its record while held in memory, else what the store keeps of it."""
        record = self.lookup(request_id)
        if record is not None or not _ID.match(request_id):
            return record
        return await self.store.get(request_id)

    async def requests_of(self, client: str, *, limit: int = 100) -> list[GenerationStatus]:
        """A client's latest ``limit`` requests, newest first."""
        rows = await self.store.list_client(client, limit=limit)
        return [self.status(self.live.get(row.request_id) or self.finished.get(row.request_id) or row) for row in rows]

    def status(self, entry: Record | StoredRequest) -> GenerationStatus:
        return entry.view() if isinstance(entry, StoredRequest) else status(entry)

    async def cancel(self, record: Record) -> bool:
        """Cancel a request: a waiting one leaves the queue, a running one is stopped. False if it had ended."""
        ticket = record.ticket
        if record.done or ticket is None:
            return False
        if ticket.state == "admitted" and record.started:
            if record.scope is not None:
                record.scope.cancel()
            return True
        # Waiting, or admitted but its run not started yet: the gate marks it, and it ends without running.
        await ticket.cancel("cancelled by the client")
        return True

    # ------------------------------------------------------------------ restarts and shutdown

    async def recover(self) -> None:
        """Queue again what the store holds as queued (in its order), and end what was running as interrupted."""
        for row in await self.store.unfinished():
            if row.state == "running":
                await self._end_stored(row, "failed", "interrupted")
                continue
            try:
                record, _ = self._track(row.request)
            except QueueFull:
                await self._end_stored(row, "failed", "the queue had no room for it after a restart")
                continue
            await record.wait_placed()  # the next one queues behind it, as it did before

    async def _end_stored(self, row: StoredRequest, state: Status, reason: str) -> None:
        final = GenerationStatus(request_id=row.request_id, state=state, reason=reason)
        await self.store.set_state(row.request_id, state, final)

    def begin_shutdown(self) -> None:
        """Start :meth:`drain` in the background and return at once (a plain callback: from an HTTP server's
        signal handling, say, on the service's event loop)."""
        self._shutdown.set()

    async def _drain_on_request(self) -> None:
        await self._shutdown.wait()
        await self.drain()

    async def drain(self) -> None:
        """Graceful shutdown: take no new request, keep the queued ones in the store for the next start (their
        event streams end), stop the running ones (they end ``cancelled``, reason ``shutdown``) and wait at most
        ``shutdown_timeout_s`` for them to end."""
        if self._drained is not None:
            await self._drained.wait()
            return
        self._drained = anyio.Event()
        self.closing = True
        running: list[Record] = []
        for record in list(self.live.values()):
            if record.done:
                continue
            if record.started:
                ticket = record.ticket
                if ticket is not None and ticket.lease is not None:
                    ticket.lease.report(error="shutdown")
                if record.scope is not None:
                    record.scope.cancel()
                running.append(record)
            else:
                record.keep()
        with anyio.move_on_after(self.settings.shutdown_timeout_s):
            for record in running:
                while not record.done:
                    await record.wait_changed()
        self._drained.set()

    def stop_runs(self) -> None:
        """The task group is closing: no run starts after this (the gate, stopping, ends what is left)."""
        self._running = False

    # ------------------------------------------------------------------ devices and health

    def devices(self) -> DevicesBody:
        stats = self.gate.statistics()
        return DevicesBody(
            devices=stats.devices,
            sample=SampleView.of(self.gate.latest_sample),
            queue_length=stats.queue_length,
            running=stats.running,
            host=stats.host,
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
        """Every message the gate routes: a live request's events; its run starts when it is admitted (a task per
        run, none while it waits), and a request that ends without a run has its end stored."""
        rid = getattr(message, "request_id", None)
        if not isinstance(rid, str):
            return
        record = self.live.get(rid)
        if record is None:
            return
        ticket = record.ticket
        if type(message) is RequestAdmitted and ticket is not None and not record.driven and self._running:
            record.driven = True
            self._runs.submit(functools.partial(self._drive, record, ticket))  # a kept one's lease is given back there
        if record.kept:  # a kept request is handed over to the next start as it was
            return
        record.push(message)
        if record.done:
            self._retire(record)
            if not record.driven and self._running:
                self._tg.start_soon(self._store_end, record)

    async def _store_end(self, record: Record) -> None:
        final = record.final
        assert final is not None
        with anyio.CancelScope(shield=True):
            await self.store.set_state(record.request_id, final.state, final)

    def _retire(self, record: Record) -> None:
        self.live.pop(record.request_id, None)
        if record.kept:
            return
        self.finished[record.request_id] = record
        self.finished.move_to_end(record.request_id)
        while len(self.finished) > self.settings.finished_limit:
            self.finished.popitem(last=False)

    async def _drive(self, record: Record, ticket: Ticket) -> None:
        """Run an admitted request in its lease; then wait for its end and store it."""
        try:
            with anyio.CancelScope() as scope:
                record.scope = scope
                try:
                    lease = await ticket.wait_admitted()
                except VramgateError:
                    lease = None  # it ended before its run; its events say why
                if lease is not None and not (lease.released or ticket.abandoned):
                    if self.closing or record.kept:  # admitted while shutting down: it runs after the next start
                        record.kept = True
                        lease.report(outcome="cancelled", error="shutdown")
                        async with self.gate.hold(lease):
                            pass
                        return
                    if ticket.cancel_requested:  # cancelled as it was admitted: its run never starts
                        lease.report(outcome="cancelled", error=CANCELLED_RUN)
                        async with self.gate.hold(lease):
                            pass
                    else:
                        record.started = True
                        try:
                            async with self.gate.hold(lease):  # released on every path, a failed store write too
                                await self.store.set_state(record.request_id, "running")
                                await self.runner(lease)
                        except Exception as error:  # the gate reported the outcome; keep the reason for the client
                            record.error = f"{type(error).__name__}: {error}"[:500]
                            log.warning("request %s failed: %s", record.request_id, record.error)
            with anyio.move_on_after(60):
                await ticket.wait_ended()
        finally:
            if not record.done and ticket.ended is not None and not record.kept:
                record.finish(ticket.ended)
            if record.done or record.kept:
                self._retire(record)
            if record.final is not None and not record.kept:
                with anyio.CancelScope(shield=True):
                    await self.store.set_state(record.request_id, record.final.state, record.final)


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
    store: RequestStore | None = None,
) -> AsyncIterator[GenerationService]:
    """Open the store (``store``, else ``settings.store_path``), a gate and a task group for the runs; queue again
    what the store holds. On exit drain (:meth:`GenerationService.drain`), then stop the runs and the gate."""
    settings = settings if settings is not None else ServerSettings()
    if runner is None:  # the server's own runner: the gate learns how long its runs take
        config = timed_config(
            config if config is not None else GateConfig(),
            settings.runner,
            time_scale=settings.time_scale,
            min_seconds=settings.min_run_s,
        )
    async with AsyncExitStack() as stack:
        if store is None:
            store = await stack.enter_async_context(open_store(settings.store_path or MEMORY))
        gate = await stack.enter_async_context(open_gate(config, clock=clock, devices=devices, recorder=recorder))
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
            service = GenerationService(gate, chosen, settings, tg, store)
            try:
                await service.recover()
                yield service
            finally:
                with anyio.CancelScope(shield=True):
                    await service.drain()
                tg.cancel_scope.cancel()
                service.stop_runs()


def standing_of(record: Record) -> Submission:
    """A new request's :class:`Submission`: where it stands now, read from its ticket (no queue walk)."""
    ticket = record.ticket
    if ticket is None:  # it ended
        final = record.final
        assert final is not None
        rejected = None
        if final.state == "rejected":
            rejected = next((e for _, e in reversed(record.events) if isinstance(e, RequestRejected)), None)
        return Submission(request_id=record.request_id, replayed=False, state=final.state, rejected=rejected)
    state: Status
    if ticket.ended is not None:
        state = ticket.ended.state
    else:
        state = "running" if ticket.state == "admitted" else "queued" if ticket.state == "queued" else "preflight"
    return Submission(
        request_id=record.request_id, replayed=False, state=state, position=ticket.position, rejected=ticket.rejected
    )


def ended_event(record: Record) -> RequestEnded | None:
    """The terminal event of a finished request, when still held."""
    for _, event in reversed(record.events):
        if isinstance(event, RequestEnded):
            return event
    return None
