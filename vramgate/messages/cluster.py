"""The messages between a router and the node gates of a cluster: acceptance, a run's end, a routing decision."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vramgate.messages._base import MB, Ident, Message, Seconds
from vramgate.messages.gate import GateStatistics
from vramgate.messages.lifecycle import TerminalState


class NodeAccepted(Message, frozen=True):
    """A node gate took a request (it is queued or admitted there); ``state`` is where it stands.

    A node that already knows the id answers with the request's current state and runs it only once.
    """

    request_id: Ident
    node: str
    state: str


class NodeResult(Message, frozen=True):
    """A request's end on a node: its terminal state, where it ran, what it held, and the node's over-commits."""

    request_id: Ident
    node: str
    state: TerminalState
    reason: str = ""
    devices: tuple[int, ...] = ()
    reservation_mb: MB = 0
    waited_s: Seconds = 0.0
    ran_s: Seconds = 0.0
    over_commits: Annotated[int, msgspec.Meta(ge=0)] = 0


class NodeStatistics(Message, frozen=True):
    """A node gate's snapshot: the gate's statistics and the over-commits its ledgers ever showed."""

    node: str
    gate: GateStatistics
    over_commits: Annotated[int, msgspec.Meta(ge=0)] = 0


class RouteDecision(Message, frozen=True):
    """One routing decision, as the router logs it: the nodes in the order tried, and what each was expected
    to give (``expected_s``: seconds to completion, counting the router's own requests the quote did not see)."""

    request_id: Ident
    router: str
    order: tuple[str, ...]
    expected_s: dict[str, float] = msgspec.field(default_factory=dict)
    unseen: dict[str, int] = msgspec.field(default_factory=dict)
    chosen: str = ""
    declined: dict[str, str] = msgspec.field(default_factory=dict)
    attempt: Annotated[int, msgspec.Meta(ge=0)] = 0
    retry_after_s: Seconds | None = None


class RouteOutcome(Message, frozen=True):
    """What the client gets for one request: its one terminal state, the node that ended it, and how often it
    was routed again because a node died."""

    request_id: Ident
    router: str
    state: TerminalState
    node: str = ""
    reason: str = ""
    reroutes: Annotated[int, msgspec.Meta(ge=0)] = 0
