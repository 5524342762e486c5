"""The envelope every delivered message travels in, and the small records the runtime reports."""

from __future__ import annotations

import msgspec

from vramgate.messages import LogRecord, Message

#: The sender name of messages told from outside the actor system.
EXTERNAL = "external"
#: The sender name of messages delivered by an actor's own timers (``send_later`` / ``send_every``).
TIMER = "timer"
#: The sender name of the record that logs an actor whose crashes stopped the system.
SUPERVISOR = "supervisor"


class Envelope(msgspec.Struct, frozen=True, gc=False):
    """A message on its way to an actor.

    ``seq`` is the system-wide sequence number given when the message was sent, ``at`` the injected clock's
    time then, ``sender`` and ``recipient`` actor names (``"external"`` for outside callers, ``"timer"`` for
    timer deliveries). ``correlation_id`` is set on asks and on their replies: it is the reply routing, since
    :meth:`ActorContext.reply <vramgate.actors.ActorContext.reply>` answers the pending ask with that id.
    ``redelivery_of`` is set when a message is offered again after it crashed its actor: the seq of the
    delivery that crashed.
    """

    seq: int
    at: float
    sender: str
    recipient: str
    message: Message
    correlation_id: int | None = None
    redelivery_of: int | None = None

    def to_record(self) -> LogRecord[Message]:
        """This envelope as a log record."""
        return LogRecord(
            seq=self.seq,
            at=self.at,
            sender=self.sender,
            recipient=self.recipient,
            message=self.message,
            correlation_id=self.correlation_id,
            redelivery_of=self.redelivery_of,
        )


class DeadLetter(msgspec.Struct, frozen=True):
    """A message the runtime gave up on: a poison message that crashed its actor twice, or one with no route.

    ``error`` is the ``repr`` of the exception that quarantined it (empty when there was none).
    """

    envelope: Envelope
    reason: str
    error: str = ""


class RestartPolicy(msgspec.Struct, frozen=True):
    """One-for-one supervision: restart a crashed actor at most ``max_restarts`` times within ``within_s``.

    The window is measured with the system's injected clock. One crash more than that stops the whole system
    with :class:`~vramgate.errors.ActorCrashed`. ``max_restarts=0`` stops it on the first crash.
    """

    max_restarts: int = 3
    within_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if self.within_s <= 0:
            raise ValueError("within_s must be > 0")

    @classmethod
    def never(cls) -> RestartPolicy:
        """No restarts: the first crash stops the system."""
        return cls(max_restarts=0)


class ActorStatistics(msgspec.Struct, frozen=True):
    """A snapshot of one actor. ``state`` is ``new``, ``running``, ``stopping`` or ``stopped``."""

    name: str
    state: str
    mailbox_size: int
    mailbox_capacity: int
    waiting_senders: int
    handled: int
    restarts: int
    dead_letters: int
    timers: int


class SystemStatistics(msgspec.Struct, frozen=True):
    """A snapshot of the whole actor system."""

    state: str
    actors: tuple[ActorStatistics, ...]
    last_seq: int
    in_flight: int
    pending_asks: int
    late_replies: int
    dead_letters: int
