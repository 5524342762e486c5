"""Placement of one request on the devices' free memory, and the head's shadow (when it is expected to start).

A request has at most one plan per device (``plans[position]``); a plan of world size N needs N devices that
all resolved to that same plan, each with the plan's ``vram_mb`` free (all or none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

from vramgate.messages.plans import Plan
from vramgate.policy._ends import End

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


def releases_of(ends: Sequence[End], devices: int) -> list[list[End]]:
    """The running leases' ``ends`` (time, positions, MiB; in order of time) per position, in the same order."""
    per: list[list[End]] = [[] for _ in range(devices)]
    for end in ends:
        for pos in end[1]:
            per[pos].append(end)
    return per


def earliest_finish(
    groups: Sequence[Group],
    avail: Sequence[int],
    later: Sequence[int],
    releases: Sequence[Sequence[End]],
    *,
    now: float,
    run_seconds: Callable[[float], float] = float,
) -> Choice | None:
    """Where a request (its :func:`groups_of`) is expected to finish first, or ``None`` when it can start nowhere.

    On each device of a plan it can start ``now`` when ``avail`` (MiB per position, now) holds the plan, else when
    the running leases there have returned enough (``later``, what the device will have once they end, plus each
    lease's ``releases`` in order, as :func:`releases_of` gives them; an end before ``now`` counts as ``now``). It
    finishes its plan's expected time later, so a slower plan that could start now loses to a faster one on a device
    that comes free soon enough. A plan of world size N runs on its N devices where it would finish first. Ties go
    to the sooner start, to what fits now, to the least slack (best fit), then to the lowest positions.
    ``run_seconds`` turns a plan's estimated time into how long its run is expected to last here (the admission
    configuration's time scale), as the leases' ends were.

    Liveness: a request never waits for a busier or faster device while a device with no lease could take it now;
    then it starts now, on the device where it is expected to finish first among those it fits now (and the
    choice's ``preferred`` is where it would have waited).
    """
    if len(groups) == 1 and groups[0].world == 1:
        # The common case, one plan on one GPU: when it fits somewhere now, it starts now where it fits best.
        group = groups[0]
        need = group.need_mb
        best_pos, best_slack = -1, 0
        for pos in group.positions:
            slack = avail[pos] - need
            if slack >= 0 and (best_pos < 0 or slack < best_slack or (slack == best_slack and pos < best_pos)):
                best_pos, best_slack = pos, slack
        if best_pos >= 0:
            finish = now + run_seconds(group.seconds)
            return Choice(
                Placement((best_pos,), group.plan, need, group.extra_s), now, finish, {best_pos: best_slack}, True
            )
    best: tuple[Group, list[_Option]] | None = None
    best_score: _Score | None = None
    # Each group's options that fit now: where the liveness rule may start it when the best choice waits.
    ready_options: list[tuple[Group, list[_Option]]] = []
    for group in groups:
        need, world = group.need_mb, group.world
        duration = run_seconds(group.seconds)
        finish_now = now + duration
        ready: list[_Option] = []
        waiting: list[int] = []
        if world == 1:
            # Of the options that fit now only the best counts (the least slack, then the lowest position).
            best_pos, best_slack = -1, 0
            for pos in group.positions:
                slack = avail[pos] - need
                if slack < 0:
                    waiting.append(pos)
                elif best_pos < 0 or slack < best_slack or (slack == best_slack and pos < best_pos):
                    best_pos, best_slack = pos, slack
            if best_pos >= 0:
                ready.append((finish_now, now, 0, best_slack, best_pos))
        else:
            for pos in group.positions:
                slack = avail[pos] - need
                if slack >= 0:
                    ready.append((finish_now, now, 0, slack, pos))
                else:
                    waiting.append(pos)
        ready_options.append((group, ready))
        options = ready
        if waiting and len(ready) < world:
            # An option that waits sorts after every option that fits now: only needed when too few fit now.
            options = list(ready)
            for pos in waiting:
                have = later[pos]
                for end, _, mb in releases[pos]:
                    have += mb
                    if have >= need:
                        start = now if now > end else end  # max(end, now)
                        options.append((start + duration, start, 1, have - need, pos))
                        break
        if len(options) < world:
            continue
        chosen = [min(options)] if world == 1 else sorted(options)[:world]
        score = _score(chosen)
        if best_score is None or score < best_score:
            best_score, best = score, (group, chosen)
    if best is None or best_score is None:
        return None
    choice = _choice(best[0], best[1], best_score)
    if choice.ready:
        return choice
    idle: tuple[Group, list[_Option]] | None = None
    idle_score: _Score | None = None
    for group, ready in ready_options:
        if len(ready) < group.world:
            continue
        chosen = [min(ready)] if group.world == 1 else sorted(ready)[: group.world]
        score = _score(chosen)
        if all(not releases[pos] for pos in score[4]) and (idle_score is None or score < idle_score):
            idle_score, idle = score, (group, chosen)
    if idle is None or idle_score is None:
        return choice
    return _choice(idle[0], idle[1], idle_score)._replace(preferred=choice)


#: Where a plan may run on one device: (finish, start, 0 if it fits now else 1, slack, position).
_Option = tuple[float, float, int, int, int]
#: How good a choice of options is, least best: (finish, start, 1 if it waits, slack, positions).
_Score = tuple[float, float, int, int, tuple[int, ...]]


def _score(chosen: list[_Option]) -> _Score:
    if len(chosen) == 1:
        o = chosen[0]
        return (o[0], o[1], o[2], o[3], (o[4],))
    return (
        max(o[0] for o in chosen),
        max(o[1] for o in chosen),
        max(o[2] for o in chosen),
        sum(o[3] for o in chosen),
        tuple(sorted(o[4] for o in chosen)),
    )


def _choice(group: Group, chosen: list[_Option], score: _Score) -> Choice:
    return Choice(
        Placement(score[4], group.plan, group.need_mb, group.extra_s),
        score[1],
        score[0],
        {o[4]: o[3] for o in chosen},
        not score[2],
    )


def relative_cost(choice: Choice, groups: Sequence[Group], run_seconds: Callable[[float], float] = float) -> float:
    """The GPU-seconds of a request's run where ``choice`` starts it over the fewest any of its plans takes (1 on
    its fastest devices; more where it is slower)."""
    best = min((run_seconds(g.seconds) * g.world for g in groups), default=math.inf)
    spent = (choice.finish - choice.start) * len(choice.placement.positions)
    return spent / best if best > 0 else 1.0
