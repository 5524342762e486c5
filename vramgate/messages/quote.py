"""A gate's quote for a request, and its answer when it declines one: what a router across nodes needs.

A quote is advice, never a reservation: only admission's ledger reserves memory, so a stale quote costs a
decline or a wait, never memory.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from vramgate.messages._base import MB, Ident, Message, Seconds
from vramgate.messages.plans import Plan


class Quote(Message, frozen=True):
    """What ``request`` would get from this gate now.

    ``plan`` is the plan it would run (``None`` when no plan fits any device here; ``reason`` says why), with
    ``vram_mb`` per GPU on ``gpus`` GPUs. ``start_s`` is the expected wait for admission from now (0 when it would
    be admitted at once, ``admit_now``), ``run_s`` the run's expected seconds and ``finish_s`` their sum.
    ``slots`` is how many runs of this plan the devices hold at once when this system's leases have ended.
    ``retry_after_s`` is when the queue is expected to have room (0: it has room now). ``node`` names the gate
    (empty on one host). Seconds are the plans' estimated seconds times the quote's time scale.
    """

    request_id: Ident
    fits: bool
    plan: Plan | None = None
    vram_mb: MB = 0
    gpus: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    admit_now: bool = False
    start_s: Seconds = 0.0
    run_s: Seconds = 0.0
    finish_s: Seconds = 0.0
    slots: Annotated[int, msgspec.Meta(ge=0)] = 0
    queue_length: Annotated[int, msgspec.Meta(ge=0)] = 0
    queue_limit: Annotated[int, msgspec.Meta(ge=0)] = 0
    retry_after_s: Seconds = 0.0
    node: str = ""
    reason: str = ""


class SubmitDeclined(Message, frozen=True):
    """The gate declined a request it was asked to take only on conditions (at once, or within a wait).

    Nothing was reserved and nothing is kept: the request may go elsewhere. ``code`` is ``queue_full``,
    ``does_not_fit``, ``too_late`` (its expected start is past the bound) or ``not_now`` (it would have waited).
    """

    request_id: Ident
    code: str
    reason: str
    retry_after_s: Seconds = 0.0
    quote: Quote | None = None
