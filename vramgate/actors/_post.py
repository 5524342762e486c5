"""Posting: the one place a message gets its sequence number, its time stamp and its log record.

:class:`Post` is the system-wide bookkeeping (sequence numbers, the clock, the recorder, messages in flight, pending
asks, dead letters). :meth:`Post.post` hands an envelope to a target (a :class:`Mailbox`, a waiting ask, a dead
letter, an actor's retry) and only when the target took it, records and counts it, so that the log holds exactly
what was delivered. Tells, asks, replies, timers and redeliveries all go through it.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Protocol

import anyio

from vramgate.actors._backend import ANYIO, Event, Primitives
from vramgate.actors.envelope import DeadLetter, Envelope
from vramgate.errors import ActorCrashed, ActorStopped, AskTimeout, MailboxFull
from vramgate.messages import Message

log = logging.getLogger("vramgate.actors")


class Target(Protocol):
    """Where :meth:`Post.post` delivers: ``accept`` takes the envelope (``False``: no room, nothing happens);
    ``counted`` says whether it is work in flight until an actor handled it."""

    counted: bool

    def accept(self, envelope: Envelope) -> bool: ...


class Recording(Protocol):
    """What posting needs of a recorder."""

    def record(self, envelope: Envelope) -> None: ...


class _Waiter:
    """A sender waiting for room in a mailbox, with its message: handed over in arrival order."""

    __slots__ = ("correlation_id", "delivered", "event", "message", "sender")

    def __init__(self, message: Message, sender: str, correlation_id: int | None, event: Event) -> None:
        self.message = message
        self.sender = sender
        self.correlation_id = correlation_id
        self.delivered = False
        self.event = event


class Mailbox:
    """An actor's bounded mailbox: envelopes in order, senders waiting for room in order, one receiver.

    ``state`` is ``new`` (not open yet), ``running``, ``stopping`` (closed to new messages, draining) or
    ``stopped``. An envelope stays in the mailbox until its actor takes it, so none is lost when the receiver is
    cancelled while a message is on its way to it.
    """

    __slots__ = ("_post", "_ready", "capacity", "name", "queue", "state", "waiting")

    counted = True

    def __init__(self, post: Post, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("mailbox_size must be >= 1")
        self._post = post
        self.name = name
        self.capacity = capacity
        self.queue: collections.deque[Envelope] = collections.deque()
        self.waiting: collections.deque[_Waiter] = collections.deque()
        self.state = "new"
        self._ready: Event | None = None

    def stopped_error(self) -> ActorStopped:
        if self.state == "new":
            return ActorStopped(f"actor {self.name!r} is not running (its system has not started)")
        return ActorStopped(f"actor {self.name!r} has stopped")

    def accept(self, envelope: Envelope) -> bool:
        if self.state != "running":
            raise self.stopped_error()
        queue = self.queue
        if len(queue) >= self.capacity:
            return False
        queue.append(envelope)
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready.set()
        return True

    def close(self) -> None:
        """Refuse new messages; the receiver drains what is queued, then gets ``None``."""
        if self.state in ("new", "running"):
            self.state = "stopping"
        self._wake_receiver()
        self.wake_all_senders()

    def stop(self) -> None:
        """The actor stopped: nothing more is taken or delivered."""
        self.state = "stopped"
        self._wake_receiver()
        self.wake_all_senders()

    async def get(self) -> Envelope | None:
        """The next envelope (``None`` once the mailbox is closed and empty); waits while it is empty.

        An envelope already queued is taken without a checkpoint: while the actor loops without awaiting, only it
        can post, so it takes at most what its mailbox and its waiting senders held (and what it sends itself)
        before it waits again and other tasks run."""
        queue = self.queue
        while not queue:
            if self.state != "running":
                return None
            ready = self._ready = self._post.primitives.event()
            await ready.wait()
        return self.take()

    def take(self) -> Envelope:
        """The next envelope, which is queued (the caller checked ``queue``); waiting senders' messages move in."""
        envelope = self.queue.popleft()
        if self.waiting:
            self.hand_over()
        return envelope

    def hand_over(self) -> None:
        """Move waiting senders' messages into the mailbox while it has room."""
        waiting = self.waiting
        post = self._post
        while waiting:
            head = waiting[0]
            try:
                if post.post(self, head.sender, self.name, head.message, head.correlation_id) is None:
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

    def _wake_receiver(self) -> None:
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready.set()


