"""The request actor: a :class:`~vramgate.actors.CoreActor` over the sans-io
:class:`~vramgate.policy.request.RequestCore`, and the client's inbox.

It takes the client's requests, cancellations, run ends and retries, the estimator's and the optimizer's answers,
admission's lifecycle events and the monitor's samples, and sends what the core decides. ``observe`` (the gate)
sees each message it takes, with what the core sent for it, before those are sent: tickets follow the decisions
in the order the core made them. What the core tells the client goes to the :class:`ClientInbox` actor, so that
the log keeps it (and a replay checks it); the gate has already handed it to the tickets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec

from vramgate.actors.actor import Actor
from vramgate.actors.core import CoreActor, Send
from vramgate.actors.envelope import Envelope
from vramgate.messages import LogHeader, Message
from vramgate.messages.log import CoreSpec
from vramgate.policy.request import RequestConfig, RequestCore
from vramgate.replay import register_core_kind

#: The core kind written into recorded log headers.
KIND = "request"

#: Sees a message and the core's outputs for it; returns what is left to do that waits, or ``None``.
Observer = Callable[[Message, Sequence[Send]], Awaitable[None] | None]


class RequestActor(CoreActor):
    """Runs the request core; hands each message and the core's outputs for it to ``observe`` first."""

    def __init__(self, core: RequestCore, *, observe: Observer | None, config: Mapping[str, Any]) -> None:
        super().__init__(core, kind=KIND, config=config)
        self.requests = core
        self.observe = observe

    async def receive(self, message: Message, envelope: Envelope) -> None:
        outputs = self.requests.handle(message, envelope.at)
        observe = self.observe
        if observe is not None:
            after = observe(message, outputs)
            if after is not None:
                await after
        if outputs:
            context = self.context
            for output in outputs:
                await context.send(output.to, output.message)


class ClientInbox(Actor[Message]):
    """Where the request core's messages for the client are delivered (the gate hands them to tickets)."""

    async def receive(self, message: Message, envelope: Envelope) -> None:
        return None


def request_actor(
    config: RequestConfig, *, observe: Observer | None = None, core: RequestCore | None = None
) -> RequestActor:
    """A request actor (over ``core``, else a new core with ``config``); its recorded config rebuilds the same core
    for replay."""
    core = core if core is not None else RequestCore(config)
    return RequestActor(core, observe=observe, config={"request": msgspec.to_builtins(config)})


def build_core(header: LogHeader, spec: CoreSpec) -> RequestCore:
    """Rebuild a request core from its recorded config (for replay)."""
    return RequestCore(msgspec.convert(spec.config["request"], RequestConfig))


register_core_kind(KIND, build_core)
