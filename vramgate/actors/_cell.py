"""The runtime side of one actor: its mailbox, its task, and its supervisor."""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio import BrokenResourceError, ClosedResourceError, WouldBlock
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from vramgate.actors.actor import Actor, ActorContext, Timer
from vramgate.actors.envelope import SUPERVISOR, ActorStatistics, DeadLetter, Envelope, RestartPolicy
from vramgate.actors.ref import ActorRef
from vramgate.errors import ActorCrashed, ActorStopped, MailboxFull
from vramgate.messages import ActorFailed, Message

if TYPE_CHECKING:
    from vramgate.actors.system import ActorSystem

log = logging.getLogger("vramgate.actors")

ActorFactory = Callable[[], Actor[Any]]


class _Waiter:
    """A sender waiting for room in a mailbox, with its message: handed over in arrival order."""

    __slots__ = ("correlation_id", "delivered", "event", "message", "sender")

    def __init__(self, message: Message, sender: str, correlation_id: int | None) -> None:
        self.message = message
        self.sender = sender
        self.correlation_id = correlation_id
        self.delivered = False
        self.event = anyio.Event()


class Cell:
    """Holds an actor, its mailbox streams and its counters; runs its receive loop under supervision."""

    def __init__(
        self,
        system: ActorSystem,
        name: str,
        actor: Actor[Any] | ActorFactory,
        capacity: int,
        policy: RestartPolicy,
    ) -> None:
        if capacity < 1:
            raise ValueError("mailbox_size must be >= 1")
        self.system = system
        self.name = name
        self.capacity = capacity
        self.policy = policy
        self.factory: ActorFactory | None = None
        if isinstance(actor, Actor):
            self.actor: Actor[Any] = actor
        else:
            self.factory = actor
            self.actor = actor()
        if not isinstance(self.actor, Actor):
            raise TypeError(f"actor {name!r}: expected an Actor, got {type(self.actor).__name__}")
        self.actor._context = ActorContext(self)
        self.ref: ActorRef[Any] = ActorRef(self)
        self.send_stream: MemoryObjectSendStream[Envelope] | None = None
        self.receive_stream: MemoryObjectReceiveStream[Envelope] | None = None
        self.state = "new"
        self.handled = 0
        self.restarts = 0
        self.dead_letters = 0
        self.crash_times: collections.deque[float] = collections.deque()
        self.timers: set[Timer] = set()
        self.finished = anyio.Event()
        self.waiting: collections.deque[_Waiter] = collections.deque()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the mailbox. Called when the system starts (or at spawn, if it already runs)."""
        self.send_stream, self.receive_stream = anyio.create_memory_object_stream[Envelope](self.capacity)
        self.state = "running"

    def stopped_error(self) -> ActorStopped:
        if self.state == "new":
            return ActorStopped(f"actor {self.name!r} is not running (its system has not started)")
        return ActorStopped(f"actor {self.name!r} has stopped")

    def close_mailbox(self) -> None:
        """Refuse new messages; the receive loop drains what is queued, then stops the actor."""
        if self.state == "running":
            self.state = "stopping"
        self.cancel_timers()
        if self.send_stream is not None:
            self.send_stream.close()
        self.wake_all_senders()

    def cancel_timers(self) -> None:
        for timer in list(self.timers):
            timer.cancel()

    def start_timer(self, delay_s: float, period_s: float | None, message: Message) -> Timer:
        if delay_s < 0:
            raise ValueError("delay must be >= 0")
        if self.state != "running":
            raise self.stopped_error()
        timer = Timer(self, delay_s, period_s, message)
        self.timers.add(timer)
        self.system._start_task(timer._run)
        return timer

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The actor's task: start it, serve its mailbox until it is closed and drained, then stop it."""
        receive = self.receive_stream
        assert receive is not None, "mailbox not opened"
        graceful = False
        try:
            with receive:
                try:
                    await self.actor.on_start()
                except Exception as exc:
                    raise ActorCrashed(f"actor {self.name!r} failed to start: {exc!r}") from exc
                task_status.started()
                await self._serve(receive)
                graceful = True
                self.state = "stopping"
                await self.actor.on_stop()
        finally:
            self.state = "stopped"
            self.cancel_timers()
            if self.send_stream is not None:
                self.send_stream.close()
            self.wake_all_senders()
            self.system._actor_stopped(self, graceful=graceful)
            self.finished.set()

    # ------------------------------------------------------------------ delivery

    def offer(self, message: Message, sender: str, correlation_id: int | None) -> bool:
        """Put a message in the mailbox now if there is room: it gets its sequence number, time stamp and log
        record only then, so that the log holds exactly what was delivered, in mailbox order."""
        stream = self.send_stream
        if stream is None:
            raise self.stopped_error()
        system = self.system
        seq = system._seq + 1
        env = Envelope(seq, system._now(), sender, self.name, message, correlation_id)
        try:
            stream.send_nowait(env)
        except WouldBlock:
            return False
        except (ClosedResourceError, BrokenResourceError):
            raise self.stopped_error() from None
        system._seq = seq
        system._in_flight += 1
        recorder = system._recorder
        if recorder is not None:
            recorder.record(env)
        return True

    def offer_nowait(self, message: Message, sender: str) -> None:
        """Deliver now, or raise :class:`MailboxFull` (also while earlier senders wait for room)."""
        if self.waiting or not self.offer(message, sender, None):
            if self.send_stream is None:
                raise self.stopped_error()
            raise MailboxFull(f"mailbox of actor {self.name!r} is full ({self.capacity} messages)")

    async def deliver(self, message: Message, sender: str, correlation_id: int | None) -> None:
        """Deliver, waiting (in arrival order) while the mailbox is full: the receiver hands the message over
        when it takes one out. A sender cancelled while it waits delivers nothing, and nothing is logged."""
        if self.send_stream is None:
            raise self.stopped_error()
        await checkpoint()
        if not self.waiting and self.offer(message, sender, correlation_id):
            return
        waiter = _Waiter(message, sender, correlation_id)
        self.waiting.append(waiter)
        try:
            await waiter.event.wait()
        finally:
            if not waiter.delivered:
                with contextlib.suppress(ValueError):
                    self.waiting.remove(waiter)
        if not waiter.delivered:
            raise self.stopped_error()

    def hand_over(self) -> None:
        """Move waiting senders' messages into the mailbox while it has room (after the receiver took one)."""
        waiting = self.waiting
        while waiting:
            head = waiting[0]
            try:
                if not self.offer(head.message, head.sender, head.correlation_id):
                    return
            except ActorStopped:
                self.wake_all_senders()
                return
            waiting.popleft()
            head.delivered = True
            head.event.set()

    def wake_all_senders(self) -> None:
        """The mailbox closed: every waiting sender learns that the actor stopped."""
        while self.waiting:
            self.waiting.popleft().event.set()

    # ------------------------------------------------------------------ the receive loop

    async def _serve(self, receive: MemoryObjectReceiveStream[Envelope]) -> None:
        system = self.system
        retry: Envelope | None = None
        while True:
            if retry is not None:
                env = retry
            else:
                try:
                    env = await receive.receive()
                except anyio.EndOfStream:
                    return
                if self.waiting:
                    self.hand_over()
            try:
                await self.actor.receive(env.message, env)
            except Exception as exc:
                retry = await self._crashed(env, exc, poisoned=retry is not None)
                if retry is None:
                    system._message_done()
                continue
            retry = None
            self.handled += 1
            system._message_done()

    async def _crashed(self, env: Envelope, exc: Exception, *, poisoned: bool) -> Envelope | None:
        """Supervise a crash: restart within limits; return the envelope to offer again, if any."""
        now = self.system.clock.now()
        times = self.crash_times
        times.append(now)
        while times and now - times[0] > self.policy.within_s:
            times.popleft()
        if len(times) > self.policy.max_restarts:
            self._log_failure(env, exc)
            self.system._fail_asks(
                lambda slot: slot.correlation_id == env.correlation_id,
                ActorCrashed(f"actor {self.name!r} crashed handling message #{env.seq}: {exc!r}"),
            )
            raise ActorCrashed(
                f"actor {self.name!r} crashed {len(times)} times within {self.policy.within_s:g} s "
                f"(limit {self.policy.max_restarts}); last error: {exc!r}"
            ) from exc
        self.restarts += 1
        log.warning("actor %r crashed on message #%d (%s); restarting", self.name, env.seq, exc)
        if poisoned:
            self.dead_letters += 1
            self.system._dead_letter(DeadLetter(env, "crashed its actor twice", repr(exc)))
            if env.correlation_id is not None:
                corr = env.correlation_id
                self.system._fail_asks(
                    lambda slot: slot.correlation_id == corr,
                    ActorCrashed(f"actor {self.name!r} crashed twice on message #{env.seq}: {exc!r}"),
                )
        await self._restart(exc)
        return None if poisoned else self._redeliver(env)

    def _log_failure(self, env: Envelope, exc: Exception) -> None:
        system = self.system
        if system._recorder is not None:
            system._seq += 1
            failed = ActorFailed(seq=env.seq, error=repr(exc))
            system._recorder.record(Envelope(system._seq, system._now(), SUPERVISOR, self.name, failed))

    def _redeliver(self, env: Envelope) -> Envelope:
        """The envelope that offers a crashed-on message again: a delivery of its own, logged as one."""
        system = self.system
        system._seq += 1
        again = Envelope(
            system._seq, system._now(), env.sender, env.recipient, env.message, env.correlation_id, env.seq
        )
        if system._recorder is not None:
            system._recorder.record(again)
        return again

    async def _restart(self, exc: Exception) -> None:
        if self.factory is None:
            await self.actor.on_restart(exc)
            return
        actor = self.factory()
        actor._context = self.actor._context
        self.actor = actor
        await actor.on_start()

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> ActorStatistics:
        size = waiting = 0
        if self.receive_stream is not None:
            stats = self.receive_stream.statistics()
            size = stats.current_buffer_used
            waiting = len(self.waiting)
        return ActorStatistics(
            name=self.name,
            state=self.state,
            mailbox_size=size,
            mailbox_capacity=self.capacity,
            waiting_senders=waiting,
            handled=self.handled,
            restarts=self.restarts,
            dead_letters=self.dead_letters,
            timers=len(self.timers),
        )
