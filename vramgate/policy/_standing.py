"""What a waiting request waits for, in words, and where it stands in the queue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from vramgate.messages.plans import Plan
from vramgate.policy.ledger import DeviceLedger


class Standing(NamedTuple):
    """Where a waiting request stands: its 1-based ``position``, what it waits for (``reason``), and the time it
    is expected to start (``starts_at``; ``None`` when unknown), as the running leases' expected ends say."""

    position: int
    reason: str
    starts_at: float | None


def waiting_reason(
    plans: Sequence[Plan | None], ledgers: Sequence[DeviceLedger], free: Sequence[int], now: float, ahead: int
) -> str:
    """Why a request with ``plans`` (one per device position) waits: the devices that admit nothing, the
    ``ahead`` requests before it, and the memory it lacks and who holds it, on the device where it lacks the
    least (``"behind 3 requests; waiting for 3,200 MiB on gpu0: held by 2 running leases"``)."""
    blocked = [ledger.blocked(now) for ledger in ledgers]
    reasons = [b for b, p in zip(blocked, plans, strict=True) if b and p is not None]
    if reasons and len(reasons) == sum(1 for p in plans if p is not None):
        return "; ".join(reasons)
    parts = [f"behind {ahead} request" + ("s" if ahead != 1 else "")] if ahead else []
    short_pos, short = -1, 0
    for pos, plan in enumerate(plans):
        if plan is None or blocked[pos]:
            continue
        lacks = plan.requirement.vram_mb - free[pos]
        if short_pos < 0 or lacks < short:
            short_pos, short = pos, lacks
    if short_pos >= 0:
        ledger = ledgers[short_pos]
        where = f"gpu{ledger.index}"
        if short <= 0:
            parts.append(f"fits on {where} now, once the requests ahead have their memory")
        else:
            holders: list[str] = []
            if ledger.leases:
                holders.append(f"{ledger.leases} running lease" + ("s" if ledger.leases != 1 else ""))
            if short > ledger.reserved_mb and ledger.others_mb:
                holders.append(f"others ({ledger.others_mb:,} MiB outside this gate's leases)")
            held = " and ".join(holders) if holders else "the safety margin"
            parts.append(f"waiting for {short:,} MiB on {where}: held by {held}")
    return "; ".join(parts + reasons)
