"""What the server remembers of a request: its ticket while it lives, its events, and its final status after."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from vramgate.messages import Message, RequestEnded, RunProgress
from vramgate.server._public import client_reason, error_reason
from vramgate.server.schema import GenerationStatus, PlanView, Progress, Status

if TYPE_CHECKING:
    from vramgate._ticket import Ticket


class Record:
    """One request as the server knows it. Its events are a bounded ring; a run's progress keeps only its latest."""

    __slots__ = (
        "_changed",
        "_placed",
        "_seq",
        "driven",
        "error",
        "events",
        "final",
        "kept",
        "request_id",
        "scope",
        "started",
        "ticket",
    )

    def __init__(self, ticket: Ticket, *, events_limit: int) -> None:
        self.request_id = ticket.request_id
        self.ticket: Ticket | None = ticket
        self.events: collections.deque[tuple[int, Message]] = collections.deque(maxlen=events_limit)
        self.final: GenerationStatus | None = None
        self.scope: anyio.CancelScope | None = None
        self.error = ""
        #: its run was started (the store says ``running``)
        self.started = False
        #: the server is shutting down and keeps it queued in the store for its next start
        self.kept = False
        #: a task runs it (from its admission on)
        self.driven = False
        self._seq = 0
        # Created only when someone waits: most records are never waited on, and each event moves them.
        self._changed: anyio.Event | None = None
        self._placed: anyio.Event | None = None

    def push(self, event: Message) -> None:
        self._seq += 1
        if isinstance(event, RunProgress) and self.events and isinstance(self.events[-1][1], RunProgress):
            self.events[-1] = (self._seq, event)
        else:
            self.events.append((self._seq, event))
        if isinstance(event, RequestEnded):
            self.finish(event)
        self._notify()

    def finish(self, ended: RequestEnded) -> None:
        """Freeze the status at the terminal event and let go of the ticket."""
        if self.final is None:
            self.final = status(self, ended=ended)
            self.ticket = None
            self._notify()

    def keep(self) -> None:
        """Shutting down: the request stays queued in the store; followers stop here (:meth:`follow` returns)."""
        self.kept = True
        self._notify()

    @property
    def done(self) -> bool:
        return self.final is not None

    @property
    def in_preflight(self) -> bool:
        """The gate has not queued, admitted or ended it yet (nor has the server, shutting down, kept it)."""
        ticket = self.ticket
        return ticket is not None and ticket.state == "preflight" and not self.kept

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()
        placed = self._placed
        if placed is not None and not self.in_preflight:
            placed.set()

    async def wait_placed(self) -> None:
        """Wait until the gate queued, admitted or ended the request (or the server kept it): woken once, not
        by every event before."""
        if not self.in_preflight:
            await anyio.lowlevel.checkpoint()
            return
        placed = self._placed
        if placed is None:
            placed = self._placed = anyio.Event()
        await placed.wait()

    async def wait_changed(self) -> None:
        """Wait for the next event (at once, once the request ended)."""
        if self.final is not None:
            await anyio.lowlevel.checkpoint()
            return
        changed = self._changed
        if changed is None:
            changed = self._changed = anyio.Event()
        await changed.wait()

    async def wait_ended(self) -> GenerationStatus:
        """Wait for the request's final status."""
        while self.final is None:
            await self.wait_changed()
        return self.final

    @property
    def last_seq(self) -> int:
        """The number of the latest event (events are numbered from 1; a run's progress takes a new number)."""
        return self._seq

    async def follow(self, after: int = 0) -> AsyncIterator[tuple[int, Message]]:
        """``(number, event)`` for every event still held after event ``after``, then each new one, until the
        terminal event (or until the server, shutting down, keeps the request for its next start)."""
        seen = after
        while True:
            for seq, event in list(self.events):
                if seq > seen:
                    seen = seq
                    yield seq, event
                    if isinstance(event, RequestEnded):
                        return
            if self.final is not None or self.kept:
                return
            await self.wait_changed()


def status(record: Record, *, ended: RequestEnded | None = None) -> GenerationStatus:
    """The client's view of a request: frozen after its end, else from its live ticket."""
    if record.final is not None:
        return record.final
    ticket = record.ticket
    assert ticket is not None
    ended = ended if ended is not None else ticket.ended
    admitted = ticket.admitted
    rejected = ticket.rejected
    finished = ticket.finished
    progress = ticket.progress
    state: Status
    if ended is not None:
        state = ended.state
    elif ticket.state == "admitted":
        state = "running"
    elif ticket.state == "queued":
        state = "queued"
    else:
        state = "preflight"
    reason = ended.reason if ended is not None else ""
    if rejected is not None and not reason:
        reason = rejected.reason
    if record.error and not reason:
        reason = error_reason(record.error)
    standing = ticket.standing() if ended is None else None  # where a queued request is now, as the queue moves
    if standing is not None and not reason:
        reason = standing.reason  # what it waits for
    return GenerationStatus(
        request_id=record.request_id,
        state=state,
        position=standing.position if standing is not None else None,
        device=admitted.devices[0] if admitted is not None else None,
        reservation_mb=admitted.reservation_mb if admitted is not None else None,
        plan=PlanView.of(ticket.plan) if ticket.plan is not None else None,
        progress=Progress(step=progress.step, total_steps=progress.total_steps) if progress is not None else None,
        eta_s=ticket.eta_s() if ended is None else None,
        waited_s=admitted.waited_s if admitted is not None else None,
        outcome=finished.outcome if finished is not None else None,
        reason=client_reason(reason, finished),
        reject_code=rejected.code if rejected is not None else None,
        needed_mb=rejected.needed_mb if rejected is not None else None,
        smallest_gpu=rejected.smallest_gpu if rejected is not None else None,
    )
