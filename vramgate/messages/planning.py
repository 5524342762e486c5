"""The request core's own inputs and answers: the budgets it plans for, quotes, and retries after an OOM.

The request core (:mod:`vramgate.policy.request`) plans each request it accepts at the budgets the devices offer
(:class:`DeviceBudgets`, sent by the gate whenever they change), answers a :class:`QuoteRequest` with the plans a
submit would carry (a ``SubmitRequest`` to the client, reserving nothing), and answers a client's ``ShrinkPlan``
after an out-of-memory run with :class:`RetryDecided`.
"""

from __future__ import annotations

from typing import Literal

from vramgate.messages._base import MB, Ident, Message
from vramgate.messages.requests import GenerationRequest


class DeviceBudgets(Message, frozen=True):
    """What a plan may need per GPU on each kind of GPU: ``now`` with others' use as measured, and ``attainable``
    once the other processes that may leave have left (capacity less the margin and the memory others never gave
    back). ``ram_budget_mb`` is the host RAM a plan may use (``None``: not limited)."""

    now: dict[str, MB]
    attainable: dict[str, MB]
    ram_budget_mb: MB | None = None


class QuoteRequest(Message, frozen=True):
    """Plan ``request`` as a submit would, and answer with the ``SubmitRequest`` it would send (to the client,
    not to admission) or the ``RequestRejected`` it would end with; nothing is kept or reserved."""

    request_id: Ident
    request: GenerationRequest


class RetryDecided(Message, frozen=True):
    """The answer to a client's ``ShrinkPlan`` for a request whose run ran out of memory: ``retry_id`` names the
    request that retries it with a smaller plan (its ``RequestAccepted`` came just before), or ``declined`` says
    why there is none (``no_retries``: retries are off or used up; ``no_smaller_plan``: nothing within the
    request's level needs less)."""

    request_id: Ident
    retry_id: Ident = ""
    declined: Literal["", "no_retries", "no_smaller_plan"] = ""
    reason: str = ""
