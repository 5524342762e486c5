"""Actor references: the only way to send an actor a message."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from vramgate.actors.envelope import EXTERNAL, ActorStatistics
from vramgate.messages import Message

if TYPE_CHECKING:
    from vramgate.actors._cell import Cell

M = TypeVar("M", bound=Message)


class ActorRef(Generic[M]):
    """A handle to an actor's mailbox. Refs stay valid across restarts of the actor.

    * ``await ref.tell(message)`` waits while the mailbox is full (backpressure);
    * ``ref.tell_nowait(message)`` raises :class:`~vramgate.errors.MailboxFull` at once instead;
    * ``await ref.ask(message, timeout=...)`` waits for the actor's reply.

    All of them raise :class:`~vramgate.errors.ActorStopped` when the actor is not running.
    """

    __slots__ = ("_cell", "name")

    def __init__(self, cell: Cell) -> None:
        self._cell = cell
        #: The actor's name: unique within its system, and its ``recipient`` in the message log.
        self.name: str = cell.name

    def __repr__(self) -> str:
        return f"<ActorRef {self.name!r}>"

    async def tell(self, message: M, *, sender: str = EXTERNAL) -> None:
        """Put ``message`` in the actor's mailbox, waiting while it is full."""
        await self._send(message, sender, None)

    def tell_nowait(self, message: M, *, sender: str = EXTERNAL) -> None:
        """Put ``message`` in the mailbox now, or raise :class:`~vramgate.errors.MailboxFull`."""
        self._cell.offer_nowait(message, sender)

    async def ask(self, message: M, *, timeout: float, sender: str = EXTERNAL) -> Message:
        """Send ``message`` and wait for the actor's reply.

        ``timeout`` (seconds, real time) covers waiting for mailbox room and for the reply; past it the ask
        fails with :class:`~vramgate.errors.AskTimeout` and a reply that comes later is dropped. Raises
        :class:`~vramgate.errors.ActorStopped` when the actor stops before answering, and
        :class:`~vramgate.errors.ActorCrashed` when the message was quarantined as a dead letter.
        """
        return await self._cell.system._ask(self, message, timeout, sender)

    def statistics(self) -> ActorStatistics:
        """A snapshot of this actor: mailbox use, waiting senders, restarts, messages handled."""
        return self._cell.statistics()

    async def _send(self, message: Any, sender: str, correlation_id: int | None) -> None:
        await self._cell.deliver(message, sender, correlation_id)