class AskSlot:
    """An ask waiting for its reply (posted to it by :meth:`Post.reply`)."""

    __slots__ = ("correlation_id", "error", "event", "reply", "target")

    counted = False

    def __init__(self, correlation_id: int, target: Mailbox, event: Event) -> None:
        self.correlation_id = correlation_id
        self.target = target
        self.event = event
        self.reply: Message | None = None
        self.error: BaseException | None = None

    def accept(self, envelope: Envelope) -> bool:
        self.reply = envelope.message
        self.event.set()
        return True


class _Logged:
    """A record that only goes into the log (a late reply, a crash that stopped the system)."""

    counted = False

    def accept(self, envelope: Envelope) -> bool:
        return True


LOG_ONLY = _Logged()


class Post:
    """Sequence numbers, time stamps, recording and in-flight counting for one actor system; asks and replies."""

    def __init__(
        self,
        now: Callable[[], float],
        recorder: Recording | None,
        *,
        mailbox_of: Callable[[str], Mailbox | None],
        dead_letter_capacity: int,
    ) -> None:
        self.now = now
        self.recorder = recorder
        self.mailbox_of = mailbox_of
        self.seq = 0
        self.in_flight = 0
        self.late_replies = 0
        self.dead_total = 0
        self.dead: collections.deque[DeadLetter] = collections.deque(maxlen=dead_letter_capacity)
        self.pending: dict[int, AskSlot] = {}
        self._corr = 0
        self._idle: Event | None = None
        #: The event loop's checkpoint and event (bound when the system starts).
        self.primitives: Primitives = ANYIO

    # ------------------------------------------------------------------ the one place that posts

    def post(
        self,
        target: Target,
        sender: str,
        recipient: str,
        message: Message,
        correlation_id: int | None = None,
        redelivery_of: int | None = None,
    ) -> Envelope | None:
        """Stamp ``message`` and hand it to ``target``; when it took it, record and count it. ``None``: no room."""
        envelope = Envelope(self.seq + 1, self.now(), sender, recipient, message, correlation_id, redelivery_of)
        if not target.accept(envelope):
            return None
        self.seq = envelope.seq
        if target.counted:
            self.in_flight += 1
        recorder = self.recorder
        if recorder is not None:
            recorder.record(envelope)
        return envelope

    # ------------------------------------------------------------------ tell

    def send_nowait(self, mailbox: Mailbox, message: Message, sender: str) -> None:
        """Deliver now, or raise :class:`MailboxFull` (also while earlier senders wait for room)."""
        if mailbox.waiting or self.post(mailbox, sender, mailbox.name, message) is None:
            if mailbox.state != "running":
                raise mailbox.stopped_error()
            raise MailboxFull(f"mailbox of actor {mailbox.name!r} is full ({mailbox.capacity} messages)")

    def send_now(self, mailbox: Mailbox, message: Message, sender: str) -> bool:
        """Deliver now when the mailbox runs, has room and no sender waits for room; ``False``: nothing happened
        (:meth:`send` without ``checkpoint`` delivers the same, waiting when it must)."""
        return (
            mailbox.state == "running"
            and not mailbox.waiting
            and self.post(mailbox, sender, mailbox.name, message) is not None
        )

    async def send(
        self, mailbox: Mailbox, message: Message, sender: str, correlation_id: int | None, *, checkpoint: bool = True
    ) -> None:
        """Deliver, waiting (in arrival order) while the mailbox is full: the receiver hands the message over when
        it takes one out. A sender cancelled while it waits delivers nothing and nothing is logged; one whose
        message was handed over before the cancellation reached it returns normally (the message is delivered).

        Without ``checkpoint`` (an actor sending while it handles a message), a message the mailbox has room for is
        delivered without yielding: the actor yields when its own mailbox is empty, and other tasks run then."""
        if mailbox.state != "running":
            raise mailbox.stopped_error()
        primitives = self.primitives
        if checkpoint:
            await primitives.checkpoint()
        if not mailbox.waiting and self.post(mailbox, sender, mailbox.name, message, correlation_id) is not None:
            return
        waiter = _Waiter(message, sender, correlation_id, primitives.event())
        mailbox.waiting.append(waiter)
        try:
            await waiter.event.wait()
        except anyio.get_cancelled_exc_class():
            if waiter.delivered:
                return  # delivered and logged: the tell happened; the caller's next checkpoint sees the cancel
            raise
        finally:
            if not waiter.delivered and waiter in mailbox.waiting:
                mailbox.waiting.remove(waiter)
        if not waiter.delivered:
            raise mailbox.stopped_error()

    # ------------------------------------------------------------------ ask and reply

    async def ask(self, mailbox: Mailbox, message: Message, timeout: float, sender: str) -> Message:  # noqa: ASYNC109
        self._corr += 1
        corr = self._corr
        slot = AskSlot(corr, mailbox, self.primitives.event())
        self.pending[corr] = slot
        try:
            with anyio.fail_after(timeout):
                await self.send(mailbox, message, sender, corr)
                await slot.event.wait()
        except TimeoutError:
            raise AskTimeout(
                f"actor {mailbox.name!r} did not answer {type(message).__name__} within {timeout:g} s"
            ) from None
        finally:
            self.pending.pop(corr, None)
        if slot.error is not None:
            raise slot.error
        assert slot.reply is not None
        return slot.reply

    async def reply(self, replier: str, envelope: Envelope, message: Message) -> None:
        """Answer ``envelope`` (as an actor handling it: see :meth:`send`'s ``checkpoint``): the waiting asker,
        else tell the sender; a reply nobody waits for is logged too."""
        corr = envelope.correlation_id
        if corr is None:
            target = self.mailbox_of(envelope.sender)
            if target is not None and target.state in ("running", "stopping"):
                await self.send(target, message, replier, None, checkpoint=False)
                return
            posted = self.post(LOG_ONLY, replier, envelope.sender, message)
            assert posted is not None
            self.dead_letter(DeadLetter(posted, f"no actor {envelope.sender!r} to reply to"))
        else:
            slot = self.pending.pop(corr, None)
            if slot is None:
                self.late_replies += 1
                self.post(LOG_ONLY, replier, envelope.sender, message, corr)
            else:
                self.post(slot, replier, envelope.sender, message, corr)

    def fail_asks(self, which: Callable[[AskSlot], bool], error: BaseException) -> None:
        for corr, slot in list(self.pending.items()):
            if which(slot):
                del self.pending[corr]
                slot.error = error
                slot.event.set()

    def fail_ask(self, correlation_id: int | None, error: ActorCrashed) -> None:
        if correlation_id is not None:
            self.fail_asks(lambda slot: slot.correlation_id == correlation_id, error)

    # ------------------------------------------------------------------ handled, idle, dead letters

    def done(self) -> None:
        """An actor finished handling a message."""
        self.in_flight -= 1
        idle = self._idle
        if self.in_flight <= 0 and idle is not None:
            self._idle = None
            idle.set()

    async def wait_idle(self) -> None:
        await self.primitives.checkpoint()
        while self.in_flight > 0:
            if self._idle is None:
                self._idle = self.primitives.event()
            await self._idle.wait()

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead_total += 1
        self.dead.append(letter)
        envelope = letter.envelope
        log.warning(
            "dead letter #%d %s -> %s (%s): %s %s",
            envelope.seq,
            envelope.sender,
            envelope.recipient,
            type(envelope.message).__name__,
            letter.reason,
            letter.error,
        )
