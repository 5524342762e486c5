"""The gate's async shell around the request core: it sends the client's messages to the core's actor, hands the
core's answers and admission's events to tickets, and does the effects at the edge (pinning a lease's memory,
reading a run's peak). Every decision about a request is the core's (:mod:`vramgate.policy.request`).

Tickets and listeners see every message the core takes and every one it sends the client, and two events of the
gate's own, made from messages the log holds: the plan the core publishes (``PlanOptimized``, from the
``SubmitRequest`` it sends), and a lease's release (``LeaseReleased``, just before the ``RequestEnded`` that
admission sends after it took the lease back).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from vramgate._ticket import Lease, Ticket, abandon, deliver, hand_lease, mark_released, shrink_lease
from vramgate.actors import ActorRef, Send
from vramgate.actors._backend import Event
from vramgate.errors import ActorStopped, DoesNotFit, InvalidParameter, MailboxFull, QueueFull
from vramgate.hardware.backend import is_oom as any_oom
from vramgate.messages import (
    CleanupReport,
    GenerationRequest,
    LeaseReleased,
    Message,
    ObservedPeak,
    Outcome,
    Plan,
    PlanOptimized,
    RequestAccepted,
    RequestAdmitted,
    RequestEnded,
    RequestRejected,
    ResourceSample,
    RunFinished,
    RunProgress,
)
from vramgate.messages.admission import CancelRequest, DeviceLedgerStatistics, SubmitRequest
from vramgate.messages.estimation import CorrectionLearned
from vramgate.messages.optimization import ShrinkPlan
from vramgate.messages.planning import DeviceBudgets, QuoteRequest, RetryDecided
from vramgate.messages.residency import EvictModel, LeaseShrunk
from vramgate.policy.request import CLIENT, RequestCore, device_budgets

if TYPE_CHECKING:
    from vramgate._facade import ShellGate

_log = logging.getLogger("vramgate.gate")
#: The error a run that was cancelled reports (``RunFinished.error``): a fixed phrase, so that the message log holds
#: no cancel scope's address and a replay of it compares byte for byte.
CANCELLED_RUN = "the run was cancelled"
#: What the gate counts (:class:`~vramgate.messages.gate.GateStatistics`).
COUNTS = (
    "submitted",
    "admitted",
    "rejected",
    "completed",
    "failed",
    "cancelled",
    "timed_out",
    "ooms",
    "oom_retries",
    "cleanups",
)


#: Messages the gate keeps figures of, whoever they are about.
_GATE_EVENTS = frozenset({ResourceSample, CleanupReport, EvictModel})
#: Messages that answer a waiter of the shell's (a quote, a retry decision).
_ANSWERS = frozenset({RetryDecided, SubmitRequest, RequestRejected})


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is a GPU out-of-memory error (torch's, a CUDA ``RuntimeError``, or a simulated one); a gate
    asks its backend (:meth:`Backend.is_oom <vramgate.hardware.backend.Backend.is_oom>`)."""
    return any_oom(error)


class _Answer:
    """One waiter for one answer of the request core to the client (a quote, a retry decision)."""

    __slots__ = ("event", "message", "ticket")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.message: Message | None = None
        self.ticket: Ticket | None = None

    async def wait(self) -> Message:
        await self.event.wait()
        assert self.message is not None
        return self.message


