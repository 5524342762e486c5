"""Sans-io cores and the actor shell that runs one.

A :class:`Core` is plain synchronous state: message and time in, outputs out; no awaits, no clock reads, no
I/O. A :class:`CoreActor` feeds its mailbox to the core, stamping each message with the envelope's time, and
sends what the core returns. Because a core's inputs are exactly the recorded messages, a replay
(:mod:`vramgate.replay`) can rebuild it from the log header and check that it decides the same things again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from vramgate.actors.actor import Actor
from vramgate.actors.envelope import Envelope
from vramgate.messages import Message
from vramgate.messages.log import CoreSpec


class Send(msgspec.Struct, frozen=True):
    """Output: tell the actor named ``to`` the ``message``."""

    to: str
    message: Message


class Reply(msgspec.Struct, frozen=True):
    """Output: answer the sender of the message being handled (the asker, for an ask)."""

    message: Message


#: What a core's ``handle`` returns, in order.
Output = Send | Reply


@runtime_checkable
class Core(Protocol):
    """A sans-io decision core. ``now`` is the time stamped on the message's envelope."""

    def handle(self, message: Message, now: float) -> Sequence[Output]: ...


class CoreActor(Actor[Message]):
    """An actor that feeds every message to ``core`` and sends the outputs, in order.

    ``kind`` names a factory registered with :func:`vramgate.replay.register_core_kind`, and ``config`` is
    what that factory needs to rebuild an identical core; both are written into the log header.
    """

    def __init__(self, core: Core, *, kind: str, config: Mapping[str, Any] | None = None) -> None:
        if not kind:
            raise ValueError("a CoreActor needs a core kind, for replay")
        self.core = core
        self.kind = kind
        self.config: dict[str, Any] = dict(config or {})

    def core_spec(self, name: str) -> CoreSpec:
        """How to rebuild this actor's core, for the log header."""
        return CoreSpec(name=name, kind=self.kind, config=self.config, module=type(self.core).__module__)

    async def receive(self, message: Message, envelope: Envelope) -> None:
        context = self.context
        for output in self.core.handle(message, envelope.at):
            if type(output) is Send:
                await context.send(output.to, output.message)
            elif type(output) is Reply:
                await context.reply(envelope, output.message)
            else:
                raise TypeError(f"core {self.kind!r} returned {output!r}; expected Send or Reply")
