"""Actors: subclass :class:`Actor` and override :meth:`Actor.receive`; use ``self.context`` to talk to others."""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

import anyio

from vramgate.actors._post import Mailbox, Post
from vramgate.actors.envelope import TIMER, Envelope
from vramgate.actors.ref import ActorRef
from vramgate.clock import Clock
from vramgate.errors import ActorStopped
from vramgate.messages import Message

M = TypeVar("M", bound=Message)


class ActorHost(Protocol):
    """What an actor's context and timers need of the runtime cell that hosts the actor."""

    name: str
    ref: ActorRef[Any]
    clock: Clock
    post: Post
    timers: set[Timer]

    def lookup(self, name: str) -> ActorRef[Any]: ...

    def start_timer(self, delay_s: float, period_s: float | None, message: Message) -> Timer: ...


class Timer:
    """A pending ``send_later`` or periodic ``send_every`` delivery. :meth:`cancel` stops it."""

    __slots__ = ("_host", "_scope", "cancelled", "delay_s", "message", "period_s")

    def __init__(self, host: ActorHost, delay_s: float, period_s: float | None, message: Message) -> None:
        self._host = host
        self._scope: anyio.CancelScope | None = None
        self.delay_s = delay_s
        self.period_s = period_s
        self.message = message
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the timer. A message it already put in the mailbox is still delivered."""
        self.cancelled = True
        if self._scope is not None:
            self._scope.cancel()
        self._host.timers.discard(self)

    async def run(self) -> None:
        """The timer's task (started by the runtime): sleep on the injected clock, then tell, once or every period."""
        host = self._host
        clock = host.clock
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self.cancelled:
                return
            try:
                await clock.sleep(self.delay_s)
                while not self.cancelled:
                    await host.ref.tell(self.message, sender=TIMER)
                    if self.period_s is None:
                        break
                    await clock.sleep(self.period_s)
            except ActorStopped:
                pass
            finally:
                host.timers.discard(self)


class ActorContext(Generic[M]):
    """What an actor sees of the system: its name, the clock, its own ref, and ways to send and reply.

    Available as ``self.context`` from :meth:`Actor.on_start` on.
    """

    __slots__ = ("_host", "_mailboxes", "_post", "name")

    def __init__(self, host: ActorHost) -> None:
        self._host = host
        self._post = host.post
        #: the mailboxes of the actors this one sent to by name (an actor's mailbox is its own for good)
        self._mailboxes: dict[str, Mailbox] = {}
        #: This actor's name.
        self.name: str = host.name

    @property
    def clock(self) -> Clock:
        """The system's injected clock."""
        return self._host.clock

    @property
    def self_ref(self) -> ActorRef[M]:
        """A ref to this actor."""
        ref: ActorRef[M] = self._host.ref
        return ref

    def _resolve(self, target: ActorRef[Any] | str) -> ActorRef[Any]:
        return self._host.lookup(target) if isinstance(target, str) else target

    async def send(self, target: ActorRef[Any] | str, message: Message) -> None:
        """Tell ``target`` (a ref or an actor name) ``message``, as this actor; waits while its mailbox is full.
        A message its mailbox has room for is delivered without yielding (the actor yields when its own mailbox is
        empty)."""
        if type(target) is str:
            mailbox = self._mailboxes.get(target)
            if mailbox is None:
                mailbox = self._mailboxes[target] = self._host.lookup(target).mailbox
        else:
            mailbox = self._resolve(target).mailbox
        post = self._post
        if not post.send_now(mailbox, message, self.name):
            await post.send(mailbox, message, self.name, None, checkpoint=False)

    def send_nowait(self, target: ActorRef[Any] | str, message: Message) -> None:
        """Tell ``target`` ``message`` now, or raise :class:`~vramgate.errors.MailboxFull`."""
        self._post.send_nowait(self._resolve(target).mailbox, message, self.name)

    async def ask(self, target: ActorRef[Any] | str, message: Message, *, timeout: float) -> Message:  # noqa: ASYNC109
        """Ask ``target`` and wait for its reply (see :meth:`ActorRef.ask`)."""
        return await self._post.ask(self._resolve(target).mailbox, message, timeout, self.name)

    async def reply(self, envelope: Envelope, message: Message) -> None:
        """Answer the message in ``envelope``.

        For an ask, the reply goes to the waiting asker (a reply after the ask timed out is dropped). For a
        plain tell from another actor, the reply is told to that actor. Either way it is recorded with the
        envelope's sender as recipient and its correlation id, so that a replay sees it.
        """
        await self._post.reply(self.name, envelope, message)

    def send_later(self, delay_s: float, message: Message) -> Timer:
        """Deliver ``message`` to this actor's own mailbox after ``delay_s`` seconds of the injected clock."""
        return self._host.start_timer(delay_s, None, message)

    def send_every(self, period_s: float, message: Message, *, first_after_s: float | None = None) -> Timer:
        """Deliver ``message`` to this actor every ``period_s`` seconds (first after ``first_after_s``)."""
        if period_s <= 0:
            raise ValueError("period_s must be > 0")
        first = period_s if first_after_s is None else first_after_s
        return self._host.start_timer(first, period_s, message)


class Actor(Generic[M]):
    """Base class of actors. Override :meth:`receive`, and :meth:`on_start` / :meth:`on_stop` if needed.

    An actor handles one message at a time, in mailbox order. An exception from :meth:`receive` is a crash:
    the supervisor restarts the actor (see :class:`~vramgate.actors.RestartPolicy`) and offers the same message
    once more; a message that crashes it twice becomes a dead letter.
    """

    _context: ActorContext[M] | None = None

    @property
    def context(self) -> ActorContext[M]:
        """The actor's context; raises :class:`~vramgate.errors.ActorStopped` before the actor was spawned."""
        context = self._context
        if context is None:
            raise ActorStopped(f"{type(self).__name__} is not spawned in an actor system")
        return context

    async def receive(self, message: M, envelope: Envelope) -> None:
        """Handle one message. ``envelope`` has its sequence number, time, sender and correlation id."""
        raise NotImplementedError

    async def on_start(self) -> None:
        """Called once before the first message (and again after a restart with a fresh instance)."""

    async def on_stop(self) -> None:
        """Called after the mailbox was drained on a graceful stop. Not called on cancellation."""

    async def on_restart(self, error: Exception) -> None:
        """Called on the same instance after ``receive`` crashed with ``error``, before the next message.

        The default keeps the actor's state (what it owns is not lost). Spawn with a factory instead of an
        instance to start from a fresh instance on every restart.
        """


def attach(actor: Actor[Any], context: ActorContext[Any]) -> None:
    """Give ``actor`` its context (the runtime does, at spawn and on a restart with a fresh instance)."""
    actor._context = context
