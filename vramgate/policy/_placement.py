"""Placement of one request on the devices' free memory, and the head's shadow (when it is expected to start).

A request has at most one plan per device (``plans[position]``); a plan of world size N needs N devices that
all resolved to that same plan, each with the plan's ``vram_mb`` free (all or none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

from vramgate.messages.plans import Plan

#: Free memory given to a device that cannot take anything (lost, stale).
UNUSABLE = -(1 << 60)


class Placement(NamedTuple):
    """Where a request goes: device positions (ascending), the plan and its reservation on each of them;
    ``extra_s`` is the time loading its weights adds there (they are resident on another device)."""

    positions: tuple[int, ...]
    plan: Plan
    need_mb: int
    extra_s: float = 0.0

    @property
    def seconds(self) -> float:
        """The plan's estimated time here, with the load it needs here."""
        return self.plan.requirement.estimated_time_seconds + self.extra_s


class Shadow(NamedTuple):
    """The head's expected start ``time`` (``inf`` when unknown) and, on the devices it will take, the memory
    left over then (``extra``). Backfilling may use ``extra``, or anything it returns before ``time``."""

    time: float
    extra: dict[int, int]


class Group(NamedTuple):
    """The devices (ascending positions) that resolved to one plan, with what the plan needs on each (less the
    weights resident there) and the time loading its weights adds there (``extra_s``)."""

    plan: Plan
    need_mb: int
    world: int
    positions: tuple[int, ...]
    extra_s: float = 0.0

    @property
    def seconds(self) -> float:
        """The plan's estimated time on these devices, with the load it needs there."""
        return self.plan.requirement.estimated_time_seconds + self.extra_s


#: Groups of plans shared by every device, by (plan id, devices); each entry holds its plan, so the id stays its own.
_SHARED: dict[tuple[int, int], tuple[Group]] = {}
_SHARED_LIMIT = 4096


def groups_of(plans: Sequence[Plan | None]) -> tuple[Group, ...]:
    """A request's plans grouped by plan (a request's groups never change, so callers may keep them)."""
    first = plans[0] if plans else None
    if first is not None and all(plan is first for plan in plans):
        # One plan for every device (the common case): requests that share the plan share the groups too.
        shared_key = (id(first), len(plans))
        shared = _SHARED.get(shared_key)
        if shared is None or shared[0].plan is not first:
            if len(_SHARED) >= _SHARED_LIMIT:
                _SHARED.clear()
            need = first.requirement
            shared = _SHARED[shared_key] = (Group(first, need.vram_mb, need.world_size, tuple(range(len(plans)))),)
        return shared
    positions: dict[int, list[int]] = {}
    by_id: dict[int, Plan] = {}
    for pos, plan in enumerate(plans):
        if plan is not None:
            key = id(plan)
            if key not in positions:
                positions[key] = []
                by_id[key] = plan
            positions[key].append(pos)
    return tuple(
        Group(plan, plan.requirement.vram_mb, plan.requirement.world_size, tuple(positions[key]))
        for key, plan in by_id.items()
    )


def place(plans: Sequence[Plan | None], avail: Sequence[int], *, spread: bool) -> Placement | None:
    """The best placement of a request on ``avail`` MiB per device, or ``None`` when it does not fit.

    Best fit picks the devices left with the least slack (the fewest MiB over what the plan needs), keeping the
    large holes for large requests; spread picks those left with the most, keeping load even.
    """
    return place_groups(groups_of(plans), avail, spread=spread)


def place_groups(groups: Sequence[Group], avail: Sequence[int], *, spread: bool) -> Placement | None:
    """:func:`place` for a request's :func:`groups_of`."""
    best: Placement | None = None
    best_score: tuple[int, tuple[int, ...]] | None = None
    for group in groups:
        plan, need, world, candidates = group.plan, group.need_mb, group.world, group.positions
        if world == 1:
            # The common case: the one device with the least (best fit) or most (spread) slack, lowest first.
            chosen_pos = -1
            chosen_slack = 0
            for pos in candidates:
                slack = avail[pos] - need
                if slack < 0:
                    continue
                if chosen_pos < 0 or (slack > chosen_slack if spread else slack < chosen_slack):
                    chosen_pos, chosen_slack = pos, slack
            if chosen_pos < 0:
                continue
            score: tuple[int, tuple[int, ...]] = (-chosen_slack if spread else chosen_slack, (chosen_pos,))
            if best_score is None or score < best_score:
                best_score = score
                best = Placement((chosen_pos,), plan, need, group.extra_s)
            continue
        positions = [pos for pos in candidates if avail[pos] >= need]
        if len(positions) < world:
            continue
        if spread:
            chosen = sorted(positions, key=lambda p: (need - avail[p], p))[:world]
            total = -min(avail[p] - need for p in chosen)
        else:
            chosen = sorted(positions, key=lambda p: (avail[p] - need, p))[:world]
            total = sum(avail[p] - need for p in chosen)
        ordered = tuple(sorted(chosen))
        score = (total, ordered)
        if best_score is None or score < best_score:
            best_score = score
            best = Placement(ordered, plan, need, group.extra_s)
    return best


