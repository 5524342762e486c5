"""Placement of one request on the devices' free memory, and the head's shadow (when it is expected to start).

A request has at most one plan per device (``plans[position]``); a plan of world size N needs N devices that
all resolved to that same plan, each with the plan's ``vram_mb`` free (all or none).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from vramgate.messages.plans import Plan

#: Free memory given to a device that cannot take anything (lost, stale).
UNUSABLE = -(1 << 60)


class Placement(NamedTuple):
    """Where a request goes: device positions (ascending), the plan and its reservation on each of them."""

    positions: tuple[int, ...]
    plan: Plan
    need_mb: int


class Shadow(NamedTuple):
    """The head's expected start ``time`` (``inf`` when unknown) and, on the devices it will take, the memory
    left over then (``extra``). Backfilling may use ``extra``, or anything it returns before ``time``."""

    time: float
    extra: dict[int, int]


def place(plans: Sequence[Plan | None], avail: Sequence[int], *, spread: bool) -> Placement | None:
    """The best placement of a request on ``avail`` MiB per device, or ``None`` when it does not fit.

    Best fit picks the devices left with the least slack (the fewest MiB over what the plan needs), keeping the
    large holes for large requests; spread picks those left with the most, keeping load even.
    """
    groups: dict[int, list[int]] = {}
    by_id: dict[int, Plan] = {}
    for pos, plan in enumerate(plans):
        if plan is not None and avail[pos] >= plan.requirement.vram_mb:
            key = id(plan)
            if key not in groups:
                groups[key] = []
                by_id[key] = plan
            groups[key].append(pos)
    best: Placement | None = None
    best_score: tuple[int, tuple[int, ...]] | None = None
    for key, positions in groups.items():
        plan = by_id[key]
        need = plan.requirement.vram_mb
        world = plan.requirement.world_size
        if len(positions) < world:
            continue
        if spread:
            chosen = sorted(positions, key=lambda p: (need - avail[p], p))[:world]
            slack = -min(avail[p] - need for p in chosen)
        else:
            chosen = sorted(positions, key=lambda p: (avail[p] - need, p))[:world]
            slack = sum(avail[p] - need for p in chosen)
        ordered = tuple(sorted(chosen))
        score = (slack, ordered)
        if best_score is None or score < best_score:
            best_score = score
            best = Placement(ordered, plan, need)
    return best


def shadow(
    plans: Sequence[Plan | None],
    free: Sequence[int],
    usable: Sequence[bool],
    budgets: Sequence[int],
    ends: Iterable[tuple[float, tuple[int, ...], int]],
    *,
    now: float,
    spread: bool,
) -> Shadow:
    """When the head (``plans``) can start as running leases end at their expected ``ends`` (time, positions, MiB
    per position), assuming others' use stays as it is; and the memory its placement leaves over then.

    When it cannot start even after every lease has ended (others hold the memory, or the devices it needs are
    blocked), the time is unknown: ``inf``, and every device it could ever use is protected (``extra`` -1).
    """
    avail = [f if ok else UNUSABLE for f, ok in zip(free, usable, strict=True)]
    timeline = sorted(ends)
    for i, (end, positions, mb) in enumerate(timeline):
        for pos in positions:
            avail[pos] += mb
        if i + 1 < len(timeline) and timeline[i + 1][0] == end:
            continue
        found = place(plans, avail, spread=spread)
        if found is not None:
            extra = {pos: avail[pos] - found.need_mb for pos in found.positions}
            return Shadow(max(end, now), extra)
    protect = {
        pos: -1 for pos, plan in enumerate(plans) if plan is not None and plan.requirement.vram_mb <= budgets[pos]
    }
    return Shadow(math.inf, protect)
