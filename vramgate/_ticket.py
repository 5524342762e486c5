"""Tickets and leases: what a server holds while its request waits, and while it runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio

from vramgate.actors._backend import Event
from vramgate.errors import (
    ActorStopped,
    BadRequest,
    DoesNotFit,
    HostRamDoesNotFit,
    QueueFull,
    VramgateError,
    WaitTimeout,
)
from vramgate.messages import (
    GenerationRequest,
    Message,
    ObservedPeak,
    Outcome,
    Plan,
    PlanOptimized,
    RequestAdmitted,
    RequestEnded,
    RequestQueued,
    RequestRejected,
    RunFinished,
    RunParams,
    RunProgress,
)
from vramgate.policy.timing import time_high_s

if TYPE_CHECKING:
    from vramgate._facade import TicketGate
    from vramgate.hardware import SimulatedGpu
    from vramgate.policy._standing import Standing

State = Literal["preflight", "queued", "admitted", "ended"]


class RequestCancelled(VramgateError):
    """The request was cancelled before it was admitted."""


class RequestFailed(VramgateError):
    """The request ended without being admitted, for a reason that is not the caller's nor capacity's."""


class Ticket:
    """A submitted request, as the gate follows it: its state, its events (an async iterator), and a way to wait
    for admission. A read-only view: the gate feeds it (:func:`deliver`) with the messages about the request.

    ``async for event in ticket`` yields every lifecycle message of the request, from acceptance to its one
    :class:`~vramgate.messages.RequestEnded`. Progress messages beyond the last ``history`` events are dropped
    from the replay buffer (the state and progress fields always hold the latest). ``position`` is where the
    request was queued (its :class:`~vramgate.messages.RequestQueued`); :meth:`standing` says where it is now.
    ``event`` makes what its waiters wait on (the gate gives its running loop's own).
    """

    __slots__ = (
        "_abandoned",
        "_admitted",
        "_admitted_at",
        "_cancel_requested",
        "_changed",
        "_dropped",
        "_ended",
        "_event",
        "_events",
        "_finished",
        "_gate",
        "_history",
        "_lease",
        "_plan",
        "_position",
        "_progress",
        "_progress_at",
        "_rejected",
        "_request",
        "_state",
        "_submitted_at",
        "_wake_on",
    )

    def __init__(
        self,
        gate: TicketGate[Lease],
        request: GenerationRequest,
        *,
        history: int = 256,
        event: Callable[[], Event] = anyio.Event,
    ) -> None:
        self._gate = gate
        self._event = event
        self._request = request
        self._state: State = "preflight"
        self._position: int | None = None
        self._plan: Plan | None = None
        self._admitted: RequestAdmitted | None = None
        self._rejected: RequestRejected | None = None
        self._ended: RequestEnded | None = None
        self._progress: RunProgress | None = None
        self._finished: RunFinished | None = None
        self._lease: Lease | None = None
        self._submitted_at = gate.clock.now()
        self._admitted_at: float | None = None
        self._progress_at: float | None = None
        self._events: list[Message] = []
        self._history = history
        self._dropped = 0
        # Created only when someone waits: a queue of 100,000 tickets should not hold 100,000 events.
        self._changed: Event | None = None
        #: the messages that wake the tasks waiting on ``_changed`` (``None``: any message)
        self._wake_on: tuple[type[Message], ...] | None = ()
        self._abandoned = False
        self._cancel_requested = False

    def __repr__(self) -> str:
        return f"<Ticket {self.request_id} {self.state}>"

    # ------------------------------------------------------------------ what the gate knows of the request

    @property
    def request(self) -> GenerationRequest:
        return self._request

    @property
    def request_id(self) -> str:
        return self._request.request_id

    @property
    def state(self) -> State:
        """``preflight`` (being planned), ``queued``, ``admitted`` or ``ended``."""
        return self._state

    @property
    def position(self) -> int | None:
        return self._position

    @property
    def plan(self) -> Plan | None:
        """The plan published for the request (the admitted one once admitted)."""
        return self._plan

    @property
    def admitted(self) -> RequestAdmitted | None:
        return self._admitted

    @property
    def rejected(self) -> RequestRejected | None:
        return self._rejected

    @property
    def ended(self) -> RequestEnded | None:
        return self._ended

    @property
    def progress(self) -> RunProgress | None:
        return self._progress

    @property
    def finished(self) -> RunFinished | None:
        return self._finished

    @property
    def lease(self) -> Lease | None:
        return self._lease

    @property
    def submitted_at(self) -> float:
        return self._submitted_at

    @property
    def admitted_at(self) -> float | None:
        return self._admitted_at

    @property
    def progress_at(self) -> float | None:
        return self._progress_at

    @property
    def abandoned(self) -> bool:
        """The client stopped waiting (the gate releases a lease granted meanwhile)."""
        return self._abandoned

    @property
    def cancel_requested(self) -> bool:
        """Someone asked to cancel the request (a running one ends cancelled when its lease is released)."""
        return self._cancel_requested

    @property
    def done(self) -> bool:
        return self._state == "ended"

    # ------------------------------------------------------------------ for the server

    def standing(self) -> Standing | None:
        """Where a queued request stands now, as the queue moves (position, what it waits for, expected start:
        :meth:`Gate.standing <vramgate.gate.Gate.standing>`); ``None`` unless it is queued."""
        return self._gate.standing(self.request_id) if self._state == "queued" else None

    @property
    def reason(self) -> str:
        """What a queued request waits for now (``"behind 3 requests; waiting for 3,200 MiB on gpu0: held by 2
        running leases"``); ``""`` once it is admitted or ended."""
        standing = self.standing()
        return standing.reason if standing is not None else ""

    def eta_s(self) -> float | None:
        """Seconds until the run is expected to end: from its progress when it reports any, else the plan's time
        at the top of its interval (so that a run ends before its ETA nine times in ten); for a queued request,
        from when admission expects it to start (``None`` when that is unknown: others' use, not this gate's
        leases, holds the memory it waits for)."""
        now = self._gate.clock.now()
        plan = self._plan
        if self._state == "queued" and plan is not None:
            standing = self.standing()
            if standing is None or standing.starts_at is None:
                return None
            own = self._gate.config.run.expected_seconds(time_high_s(plan.requirement))
            return max(0.0, standing.starts_at - now) + own
        if self._state != "admitted" or self._admitted_at is None or plan is None:
            return None
        progress = self._progress
        if progress is not None and progress.step > 0 and self._progress_at is not None:
            per_step = (self._progress_at - self._admitted_at) / progress.step
            return max(0.0, per_step * (progress.total_steps - progress.step) - (now - self._progress_at))
        expected = self._gate.config.run.expected_seconds(time_high_s(plan.requirement))
        return max(0.0, expected - (now - self._admitted_at))

    async def __aiter__(self) -> AsyncIterator[Message]:
        seen = 0  # events pushed so far that this iterator has yielded (or that were dropped before it could)
        while True:
            total = len(self._events) + self._dropped
            if seen < total:
                # Pushed event k sits at list index k (k < 2) or k - dropped (the first two are never dropped).
                index = seen if seen < 2 else seen - self._dropped
                if index < 2 <= seen:
                    seen = self._dropped + 2  # dropped before this iterator reached it
                    continue
                event = self._events[index]
                seen += 1
                yield event
                if isinstance(event, RequestEnded):
                    return
                continue
            if self._state == "ended":
                return
            await self.wait_changed()

    async def wait_changed(self, *kinds: type[Message]) -> None:
        """Wait until the gate delivers the next message about the request (with ``kinds``: the next one of those
        kinds, or its end)."""
        changed = self._changed
        if changed is None:
            changed = self._changed = self._event()
            self._wake_on = ()
        wake_on = self._wake_on
        if not kinds:
            self._wake_on = None
        elif wake_on is not None:
            self._wake_on = (*wake_on, *kinds, RequestEnded)
        await changed.wait()

    async def wait_placed(self) -> State:
        """Wait until the request is queued, admitted or ended (it left the preflight); returns its state."""
        while self._state == "preflight":
            await self.wait_changed(RequestQueued, RequestAdmitted)
        return self._state

    async def wait_admitted(self) -> Lease:
        """Wait until the request is admitted and return its lease.

        Raises the typed reason when it ends first: :class:`~vramgate.errors.DoesNotFit`,
        :class:`~vramgate.errors.BadRequest`, :class:`~vramgate.errors.QueueFull`,
        :class:`~vramgate.errors.WaitTimeout`, :class:`RequestCancelled` or :class:`RequestFailed`.
        """
        while self._lease is None:
            if self._ended is not None:
                raise self.ending_error()
            await self.wait_changed(RequestAdmitted)
        return self._lease

    async def wait_ended(self) -> RequestEnded:
        """Wait for the request's terminal state."""
        while self._ended is None:
            await self.wait_changed(RequestEnded)
        return self._ended

    async def cancel(self, reason: str = "cancelled by the client") -> None:
        """Cancel the request: a waiting one leaves the queue; a running one is marked and ends on release."""
        self._cancel_requested = True
        await self._gate.cancel(self.request_id, reason)

    def ending_error(self) -> VramgateError:
        """The typed reason the request ended without a lease."""
        ended = self._ended
        assert ended is not None
        rejected = self._rejected
        if ended.state == "timed_out":
            waited = self._gate.clock.now() - self._submitted_at
            return WaitTimeout(self.request_id, waited)
        if ended.state == "cancelled":
            return RequestCancelled(f"request {self.request_id} was cancelled: {ended.reason}")
        if rejected is not None:
            if rejected.code == "bad_request":
                return BadRequest(f"request {self.request_id}: {rejected.reason}")
            if rejected.code == "queue_full":
                return QueueFull(rejected.retry_after_s or 1.0, queue_length=self._gate.queue_length)
            if rejected.code == "shutting_down":
                return ActorStopped(f"request {self.request_id}: {rejected.reason}")
            if rejected.code == "host_ram_does_not_fit":
                return HostRamDoesNotFit(
                    rejected.reason, needed_ram_mb=rejected.needed_ram_mb, available_ram_mb=rejected.available_ram_mb
                )
            return DoesNotFit(rejected.reason, needed_mb=rejected.needed_mb, smallest_gpu=rejected.smallest_gpu)
        return RequestFailed(f"request {self.request_id} ended {ended.state}: {ended.reason}")


def deliver(ticket: Ticket, event: Message, now: float) -> None:
    """Feed ``ticket`` a message about its request (the gate does, as the request core decides)."""
    t = ticket
    events = t._events
    events.append(event)
    if len(events) > t._history:
        # Keep the first events (acceptance, plan) and the latest; drop the oldest progress in between.
        del events[2]
        t._dropped += 1
    took = _TAKES.get(type(event))
    if took is not None:
        took(t, event, now)
    changed = t._changed
    if changed is not None and (t._wake_on is None or isinstance(event, t._wake_on)):
        t._changed = None
        changed.set()


def _queued(t: Ticket, event: Any, now: float) -> None:
    t._state = "queued"
    t._position = event.position


def _planned(t: Ticket, event: Any, now: float) -> None:
    t._plan = event.plan


def _admitted(t: Ticket, event: Any, now: float) -> None:
    t._state = "admitted"
    t._position = None
    t._admitted = event
    t._plan = event.plan
    t._admitted_at = now


def _rejected(t: Ticket, event: Any, now: float) -> None:
    t._rejected = event


def _progressed(t: Ticket, event: Any, now: float) -> None:
    t._progress = event
    t._progress_at = now


def _finished(t: Ticket, event: Any, now: float) -> None:
    t._finished = event


def _ended(t: Ticket, event: Any, now: float) -> None:
    t._state = "ended"
    t._position = None
    t._ended = event


#: What each kind of message changes in a ticket (by exact type; each takes a message of its kind).
_TAKES: dict[type[Message], Callable[[Ticket, Any, float], None]] = {
    RequestQueued: _queued,
    PlanOptimized: _planned,
    RequestAdmitted: _admitted,
    RequestRejected: _rejected,
    RunProgress: _progressed,
    RunFinished: _finished,
    RequestEnded: _ended,
}


def hand_lease(ticket: Ticket, lease: Lease) -> None:
    """Give ``ticket`` the lease its admission granted."""
    ticket._lease = lease


def abandon(ticket: Ticket) -> None:
    """The client stopped waiting for ``ticket``."""
    ticket._abandoned = True


class Lease:
    """An admitted run's reservation. Run with :attr:`params` on :attr:`device`; the gate releases it.

    ``report(...)`` records the observed peak and outcome (optional: without it the gate takes torch's peak
    figures, or a simulated device's, and judges the outcome from how the lease block ended).

    ``pin()`` takes the reservation on the devices at once, so that other processes cannot have it before the run
    allocates it; the gate pins when the lease is granted if ``[run] pin_reservation`` says so, and unpins when
    it releases the lease. :attr:`pinned_mb` is what is pinned on each device now (0: nothing).
    """

    __slots__ = (
        "_gate",
        "_released",
        "devices",
        "lease_id",
        "pin_error",
        "pinned_mb",
        "plan",
        "reported_error",
        "reported_outcome",
        "reported_peak",
        "request_id",
        "reservation_mb",
        "started_at",
        "ticket",
        "waited_s",
    )

    def __init__(self, gate: TicketGate[Lease], ticket: Ticket, admitted: RequestAdmitted) -> None:
        self._gate = gate
        self.ticket = ticket
        self.request_id = admitted.request_id
        self.lease_id = admitted.lease_id
        self.devices = admitted.devices
        self.reservation_mb = admitted.reservation_mb
        self.plan = admitted.plan
        self.waited_s = admitted.waited_s
        self.started_at = gate.clock.now()
        self._released = False
        self.reported_outcome: Outcome | None = None
        self.reported_peak: ObservedPeak | None = None
        self.reported_error = ""
        self.pinned_mb = 0
        #: why the last :meth:`pin` pinned nothing ("" when it pinned, or was never called)
        self.pin_error = ""

    def __repr__(self) -> str:
        return f"<Lease {self.lease_id} {self.request_id} on {self.devices} {self.reservation_mb} MiB>"

    @property
    def released(self) -> bool:
        """Whether the gate released the lease (its run's end is reported)."""
        return self._released

    @property
    def params(self) -> RunParams:
        """The parameters to run with (the plan's, which may differ from the request's)."""
        return self.plan.params

    @property
    def device(self) -> int:
        """The device index to run on (the first one of a multi-GPU run)."""
        return self.devices[0]

    @property
    def simulated(self) -> SimulatedGpu | None:
        """The simulated GPU this lease runs on, or ``None`` for a real one."""
        return self._gate.simulated_device(self.device)

    def pin(self) -> int:
        """Take the reservation on every device of the lease now; returns the MiB pinned on each (0: none).

        The gate's backend (:mod:`vramgate.hardware.backend`) pins, and the run's peak window starts after it.
        On a simulated GPU the reservation is allocated under the lease's id
        (:meth:`~vramgate.hardware.SimulatedGpu.pin`): an outside consumer that does not fit beside it is
        refused, and the run's own allocations under the lease's id draw from the pinned block first. On a real
        CUDA device (torch must be imported by the process) the reservation is allocated once through torch's
        caching allocator and freed, so this process keeps the segment reserved for the run's allocations; the
        post-run cleanup's ``empty_cache()`` gives it back. Pinning is all or nothing and best effort: when the
        block does not fit now (or a device cannot be pinned) nothing stays pinned on a simulated device, 0 is
        returned and :attr:`pin_error` says why; the lease itself is unchanged. Pinning again returns the pin.
        """
        if self.pinned_mb or self._released:
            return self.pinned_mb
        mb = self.reservation_mb
        if mb <= 0:
            return 0
        backend = self._gate.backend
        pinned: list[int] = []
        error = ""
        for index in self.devices:
            error = backend.pin(index, self.lease_id, mb)
            if error:
                break
            pinned.append(index)
        if error:
            for index in pinned:
                backend.unpin(index, self.lease_id)
            self.pin_error = error
            return 0
        for index in self.devices:  # the run's observed peak starts here, without the pin
            backend.reset_peak(index, self.lease_id)
        self.pin_error = ""
        self.pinned_mb = mb
        return mb

    def unpin(self) -> int:
        """Give the pinned block back (the gate does on release); returns the MiB that were pinned on each device.

        On a simulated GPU the unused part of the pin is free at once. On a real device the segment stays in
        torch's cache until an ``empty_cache()`` (the post-run cleanup's), as any run's cached memory does.
        """
        mb = self.pinned_mb
        if not mb:
            return 0
        self.pinned_mb = 0
        for index in self.devices:
            self._gate.backend.unpin(index, self.lease_id)
        return mb

    def report(
        self,
        *,
        peak_vram_mb: int | None = None,
        outcome: Outcome | None = None,
        torch_peak_allocated_mb: int | None = None,
        nvml_peak_used_mb: int | None = None,
        error: str = "",
    ) -> None:
        """Report what the run observed. ``peak_vram_mb`` is the peak reserved by the run's allocator."""
        self.reported_peak = ObservedPeak(
            torch_peak_allocated_mb=torch_peak_allocated_mb,
            torch_peak_reserved_mb=peak_vram_mb,
            nvml_peak_used_mb=nvml_peak_used_mb,
        )
        if outcome is not None:
            self.reported_outcome = outcome
        if error:
            self.reported_error = error

    async def progress(self, step: int, total_steps: int) -> None:
        """Report step ``step`` of ``total_steps`` (gives the ticket a live ETA)."""
        await self._gate.report_progress(self, step, total_steps)

    def progress_nowait(self, step: int, total_steps: int) -> None:
        """Report progress without waiting; dropped when the gate is busy (progress is advisory)."""
        self._gate.report_progress_nowait(self, step, total_steps)


def mark_released(lease: Lease) -> None:
    """The gate released ``lease``."""
    lease._released = True


def shrink_lease(lease: Lease, reservation_mb: int) -> None:
    """Admission shrank ``lease``'s reservation to ``reservation_mb`` (its weights became resident)."""
    lease.reservation_mb = reservation_mb