def shadow(
    groups: Sequence[Group],
    free: Sequence[int],
    usable: Sequence[bool],
    ends: Sequence[tuple[float, tuple[int, ...], int]],
    *,
    now: float,
    spread: bool,
) -> Shadow:
    """When a request (its :func:`groups_of`) can start as running leases end at their expected ``ends`` (time,
    positions, MiB per position; in order of time), assuming others' use stays as it is; and the memory its
    placement leaves over then. A request that fits ``free`` now starts ``now``.

    When it cannot start even after every lease has ended (others hold the memory, or the devices it needs are
    blocked), the time is unknown: ``inf``, and nothing is left over for it to protect (``extra`` is empty).
    """
    avail = [f if ok else UNUSABLE for f, ok in zip(free, usable, strict=True)]
    found = place_groups(groups, avail, spread=spread)
    if found is not None:
        return Shadow(now, {pos: avail[pos] - found.need_mb for pos in found.positions})
    timeline = ends
    for i, (end, positions, mb) in enumerate(timeline):
        for pos in positions:
            avail[pos] += mb
        if i + 1 < len(timeline) and timeline[i + 1][0] == end:
            continue
        found = place_groups(groups, avail, spread=spread)
        if found is not None:
            extra = {pos: avail[pos] - found.need_mb for pos in found.positions}
            return Shadow(max(end, now), extra)
    return Shadow(math.inf, {})


class Choice(NamedTuple):
    """Where a request is expected to finish first: the placement, when it can start there (``start``), when it is
    expected to end (``finish``), the memory left over then on each of its devices (``extra``), and whether it
    fits there now (``ready``; a lease past its expected end is expected to end now, but has not yet). When the
    liveness rule chose it (an idle device takes the request now), ``preferred`` is where it would have waited."""

    placement: Placement
    start: float
    finish: float
    extra: dict[int, int]
    ready: bool
    preferred: Choice | None = None


def releases_of(ends: Sequence[tuple[float, tuple[int, ...], int]], devices: int) -> list[list[tuple[float, int]]]:
    """The running leases' ``ends`` (time, positions, MiB; in order of time) per position: (time, MiB) in order."""
    per: list[list[tuple[float, int]]] = [[] for _ in range(devices)]
    for end, positions, mb in ends:
        for pos in positions:
            per[pos].append((end, mb))
    return per


def earliest_finish(
    groups: Sequence[Group],
    avail: Sequence[int],
    later: Sequence[int],
    releases: Sequence[Sequence[tuple[float, int]]],
    *,
    now: float,
    run_seconds: Callable[[float], float] = float,
) -> Choice | None:
    """Where a request (its :func:`groups_of`) is expected to finish first, or ``None`` when it can start nowhere.

    On each device of a plan it can start ``now`` when ``avail`` (MiB per position, now) holds the plan, else when
    the running leases there have returned enough (``later``, what the device will have once they end, plus each
    lease's ``releases`` in order). It finishes its plan's expected time later, so a slower plan that could start
    now loses to a faster one on a device that comes free soon enough. A plan of world size N runs on its N devices
    where it would finish first. Ties go to the sooner start, to what fits now, to the least
    slack (best fit), then to the lowest positions. ``run_seconds`` turns a plan's estimated time into how long
    its run is expected to last here (the admission configuration's time scale), as the leases' ends were.

    Liveness: a request never waits for a busier or faster device while a device with no lease could take it now;
    then it starts now, on the device where it is expected to finish first among those it fits now (and the
    choice's ``preferred`` is where it would have waited).
    """
    best: Choice | None = None
    best_score: tuple[float, float, int, int, tuple[int, ...]] | None = None
    idle: Choice | None = None
    idle_score: tuple[float, float, int, int, tuple[int, ...]] | None = None
    for group in groups:
        plan, need, world, candidates = group.plan, group.need_mb, group.world, group.positions
        duration = run_seconds(group.seconds)
        options: list[tuple[float, float, int, int, int]] = []  # (finish, start, 0 if it fits now, slack, position)
        for pos in candidates:
            slack = avail[pos] - need
            if slack >= 0:
                options.append((now + duration, now, 0, slack, pos))
                continue
            have = later[pos]
            for end, mb in releases[pos]:
                have += mb
                if have >= need:
                    start = max(end, now)
                    options.append((start + duration, start, 1, have - need, pos))
                    break
        for ready_only in (False, True):
            chosen = [o for o in options if not (ready_only and o[2])]
            if len(chosen) < world:
                continue
            chosen = [min(chosen)] if world == 1 else sorted(chosen)[:world]
            waits = max(o[2] for o in chosen)
            positions = tuple(sorted(o[4] for o in chosen))
            score = (max(o[0] for o in chosen), max(o[1] for o in chosen), waits, sum(o[3] for o in chosen), positions)
            choice = Choice(
                Placement(positions, plan, need, group.extra_s),
                score[1],
                score[0],
                {o[4]: o[3] for o in chosen},
                not waits,
            )
            if not ready_only:
                if best_score is None or score < best_score:
                    best_score, best = score, choice
            elif all(not releases[pos] for pos in positions) and (idle_score is None or score < idle_score):
                idle_score, idle = score, choice
    if best is not None and not best.ready and idle is not None:
        return idle._replace(preferred=best)
    return best


def relative_cost(choice: Choice, groups: Sequence[Group], run_seconds: Callable[[float], float] = float) -> float:
    """The GPU-seconds of a request's run where ``choice`` starts it over the fewest any of its plans takes (1 on
    its fastest devices; more where it is slower)."""
    best = min((run_seconds(g.seconds) * g.world for g in groups), default=math.inf)
    spent = (choice.finish - choice.start) * len(choice.placement.positions)
    return spent / best if best > 0 else 1.0