class RequestShell:
    """The client's side of the request core for one gate: its tickets, its counters, its waiters."""

    def __init__(self, gate: ShellGate[Lease], core: RequestCore) -> None:
        self.gate = gate
        self.core = core
        self.ref: ActorRef[Any] | None = None  # the request actor, once the system runs
        self.tickets: dict[str, Ticket] = {}
        self.counts = dict.fromkeys(COUNTS, 0)
        self.cleanup_freed_mb = 0
        self.wait_total_s = 0.0
        self.wait_max_s = 0.0
        self.estimate_ratios: list[float] = []
        self.listeners: list[Callable[[Message], None]] = []
        self.closing = False
        self._counter = 0
        self._unhandled = 0  # requests sent to the core that it has not taken yet
        self._room: anyio.Event | None = None
        self._answers: dict[str, _Answer] = {}
        self._budgets: DeviceBudgets | None = None
        self._offered: tuple[DeviceLedgerStatistics, ...] | None = None  # what the budgets were made of
        self._evictions: list[EvictModel] = []  # admission's eviction orders, for the server to carry out

    # ================================================================== what the client sends

    def require(self) -> ActorRef[Any]:
        """The request actor; :class:`~vramgate.errors.ActorStopped` when the gate is closed."""
        system = self.gate.system
        if self.closing or self.ref is None or system is None or system.state != "running":
            raise ActorStopped("the gate is closed")
        return self.ref

    def submit_nowait(self, request: GenerationRequest) -> Ticket:
        ref = self.require()
        core = self.core
        if core.room() - self._unhandled <= 0:
            raise QueueFull(core.retry_after(self.gate.clock.now()), queue_length=core.waiting + self._unhandled)
        request = self._with_id(request)
        ticket = Ticket(self.gate, request, event=self._event())
        self._tell_budgets_nowait(ref)
        ref.tell_nowait(RequestAccepted(request_id=request.request_id, request=request), sender=CLIENT)
        self.tickets[request.request_id] = ticket
        self._unhandled += 1
        self.counts["submitted"] += 1
        return ticket

    async def submit(self, request: GenerationRequest) -> Ticket:
        """Like :meth:`submit_nowait`, but wait for room while the request core has none (backpressure)."""
        while True:
            try:
                return self.submit_nowait(request)
            except QueueFull:
                await self.wait_room()

    async def wait_room(self) -> None:
        """Wait until a request leaves the core's care (admitted or ended), or the gate closes."""
        room = self._room
        if room is None:
            room = self._room = anyio.Event()
        await room.wait()

    async def wait_admitted(self, ticket: Ticket) -> Lease:
        try:
            return await ticket.wait_admitted()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.abort(ticket, "the client stopped waiting")
            raise

    async def retry(self, ticket: Ticket, plan: Plan, error: Exception) -> Ticket | None:
        """Ask the core to retry a request whose run ran out of memory: the retry's ticket, ``None`` when it gives
        none (retries are off or used up); :class:`~vramgate.errors.DoesNotFit` when no smaller plan fits."""
        answer = self._answers[ticket.request_id] = _Answer()
        shrink = ShrinkPlan(plan=plan, request_id=ticket.request_id, max_level=ticket.request.max_level)
        await self.require().tell(shrink, sender=CLIENT)
        decided = await answer.wait()
        assert isinstance(decided, RetryDecided)
        if decided.declined == "no_retries":
            return None
        if decided.declined:
            raise DoesNotFit(decided.reason) from error
        assert answer.ticket is not None
        return answer.ticket

    async def plans(self, request: GenerationRequest) -> SubmitRequest | RequestRejected:
        ref = self.require()
        self._counter += 1
        qid = f":quote{self._counter}"
        answer = self._answers[qid] = _Answer()
        self._tell_budgets_nowait(ref)
        try:
            await ref.tell(QuoteRequest(request_id=qid, request=request), sender=CLIENT)
            message = await answer.wait()
        finally:
            self._answers.pop(qid, None)
        assert isinstance(message, SubmitRequest | RequestRejected)
        return message

    async def cancel(self, request_id: str, reason: str) -> None:
        ticket = self.tickets.get(request_id)
        if ticket is None or ticket.ended is not None:
            return
        await self.require().tell(CancelRequest(request_id=request_id, reason=reason), sender=CLIENT)

    async def progress(self, lease: Lease, step: int, total: int) -> None:
        progress = RunProgress(request_id=lease.request_id, lease_id=lease.lease_id, step=step, total_steps=total)
        await self.require().tell(progress, sender=CLIENT)

    def progress_nowait(self, lease: Lease, step: int, total: int) -> None:
        progress = RunProgress(request_id=lease.request_id, lease_id=lease.lease_id, step=step, total_steps=total)
        with suppress(Exception):  # a full mailbox, a closed gate: progress is advisory
            self.require().tell_nowait(progress, sender=CLIENT)

    async def abort(self, ticket: Ticket, reason: str) -> None:
        """The client is gone: release a lease it was granted, or cancel the request."""
        abandon(ticket)
        system = self.gate.system
        if system is None or system.state != "running" or self.ref is None:
            return
        lease = ticket.lease
        if lease is not None:
            await self.release(lease, "cancelled", reason)
        elif ticket.ended is None:
            await self.ref.tell(CancelRequest(request_id=ticket.request_id, reason=reason), sender=CLIENT)

    async def finish(self, lease: Lease, error: BaseException | None) -> None:
        """Report the run's end: its outcome, what it observed."""
        finished = self.finish_nowait(lease, error)
        if finished is not None:
            await self.send_finished(finished)

    def finish_nowait(self, lease: Lease, error: BaseException | None) -> RunFinished | None:
        """Report the run's end without waiting; the ``RunFinished`` still to send (:meth:`send_finished`) when the
        request actor's mailbox has no room now."""
        outcome: Outcome
        if error is None:
            outcome = lease.reported_outcome or "ok"
        elif isinstance(error, anyio.get_cancelled_exc_class()):
            outcome = "cancelled"
        elif self.gate.backend.is_oom(error):
            outcome = "oom"
        else:
            outcome = "error"
        if outcome == "oom":
            self.counts["ooms"] += 1
        if lease.reported_error:
            text = lease.reported_error
        elif outcome == "cancelled" and error is not None:
            text = CANCELLED_RUN
        else:
            text = f"{type(error).__name__}: {error}" if error is not None else ""
        return self.release_nowait(lease, outcome, text)

    async def release(self, lease: Lease, outcome: Outcome, error: str) -> None:
        """Tell the request core the run ended (it teaches, cleans up and releases the reservation)."""
        finished = self.release_nowait(lease, outcome, error)
        if finished is not None:
            await self.send_finished(finished)

    def release_nowait(self, lease: Lease, outcome: Outcome, error: str) -> RunFinished | None:
        """Like :meth:`release` without waiting: the run's end is told at once when the request actor's mailbox
        has room (no checkpoint: a lease block ends without yielding), else returned to :meth:`send_finished`."""
        pinned = lease.unpin() > 0  # on every exit: the run is over, its block goes back first
        system = self.gate.system
        ref = self.ref
        if lease.released or ref is None or system is None or system.state != "running":
            return None
        mark_released(lease)
        observed = _observed(self.gate, lease, pinned=pinned)
        now = self.gate.clock.now()
        finished = RunFinished(
            request_id=lease.request_id,
            lease_id=lease.lease_id,
            outcome=outcome,
            observed=observed,
            seconds=max(0.0, now - lease.started_at),
            error=error[:2000],
        )
        best = observed.best_mb()
        if best is not None and lease.plan.requirement.vram_mb > 0:
            if len(self.estimate_ratios) >= 10_000:
                del self.estimate_ratios[: len(self.estimate_ratios) // 2]
            self.estimate_ratios.append(best / lease.plan.requirement.vram_mb)
        try:
            ref.tell_nowait(finished, sender=CLIENT)
        except MailboxFull:  # its turn comes after the senders waiting for room
            return finished
        self._route(finished, now)
        return None

    async def send_finished(self, finished: RunFinished) -> None:
        """Tell the request core a run's end that :meth:`release_nowait` could not tell at once, waiting for room."""
        ref = self.ref
        assert ref is not None
        await ref.tell(finished, sender=CLIENT)
        self._route(finished, self.gate.clock.now())

    async def close(self) -> None:
        """End every request still waiting (shutting down) before the actors stop."""
        self.closing = True
        self._wake_submitters()
        ref = self.ref
        if ref is None:
            return
        for ticket in list(self.tickets.values()):
            lease = ticket.lease
            if ticket.ended is not None or (lease is not None and not lease.released):
                continue
            abandon(ticket)
            cancel = CancelRequest(request_id=ticket.request_id, reason="the gate is shutting down")
            with anyio.CancelScope(shield=True), suppress(ActorStopped):
                await ref.tell(cancel, sender=CLIENT)

    # ================================================================== what the core decides

    def observe(self, message: Message, outputs: Sequence[Send]) -> Awaitable[None] | None:
        """The request actor took ``message`` and decided ``outputs``: hand them to tickets, count; what is left to
        do that waits (release leases nobody waits for, evictions, saving lessons), else ``None``."""
        now = self.gate.clock.now()
        kind = type(message)
        released: list[Lease] = []
        if kind is RequestAccepted:
            self._unhandled -= 1
        elif kind is RequestEnded:
            assert isinstance(message, RequestEnded)
            ticket = self.tickets.get(message.request_id)
            lease = ticket.lease if ticket is not None else None
            if lease is not None:  # admission ended it after its release
                devices, reservation = lease.devices, lease.reservation_mb
                freed = LeaseReleased(
                    request_id=lease.request_id, lease_id=lease.lease_id, devices=devices, reservation_mb=reservation
                )
                self._route(freed, now)
        # A run's end reached its ticket when the client reported it (see `release`).
        if kind is not RunFinished:
            lease = self._route(message, now)
            if lease is not None:
                released.append(lease)
        for send in outputs:
            sent = send.message
            lease = None
            if send.to == CLIENT:
                lease = self._route(sent, now)
            elif type(sent) is SubmitRequest:
                plan = self.core.plan(sent.request_id)
                if plan is not None:  # the plan it publishes
                    lease = self._route(PlanOptimized(request_id=sent.request_id, plan=plan), now)
            if lease is not None:
                released.append(lease)
        if released or self._evictions or kind is CorrectionLearned:
            return self._after(released, learned=kind is CorrectionLearned)
        return None

    async def _after(self, released: list[Lease], *, learned: bool) -> None:
        """What :meth:`observe` left to do that waits."""
        for lease in released:
            await self.release(lease, "cancelled", "the client stopped waiting")
        while self._evictions:
            await self.gate.residency.carry_out(self._evictions.pop(0))
        if learned:
            await self.gate.save_learned()

    def _route(self, message: Message, now: float) -> Lease | None:
        """Hand one message to its ticket, the listeners and the counters; a lease to release at once."""
        kind = type(message)
        if kind in _GATE_EVENTS:
            if kind is ResourceSample:
                assert isinstance(message, ResourceSample)
                self.gate.latest_sample = message
            elif kind is CleanupReport:
                assert isinstance(message, CleanupReport)
                self.counts["cleanups"] += 1
                self.cleanup_freed_mb += message.freed_mb
            else:
                assert isinstance(message, EvictModel)
                self._evictions.append(message)
        rid = getattr(message, "request_id", "")
        if not isinstance(rid, str):
            rid = ""
        if self._answers and kind in _ANSWERS:
            answer = self._answers.pop(rid, None)
            if answer is not None:
                if isinstance(message, RetryDecided):
                    if message.declined != "no_retries":
                        self.counts["oom_retries"] += 1
                    answer.ticket = self.tickets.get(message.retry_id)
                answer.message = message
                answer.event.set()
                return None
        ticket = self.tickets.get(rid)
        if ticket is None and kind is RequestAccepted:
            assert isinstance(message, RequestAccepted)  # a retry the request core accepted
            ticket = self.tickets[rid] = Ticket(self.gate, message.request, event=self._event())
            self.counts["submitted"] += 1
        if ticket is not None:
            deliver(ticket, message, now)
        for listener in self.listeners:
            listener(message)
        if ticket is None:
            return None
        if kind is RequestAdmitted:
            assert isinstance(message, RequestAdmitted)
            return self._admitted(ticket, message)
        if kind is RequestEnded:
            assert isinstance(message, RequestEnded)
            self.tickets.pop(rid, None)
            if message.state in ("completed", "failed", "cancelled", "timed_out"):
                self.counts[message.state] += 1
            self._wake_submitters()
        elif kind is RequestRejected:
            self.counts["rejected"] += 1
        elif kind is LeaseShrunk and ticket.lease is not None:
            assert isinstance(message, LeaseShrunk)
            shrink_lease(ticket.lease, message.reservation_mb)  # its weights became resident
        return None

    def _admitted(self, ticket: Ticket, message: RequestAdmitted) -> Lease | None:
        """Hand the ticket its lease (and pin it); the lease to release at once when the client stopped waiting."""
        self.counts["admitted"] += 1
        self.wait_total_s += message.waited_s
        self.wait_max_s = max(self.wait_max_s, message.waited_s)
        lease = Lease(self.gate, ticket, message)
        hand_lease(ticket, lease)
        self._wake_submitters()
        if ticket.abandoned:
            return lease
        if _pins(self.gate, lease):
            lease.pin()
        return None

    def _event(self) -> Callable[[], Event]:
        """What a ticket's waiters wait on: the running loop's own event (anyio's before the system runs)."""
        system = self.gate.system
        return system.primitives.event if system is not None else anyio.Event

    def _wake_submitters(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.set()

    def _with_id(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with its id: a fresh one from the counter unless the server gave one (not in use)."""
        request_id = request.request_id
        if request_id:
            if request_id in self.tickets:
                raise InvalidParameter("request_id", request_id, "a request with this id has not ended yet")
            return request
        while True:
            self._counter += 1
            request_id = f"r{self._counter:06d}"
            if request_id not in self.tickets:
                return msgspec.structs.replace(request, request_id=request_id)

    def _tell_budgets_nowait(self, ref: ActorRef[Any]) -> None:
        """Tell the request core what the devices offer when that changed since it last heard."""
        gate = self.gate
        admission = gate.admission_core
        if admission is None:
            budgets = DeviceBudgets(now={}, attainable={}, ram_budget_mb=gate.ram_budget_mb)
        else:
            offered = admission.offered()
            if offered is self._offered and self._budgets is not None:
                return  # the same figures as last time (taken anew only after a sample): the budgets it has
            self._offered = offered
            budgets = device_budgets(offered, gate.ram_budget_mb)
        if budgets != self._budgets:
            ref.tell_nowait(budgets, sender=CLIENT)
            self._budgets = budgets


class LeaseBlock:
    """``async with gate.admit(request) as lease`` / ``async with gate.hold(lease)``: wait for admission (with a
    request), hold the lease for the block and release it on every exit path. An exception in the block is
    reported as the run's outcome (``oom`` for a GPU out-of-memory error, ``cancelled`` for a cancellation, else
    ``error``) and re-raised.

    The release is told at once when the request actor's mailbox has room: the block ends without a checkpoint
    (nothing can cancel it half-way); only when the mailbox is full does it wait, shielded from cancellation."""

    __slots__ = ("_lease", "_request", "_shell")

    def __init__(self, shell: RequestShell, request: GenerationRequest | None, lease: Lease | None) -> None:
        self._shell = shell
        self._request = request
        self._lease = lease

    async def __aenter__(self) -> Lease:
        request = self._request
        if request is not None:
            shell = self._shell
            try:
                ticket = shell.submit_nowait(request)
            except QueueFull:
                ticket = await shell.submit(request)
            self._lease = await shell.wait_admitted(ticket)
        lease = self._lease
        assert lease is not None
        return lease

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lease = self._lease
        assert lease is not None
        finished = self._shell.finish_nowait(lease, exc)
        if finished is not None:
            with anyio.CancelScope(shield=True):
                await self._shell.send_finished(finished)


# ====================================================================== effects at the edge


def _pins(gate: ShellGate[Lease], lease: Lease) -> bool:
    """Whether ``[run] pin_reservation`` pins this lease (``"auto"``: when all its devices are simulated)."""
    simulated = all(gate.backend.kind(index) == "simulated" for index in lease.devices)
    return gate.config.run.pins(simulated=simulated)


def _observed(gate: ShellGate[Lease], lease: Lease, *, pinned: bool = False) -> ObservedPeak:
    """What the run observed: what it reported, else the backend's peak figures for its device."""
    if lease.reported_peak is not None:
        return lease.reported_peak
    return gate.backend.peak(lease.device, lease.lease_id, pinned=pinned)
