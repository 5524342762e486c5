"""Actor references: the only way to send an actor a message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from vramgate.actors._post import Mailbox, Post
from vramgate.actors.envelope import EXTERNAL, ActorStatistics
from vramgate.messages import Message

M = TypeVar("M", bound=Message)


class ActorRef(Generic[M]):
    """A handle to an actor's mailbox. Refs stay valid across restarts of the actor.

    * ``await ref.tell(message)`` waits while the mailbox is full (backpressure);
    * ``ref.tell_nowait(message)`` raises :class:`~vramgate.errors.MailboxFull` at once instead;
    * ``await ref.ask(message, timeout=...)`` waits for the actor's reply.

    All of them raise :class:`~vramgate.errors.ActorStopped` when the actor is not running.
    """

    __slots__ = ("_mailbox", "_post", "_statistics", "name")

    def __init__(self, mailbox: Mailbox, post: Post, statistics: Callable[[], ActorStatistics]) -> None:
        self._mailbox = mailbox
        self._post = post
        self._statistics = statistics
        #: The actor's name: unique within its system, and its ``recipient`` in the message log.
        self.name: str = mailbox.name

    def __repr__(self) -> str:
        return f"<ActorRef {self.name!r}>"

    async def tell(self, message: M, *, sender: str = EXTERNAL) -> None:
        """Put ``message`` in the actor's mailbox, waiting while it is full."""
        await self._post.send(self._mailbox, message, sender, None)

    def tell_nowait(self, message: M, *, sender: str = EXTERNAL) -> None:
        """Put ``message`` in the mailbox now, or raise :class:`~vramgate.errors.MailboxFull`."""
        self._post.send_nowait(self._mailbox, message, sender)

    async def ask(self, message: M, *, timeout: float, sender: str = EXTERNAL) -> Message:
        """Send ``message`` and wait for the actor's reply.

        ``timeout`` (seconds, real time) covers waiting for mailbox room and for the reply; past it the ask
        fails with :class:`~vramgate.errors.AskTimeout` and a reply that comes later is dropped. Raises
        :class:`~vramgate.errors.ActorStopped` when the actor stops before answering, and
        :class:`~vramgate.errors.ActorCrashed` when the message was quarantined as a dead letter.
        """
        return await self._post.ask(self._mailbox, message, timeout, sender)

    def statistics(self) -> ActorStatistics:
        """A snapshot of this actor: mailbox use, waiting senders, restarts, messages handled."""
        return self._statistics()

    @property
    def mailbox(self) -> Mailbox:
        """The actor's mailbox (for the runtime)."""
        return self._mailbox
